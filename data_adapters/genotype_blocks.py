"""What the biobank genotype readers (:mod:`data_adapters.bgen`, :mod:`data_adapters.pgen`) share: a variant list
(``variants=``), per-variant filters (``min_maf``, ``min_info``) computed in blocks, the grouping into tokens
(:func:`~data_adapters.variant_groups.group_variants`, as :func:`~data_adapters.gene.plink`) and the filling of the
token arrays in blocks of variants (:func:`~data_adapters.token_fill.fill_tokens`).

A format module supplies two block readers over its variants (file indices, sorted):

* ``read_dosages(indices) -> float32 [N, k]``: the dosages, NaN where a call is missing;
* ``read_sums(indices) -> dict``: per variant, over the samples with a call, ``ploidy`` (sum of the ploidies),
  ``dosage`` (sum of the expected counts) and, for the INFO score, ``variance`` (sum of each sample's variance of
  the allele count given its genotype probabilities).

Memory: the result ``values`` is ``[N, T, F]`` float32 (every kept variant of a token is one feature, as in
:func:`~data_adapters.gene.plink`: ``4 x N x (kept variants + padding)`` bytes), plus one block of about
``token_fill._BLOCK_VALUES`` values (64 MB of float32) while reading; never a samples x all-variants matrix of the
file (a reader adds its own per-variant buffers: cbgen decodes one variant's probabilities as float64 at a time).
Filters cost one more pass over the candidate variants (statistics only, block by block), over every sample of the
file (not only the subjects a cohort keeps later); at a multi-allelic site the frequency is that of all the counted
(non-first / non-REF) alleles together, so the MAF is the first allele's against the rest.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import token_fill
from .core import AdapterError, TokenizedModality
from .token_fill import fill_tokens
from .variant_groups import group_variants


def read_variant_list(variants: str | os.PathLike | Sequence[str]) -> tuple[set[str], str]:
    """The IDs of a variant list (PLINK's ``--extract`` file: one ID per line, first field; ``#`` lines skipped)
    or of a sequence, and a label for messages."""
    if isinstance(variants, (str, os.PathLike)):
        path = Path(variants)
        if not path.is_file():
            raise AdapterError("variant list file not found (one variant ID per line)", file=path)
        ids = set()
        for line in path.read_text().splitlines():
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                ids.add(fields[0])
        if not ids:
            raise AdapterError("variant list is empty (one variant ID per line)", file=path)
        return ids, str(path)
    ids = {str(v) for v in variants}
    if not ids:
        raise AdapterError("variants= is an empty list: give the variant IDs to keep, or leave it out")
    return ids, "<variants list>"


def variant_statistics(sums: dict) -> dict[str, np.ndarray]:
    """Per variant: ``alt_freq`` (dosage / ploidy summed over the called samples), ``maf`` and, when variances
    are given, ``info``, the IMPUTE2 information measure (Marchini & Howie 2010, as QCTOOL writes into UK
    Biobank's ``mfi`` files)::

        info = 1 - sum_i (f_i - e_i^2) / (sum_i ploidy_i * theta * (1 - theta)),   theta = sum_i e_i / sum_i ploidy_i

    with ``e_i`` the expected allele count and ``f_i`` its expected square (``f_i - e_i^2`` is ``sums["variance"]``;
    diploid: ``e = p1 + 2 p2``, ``f = p1 + 4 p2``, the denominator ``2N theta (1 - theta)``). ``info = 1`` when
    ``theta`` is 0 or 1; NaN (failing every filter) when no sample has a call. It can fall below 0 for data far
    from Hardy-Weinberg proportions. Not Minimac's ``Rsq`` (the variance of the dosages over ``2 theta (1 - theta)``,
    plink2's ``MACH_R2``), which is another estimate of the same quantity."""
    ploidy = np.asarray(sums["ploidy"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        alt_freq = np.asarray(sums["dosage"], dtype=np.float64) / ploidy
        out = {"alt_freq": alt_freq, "maf": np.minimum(alt_freq, 1 - alt_freq)}
        if "variance" in sums:
            spread = ploidy * alt_freq * (1 - alt_freq)
            polymorphic = spread > 0
            info = np.where(polymorphic, 1 - np.asarray(sums["variance"]) / np.where(polymorphic, spread, 1), 1.0)
            out["info"] = np.where(ploidy > 0, info, np.nan)
    return out


def block_statistics(
    indices: np.ndarray, n_samples: int, read_sums: Callable[[np.ndarray], dict]
) -> dict[str, np.ndarray]:
    """:func:`variant_statistics` of the variants ``indices`` (sorted), read in blocks of about
    ``token_fill._BLOCK_VALUES`` values."""
    block = max(1, token_fill._BLOCK_VALUES // max(n_samples, 1))
    parts: dict[str, list] = {}
    for begin in range(0, len(indices), block):
        for key, value in read_sums(indices[begin : begin + block]).items():
            parts.setdefault(key, []).append(np.asarray(value, dtype=np.float64))
    return variant_statistics({key: np.concatenate(value) for key, value in parts.items()})


def genotype_tokens(
    *,
    name: str,
    subject_ids: np.ndarray,
    chrom: np.ndarray,
    pos: np.ndarray,
    variant_ids: np.ndarray,
    read_dosages: Callable[[np.ndarray], np.ndarray],
    read_sums: Callable[[np.ndarray], dict] | None,
    grouping: str,
    window_bp: int | None,
    regions,
    max_features_per_token: int | None,
    empty_groups: str,
    variants,
    min_maf: float | None,
    min_info: float | None,
    file: Path,
    source: dict,
    duplicate_hint: str = "give the variants unique IDs",
) -> TokenizedModality:
    """The token modality of one genotype file: list, filters, grouping, then the values read in blocks.

    Variant IDs that occur more than once among the kept variants (common rsIDs at multi-allelic sites split into
    biallelic records) are kept, with a warning that says how to tell them apart (``duplicate_hint``): their
    ``token_features`` entries are the same string. A listed ID of ``variants=`` keeps every variant with it."""
    n_in_file = len(variant_ids)
    _check_threshold(min_maf, "min_maf", 0.5)
    _check_threshold(min_info, "min_info", 1.0)
    candidates = np.arange(n_in_file)
    notes: dict = {"n_variants_in_file": n_in_file}
    if variants is not None:
        listed, label = read_variant_list(variants)
        candidates = np.flatnonzero(pd.Index(variant_ids.astype(str)).isin(list(listed)))
        found = len(set(variant_ids[candidates].tolist()))  # a repeated ID in the file is one listed ID
        notes.update(variant_list=label, n_listed=len(listed), n_listed_found=found)
        if 0 < found < len(listed):
            warnings.warn(
                f"{file}: {len(listed) - found} of the {len(listed)} IDs of {label} are not variant IDs of this file"
                " (kept the others)",
                stacklevel=3,
            )
        if len(candidates) == 0:
            raise AdapterError(
                f"none of the {len(listed)} IDs of the variant list {label} is a variant ID of this file"
                f" (its IDs look like {variant_ids[:3].tolist()})",
                file=file,
            )
    group_options = {
        "grouping": grouping,
        "window_bp": window_bp,
        "regions": regions,
        "max_features_per_token": max_features_per_token,
        "empty_groups": empty_groups,
    }
    filters = {k: v for k, v in (("min_maf", min_maf), ("min_info", min_info)) if v is not None}
    if filters:
        if grouping == "region":  # statistics only for variants some region holds
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the grouping below warns about dropped regions once
                _, groups, _ = group_variants(
                    chrom[candidates], pos[candidates], variant_ids[candidates], **group_options, file=file
                )
            candidates = candidates[np.unique(np.concatenate(groups))]
        candidates = _apply_filters(candidates, filters, len(subject_ids), read_sums, file, notes)
    notes["n_variants_kept"] = len(candidates)

    token_names, groups, grouping_notes = group_variants(
        chrom[candidates], pos[candidates], variant_ids[candidates], **group_options, file=file
    )
    values, feature_mask, present = fill_tokens(
        len(subject_ids), groups, lambda columns: read_dosages(candidates[columns])
    )
    kept_ids = variant_ids[candidates]
    _warn_duplicated_ids(kept_ids, listed if variants is not None else None, file, duplicate_hint, notes)
    source = {**source, **notes, **grouping_notes}
    source["token_features"] = {t: kept_ids[g].tolist() for t, g in zip(token_names, groups, strict=True)}
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=token_names,
        subject_ids=subject_ids,
        feature_mask=feature_mask,
        source=source,
    )


def _warn_duplicated_ids(kept_ids: np.ndarray, listed: set | None, file: Path, hint: str, notes: dict) -> None:
    counts = pd.Series(kept_ids.astype(str)).value_counts(sort=False)
    repeated = counts[counts > 1]
    if repeated.empty:
        return
    examples = ", ".join(f"{i} x{c}" for i, c in repeated.iloc[:5].items())
    notes["n_duplicated_variant_ids"] = len(repeated)
    said = f"{file}: {len(repeated)} variant ID(s) occur more than once among the kept variants ({examples})"
    if listed is not None:
        chosen = [i for i in repeated.index if i in listed]
        if chosen:
            said += f"; {len(chosen)} of them are IDs of the variant list, which keeps every variant with the ID"
    warnings.warn(f"{said}: their token_features entries cannot be told apart; {hint}", stacklevel=4)


def _check_threshold(value, argument: str, largest: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise AdapterError(f"{argument}={value!r}: give a number between 0 and {largest:g}")
    if not 0 <= float(value) <= largest:
        raise AdapterError(f"{argument}={value!r}: give a number between 0 and {largest:g}")


def _apply_filters(candidates, filters: dict, n_samples: int, read_sums, file: Path, notes: dict) -> np.ndarray:
    """The candidates with ``maf >= min_maf`` and ``info >= min_info`` (a variant without any call fails)."""
    stats = block_statistics(candidates, n_samples, read_sums)
    keep = np.ones(len(candidates), dtype=bool)
    removed = {}
    for argument, threshold in filters.items():
        statistic = stats[argument.removeprefix("min_")]
        passes = statistic >= threshold  # NaN (no call) fails
        removed[argument] = int((~passes).sum())
        keep &= passes
    notes["filters"] = {
        **{k: float(v) for k, v in filters.items()},
        "removed": removed,
        "computed_over": f"all {n_samples} samples of the file",
    }
    if not keep.any():
        said = ", ".join(f"{k}={v:g} fails {removed[k]}" for k, v in filters.items())
        raise AdapterError(f"no variant left after the filters: of {len(candidates)} variants, {said}", file=file)
    return candidates[keep]
