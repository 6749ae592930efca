"""BGEN v1.2/v1.3 genotype probabilities (UK Biobank's imputed data) as gene tokens, read through cbgen.

:func:`bgen` turns a ``.bgen`` file (layout 2, zlib- or zstd-compressed blocks, any bit depth 1-32) and its Oxford
``.sample`` file into a :class:`~data_adapters.core.TokenizedModality` shaped exactly like
:func:`data_adapters.gene.plink`'s: one feature per variant, variants grouped into tokens by chromosome, base-pair
window, region table or one per variant (:mod:`data_adapters.variant_groups`), ``source["token_features"]`` naming
the variant in each slot.

Dosage: the expected number of copies of the alleles other than the first one listed in the variant's BGEN record,
from the genotype probabilities. For a biallelic variant that is the expected count of the record's second allele,
``P(AB) + 2 P(BB)`` for a diploid sample (phased data: the sum over both haplotypes of ``P(B)``). A haploid sample
(males on chrX outside the PARs) gets ``2 P(B)``, on the same 0-2 scale as plink2, which stores a haploid call as
a homozygous diploid one, so the values equal :func:`~data_adapters.pgen.pgen`'s and
:func:`~data_adapters.gene.plink`'s for the same data (:func:`~data_adapters.gene.vcf` counts a haploid call 0 or
1); ``min_maf``, ``min_info`` and :func:`variant_stats` count the true ploidy (a haploid sample is one allele). A
missing sample is NaN.

Which allele is counted: the second allele of the record. UK Biobank's imputed BGENs list the reference allele
first, so there it is the ALT allele, the one :func:`~data_adapters.pgen.pgen` and :func:`~data_adapters.gene.vcf`
count. :func:`~data_adapters.gene.plink` counts the ``.bim``'s A1 (5th column): after ``plink2 --bgen f.bgen
ref-first ... --make-bed`` (or ``--export bed``; plink2 writes ALT as A1) A1 is this second allele and the values
agree. Where A1 is the record's first allele instead (plink2 without ``ref-first`` takes the last allele as REF;
plink 1.9's ``--make-bed`` makes the minor allele A1 unless ``--keep-allele-order``), ``gene.plink`` gives
``2 - dosage``: compare the ``.bim``'s A1 with the BGEN's alleles (:func:`variant_stats` lists them).

Filters: ``min_maf`` (minor allele frequency of the dosages) and ``min_info`` (the IMPUTE2 INFO measure, which
QCTOOL writes into UK Biobank's ``ukb_imp_mfi`` files; formula in
:func:`~data_adapters.genotype_blocks.variant_statistics`). :func:`variant_stats` gives both per variant. Both are
computed over every sample of the file, not only the subjects a cohort later keeps (as UK Biobank's ``mfi``
values are). At a multi-allelic site the frequency is that of all the non-first alleles together (the dosage
divided by the ploidy) and the MAF is ``min(f, 1 - f)``: the first allele against the rest, not the rarest
allele's frequency; ``source["n_multiallelic"]`` counts such sites.

Sample IDs: when the BGEN stores sample identifiers and a ``.sample`` is used, the stored IDs must equal the
``.sample``'s ``ID_1`` or ``ID_2`` column (or ``ID_1_ID_2``), row by row: QCTOOL stores ``ID_1``, plink2 the IID
(``ID_2``); UK Biobank's imputed BGENs store none and its ``.sample`` has ``ID_1 == ID_2``. Anything else is
refused, naming the first row that differs.

cbgen finds variants through a "metafile" index, built in a temporary folder and removed afterwards unless
``metafile=`` names a path to keep it at. A metafile there is reused only when the small record written beside it
when it was built (``<metafile>.source.json``: the BGEN's path, size, modification time and a hash of its first
and last bytes, and the metafile's own size and time) matches this BGEN; a metafile this module did not build,
or built for another file, is not reused (ours is rebuilt in place, another one left alone with a warning and the
index built in a temporary folder). Nothing is written beside the data unless asked. The ``.bgi`` SQLite index
of bgenix is not used.

Every genotype block's declared sample and allele counts are checked before cbgen decodes it (cbgen sizes its
buffer from the header's sample count). For zstd-compressed files that needs the ``zstandard`` module (``pip
install zstandard``); without it such files are refused with that hint.

Not supported (refused with the reason): layout 1 (BGEN v1.1: convert with ``qctool -ofiletype bgen_v1.2``) and
uncompressed layout-2 files (cbgen misreads their blocks: recompress with ``qctool`` or ``plink2 --export
bgen-1.2``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations_with_replacement
from pathlib import Path

import numpy as np
import pandas as pd

from .bgen_samples import _subject_ids
from .core import AdapterError, TokenizedModality, check_choice
from .genotype_blocks import block_statistics, genotype_tokens

__all__ = ["bgen", "variant_stats"]

VARIANT_IDS = ("rsid", "varid", "position")
_COMPRESSION = {1: "zlib", 2: "zstd"}
_PROBABILITY_SLACK = 1e-6  # decoded probabilities this far outside [0, 1] are rounding, further is a bad block
_RECORD_SUFFIX = ".source.json"  # beside a metafile we built: which BGEN it indexes
_RECORD_FORMAT = "data_adapters.bgen metafile record v1"
_FINGERPRINT_HEAD, _FINGERPRINT_TAIL = 1 << 20, 1 << 16  # bytes of the BGEN hashed into the record


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
    """Genotype tokens from a BGEN v1.2/v1.3 file: dosages of the non-first allele(s) of each record, haploid
    samples scaled to 0-2 (see the module docstring for the allele and its ``gene.plink`` equivalent).

    ``sample``: the Oxford ``.sample`` file (header ``ID_1 ID_2 ...``, then the column-type row ``0 0 ...``, as UK
    Biobank ships it); by default ``<name>.sample`` beside the ``.bgen``, else the sample IDs stored in the BGEN.
    When the BGEN stores sample IDs too, they must match the ``.sample``'s rows (module docstring).
    Subject IDs: ``ID_2`` (``id_format="iid"``; a stored sample ID when there is no ``.sample``) or
    ``"{ID_1}_{ID_2}"`` (``"fid_iid"``), the columns plink2 reads as IID and FID. ``variant_id``: the ID a
    variant goes by in token names, ``token_features`` and ``variants=``: the ``"rsid"`` field (UK Biobank's
    rs numbers), the ``"varid"`` field, or ``"position"`` (``chrom:pos:allele1:allele2``, unique where rsIDs
    repeat); an empty or ``.`` ID falls back to the next of these. A warning names IDs that occur more than once
    among the kept variants (their ``token_features`` entries cannot be told apart).

    ``grouping``, ``window_bp``, ``regions``, ``max_features_per_token`` and ``empty_groups``: as in
    :func:`data_adapters.gene.plink`. ``variants``: keep only these variant IDs (a file with one ID per line,
    PLINK's ``--extract`` format, or a list); every variant with a listed ID is kept. ``min_maf`` / ``min_info``:
    keep variants with minor allele frequency / IMPUTE2 INFO at least this (a variant without any call fails
    both), computed over all the file's samples (a multi-allelic site: the first allele against the rest); they
    cost one more pass over the candidate variants. Reading goes block by block (see
    :mod:`data_adapters.genotype_blocks` for memory). ``metafile``: where to keep cbgen's variant index (module
    docstring).
    """
    check_choice(id_format, ("iid", "fid_iid"), "id_format")
    check_choice(variant_id, VARIANT_IDS, "variant_id")
    path = _bgen_path(path)
    header = _read_header(path)
    cbgen = _import_cbgen()
    with cbgen.bgen_file(path) as reader, open(path, "rb") as raw:
        subject_ids, sample_source, matched = _subject_ids(path, sample, header, reader, id_format)
        with _variant_index(cbgen, reader, path, header, metafile) as table:
            blocks = _Blocks(reader, raw, table, path, header)
            variant_ids = _variant_ids(table, variant_id)
            source = {
                "adapter": "bgen",
                "files": [str(path)] + ([sample_source] if sample_source != "bgen" else []),
                "dosage": "expected count of the alleles after the first of each BGEN record (biallelic: the second"
                " allele, ALT in UK Biobank's files; equals gene.plink's A1 count when the .bim's A1 is that allele,"
                " as after plink2 --bgen ref-first --make-bed, else 2 - dosage); haploid samples x2 (0-2 as"
                " plink2); missing sample = NaN",
                "samples_from": "the BGEN's sample identifiers" if sample_source == "bgen" else sample_source,
                "id_format": id_format,
                "variant_id": variant_id,
                "layout": header.layout,
                "compression": _COMPRESSION[header.compression],
                "n_multiallelic": int((table.n_alleles > 2).sum()),
            }
            if matched is not None:
                source["stored_sample_ids_match"] = matched
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
                duplicate_hint="pass variant_id='position' (chrom:pos:allele1:allele2 IDs)"
                if variant_id != "position"
                else "the file holds the same position and alleles more than once",
            )


def variant_stats(
    path: str | os.PathLike, *, variant_id: str = "rsid", metafile: str | os.PathLike | None = None
) -> pd.DataFrame:
    """One row per variant of a BGEN file, in file order: ``id``, ``chrom``, ``pos``, ``alleles`` (in the record's
    order; the dosage counts all but the first), ``alt_freq`` (dosage / ploidy summed over the samples with a call,
    haploid samples counting one allele; at a multi-allelic site all non-first alleles together), ``maf``
    (``min(alt_freq, 1 - alt_freq)``) and ``info`` (IMPUTE2 INFO), over every sample of the file: what
    :func:`bgen`'s ``min_maf`` and ``min_info`` compare against. Read block by block."""
    check_choice(variant_id, VARIANT_IDS, "variant_id")
    path = _bgen_path(path)
    header = _read_header(path)
    cbgen = _import_cbgen()
    with (
        cbgen.bgen_file(path) as reader,
        open(path, "rb") as raw,
        _variant_index(cbgen, reader, path, header, metafile) as table,
    ):
        blocks = _Blocks(reader, raw, table, path, header)
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


def _import_zstandard():
    """The ``zstandard`` module, or None: the standard library has no zstd decoder before Python 3.14."""
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


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
    if compression == 2 and _import_zstandard() is None:
        raise AdapterError(
            "zstd-compressed BGEN: checking each genotype block's sample count before cbgen decodes it needs the"
            " zstandard module (pip install zstandard), or recompress the file with zlib (qctool -g in.bgen -og"
            " out.bgen -ofiletype bgen_v1.2 -bgen-compression zlib)",
            file=path,
        )
    if n_variants == 0 or n_samples == 0:
        raise AdapterError(
            f"BGEN header declares {n_variants} variants and {n_samples} samples: no genotypes", file=path
        )
    return _Header(n_variants, n_samples, layout, compression, has_ids, offset + 4)


def _block_prefix(fh, block: int, wanted: int, compression: int, path: Path) -> bytes:
    """The first ``wanted`` bytes of the probability data of the genotype block at file position ``block``,
    decompressing only as much as that takes."""
    fh.seek(block)
    sizes = fh.read(8)
    if len(sizes) < 8:
        raise AdapterError(f"truncated genotype block at byte {block}", file=path)
    total, _ = struct.unpack("<II", sizes)
    if compression == 1:
        inflate = zlib.decompressobj()

        def feed(chunk: bytes, room: int) -> bytes:
            return inflate.decompress(chunk, room)  # input past ``room`` output waits in unconsumed_tail

        errors: tuple = (zlib.error,)
    else:
        zstandard = _import_zstandard()
        unzstd = zstandard.ZstdDecompressor().decompressobj()

        def feed(chunk: bytes, room: int) -> bytes:
            return unzstd.decompress(chunk)

        errors = (zstandard.ZstdError,)
    data, left, size = b"", total - 4, 256
    try:
        while len(data) < wanted and left > 0:
            chunk = fh.read(min(left, size))
            if not chunk:
                break
            left -= len(chunk)
            size = min(size * 4, 1 << 16)
            data += feed(chunk, wanted - len(data))
    except errors as err:
        raise AdapterError(
            f"genotype block at byte {block} is not valid {_COMPRESSION[compression]} data: {err}", file=path
        ) from err
    if len(data) < wanted:
        raise AdapterError(f"genotype block at byte {block} is truncated", file=path)
    return data[:wanted]


def _check_first_block(fh, block: int, header: _Header, n_alleles: int, path: Path) -> None:
    """The first genotype block's counts, bit depth and phased flag: cbgen decodes a bit depth outside 1-32 or a
    wrong sample count into plausible numbers without an error (later blocks: :meth:`_Blocks._check_block`)."""
    wanted = header.n_samples + 10  # N (4), K (2), ploidy bounds (2), ploidy per sample (N), phased (1), bits (1)
    data = _block_prefix(fh, block, wanted, header.compression, path)
    samples, alleles = struct.unpack("<IH", data[:6])
    phased, bits = data[wanted - 2], data[wanted - 1]
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
    """The variants of the file from a cbgen metafile: the one at ``metafile`` when its record says it indexes
    this very file, else a new one (at ``metafile`` when that is ours or free, or in a temporary folder)."""
    first_block = _first_genotype_block(path, header)
    if reader.nvariants != header.n_variants or reader.nsamples != header.n_samples:
        raise AdapterError("cbgen reads other counts than the header declares", file=path)
    target = None if metafile is None else Path(metafile)
    if target is not None and target.is_file():
        fingerprint = _bgen_fingerprint(path)
        record = _read_record(target)
        if record is not None and _record_matches(record, target, fingerprint):
            table = _read_metafile(cbgen, target, path, header, first_block)
            if table is not None:
                yield table
                return
        if record is None:  # not built here: leave it alone
            warnings.warn(
                f"{target}: not reused as the variant index of {path.name}: there is no record of which BGEN it"
                f" indexes ({target.name}{_RECORD_SUFFIX}; it was not built by data_adapters.bgen); indexed in a"
                " temporary folder instead (remove it, or pass another metafile=, to keep an index)",
                stacklevel=4,
            )
            target = None
        elif record.get("bgen", {}).get("path") != str(path.resolve()):
            warnings.warn(
                f"{target}: indexed another BGEN ({record.get('bgen', {}).get('path')}); rebuilt for {path.name}"
                " (give each BGEN its own metafile=)",
                stacklevel=4,
            )
    if target is not None:
        _create_metafile(reader, target, path)
        table = _read_metafile(cbgen, target, path, header, first_block)
        if table is None:
            raise AdapterError("cbgen wrote a metafile that does not match the BGEN", file=target)
        yield table
        return
    with tempfile.TemporaryDirectory(prefix="bgen-metafile-") as folder:
        target = Path(folder) / (path.name + ".metafile")
        _create_metafile(reader, target, path, record=False)
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


def _bgen_fingerprint(path: Path) -> dict:
    """What identifies a BGEN file cheaply: its size, modification time and a hash of its first and last bytes."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(_FINGERPRINT_HEAD))
        if stat.st_size > _FINGERPRINT_HEAD:
            fh.seek(max(_FINGERPRINT_HEAD, stat.st_size - _FINGERPRINT_TAIL))
            digest.update(fh.read())
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256_head_tail": digest.hexdigest(),
    }


def _record_path(metafile: Path) -> Path:
    return metafile.with_name(metafile.name + _RECORD_SUFFIX)


def _read_record(metafile: Path) -> dict | None:
    """The record written beside a metafile built here, or None (none, unreadable, or someone else's)."""
    try:
        record = json.loads(_record_path(metafile).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == _RECORD_FORMAT else None


def _record_matches(record: dict, metafile: Path, fingerprint: dict) -> bool:
    """The record names this BGEN (size, time, hash; the path may differ: a moved pair) and this metafile."""
    stat = metafile.stat()
    indexed = record.get("bgen", {})
    same_bgen = all(indexed.get(key) == fingerprint[key] for key in ("size", "mtime_ns", "sha256_head_tail"))
    return same_bgen and record.get("metafile") == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_metafile(cbgen, metafile: Path, path: Path, header: _Header, first_block) -> _VariantTable | None:
    """The variant table from ``metafile`` when it indexes as many variants as the BGEN, from its first block;
    else None."""
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


def _write_atomically(target: Path, write) -> os.stat_result:
    """``write(temporary path)`` under a free temporary name in ``target``'s folder, then renamed to ``target``;
    the stat of the written file (kept by the rename)."""
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(handle)
        os.unlink(temporary)  # a free name in the target's folder; the writer creates the file itself
        write(temporary)
        stat = os.stat(temporary)
        os.replace(temporary, target)
        return stat
    except BaseException:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise


def _create_metafile(reader, target: Path, path: Path, *, record: bool = True) -> None:
    """cbgen's metafile at ``target``, written under a temporary name in the same folder and renamed when whole;
    then (``record``) the record of which BGEN it indexes beside it, written the same way."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fingerprint = _bgen_fingerprint(path) if record else None
        stat = _write_atomically(target, reader.create_metafile)
        if record:
            content = {
                "format": _RECORD_FORMAT,
                "bgen": fingerprint,
                "metafile": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
            }
            _write_atomically(_record_path(target), lambda name: Path(name).write_text(json.dumps(content)))
    except (RuntimeError, OSError) as err:
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

    def __init__(self, reader, raw, table: _VariantTable, path: Path, header: _Header):
        self.reader, self.raw, self.table, self.path = reader, raw, table, path
        self.n, self.compression = header.n_samples, header.compression

    def _check_block(self, index: int) -> None:
        """The sample and allele counts the variant's genotype block declares, before cbgen decodes it: cbgen
        fills a buffer sized by the header's sample count with as many samples as the block declares."""
        data = _block_prefix(self.raw, int(self.table.offset[index]), 6, self.compression, self.path)
        samples, alleles = struct.unpack("<IH", data)
        if samples != self.n:
            raise AdapterError(
                f"variant {self._name(index)}: its genotype block holds {samples} samples, the header {self.n} (a"
                " corrupt file, or BGENs of different sample sets joined together)",
                file=self.path,
            )
        if alleles != self.table.n_alleles[index]:
            raise AdapterError(
                f"variant {self._name(index)}: its genotype block has {alleles} alleles, its record"
                f" {self.table.n_alleles[index]} (a corrupt block)",
                file=self.path,
            )

    def _variant(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sample: expected count of the non-first alleles (NaN without a call), its variance, ploidy (the
        true one: 1 for a haploid sample; 0 without a call)."""
        self._check_block(index)
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
        """Expected counts [N, k]; a haploid sample's doubled (0-2, as plink2 stores a haploid call)."""
        out = np.empty((self.n, len(indices)), dtype=np.float32, order="F")
        for j, index in enumerate(indices):
            expected, _, ploidy = self._variant(index)
            out[:, j] = np.where(ploidy == 1, 2.0 * expected, expected)
        return out

    def sums(self, indices: np.ndarray) -> dict:
        """Per variant over the called samples: expected counts, their variances and ploidies, at true ploidy."""
        dosage, variance, ploidy = (np.empty(len(indices)) for _ in range(3))
        for j, index in enumerate(indices):
            expected, spread, sample_ploidy = self._variant(index)
            called = sample_ploidy > 0
            dosage[j] = expected[called].sum()
            variance[j] = spread[called].sum()
            ploidy[j] = sample_ploidy.sum()
        return {"dosage": dosage, "variance": variance, "ploidy": ploidy}
