"""Small BGEN v1.2 (layout 2) files written from known probabilities, for the tests of ``data_adapters.bgen``.

The format, as the BGEN specification (v1.2/1.3) defines it; every integer is little-endian:

* 4 bytes: ``offset``, the distance from the end of these 4 bytes to the first variant block.
* Header block: its length ``LH`` (uint32), the number of variants ``M`` and samples ``N`` (uint32), the magic
  ``b"bgen"``, free data (``LH - 20`` bytes), then ``flags`` (uint32): bits 0-1 compression of the genotype blocks
  (0 none, 1 zlib, 2 zstd), bits 2-5 the layout (2 here), bit 31 set when sample identifiers follow.
* Sample identifier block (optional): its length (uint32), ``N`` (uint32), then per sample a uint16 length and
  the identifier.
* Per variant: identifying data (uint16-length-prefixed variant ID, rsID and chromosome; uint32 position; uint16
  number of alleles ``K``; per allele a uint32 length and the allele), then the genotype block: its length ``C``
  (uint32), with compression the uncompressed length ``D`` (uint32), then the (compressed: zlib, or zstd as a frame of
  stored blocks, :func:`zstd_frame`) probability data:
  ``N`` (uint32), ``K`` (uint16), min and max ploidy (uint8 each), one byte per sample (bits 0-5 ploidy, bit 7
  missing), phased (uint8), bits per probability ``B`` (uint8), then the probabilities packed ``B`` bits each,
  least significant bit first. Per sample, unphased: the probabilities of the ``binom(ploidy + K - 1, K - 1)``
  genotypes in colex order (for two alleles: 0, 1, 2, ... copies of the second allele) without the last one;
  phased: per haplotype the ``K`` allele probabilities without the last one. Missing samples store zeros.

Probabilities are stored as integers ``round(p * (2**B - 1))`` rounded so that each group sums to ``2**B - 1``
(the largest remainders get the leftover units, the specification's recommended rounding); :func:`write_bgen`
returns the probabilities as stored, which is what a reader must give back.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np


@dataclass
class Variant:
    """One variant's identifying data and, per sample, the probabilities (``[N, values]``; NaN rows allowed
    for missing samples): unphased, the genotype probabilities; phased, ``K`` allele probabilities per
    haplotype, haplotype after haplotype."""

    chrom: str
    pos: int
    rsid: str
    probabilities: np.ndarray
    alleles: tuple[str, ...] = ("A", "G")
    varid: str = ""
    ploidy: np.ndarray | None = None  # per sample; default 2
    missing: np.ndarray | None = None  # per sample; default: rows of the probabilities that are all NaN
    phased: bool = False
    declared_bits: int | None = None  # a bit depth to declare instead of the one written (a corrupt block)


def quantize(probabilities: np.ndarray, bits: int) -> np.ndarray:
    """Integers ``[rows, k]`` summing to ``2**bits - 1`` per row: ``p * (2**bits - 1)`` floored, the leftover
    units given to the largest fractional parts."""
    scale = (1 << bits) - 1
    scaled = np.asarray(probabilities, dtype=np.float64) * scale
    stored = np.floor(scaled).astype(np.int64)
    leftover = scale - stored.sum(axis=1, keepdims=True)
    order = np.argsort(-(scaled - stored), axis=1, kind="stable")
    rank = np.argsort(order, axis=1, kind="stable")  # 0 for the largest fractional part
    return stored + (rank < leftover)


def _pack(values: np.ndarray, bits: int) -> bytes:
    """``values`` packed ``bits`` bits each, least significant bit first."""
    if bits in (8, 16, 32):  # whole bytes: the values as little-endian integers
        return np.asarray(values).astype(f"<u{bits // 8}").tobytes()
    values = np.asarray(values, dtype=np.uint64)
    bit_planes = (values[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    return np.packbits(bit_planes.astype(np.uint8).ravel(), bitorder="little").tobytes()


def _probability_data(variant: Variant, n: int, bits: int, bits_field: int | None) -> tuple[bytes, np.ndarray]:
    k_alleles = len(variant.alleles)
    ploidy = np.full(n, 2, dtype=np.int64) if variant.ploidy is None else np.asarray(variant.ploidy, np.int64)
    if variant.missing is None:
        missing = np.isnan(variant.probabilities).all(axis=1)
    else:
        missing = np.asarray(variant.missing, dtype=bool)
    header = struct.pack("<IHBB", n, k_alleles, int(ploidy.min()), int(ploidy.max()))
    header += (ploidy | (missing.astype(np.int64) << 7)).astype(np.uint8).tobytes()
    declared = bits if bits_field is None else bits_field
    header += struct.pack(
        "<BB", int(variant.phased), declared if variant.declared_bits is None else variant.declared_bits
    )
    width = variant.probabilities.shape[1]
    stored_probabilities = np.full((n, width), np.nan)
    values = []
    for k in np.unique(ploidy):  # samples of one ploidy together; their values go back in sample order below
        rows = np.flatnonzero(ploidy == k)
        groups = int(k) if variant.phased else 1
        per_group = k_alleles if variant.phased else comb(int(k) + k_alleles - 1, k_alleles - 1)
        block = np.nan_to_num(variant.probabilities[rows, : groups * per_group]).reshape(-1, per_group)
        called_groups = np.repeat(~missing[rows], groups)
        if not np.allclose(block[called_groups].sum(axis=1), 1.0):
            raise ValueError(
                f"variant {variant.rsid}: probabilities of a {'haplotype' if variant.phased else 'sample'}"
                " must sum to 1"
            )
        stored = quantize(block, bits).reshape(len(rows), groups, per_group)
        stored[missing[rows]] = 0
        kept = ~missing[rows]
        stored_probabilities[rows[kept], : groups * per_group] = (stored[kept] / ((1 << bits) - 1)).reshape(
            int(kept.sum()), -1
        )
        values.append((rows, stored[:, :, :-1].reshape(len(rows), -1)))
    if len(values) == 1:
        flat = values[0][1].ravel()
    else:
        by_sample = {}
        for rows, stored in values:
            by_sample.update(zip(rows.tolist(), stored, strict=True))
        flat = np.concatenate([by_sample[i] for i in range(n)])
    return header + _pack(flat, bits), stored_probabilities


def zstd_frame(data: bytes) -> bytes:
    """``data`` as a Zstandard frame (RFC 8878) of raw (stored, uncompressed) blocks, which any zstd decoder
    reads: the magic number, a frame header declaring a single segment of ``len(data)`` bytes (4-byte content
    size), then blocks of at most 128 KiB, each with a 3-byte header (bit 0: last block, bits 1-2: type 0 raw,
    bits 3-23: size). The standard library has no zstd writer before Python 3.14."""
    out = struct.pack("<IB", 0xFD2FB528, (2 << 6) | (1 << 5)) + struct.pack("<I", len(data))
    chunks = [data[i : i + (1 << 17)] for i in range(0, len(data), 1 << 17)] or [b""]
    for k, chunk in enumerate(chunks):
        out += (len(chunk) << 3 | (k == len(chunks) - 1)).to_bytes(3, "little") + chunk
    return out


def _string(text: str, length_format: str = "<H") -> bytes:
    data = text.encode()
    return struct.pack(length_format, len(data)) + data


def write_bgen(
    path: str | Path,
    variants: list[Variant],
    n_samples: int,
    *,
    bits: int = 8,
    compression: int = 1,
    samples: list[str] | None = None,
    layout: int = 2,
    bits_field: int | None = None,
    declared_samples: int | None = None,
) -> list[np.ndarray]:
    """Write a BGEN file; returns, per variant, the probabilities as stored (``[N, values]``, NaN where missing).

    ``samples`` embeds sample identifiers. ``layout``, ``bits_field`` (the bit depth declared in every block)
    and ``declared_samples`` (``N`` in the header) write files that are wrong on purpose.
    """
    flags = compression | (layout << 2) | ((1 << 31) if samples is not None else 0)
    free = b"test"
    header_length = 20 + len(free)
    header = struct.pack(
        "<III", header_length, len(variants), n_samples if declared_samples is None else declared_samples
    )
    header += b"bgen" + free + struct.pack("<I", flags)
    sample_block = b""
    if samples is not None:
        ids = b"".join(_string(s) for s in samples)
        sample_block = struct.pack("<II", 8 + len(ids), len(samples)) + ids
    blocks, stored = [], []
    for variant in variants:
        ident = _string(variant.varid) + _string(variant.rsid) + _string(variant.chrom)
        ident += struct.pack("<IH", variant.pos, len(variant.alleles))
        ident += b"".join(_string(a, "<I") for a in variant.alleles)
        data, probabilities = _probability_data(variant, n_samples, bits, bits_field)
        stored.append(probabilities)
        if compression == 1:
            packed = zlib.compress(data)
            genotype = struct.pack("<II", len(packed) + 4, len(data)) + packed
        elif compression == 2:
            packed = zstd_frame(data)
            genotype = struct.pack("<II", len(packed) + 4, len(data)) + packed
        elif compression == 0:
            genotype = struct.pack("<I", len(data)) + data
        else:
            raise ValueError("this writer knows compression 0 (none), 1 (zlib) and 2 (zstd)")
        blocks.append(ident + genotype)
    offset = len(header) + len(sample_block)
    Path(path).write_bytes(struct.pack("<I", offset) + header + sample_block + b"".join(blocks))
    return stored


def write_sample(path: str | Path, id_1: list[str], id_2: list[str] | None = None, *, sex: list[int] | None = None):
    """An Oxford ``.sample`` file in UK Biobank's layout: a header, a column-type row, one row per sample."""
    id_2 = id_1 if id_2 is None else id_2
    sex = [0] * len(id_1) if sex is None else sex
    lines = ["ID_1 ID_2 missing sex", "0 0 0 D"]
    lines += [f"{a} {b} 0 {s}" for a, b, s in zip(id_1, id_2, sex, strict=True)]
    Path(path).write_text("\n".join(lines) + "\n")


def diploid_probabilities(dosages: np.ndarray) -> np.ndarray:
    """Unphased diploid genotype probabilities ``[N, 3]`` (0, 1, 2 copies of the second allele) for hard
    calls ``0/1/2`` (NaN: a missing sample, NaN probabilities)."""
    dosages = np.asarray(dosages, dtype=np.float64)
    out = np.zeros((len(dosages), 3))
    called = ~np.isnan(dosages)
    out[np.flatnonzero(called), dosages[called].astype(int)] = 1.0
    out[~called] = np.nan
    return out
