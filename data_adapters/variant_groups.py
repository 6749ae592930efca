"""Variants grouped into tokens: by chromosome, by base-pair window, by named region, or one per variant.

Shared by the genotype readers (:func:`data_adapters.gene.plink` and :func:`~data_adapters.gene.vcf`). Region
tables (``regions=``) have one row per region with columns ``name``, ``chrom``, ``start``, ``end`` (aliases
``gene``/``region``, ``chr``/``chromosome``; case-insensitive); coordinates are 1-based and inclusive. Chromosome
names are compared after dropping a ``chr`` prefix, dropping leading zeros of numeric names (UK Biobank's imputed
BGENs write ``01``..``09``) and mapping PLINK's numeric codes 23/24/25/26 to X/Y/XY/MT; token names use the
normalised name (``chr1``, ``chrX``).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

from .core import AdapterError, check_choice
from .tables import read_table

VARIANT_GROUPINGS = ("chromosome", "window", "region", "snp")
EMPTY_GROUP_POLICIES = ("drop", "error")

_CHROM_ALIASES = {"23": "X", "24": "Y", "25": "XY", "26": "MT", "M": "MT"}


def _normalize_chromosome(value) -> str:
    text = str(value).strip()
    if text.lower().startswith("chr"):
        text = text[3:]
    text = text.upper()
    if text.isdigit() and text.isascii():  # "01" (UK Biobank's imputed BGENs), "chr01": the number itself
        text = str(int(text))
    return _CHROM_ALIASES.get(text, text)


def _chromosome_sort_key(chrom: str) -> tuple:
    if chrom.isdigit():
        return (0, int(chrom), "")
    named = {"X": 1, "Y": 2, "XY": 3, "MT": 4}
    return (1, named.get(chrom, 5), chrom)


class _Genome(NamedTuple):
    """The variants in genome order: chromosome names sorted, each variant's chromosome rank and position,
    and ``order`` (variant indices by chromosome, then position, then file order) with its ranks and positions."""

    chrom_names: list[str]
    chrom_rank: np.ndarray
    pos: np.ndarray
    order: np.ndarray
    sorted_rank: np.ndarray
    sorted_pos: np.ndarray


def group_variants(
    chrom: np.ndarray,
    pos: np.ndarray,
    variant_ids: np.ndarray,
    *,
    grouping: str,
    window_bp: int | None,
    regions,
    max_features_per_token: int | None,
    empty_groups: str,
    file,
) -> tuple[list[str], list[np.ndarray], dict]:
    """Token names and, per token, the variant (column) indices in position order. Shared by plink and vcf."""
    _check_grouping(grouping, window_bp, regions, max_features_per_token, empty_groups)
    genome = _genome_order(chrom, pos)
    notes: dict = {"grouping": grouping}
    if grouping == "region":
        token_names, groups, notes_regions = _region_groups(regions, genome, empty_groups, file)
        notes.update(notes_regions)
    else:
        token_names, groups = _run_groups(grouping, genome, window_bp, variant_ids, file)
        if grouping == "window":
            notes["window_bp"] = int(window_bp)
    if max_features_per_token is not None:
        cap = int(max_features_per_token)
        token_names, groups, n_split = _split_long_tokens(token_names, groups, cap)
        notes.update(max_features_per_token=cap, n_tokens_split=n_split)
    notes["feature_positions"] = _feature_positions(token_names, groups, genome)
    return token_names, groups, notes


def _feature_positions(token_names: list[str], groups: list[np.ndarray], genome: _Genome) -> dict:
    """Token -> where its variants are, in slot order: ``{"chromosome": "1", "positions": [bp, ...]}`` (a token's
    variants share a chromosome under every grouping; ``"chromosomes"``, one per variant, if they ever do not).
    Attribution plots (a Manhattan view) place each feature with it."""
    out = {}
    for token, group in zip(token_names, groups, strict=True):
        chroms = [genome.chrom_names[r] for r in genome.chrom_rank[group]]
        entry: dict = {"positions": genome.pos[group].tolist()}
        if len(set(chroms)) <= 1:
            entry["chromosome"] = chroms[0] if chroms else None
        else:
            entry["chromosomes"] = chroms
        out[token] = entry
    return out


def _check_grouping(grouping, window_bp, regions, max_features_per_token, empty_groups) -> None:
    if not isinstance(grouping, str) or grouping not in VARIANT_GROUPINGS:
        raise AdapterError(
            f"unknown grouping {grouping!r}: use 'chromosome', 'window' (with window_bp=), "
            "'region' (with regions=) or 'snp'"
        )
    check_choice(empty_groups, EMPTY_GROUP_POLICIES, "empty_groups")
    if (window_bp is not None) != (grouping == "window"):
        raise AdapterError("window_bp= goes with grouping='window' (both or neither)")
    if (regions is not None) != (grouping == "region"):
        raise AdapterError("regions= goes with grouping='region' (both or neither)")
    if grouping == "window" and (not isinstance(window_bp, (int, np.integer)) or window_bp < 1):
        raise AdapterError(f"window_bp={window_bp!r}: give a positive whole number of base pairs")
    if max_features_per_token is not None and max_features_per_token < 1:
        raise AdapterError(f"max_features_per_token={max_features_per_token!r}: give a positive number")


def _genome_order(chrom: np.ndarray, pos: np.ndarray) -> _Genome:
    # Few distinct chromosome labels: normalise those, then map back (fast for millions of variants).
    labels, label_index = np.unique(np.asarray(chrom).astype(str), return_inverse=True)
    normalized = np.array([_normalize_chromosome(c) for c in labels], dtype=object)
    chrom_names = sorted(set(normalized), key=_chromosome_sort_key)
    rank_of = {c: r for r, c in enumerate(chrom_names)}
    chrom_rank = np.array([rank_of[c] for c in normalized], dtype=np.int64)[label_index.ravel()]
    pos = np.asarray(pos, dtype=np.int64)
    order = np.lexsort((np.arange(len(pos)), pos, chrom_rank))  # genome order; file order breaks ties
    return _Genome(chrom_names, chrom_rank, pos, order, chrom_rank[order], pos[order])


def _run_groups(
    grouping: str, genome: _Genome, window_bp: int | None, variant_ids: np.ndarray, file
) -> tuple[list[str], list[np.ndarray]]:
    """Tokens of consecutive variants in genome order: one per chromosome, per window, or per variant."""
    order, names, rank = genome.order, genome.chrom_names, genome.chrom_rank
    if grouping == "chromosome":
        key = genome.sorted_rank
    elif grouping == "window":
        key = genome.sorted_rank * (int(genome.sorted_pos.max()) // window_bp + 1) + genome.sorted_pos // window_bp
    else:
        key = np.arange(len(order))
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    groups = np.split(order, starts[1:])
    first = order[starts]
    if grouping == "chromosome":
        token_names = [f"chr{names[rank[i]]}" for i in first]
    elif grouping == "window":
        token_names = []
        for i in first:
            begin = genome.pos[i] // window_bp * window_bp
            token_names.append(f"chr{names[rank[i]]}:{begin}-{begin + window_bp}")
    else:
        token_names = [str(variant_ids[i]) for i in first]
        dup = pd.Index(token_names)[pd.Index(token_names).duplicated()].unique().tolist()
        if dup:
            raise AdapterError(
                f"grouping='snp' needs unique variant IDs, found duplicates {dup[:5]}; rename them",
                file=file,
            )
    return token_names, groups


def _split_long_tokens(
    token_names: list[str], groups: list[np.ndarray], cap: int
) -> tuple[list[str], list[np.ndarray], int]:
    """Tokens of more than ``cap`` variants cut into consecutive parts (``chr1/part0``, ...), and how many were."""
    split_names, split_groups, n_split = [], [], 0
    for token, group in zip(token_names, groups, strict=True):
        if len(group) <= cap:
            split_names.append(token)
            split_groups.append(group)
            continue
        n_split += 1
        for part, begin in enumerate(range(0, len(group), cap)):
            split_names.append(f"{token}/part{part}")
            split_groups.append(group[begin : begin + cap])
    return split_names, split_groups, n_split


def _region_groups(regions, genome: _Genome, empty_groups: str, file):
    """One token per row of the region table: the variants with ``start <= pos <= end`` on its chromosome."""
    chrom_names, order = genome.chrom_names, genome.order
    sorted_rank, sorted_pos = genome.sorted_rank, genome.sorted_pos
    table, label = _read_regions(regions)
    rank_of = {c: r for r, c in enumerate(chrom_names)}
    # Start of each chromosome's run in the genome-sorted variants.
    bounds = np.searchsorted(sorted_rank, np.arange(len(chrom_names) + 1))
    token_names, groups, dropped = [], [], []
    for region, chrom, start, end in table.itertuples(index=False, name=None):
        rank = rank_of.get(chrom)
        if rank is None:
            members = order[:0]
        else:
            lo, hi = bounds[rank], bounds[rank + 1]
            first = lo + np.searchsorted(sorted_pos[lo:hi], start, side="left")
            last = lo + np.searchsorted(sorted_pos[lo:hi], end, side="right")
            members = order[first:last]
        if len(members) == 0:
            if empty_groups == "error":
                raise AdapterError(
                    f"region {region!r} (chr{chrom}:{start}-{end}) holds no variant of {file}; "
                    "pass empty_groups='drop' to skip such regions",
                    file=label,
                )
            dropped.append(region)
            continue
        token_names.append(region)
        groups.append(members)
    if not groups:
        raise AdapterError(
            f"no variant of {file} falls in any of the {len(table)} regions: variants are on "
            f"{['chr' + c for c in chrom_names[:5]]}, regions on "
            f"{sorted({'chr' + c for c in table['chrom']})[:5]}; check chromosome names, the genome build "
            "and that start/end are base-pair coordinates",
            file=label,
        )
    if dropped:
        warnings.warn(f"{label}: dropped {len(dropped)} region(s) with no variant: {dropped[:5]}", stacklevel=4)
    return token_names, groups, {"regions": label, "n_regions": len(table), "dropped_groups": dropped}


_REGION_COLUMNS = {
    "name": ("name", "gene", "region"),
    "chrom": ("chrom", "chr", "chromosome"),
    "start": ("start",),
    "end": ("end",),
}


def _read_regions(regions) -> tuple[pd.DataFrame, str]:
    if isinstance(regions, pd.DataFrame):
        table, label = regions, "<regions DataFrame>"
    else:
        table, label = read_table(regions, id_column=None, what="region table")[0], str(regions)
    by_lower = {str(c).strip().lower().lstrip("#"): c for c in table.columns}
    column_of = {}
    for role, aliases in _REGION_COLUMNS.items():
        found = [by_lower[a] for a in aliases if a in by_lower]
        if not found:
            raise AdapterError(
                f"no {role!r} column (accepted names: {', '.join(aliases)}); a region table needs "
                f"name, chrom, start, end; found {list(table.columns)[:8]}",
                file=label,
            )
        column_of[role] = found[0]
    picked = {role: table[column] for role, column in column_of.items()}
    if len(table) == 0:
        raise AdapterError("region table has no rows", file=label)
    out = pd.DataFrame({"name": picked["name"].astype(str).str.strip(), "chrom": picked["chrom"]})
    out["chrom"] = [_normalize_chromosome(c) for c in out["chrom"]]
    for role in ("start", "end"):
        numbers = pd.to_numeric(picked[role], errors="coerce")
        bad = np.flatnonzero((numbers.isna() | (numbers % 1 != 0)).to_numpy())
        if len(bad):
            raise AdapterError(
                f"region {out['name'].iloc[bad[0]]!r}: {role} {picked[role].iloc[bad[0]]!r} is not a whole number",
                file=label,
                column=str(column_of[role]),
            )
        out[role] = numbers.to_numpy(dtype=np.int64)
    backwards = np.flatnonzero((out["start"] > out["end"]).to_numpy())
    if len(backwards):
        row = out.iloc[backwards[0]]
        raise AdapterError(f"region {row['name']!r}: start {row['start']} > end {row['end']}", file=label)
    duplicated = out["name"][out["name"].duplicated()].unique().tolist()
    if duplicated:
        raise AdapterError(
            f"duplicated region name(s) {duplicated[:5]}: one row per region (merge or rename them)", file=label
        )
    return out, label
