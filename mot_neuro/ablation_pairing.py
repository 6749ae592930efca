"""How a cell of an ablation grid is paired with the reference: which metrics compare, like-with-like sums, fold means.

A masked-modelling total sums one term per active modality, so for a cell that left a modality out (or hid it at
test time) ``<stage>/recon`` is compared term by term over the modalities both sides have, and ``<stage>/loss``
not at all. A comparison ends as ``cell - reference`` differences per (seed, fold), then one per fold, the seeds
of each fold averaged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from mot_neuro.ablation_results import _plain, _sorted

#: the suffix of a ``dropped`` name for a modality hidden at test time rather than left out of training
AT_TEST = "@test"


def _dropped_modality(dropped: str) -> str | None:
    """The modality a ``dropped`` name leaves out or hides at test time (``brain``, ``brain@test``), or None."""
    if dropped == "none":
        return None
    return dropped[: -len(AT_TEST)] if dropped.endswith(AT_TEST) else dropped


def _recon_stages(metrics: Iterable[str]) -> set[str]:
    """Stages whose results have a masked-modelling reconstruction (``<stage>/recon``)."""
    return {m.split("/")[0] for m in metrics if len(m.split("/")) == 2 and m.split("/")[1] == "recon"}


def _not_comparable_reason(metric: str, dropped: str, ref_dropped: str, recon_stages: set[str]) -> str:
    """Why ``metric`` of a cell with ``dropped`` cannot be compared with the reference's at all ("" if it can)."""
    if dropped == ref_dropped:
        return ""
    parts = metric.split("/")
    if len(parts) == 2 and parts[1] == "loss" and parts[0] in recon_stages:
        return f"not comparable: a sum over modalities; compare {parts[0]}/recon or a supervised metric"
    if len(parts) == 3 and parts[1] == "recon" and parts[2] == _dropped_modality(dropped):
        return f"not comparable: the reconstruction term of {parts[2]!r}, which this cell left out or hid"
    return ""


# (seed, fold) -> value of one (variant, dropped, metric)
_Values = dict


def _like_for_like_terms(metric: str, dropped: str, ref_dropped: str, cell_metrics, lookup, cell, ref):
    """For ``<stage>/recon`` of a cell whose modality set differs from the reference's: the per-modality term
    metrics defined on both sides in at least one (seed, fold), the left-out modalities excluded; else None."""
    parts = metric.split("/")
    if dropped == ref_dropped or len(parts) != 2 or parts[1] != "recon":
        return None
    prefix = f"{parts[0]}/recon/"
    excluded = {_dropped_modality(dropped), _dropped_modality(ref_dropped)}
    terms = []
    for term in sorted(m for m in cell_metrics if m.startswith(prefix) and m.count("/") == 2):
        if term[len(prefix) :] in excluded:
            continue
        if _pair_diffs([lookup[(*cell, term)]], [lookup.get((*ref, term), {})]):
            terms.append(term)
    return terms


def _pair_diffs(cell: list[_Values], ref: list[_Values]) -> dict:
    """(seed, fold) -> the sum over terms of cell - reference, where every term is defined on both sides."""
    keys = set(cell[0])
    for values in (*cell[1:], *ref):
        keys &= set(values)
    out = {}
    for key in keys:
        c = [values[key] for values in cell]
        r = [values[key] for values in ref]
        if all(math.isfinite(v) for v in (*c, *r)):
            out[key] = float(sum(a - b for a, b in zip(c, r, strict=True)))
    return out


def _left_out_by_terms(terms: list[str], cell: list[_Values], ref: list[_Values], diffs: dict) -> str:
    """A note on the (seed, fold) pairs a like-with-like sum left out because some term was undefined there."""

    def defined(values: _Values, key) -> bool:
        return key in values and math.isfinite(values[key])

    candidates = {
        key for c, r in zip(cell, ref, strict=True) for key in set(c) & set(r) if defined(c, key) and defined(r, key)
    }  # (seed, fold) where at least one term is defined on both sides
    left_out = _sorted(candidates - set(diffs))
    if not left_out:
        return ""
    why: dict[str, int] = {}
    for key in left_out:
        for term, c, r in zip(terms, cell, ref, strict=True):
            if not (defined(c, key) and defined(r, key)):
                why[term.rsplit("/", 1)[1]] = why.get(term.rsplit("/", 1)[1], 0) + 1
    folds = _sorted({fold for _, fold in candidates} - {fold for _, fold in diffs})
    undefined = ", ".join(f"{m} in {n}" for m, n in sorted(why.items()))
    whole = f"; {len(folds)} fold(s) left out entirely: {', '.join(repr(_plain(f)) for f in folds)}" if folds else ""
    return (
        f"like with like: {len(left_out)} (seed, fold) pair(s) left out where a term was undefined on either side "
        f"({undefined}){whole}"
    )


def _fold_means(diffs: dict) -> tuple[list, np.ndarray, np.ndarray]:
    """Folds, the mean difference over each fold's seeds, and how many seeds each averaged."""
    by_fold: dict = {}
    for (_, fold), d in diffs.items():
        by_fold.setdefault(fold, []).append(d)
    folds = _sorted(by_fold)
    means = np.array([float(np.mean(by_fold[f])) for f in folds])
    return folds, means, np.array([len(by_fold[f]) for f in folds])
