"""PLINK 2 ``.pgen/.pvar/.psam`` genotypes as gene tokens, read through pgenlib (plink2's own reader).

:func:`pgen` gives the same :class:`~data_adapters.core.TokenizedModality` as :func:`data_adapters.gene.plink`:
one feature per variant, variants grouped by chromosome, window, region table or one per variant, read in blocks
of variants (memory: see :mod:`data_adapters.genotype_blocks`).

Dosage: the number of non-REF alleles, ``2 - `` the REF dosage pgenlib decodes: a stored dosage where the file has
one (plink2 imports BGEN/VCF dosages at 1/16384 resolution), else the hard call; plink2 stores a haploid call
(males on chrX) as a homozygous diploid one, so it is 0 or 2, as :func:`~data_adapters.bgen.bgen` gives. For a
biallelic variant that is the ALT dosage, the allele :func:`~data_adapters.gene.vcf` counts.
:func:`~data_adapters.gene.plink` counts the ``.bim``'s A1: ``plink2 --make-bed`` / ``--export bed`` write ALT as
A1, so the values agree; plink 1.9's ``--make-bed`` (without ``--keep-allele-order``) makes the minor allele A1,
and where that is REF, ``gene.plink`` gives ``2 - dosage`` (compare the ``.bim``'s A1 with the ``.pvar``'s ALT).
At a multi-allelic site the dosage counts every ALT allele, as :func:`~data_adapters.gene.vcf` does. A missing
call is NaN.

``min_maf``: the frequency is the dosage over twice the called samples, over every sample of the file (not only
the subjects a cohort keeps later); at a multi-allelic site that is all ALT alleles together, so the MAF is REF's
frequency against the rest.

``.pvar``: optional ``##`` lines, then the header ``#CHROM POS ID REF ALT`` (more columns are ignored); a ``.``
ID becomes ``chrom:pos:ref:alt``. ``.psam``: the header ``#IID ...`` or ``#FID IID ...``. Both are read
tab-separated when their header line holds a tab (as plink2 writes them: a value may hold a space), else split on
whitespace. Compressed ``.pvar.zst`` is not read: decompress it (``plink2 --zst-decompress``) first. A PLINK 1
``.bed`` renamed ``.pgen`` is refused (its header holds no sample count to check the ``.psam`` against): read it
with :func:`~data_adapters.gene.plink`, or convert it with ``plink2 --bfile <prefix> --make-pgen``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .core import AdapterError, TokenizedModality, check_choice, normalize_ids
from .genotype_blocks import genotype_tokens

__all__ = ["pgen"]

_PGEN_MAGIC = b"\x6c\x1b"
_STORED_COUNTS = (0x02, 0x03, 0x04, 0x10, 0x11)  # storage modes whose header holds the variant and sample counts
_MISSING = -9.0  # pgenlib's missing dosage


def pgen(
    path: str | os.PathLike,
    *,
    grouping: str = "chromosome",
    window_bp: int | None = None,
    regions: str | os.PathLike | pd.DataFrame | None = None,
    name: str = "gene",
    max_features_per_token: int | None = None,
    id_format: str = "iid",
    empty_groups: str = "drop",
    variants: str | os.PathLike | list[str] | None = None,
    min_maf: float | None = None,
    variant_id: str = "id",
) -> TokenizedModality:
    """Genotype tokens from PLINK 2 files (``path``: the prefix, or the .pgen, .pvar or .psam path).

    Values: non-REF dosages (see the module docstring for the allele and its ``gene.plink`` equivalent), missing
    NaN. Subject IDs: the ``.psam`` IID (``id_format="iid"``) or ``"{FID}_{IID}"`` (``"fid_iid"``, needs a FID
    column). ``grouping``, ``window_bp``, ``regions``, ``max_features_per_token`` and ``empty_groups``: as in
    :func:`data_adapters.gene.plink`. ``variant_id``: the ``.pvar`` ID (``"id"``; ``chrom:pos:ref:alt`` where it is
    ``.``) or always ``chrom:pos:ref:alt`` (``"position"``, unique where IDs repeat); a warning names IDs that occur
    more than once among the kept variants. ``variants``: keep only these variant IDs (one per line, PLINK's
    ``--extract`` format, or a list); every variant with a listed ID is kept. ``min_maf``: keep variants whose
    minor allele frequency (from the dosages, over all the file's samples) is at least this (one more pass).
    """
    check_choice(id_format, ("iid", "fid_iid"), "id_format")
    check_choice(variant_id, ("id", "position"), "variant_id")
    pgen_path, pvar_path, psam_path = _pgen_paths(path)
    samples = _read_psam(psam_path)
    if id_format == "iid":
        subject_ids = normalize_ids(samples["IID"], file=psam_path, column="IID")
    else:
        if "FID" not in samples:
            raise AdapterError("id_format='fid_iid' needs a FID column (the header starts '#IID')", file=psam_path)
        subject_ids = normalize_ids(samples["FID"] + "_" + samples["IID"], file=psam_path, column="FID_IID")
    pvar = _read_pvar(pvar_path)
    mode = _check_pgen_header(pgen_path, len(samples), len(pvar), psam_path, pvar_path)
    n_alleles = pvar["n_alleles"].to_numpy()
    reader = _open_reader(pgen_path, len(samples), n_alleles)
    try:
        blocks = _Blocks(reader, len(samples), pgen_path)
        source = {
            "adapter": "pgen",
            "files": [str(pgen_path), str(pvar_path), str(psam_path)],
            "dosage": "number of non-REF alleles (2 - REF dosage; biallelic: the ALT allele, gene.plink's A1 after"
            " plink2 --make-bed; where the .bim's A1 is REF, as plink 1.9 --make-bed may make it, gene.plink gives"
            " 2 - dosage); stored dosage where present, else the hard call (haploid calls 0/2); missing = NaN",
            "pgen_mode": f"{mode:#04x}",
            "id_format": id_format,
            "variant_id": variant_id,
            "n_multiallelic": int((n_alleles > 2).sum()),
        }
        return genotype_tokens(
            name=name,
            subject_ids=subject_ids,
            chrom=pvar["chrom"].to_numpy(dtype=object),
            pos=pvar["pos"].to_numpy(),
            variant_ids=pvar["id" if variant_id == "id" else "position"].to_numpy(dtype=object),
            read_dosages=blocks.dosages,
            read_sums=blocks.sums,
            grouping=grouping,
            window_bp=window_bp,
            regions=regions,
            max_features_per_token=max_features_per_token,
            empty_groups=empty_groups,
            variants=variants,
            min_maf=min_maf,
            min_info=None,
            file=pgen_path,
            source=source,
            duplicate_hint="pass variant_id='position' (chrom:pos:ref:alt IDs)"
            if variant_id == "id"
            else "the .pvar lists the same position and alleles more than once",
        )
    finally:
        reader.close()


def _pgen_paths(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    path = Path(path)
    prefix = path.with_suffix("") if path.suffix.lower() in (".pgen", ".pvar", ".psam") else path
    paths = tuple(prefix.with_name(prefix.name + ext) for ext in (".pgen", ".pvar", ".psam"))
    for file, role in zip(paths, ("genotypes", "variant list", "sample list"), strict=True):
        if file.is_file():
            continue
        if file.suffix == ".pvar" and file.with_name(file.name + ".zst").is_file():
            raise AdapterError(
                f"only {file.name}.zst is there: decompress it first (plink2 --zst-decompress {file.name}.zst"
                f" > {file.name})",
                file=file,
            )
        raise AdapterError(
            f"PLINK 2 {role} file not found: PLINK 2 data needs {prefix.name}.pgen, .pvar and .psam side by side"
            " with the same prefix",
            file=file,
        )
    return paths  # type: ignore[return-value]


def _header_line(path: Path, what: str) -> tuple[int, list[str], str]:
    """(number of ``##`` lines before it, fields of, separator of) the first line not starting with ``##``: a tab
    when it holds one (plink2 writes tab-separated files, and a value may hold a space), else any whitespace."""
    skipped = 0
    with open(path) as fh:
        for line in fh:
            if not line.startswith("##"):
                separator = "\t" if "\t" in line else r"\s+"
                fields = [f.strip() for f in line.rstrip("\r\n").split("\t")] if separator == "\t" else line.split()
                return skipped, fields, separator
            skipped += 1
    raise AdapterError(f"{what} file is empty", file=path)


def _read_pvar(path: Path) -> pd.DataFrame:
    skipped, header, separator = _header_line(path, ".pvar")
    needed = ["#CHROM", "POS", "ID", "REF", "ALT"]
    if not header or header[0] != "#CHROM" or not set(needed) <= set(header):
        raise AdapterError(
            f"line {skipped + 1}: a .pvar needs the header line '#CHROM POS ID REF ALT' (after any '##' lines),"
            f" found {' '.join(header[:6])!r} (a header-less .pvar has .bim columns: give its .bed/.bim/.fam to"
            " gene.plink, or add the header)",
            file=path,
        )
    try:
        table = pd.read_csv(
            path,
            sep=separator,
            skiprows=skipped,
            header=0,
            usecols=needed,
            dtype=str,
            keep_default_na=False,
            index_col=False,  # a row with more fields than the header must not turn its first ones into an index
        )
    except (ValueError, pd.errors.ParserError) as err:
        raise AdapterError(f"could not parse the .pvar: {err}", file=path) from err
    if len(table) == 0:
        raise AdapterError("the .pvar lists no variant", file=path)
    position = pd.to_numeric(table["POS"], errors="coerce")
    bad = np.flatnonzero((position.isna() | (position % 1 != 0) | (position < 0)).to_numpy())
    if len(bad):
        raise AdapterError(
            f"line {skipped + 2 + bad[0]}: POS {table['POS'].iloc[bad[0]]!r} is not a non-negative integer", file=path
        )
    empty = np.flatnonzero((table[needed] == "").any(axis=1).to_numpy())
    if len(empty):
        raise AdapterError(f"line {skipped + 2 + empty[0]}: too few fields (needs {' '.join(needed)})", file=path)
    ids = table["ID"].where(
        table["ID"] != ".", table["#CHROM"] + ":" + table["POS"] + ":" + table["REF"] + ":" + table["ALT"]
    )
    return pd.DataFrame(
        {
            "chrom": table["#CHROM"],
            "pos": position.to_numpy(dtype=np.int64),
            "id": ids,
            "position": table["#CHROM"] + ":" + table["POS"] + ":" + table["REF"] + ":" + table["ALT"],
            "n_alleles": table["ALT"].str.count(",").to_numpy(dtype=np.int64) + 2,
        }
    )


def _read_psam(path: Path) -> pd.DataFrame:
    skipped, header, separator = _header_line(path, ".psam")
    if header[:1] == ["#IID"]:
        columns = {"#IID": "IID"}
    elif header[:2] == ["#FID", "IID"]:
        columns = {"#FID": "FID", "IID": "IID"}
    else:
        raise AdapterError(
            f"line {skipped + 1}: a .psam needs a header line starting '#IID' or '#FID IID', found"
            f" {' '.join(header[:4])!r} (a header-less .psam is a .fam: add the header '#FID IID PAT MAT SEX PHENO1')",
            file=path,
        )
    try:
        table = pd.read_csv(
            path,
            sep=separator,
            skiprows=skipped,
            header=0,
            usecols=list(columns),
            dtype=str,
            keep_default_na=False,
            index_col=False,
        )
    except (ValueError, pd.errors.ParserError) as err:
        raise AdapterError(f"could not parse the .psam: {err}", file=path) from err
    if len(table) == 0:
        raise AdapterError("the .psam lists no sample", file=path)
    return table.rename(columns=columns)


def _check_pgen_header(path: Path, n_samples: int, n_variants: int, psam: Path, pvar: Path) -> int:
    """The storage mode byte; the counts a .pgen header stores must match the .psam and .pvar."""
    with open(path, "rb") as fh:
        head = fh.read(11)
    if len(head) < 3 or head[:2] != _PGEN_MAGIC:
        raise AdapterError(
            f"not a .pgen file: it must start with bytes 6c 1b, found {head[:2].hex(' ') or 'nothing'}", file=path
        )
    mode = head[2]
    if mode == 0x01:  # a PLINK 1 .bed (variant-major): no counts to check the .psam against
        raise AdapterError(
            "a PLINK 1 .bed under the .pgen name (storage mode 0x01): its header holds no sample count, so a .psam"
            " with a sample too few or too many would shift or drop genotypes unnoticed; read the .bed/.bim/.fam"
            f" with gene.plink, or convert it: plink2 --bfile {path.with_suffix('')} --make-pgen --out <new prefix>",
            file=path,
        )
    if mode not in _STORED_COUNTS or len(head) < 11:
        raise AdapterError(f"unsupported .pgen storage mode {mode:#04x} (or a truncated header)", file=path)
    file_variants, file_samples = np.frombuffer(head[3:11], dtype="<u4")
    if file_samples != n_samples:
        raise AdapterError(
            f"{n_samples} samples in {psam.name}, but the .pgen header declares {file_samples}: the .psam belongs to"
            " other genotypes",
            file=path,
        )
    if file_variants != n_variants:
        raise AdapterError(
            f"{n_variants} variants in {pvar.name}, but the .pgen header declares {file_variants}: the .pvar belongs"
            " to other genotypes",
            file=path,
        )
    return mode


def _open_reader(path: Path, n_samples: int, n_alleles: np.ndarray):
    import pgenlib

    offsets = None
    if (n_alleles > 2).any():  # pgenlib needs every variant's allele count to decode multi-allelic hard calls
        offsets = np.concatenate([[0], np.cumsum(n_alleles)]).astype(np.uintp)
    try:
        return pgenlib.PgenReader(
            bytes(path), raw_sample_ct=n_samples, variant_ct=len(n_alleles), allele_idx_offsets=offsets
        )
    except RuntimeError as err:
        message = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        raise AdapterError(f"pgenlib could not open it: {message.strip()}", file=path) from err


class _Blocks:
    """Block readers over the variants of one open .pgen (see :mod:`data_adapters.genotype_blocks`)."""

    def __init__(self, reader, n_samples: int, path: Path):
        self.reader, self.n, self.path = reader, n_samples, path

    def dosages(self, indices: np.ndarray) -> np.ndarray:
        """Non-REF dosages [N, k] (a transposed view of pgenlib's variant-major buffer), NaN where missing."""
        reference = np.empty((len(indices), self.n), dtype=np.float32)
        try:
            if indices[-1] - indices[0] + 1 == len(indices):
                self.reader.read_dosages_range(int(indices[0]), int(indices[-1]) + 1, reference, allele_idx=0)
            else:
                self.reader.read_dosages_list(np.asarray(indices, dtype=np.uint32), reference, allele_idx=0)
        except RuntimeError as err:
            raise AdapterError(f"pgenlib could not read the genotypes: {err}", file=self.path) from err
        missing = reference == _MISSING
        np.subtract(2.0, reference, out=reference)
        reference[missing] = np.nan
        return reference.T

    def sums(self, indices: np.ndarray) -> dict:
        dosages = self.dosages(indices)
        called = (~np.isnan(dosages)).sum(axis=0)
        return {"dosage": np.nansum(dosages, axis=0, dtype=np.float64), "ploidy": 2.0 * called}
