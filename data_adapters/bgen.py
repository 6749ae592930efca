"""BGEN v1.2/v1.3 genotype probabilities (UK Biobank's imputed data) as gene tokens, read through cbgen.

:func:`bgen` turns a ``.bgen`` file (layout 2, zlib- or zstd-compressed blocks, any bit depth 1-32) and its Oxford
``.sample`` file into a :class:`~data_adapters.core.TokenizedModality` shaped exactly like
:func:`data_adapters.gene.plink`'s: one feature per variant, variants grouped into tokens by chromosome, base-pair
window, region table or one per variant (:mod:`data_adapters.variant_groups`), ``source["token_features"]`` naming
the variant in each slot.

Dosage: the expected number of copies of the alleles other than the first one listed in the BGEN, from the
genotype probabilities. For a biallelic variant that is the expected count of the second allele,
``P(AB) + 2 P(BB)`` for a diploid sample and ``P(B)`` for a haploid one (phased data: the sum over haplotypes of
``P(B)``). UK Biobank's imputed BGENs list the reference allele first, so the dosage counts the ALT allele: the
allele ``plink2 --export bed`` writes as A1 and :func:`~data_adapters.gene.plink` counts, and the one
:func:`~data_adapters.pgen.pgen` and :func:`~data_adapters.gene.vcf` count. A missing sample is NaN.

Filters: ``min_maf`` (minor allele frequency of the dosages) and ``min_info`` (the IMPUTE2 INFO measure, which
QCTOOL writes into UK Biobank's ``ukb_imp_mfi`` files; formula in
:func:`~data_adapters.genotype_blocks.variant_statistics`). :func:`variant_stats` gives both per variant.

cbgen finds variants through a "metafile" index. One beside the data (``<file>.bgen.metafile``) is used when it is
newer than the ``.bgen`` and matches it; otherwise one is built in a temporary folder and removed afterwards
(``metafile=`` keeps it at a path of your choice, written to a temporary name and renamed when complete). Nothing
is written beside the data unless asked. The ``.bgi`` SQLite index of bgenix is not used.

Not supported (refused with the reason): layout 1 (BGEN v1.1: convert with ``qctool -ofiletype bgen_v1.2``) and
uncompressed layout-2 files (cbgen misreads their blocks: recompress with ``qctool`` or ``plink2 --export
bgen-1.2``).
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations_with_replacement
from pathlib import Path

import numpy as np
import pandas as pd

from .core import AdapterError, TokenizedModality, check_choice, normalize_ids
from .genotype_blocks import block_statistics, genotype_tokens

__all__ = ["bgen", "variant_stats"]

VARIANT_IDS = ("rsid", "varid", "position")
_COMPRESSION = {1: "zlib", 2: "zstd"}
_PROBABILITY_SLACK = 1e-6  # decoded probabilities this far outside [0, 1] are rounding, further is a bad block


def bgen(
    path: str | os.PathLike,
    *,
    sample: str | os.PathLike | None = None,
    grouping: str = "chromosome",
    window_bp: int | None = None,
    regions: str | os.PathLike | pd.DataFrame | None = None,
    name: str = "gene",
    max_features_per_token: int | None = None,
    id_format: str = "iid",
    empty_groups: str = "drop",
    variants: str | os.PathLike | list[str] | None = None,
    min_maf: float | None = None,
    min_info: float | None = None,
    variant_id: str = "rsid",
    metafile: str | os.PathLike | None = None,
) -> TokenizedModality:
    """Genotype tokens from a BGEN v1.2/v1.3 file: dosages of the non-first allele(s) (see the module docstring).

    ``sample``: the Oxford ``.sample`` file (header ``ID_1 ID_2 ...``, then the column-type row ``0 0 ...``, as UK
    Biobank ships it); by default ``<name>.sample`` beside the ``.bgen``, else the sample IDs stored in the BGEN.
    Subject IDs: ``ID_2`` (``id_format="iid"``; a stored sample ID when there is no ``.sample``) or
    ``"{ID_1}_{ID_2}"`` (``"fid_iid"``), the columns plink2 reads as IID and FID. ``variant_id``: the ID a
    variant goes by in token names, ``token_features`` and ``variants=``: the ``"rsid"`` field (UK Biobank's
    rs numbers), the ``"varid"`` field, or ``"position"`` (``chrom:pos:allele1:allele2``, unique where rsIDs
    repeat); an empty or ``.`` ID falls back to the next of these.

    ``grouping``, ``window_bp``, ``regions``, ``max_features_per_token`` and ``empty_groups``: as in
    :func:`data_adapters.gene.plink`. ``variants``: keep only these variant IDs (a file with one ID per line,
    PLINK's ``--extract`` format, or a list). ``min_maf`` / ``min_info``: keep variants with minor allele
    frequency / IMPUTE2 INFO at least this (a variant without any call fails both); they cost one more pass over
    the candidate variants. Reading goes block by block (see :mod:`data_adapters.genotype_blocks` for memory).
    """
    check_choice(id_format, ("iid", "fid_iid"), "id_format")
    check_choice(variant_id, VARIANT_IDS, "variant_id")
    path = _bgen_path(path)
    header = _read_header(path)
    cbgen = _import_cbgen()
    with cbgen.bgen_file(path) as reader:
        subject_ids, sample_source = _subject_ids(path, sample, header, reader, id_format)
        with _variant_index(cbgen, reader, path, header, metafile) as table:
            blocks = _Blocks(reader, table, path, header)
            variant_ids = _variant_ids(table, variant_id)
            source = {
                "adapter": "bgen",
                "files": [str(path)] + ([sample_source] if sample_source != "bgen" else []),
                "dosage": "expected count of the alleles after the first (biallelic: the second allele, ALT in UK"
                " Biobank's files; = PLINK A1 after plink2 --export bed); missing sample = NaN",
                "samples_from": "the BGEN's sample identifiers" if sample_source == "bgen" else sample_source,
                "id_format": id_format,
                "variant_id": variant_id,
                "layout": header.layout,
                "compression": _COMPRESSION[header.compression],
                "n_multiallelic": int((table.n_alleles > 2).sum()),
            }
            return genotype_tokens(
                name=name,
                subject_ids=subject_ids,
                chrom=table.chrom,
                pos=table.pos,
                variant_ids=variant_ids,
                read_dosages=blocks.dosages,
                read_sums=blocks.sums,
                grouping=grouping,
                window_bp=window_bp,
                regions=regions,
                max_features_per_token=max_features_per_token,
                empty_groups=empty_groups,
                variants=variants,
                min_maf=min_maf,
                min_info=min_info,
                file=path,
                source=source,
            )


def variant_stats(
    path: str | os.PathLike, *, variant_id: str = "rsid", metafile: str | os.PathLike | None = None
) -> pd.DataFrame:
    """One row per variant of a BGEN file, in file order: ``id``, ``chrom``, ``pos``, ``alleles``, ``alt_freq``
    (mean dosage / ploidy over the samples with a call), ``maf`` and ``info`` (IMPUTE2 INFO), what
    :func:`bgen`'s ``min_maf`` and ``min_info`` compare against. Read block by block."""
    check_choice(variant_id, VARIANT_IDS, "variant_id")
    path = _bgen_path(path)
    header = _read_header(path)
    cbgen = _import_cbgen()
    with cbgen.bgen_file(path) as reader, _variant_index(cbgen, reader, path, header, metafile) as table:
        blocks = _Blocks(reader, table, path, header)
        stats = block_statistics(np.arange(len(table.pos)), header.n_samples, blocks.sums)
        return pd.DataFrame(
            {
                "id": _variant_ids(table, variant_id),
                "chrom": table.chrom,
                "pos": table.pos,
                "alleles": table.alleles,
                **{key: stats[key] for key in ("alt_freq", "maf", "info")},
            }
        )


# ---------------------------------------------------------------------------------------------- the file
@dataclass(frozen=True)
class _Header:
    n_variants: int
    n_samples: int
    layout: int
    compression: int
    has_sample_ids: bool
    first_variant: int  # file position of the first variant block


def _bgen_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AdapterError("BGEN file not found", file=path)
    return path


def _import_cbgen():
    try:
        import cbgen
    except ImportError as err:  # a dependency of mot-neuro; missing only in a hand-made environment
        raise ImportError("reading BGEN needs cbgen: pip install cbgen") from err
    except OSError as err:  # cbgen creates a download cache folder when imported
        raise AdapterError(
            f"cbgen could not create its cache folder on import ({err}): set BGEN_CACHE_HOME to a writable folder"
        ) from err
    return cbgen


def _read_header(path: Path) -> _Header:
    """The header block, checked for what cbgen would misread or reject with a bare RuntimeError."""
    with open(path, "rb") as fh:
        head = fh.read(24)
        if len(head) < 24:
            raise AdapterError(f"{len(head)} bytes: too short to be a BGEN file", file=path)
        offset, header_length, n_variants, n_samples = struct.unpack("<4I", head[:16])
        magic = head[16:20]
        if magic not in (b"bgen", b"\0\0\0\0"):
            raise AdapterError(
                f"not a BGEN file: bytes 17-20 must read 'bgen', found {magic!r} (a .bgen from another tool, or"
                " another format renamed)",
                file=path,
            )
        if header_length < 20 or header_length > offset:
            raise AdapterError(
                f"corrupt BGEN header: header length {header_length} with the first variant at offset {offset}",
                file=path,
            )
        fh.seek(header_length)  # the flags are the header block's last 4 bytes (it starts at byte 4)
        flags_bytes = fh.read(4)
    if len(flags_bytes) < 4:
        raise AdapterError("truncated BGEN header", file=path)
    (flags,) = struct.unpack("<I", flags_bytes)
    compression, layout, has_ids = flags & 3, (flags >> 2) & 0xF, bool(flags >> 31)
    if layout == 1:
        raise AdapterError(
            "BGEN layout 1 (v1.1) is not supported (cbgen reads layout 2, BGEN v1.2/v1.3): convert it with"
            " qctool -g in.bgen -og out.bgen -ofiletype bgen_v1.2",
            file=path,
        )
    if layout != 2:
        raise AdapterError(f"unknown BGEN layout {layout} in the header flags (expected 2, BGEN v1.2/v1.3)", file=path)
    if compression == 0:
        raise AdapterError(
            "uncompressed layout-2 BGEN is not supported (cbgen misreads its genotype blocks): recompress it, e.g."
            " qctool -g in.bgen -og out.bgen -ofiletype bgen_v1.2 (zlib) or plink2 --export bgen-1.2",
            file=path,
        )
    if compression not in _COMPRESSION:
        raise AdapterError(f"unknown BGEN compression code {compression} (expected 1 zlib or 2 zstd)", file=path)
    if n_variants == 0 or n_samples == 0:
        raise AdapterError(
            f"BGEN header declares {n_variants} variants and {n_samples} samples: no genotypes", file=path
        )
    return _Header(n_variants, n_samples, layout, compression, has_ids, offset + 4)


def _read_probability_header(fh, block: int, n_samples: int, path: Path) -> tuple[int, int, int, int]:
    """(samples, alleles, phased, bits) at the start of the genotype block at file position ``block``, zlib only:
    cbgen decodes a bit depth outside 1-32 or a wrong sample count into plausible numbers without an error."""
    fh.seek(block)
    sizes = fh.read(8)
    if len(sizes) < 8:
        raise AdapterError(f"truncated genotype block at byte {block}", file=path)
    total, _ = struct.unpack("<II", sizes)
    wanted = n_samples + 10  # N (4), K (2), ploidy bounds (2), ploidy per sample (N), phased (1), bits (1)
    inflate, data, left = zlib.decompressobj(), b"", total - 4
    try:
        while len(data) < wanted and left > 0:
            chunk = fh.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
            data += inflate.decompress(chunk, wanted - len(data))
    except zlib.error as err:
        raise AdapterError(f"genotype block at byte {block} is not valid zlib data: {err}", file=path) from err
    if len(data) < wanted:
        raise AdapterError(f"genotype block at byte {block} is truncated", file=path)
    samples, alleles = struct.unpack("<IH", data[:6])
    return samples, alleles, data[wanted - 2], data[wanted - 1]


def _check_first_block(fh, block: int, header: _Header, n_alleles: int, path: Path) -> None:
    if header.compression != 1:  # zstd: no decoder in the standard library; cbgen's own checks only
        return
    samples, alleles, phased, bits = _read_probability_header(fh, block, header.n_samples, path)
    if samples != header.n_samples:
        raise AdapterError(
            f"the first variant's genotype block holds {samples} samples, the header {header.n_samples}", file=path
        )
    if alleles != n_alleles:
        raise AdapterError(
            f"the first variant's genotype block has {alleles} alleles, its record {n_alleles}", file=path
        )
    if phased not in (0, 1) or not 1 <= bits <= 32:
        raise AdapterError(
            f"unsupported genotype block: {bits} bits per probability (BGEN allows 1-32), phased flag {phased}",
            file=path,
        )


# ---------------------------------------------------------------------------------------------- samples
def _subject_ids(path: Path, sample, header: _Header, reader, id_format: str) -> tuple[np.ndarray, str]:
    """Subject IDs and where they came from (the .sample path, or "bgen")."""
    if sample is None:
        beside = path.with_suffix(".sample")
        if beside.is_file():
            sample = beside
        elif header.has_sample_ids and id_format == "iid":
            try:
                stored = [s.decode() for s in reader.read_samples()]
            except (RuntimeError, UnicodeDecodeError) as err:
                raise AdapterError(f"cbgen could not read the stored sample identifiers: {err}", file=path) from err
            return normalize_ids(stored, file=path, column="sample identifiers"), "bgen"
        else:
            stored = "stores no sample IDs" if not header.has_sample_ids else "stores only one ID per sample"
            raise AdapterError(
                f"no .sample file: this BGEN {stored}; put its Oxford .sample file beside it as {beside.name} or"
                " pass sample=",
                file=beside,
            )
    sample = Path(sample)
    table = _read_sample_file(sample)
    if len(table) != header.n_samples:
        raise AdapterError(
            f"{len(table)} samples, but the header of {path.name} declares {header.n_samples}: the .sample belongs"
            " to another BGEN (UK Biobank ships one .sample per application; check the file name)",
            file=sample,
        )
    if id_format == "iid":
        return normalize_ids(table["id_2"], file=sample, column="ID_2"), str(sample)
    return normalize_ids(table["id_1"] + "_" + table["id_2"], file=sample, column="ID_1_ID_2"), str(sample)


def _read_sample_file(path: Path) -> pd.DataFrame:
    """ID_1 and ID_2 of an Oxford .sample file (v2: a header line, a column-type line, one line per sample)."""
    if not path.is_file():
        raise AdapterError("sample file not found", file=path)
    with open(path) as fh:
        first, second = fh.readline().split(), fh.readline().split()
    if [f.upper() for f in first[:2]] != ["ID_1", "ID_2"]:
        raise AdapterError(
            f"not an Oxford .sample file: the first line must start 'ID_1 ID_2', found {' '.join(first[:4])!r}",
            file=path,
        )
    if second[:2] != ["0", "0"]:
        raise AdapterError(
            f"line 2 must be the column-type row starting '0 0' (e.g. '0 0 0 D'), found {' '.join(second[:4])!r}",
            file=path,
        )
    try:
        table = pd.read_csv(
            path, sep=r"\s+", header=None, skiprows=2, usecols=[0, 1], names=["id_1", "id_2"], dtype=str
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame({"id_1": [], "id_2": []}, dtype=str)
    except (ValueError, pd.errors.ParserError) as err:
        raise AdapterError(f"could not parse the sample lines: {err}", file=path) from err
    short = np.flatnonzero(table["id_2"].isna().to_numpy())
    if len(short):
        raise AdapterError(f"line {short[0] + 3}: a sample line needs ID_1 and ID_2", file=path)
    return table


# ---------------------------------------------------------------------------------------------- variants
@dataclass
class _VariantTable:
    chrom: np.ndarray
    pos: np.ndarray
    rsid: np.ndarray
    varid: np.ndarray
    alleles: np.ndarray  # "A,G"
    n_alleles: np.ndarray
    offset: np.ndarray  # file position of each genotype block


def _text(values: np.ndarray) -> np.ndarray:
    try:
        return values.astype(str).astype(object)
    except UnicodeDecodeError:
        return np.array([v.decode("utf-8", "replace") for v in values], dtype=object)


def _variant_ids(table: _VariantTable, variant_id: str) -> np.ndarray:
    position = (
        table.chrom
        + ":"
        + table.pos.astype(str).astype(object)
        + ":"
        + np.char.replace(table.alleles.astype(str), ",", ":").astype(object)
    )
    order = {"rsid": [table.rsid, table.varid], "varid": [table.varid, table.rsid], "position": []}[variant_id]
    ids = position
    for field in reversed(order):
        usable = (field != "") & (field != ".")
        ids = np.where(usable, field, ids)
    return ids.astype(object)


@contextlib.contextmanager
def _variant_index(cbgen, reader, path: Path, header: _Header, metafile) -> Iterator[_VariantTable]:
    """The variants of the file from a cbgen metafile: one beside the file or at ``metafile`` when it matches,
    else a new one (at ``metafile``, or in a temporary folder removed afterwards)."""
    first_block = _first_genotype_block(path, header)
    if reader.nvariants != header.n_variants or reader.nsamples != header.n_samples:
        raise AdapterError("cbgen reads other counts than the header declares", file=path)
    candidates = [Path(metafile)] if metafile is not None else [path.with_name(path.name + ".metafile")]
    for candidate in candidates:
        table = _read_metafile(cbgen, candidate, path, header, first_block)
        if table is not None:
            yield table
            return
    if metafile is not None:
        target = Path(metafile)
        _create_metafile(reader, target, path)
        table = _read_metafile(cbgen, target, path, header, first_block)
        if table is None:
            raise AdapterError("cbgen wrote a metafile that does not match the BGEN", file=target)
        yield table
        return
    with tempfile.TemporaryDirectory(prefix="bgen-metafile-") as folder:
        target = Path(folder) / (path.name + ".metafile")
        _create_metafile(reader, target, path)
        table = _read_metafile(cbgen, target, path, header, first_block)
        if table is None:
            raise AdapterError("cbgen wrote a metafile that does not match the BGEN", file=path)
        yield table


def _first_genotype_block(path: Path, header: _Header) -> tuple[int, int]:
    """(file position of the first genotype block, number of alleles of the first variant); checks that block."""
    with open(path, "rb") as fh:
        fh.seek(header.first_variant)
        for _ in range(3):  # variant ID, rsID, chromosome: uint16 length + text
            raw = fh.read(2)
            if len(raw) < 2:
                raise AdapterError("truncated first variant record", file=path)
            fh.seek(struct.unpack("<H", raw)[0], os.SEEK_CUR)
        raw = fh.read(6)
        if len(raw) < 6:
            raise AdapterError("truncated first variant record", file=path)
        _, n_alleles = struct.unpack("<IH", raw)
        for _ in range(n_alleles):
            raw = fh.read(4)
            if len(raw) < 4:
                raise AdapterError("truncated first variant record", file=path)
            fh.seek(struct.unpack("<I", raw)[0], os.SEEK_CUR)
        block = fh.tell()
        _check_first_block(fh, block, header, n_alleles, path)
    return block, n_alleles


def _read_metafile(cbgen, metafile: Path, path: Path, header: _Header, first_block) -> _VariantTable | None:
    """The variant table from ``metafile`` when it is at least as new as the BGEN and indexes it; else None."""
    if not metafile.is_file() or metafile.stat().st_mtime < path.stat().st_mtime:
        return None
    try:
        with cbgen.bgen_metafile(metafile) as index:
            if index.nvariants != header.n_variants:
                return None
            parts = [index.read_partition(p).variants for p in range(index.npartitions)]
    except RuntimeError:
        return None
    offset = np.concatenate([p.offset for p in parts]).astype(np.int64)
    if len(offset) != header.n_variants or offset[0] != first_block[0]:
        return None
    return _VariantTable(
        chrom=_text(np.concatenate([p.chromosome for p in parts])),
        pos=np.concatenate([p.position for p in parts]).astype(np.int64),
        rsid=_text(np.concatenate([p.rsid for p in parts])),
        varid=_text(np.concatenate([p.id for p in parts])),
        alleles=_text(np.concatenate([p.allele_ids for p in parts])),
        n_alleles=np.concatenate([p.nalleles for p in parts]).astype(np.int64),
        offset=offset,
    )


def _create_metafile(reader, target: Path, path: Path) -> None:
    """cbgen's metafile at ``target``, written under a temporary name in the same folder and renamed when whole."""
    temporary = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(handle)
        os.unlink(temporary)  # a free name in the target's folder; cbgen creates the file itself
        reader.create_metafile(temporary)
        os.replace(temporary, target)
    except (RuntimeError, OSError) as err:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise AdapterError(f"cbgen could not index the variants into {target}: {err}", file=path) from err


# ---------------------------------------------------------------------------------------------- genotypes
@lru_cache(maxsize=64)
def _other_allele_counts(ploidy: int, n_alleles: int) -> np.ndarray:
    """Copies of alleles other than the first in each unphased genotype, in the BGEN's order (colex order of the
    allele count vectors: for two alleles 0, 1, ..., ploidy copies of the second)."""
    vectors = []
    for genotype in combinations_with_replacement(range(n_alleles), ploidy):
        vectors.append(np.bincount(genotype, minlength=n_alleles))
    vectors.sort(key=lambda v: tuple(v[::-1]))
    return np.array([ploidy - v[0] for v in vectors], dtype=np.float64)


class _Blocks:
    """Block readers over the variants of one open BGEN (see :mod:`data_adapters.genotype_blocks`)."""

    def __init__(self, reader, table: _VariantTable, path: Path, header: _Header):
        self.reader, self.table, self.path, self.n = reader, table, path, header.n_samples

    def _variant(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sample: expected count of the non-first alleles (NaN without a call), its variance, ploidy."""
        try:
            genotype = self.reader.read_genotype(int(self.table.offset[index]))
        except RuntimeError as err:
            raise AdapterError(f"cbgen could not read variant {self._name(index)}: {err}", file=self.path) from err
        probabilities = genotype.probability  # [N, values]; NaN for a missing sample and past a sample's ploidy
        ploidy = genotype.ploidy.astype(np.int64)
        called = ~genotype.missing & (ploidy > 0)
        expected = np.full(self.n, np.nan)
        variance = np.zeros(self.n)
        n_alleles = int(self.table.n_alleles[index])
        low, high = (int(ploidy.min()), int(ploidy.max())) if self.n else (0, 0)
        for k in range(max(low, 1), high + 1):
            # one ploidy (the usual case): every row at once, missing ones give NaN; else the rows of this ploidy
            rows = slice(None) if low == high else ploidy == k
            if genotype.phased:  # per haplotype, K allele probabilities; the first allele's comes first
                used = probabilities[rows, : k * n_alleles]
                other = 1 - used[:, ::n_alleles]
                expected[rows] = other.sum(axis=1)
                variance[rows] = (other * (1 - other)).sum(axis=1)
            else:
                weights = _other_allele_counts(k, n_alleles)
                used = probabilities[rows, : len(weights)]
                mean = used @ weights
                expected[rows] = mean
                variance[rows] = used @ (weights * weights) - mean * mean
            if used.size and not (
                np.fmin.reduce(used, axis=None) >= -_PROBABILITY_SLACK
                and np.fmax.reduce(used, axis=None) <= 1 + _PROBABILITY_SLACK
            ):
                raise AdapterError(
                    f"variant {self._name(index)}: decoded genotype probabilities outside [0, 1]: a corrupt block"
                    " (or a bit depth other than the one it declares)",
                    file=self.path,
                )
        if (np.isnan(expected) & called).any():
            raise AdapterError(
                f"variant {self._name(index)}: a sample marked as called has no probabilities (corrupt block)",
                file=self.path,
            )
        expected[~called] = np.nan
        variance[~called] = 0.0
        return expected, variance, np.where(called, ploidy, 0)

    def _name(self, index: int) -> str:
        return (
            f"{self.table.chrom[index]}:{self.table.pos[index]} ({self.table.rsid[index] or self.table.varid[index]})"
        )

    def dosages(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((self.n, len(indices)), dtype=np.float32, order="F")
        for j, index in enumerate(indices):
            out[:, j] = self._variant(index)[0]
        return out

    def sums(self, indices: np.ndarray) -> dict:
        dosage, variance, ploidy = (np.empty(len(indices)) for _ in range(3))
        for j, index in enumerate(indices):
            expected, spread, sample_ploidy = self._variant(index)
            called = sample_ploidy > 0
            dosage[j] = expected[called].sum()
            variance[j] = spread[called].sum()
            ploidy[j] = sample_ploidy.sum()
        return {"dosage": dosage, "variance": variance, "ploidy": ploidy}
