"""Gene adapters: subject x feature tables, PLINK 1 binary genotypes and VCF genotypes as tokens.

Three readers, one output (:class:`~data_adapters.core.TokenizedModality`):

* :func:`feature_table` -- a subjects x features table (polygenic scores, gene burden, expression) from
  CSV/TSV/parquet or a DataFrame. A token is one column, a fixed-size chunk of columns, or a gene set
  (GMT file or a ``{set: [members]}`` dict). Defined in :mod:`data_adapters.gene_tables`, named here.
* :func:`plink` -- PLINK 1 ``.bed/.bim/.fam`` read with bed-reader: dosage = count of the A1 allele (5th
  ``.bim`` column), as PLINK and bed-reader count it.
* :func:`vcf` -- VCF/BCF through cyvcf2 (optional extra): dosage = number of non-reference alleles in GT.

Genotypes are grouped into tokens by chromosome, by fixed base-pair windows, by named regions (genes), or
one token per variant; :func:`plink` and :func:`vcf` share that code (:mod:`data_adapters.variant_groups`) and
the filling of the token arrays (:mod:`data_adapters.token_fill`). Tokens with different numbers of
variants are padded with 0 and marked False in ``feature_mask``. A missing call stays NaN; ``present`` is
False where every call of the token is missing. Which variant sits in which slot is recorded in
``source["token_features"]`` (token name -> variant IDs, in slot order).

Region tables (``regions=``) have one row per region with columns ``name``, ``chrom``, ``start``, ``end``
(aliases ``gene``/``region``, ``chr``/``chromosome``; case-insensitive). Coordinates are 1-based and
inclusive, the convention of ``.bim``/VCF positions and of GTF/Ensembl gene annotations: a variant at ``pos``
belongs to a region when ``start <= pos <= end``. Regions may overlap; a variant then feeds each of them.
Convert a 0-based BED file by adding 1 to its start. Chromosome names are compared after dropping a ``chr``
prefix and mapping PLINK's numeric codes 23/24/25/26 to X/Y/XY/MT.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import gene_tables, token_fill, variant_groups
from .core import AdapterError, TokenizedModality, check_choice, normalize_ids
from .facade import forward_sets
from .gene_tables import feature_table, read_gmt
from .token_fill import _BLOCK_VALUES, column_index, fill_tokens  # noqa: F401  (_BLOCK_VALUES: set through here)
from .variant_groups import EMPTY_GROUP_POLICIES, VARIANT_GROUPINGS, group_variants

__all__ = ["EMPTY_GROUP_POLICIES", "VARIANT_GROUPINGS", "feature_table", "plink", "read_gmt", "vcf"]

_BED_MAGIC = b"\x6c\x1b"


# ====================================================================== PLINK 1 binary
def plink(
    path: str | os.PathLike,
    *,
    grouping: str = "chromosome",
    window_bp: int | None = None,
    regions: str | os.PathLike | pd.DataFrame | None = None,
    name: str = "gene",
    max_features_per_token: int | None = None,
    id_format: str = "iid",
    empty_groups: str = "drop",
) -> TokenizedModality:
    """Genotype tokens from PLINK 1 binary files (``path``: the prefix, or the .bed, .bim or .fam path).

    Values are A1-allele dosages (0, 1, 2; float32), missing calls NaN. Subject IDs are the ``.fam`` IID
    (``id_format="iid"``) or ``"{FID}_{IID}"`` (``id_format="fid_iid"``). ``grouping``: ``"chromosome"``,
    ``"window"`` (``window_bp`` base pairs per token: ``chr1:0-1000000`` holds positions 0 <= pos < 1000000;
    windows without a variant make no token), ``"region"`` (a ``regions``
    table, see the module docstring; regions without a variant follow ``empty_groups``) or ``"snp"`` (one
    token per variant). ``max_features_per_token`` splits longer tokens into consecutive parts
    (``chr1/part0``, ``chr1/part1``, ...) so that F stays bounded. The genotypes are read once, in blocks
    of variants.
    """
    check_choice(id_format, ("iid", "fid_iid"), "id_format")
    bed_path, bim_path, fam_path = _plink_paths(path)
    fam = _read_fam(fam_path)
    bim = _read_bim(bim_path)
    raw_ids = fam["iid"] if id_format == "iid" else fam["fid"] + "_" + fam["iid"]
    subject_ids = normalize_ids(raw_ids, file=fam_path, column="IID" if id_format == "iid" else "FID_IID")
    mode = _check_bed_header_and_size(bed_path, n_samples=len(fam), n_variants=len(bim), fam=fam_path, bim=bim_path)

    token_names, groups, notes = group_variants(
        bim["chrom"].to_numpy(),
        bim["pos"].to_numpy(),
        bim["id"].to_numpy(),
        grouping=grouping,
        window_bp=window_bp,
        regions=regions,
        max_features_per_token=max_features_per_token,
        empty_groups=empty_groups,
        file=bim_path,
    )

    values, feature_mask, present = _read_bed(bed_path, len(fam), len(bim), groups)
    source = {
        "adapter": "gene.plink",
        "files": [str(bed_path), str(bim_path), str(fam_path)],
        "dosage": "count of the A1 allele (5th .bim column); missing call = NaN",
        "bed_mode": "variant-major" if mode == 1 else "sample-major",
        "id_format": id_format,
        "n_variants_in_file": len(bim),
        **notes,
    }
    variant_ids = bim["id"].to_numpy(dtype=object)
    source["token_features"] = {t: variant_ids[g].tolist() for t, g in zip(token_names, groups, strict=True)}
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=token_names,
        subject_ids=subject_ids,
        feature_mask=feature_mask,
        source=source,
    )


def _read_bed(bed_path: Path, n_samples: int, n_variants: int, groups: list[np.ndarray]):
    """The token arrays (values, feature_mask, present) of the genotypes, read with bed-reader in blocks."""
    from bed_reader import open_bed

    try:
        # Counts given: bed-reader does not parse .fam/.bim again (we did, with clearer errors).
        with open_bed(bed_path, iid_count=n_samples, sid_count=n_variants, count_A1=True) as reader:

            def read_columns(cols: np.ndarray) -> np.ndarray:
                # Column-major: bed-reader decodes it faster, and token slices copy from it faster.
                return reader.read(index=np.s_[:, column_index(cols)], dtype=np.float32, order="F")

            return fill_tokens(n_samples, groups, read_columns)
    except (ValueError, OSError, RuntimeError) as err:
        raise AdapterError(f"bed-reader could not read the genotypes: {err}", file=bed_path) from err


def _plink_paths(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    path = Path(path)
    prefix = path.with_suffix("") if path.suffix.lower() in (".bed", ".bim", ".fam") else path
    paths = tuple(prefix.with_name(prefix.name + ext) for ext in (".bed", ".bim", ".fam"))
    for file, role in zip(paths, ("genotypes", "variant list", "sample list"), strict=True):
        if not file.is_file():
            raise AdapterError(
                f"PLINK {role} file not found: PLINK 1 binary data needs {prefix.name}.bed, .bim and .fam "
                "side by side with the same prefix",
                file=file,
            )
    return paths  # type: ignore[return-value]


def _read_whitespace_table(path: Path, usecols: list[int], names: list[str], what: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, usecols=usecols, dtype=str, comment=None)
    except pd.errors.EmptyDataError:
        raise AdapterError(f"{what} file is empty", file=path) from None
    except (ValueError, pd.errors.ParserError) as err:
        raise AdapterError(f"could not parse {what} file: {err}", file=path) from err
    table.columns = names
    short = np.flatnonzero(table.isna().any(axis=1).to_numpy())
    if len(short):
        raise AdapterError(f"line {short[0] + 1}: too few fields ({what} lines need {max(usecols) + 1})", file=path)
    return table


def _read_fam(path: Path) -> pd.DataFrame:
    return _read_whitespace_table(path, [0, 1], ["fid", "iid"], "PLINK .fam")


def _read_bim(path: Path) -> pd.DataFrame:
    bim = _read_whitespace_table(path, [0, 1, 3, 4, 5], ["chrom", "id", "pos", "a1", "a2"], "PLINK .bim")
    position = pd.to_numeric(bim["pos"], errors="coerce")
    bad = np.flatnonzero((position.isna() | (position % 1 != 0) | (position < 0)).to_numpy())
    if len(bad):
        raise AdapterError(
            f"line {bad[0] + 1}: base-pair position {bim['pos'].iloc[bad[0]]!r} is not a non-negative integer "
            "(4th column; lines need chrom, ID, cM, bp, A1, A2)",
            file=path,
        )
    bim["pos"] = position.to_numpy(dtype=np.int64)
    return bim


def _check_bed_header_and_size(bed: Path, *, n_samples: int, n_variants: int, fam: Path, bim: Path) -> int:
    """Checks bed-reader reports cryptically; returns the mode byte (1 variant-major, 0 sample-major)."""
    size = bed.stat().st_size
    with open(bed, "rb") as fh:
        header = fh.read(3)
    if len(header) < 3 or header[:2] != _BED_MAGIC:
        raise AdapterError(
            f"not a PLINK 1 binary .bed: it must start with bytes 6c 1b, found {header[:2].hex(' ') or 'nothing'} "
            "(a UCSC BED text file, or a PLINK 2 .pgen, has the same extension: convert with plink --make-bed)",
            file=bed,
        )
    mode = header[2]
    if mode not in (0, 1):
        raise AdapterError(f"unknown .bed mode byte {mode:#04x} (expected 01, variant-major, or 00)", file=bed)
    per_line, lines = (n_samples, n_variants) if mode == 1 else (n_variants, n_samples)
    expected = 3 + lines * ((per_line + 3) // 4)
    if size != expected:
        raise AdapterError(
            f"size {size} bytes does not match {n_samples} samples in {fam.name} and {n_variants} variants in "
            f"{bim.name}: expected {expected} bytes (3 + {lines} x ceil({per_line}/4)). The .bed is truncated "
            "or belongs to other .bim/.fam files",
            file=bed,
        )
    return mode


# ====================================================================== VCF
def vcf(
    path: str | os.PathLike,
    *,
    grouping: str = "chromosome",
    window_bp: int | None = None,
    regions: str | os.PathLike | pd.DataFrame | None = None,
    name: str = "gene",
    samples: Sequence[str] | None = None,
    max_features_per_token: int | None = None,
    empty_groups: str = "drop",
) -> TokenizedModality:
    """Genotype tokens from a VCF/BCF (plain or bgzipped) through cyvcf2 (``pip install mot-neuro[vcf]``).

    Dosage = number of non-reference alleles in GT (any ALT at multi-allelic sites; a haploid call counts
    0 or 1); a call with any missing allele (``./.``, ``./1``) is NaN. ``samples`` keeps those samples (in
    the file's order); subject IDs are the sample names. Grouping options as in :func:`plink`.
    """
    path, subject_ids, samples, records = _read_vcf(path, samples)
    chroms, positions, variant_ids, dosages, n_multiallelic = records

    token_names, groups, notes = group_variants(
        chroms,
        positions,
        variant_ids,
        grouping=grouping,
        window_bp=window_bp,
        regions=regions,
        max_features_per_token=max_features_per_token,
        empty_groups=empty_groups,
        file=path,
    )

    def read_columns(cols: np.ndarray) -> np.ndarray:
        block = dosages[cols].T.astype(np.float32)
        block[block < 0] = np.nan
        return block

    values, feature_mask, present = fill_tokens(len(subject_ids), groups, read_columns)
    source = {
        "adapter": "gene.vcf",
        "files": [str(path)],
        "dosage": "number of non-reference alleles in GT; any missing allele = NaN",
        "samples": None if samples is None else list(samples),
        "n_variants_in_file": len(positions),
        "n_multiallelic": n_multiallelic,
        **notes,
    }
    source["token_features"] = {t: variant_ids[g].tolist() for t, g in zip(token_names, groups, strict=True)}
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=token_names,
        subject_ids=subject_ids,
        feature_mask=feature_mask,
        source=source,
    )


def _read_vcf(path: str | os.PathLike, samples: Sequence[str] | None) -> tuple[Path, np.ndarray, list | None, tuple]:
    """Open the VCF with cyvcf2, keep ``samples``, and read every record: the path, the subject IDs, the samples
    asked for (as strings) and what :func:`_read_vcf_dosages` returns."""
    try:
        import cyvcf2
    except ImportError as err:
        raise ImportError(
            "reading VCF needs cyvcf2, an optional dependency: pip install 'mot-neuro[vcf]' (or pip install cyvcf2)"
        ) from err

    path = Path(path)
    if not path.is_file():
        raise AdapterError("VCF file not found", file=path)
    try:
        reader = cyvcf2.VCF(str(path))
    except OSError as err:
        raise AdapterError(f"cyvcf2 could not open it as VCF/BCF: {err}", file=path) from err
    try:
        if samples is not None:
            samples = [str(s) for s in samples]
            known = set(reader.samples)
            unknown = [s for s in samples if s not in known]
            if unknown:
                raise AdapterError(
                    f"{len(unknown)} requested sample(s) not in the VCF header: {unknown[:5]}", file=path
                )
            reader.set_samples(samples)
        subject_ids = normalize_ids(reader.samples, file=path, column="sample")
        if len(subject_ids) == 0:
            raise AdapterError("no sample columns (a sites-only VCF has no genotypes)", file=path)
        records = _read_vcf_dosages(reader, path)
    finally:
        reader.close()
    return path, subject_ids, samples, records


def _read_vcf_dosages(reader, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One pass over the records: dosages as int8 [variants, samples] (-1 = missing), 4x smaller than float32."""
    chroms, positions, variant_ids, rows = [], [], [], []
    n_multiallelic = 0
    record = None
    try:
        for record in reader:
            genotype = record.genotype
            if genotype is None:
                raise AdapterError(f"variant {record.CHROM}:{record.POS} has no GT field", file=path)
            # Columns: one per allele of the largest ploidy (-1 missing, -2 past a smaller ploidy), then phasing.
            alleles = genotype.array()[:, :-1]
            dosage = (alleles > 0).sum(axis=1).astype(np.int8)
            dosage[(alleles == -1).any(axis=1)] = -1
            rows.append(dosage)
            chroms.append(record.CHROM)
            positions.append(record.POS)
            alts = record.ALT
            n_multiallelic += len(alts) > 1
            variant_ids.append(record.ID or f"{record.CHROM}:{record.POS}:{record.REF}:{','.join(alts)}")
    except AdapterError:
        raise
    except Exception as err:  # cyvcf2 raises plain Exception on malformed records
        where = "the first record" if record is None else f"variant {record.CHROM}:{record.POS}"
        raise AdapterError(f"cyvcf2 could not read {where}: {err}", file=path) from err
    if not rows:
        raise AdapterError("no variant records", file=path)
    return (
        np.asarray(chroms, dtype=object),
        np.asarray(positions, dtype=np.int64),
        np.asarray(variant_ids, dtype=object),
        np.stack(rows),
        int(n_multiallelic),
    )


# a name set here (a test's monkeypatch.setattr(gene, "_BLOCK_VALUES", ...)) reaches the part that reads it
forward_sets(__name__, (gene_tables, token_fill, variant_groups))
