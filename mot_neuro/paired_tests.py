"""The tests of fold-level differences (Wilcoxon signed-rank, Nadeau-Bengio corrected t) and BH within each family.

Each test takes the ``cell - reference`` differences of one comparison, one per fold, and returns a two-sided p
with a note on why it is missing or limited; :func:`_adjust_by_family` turns the p-values of a summary (these and
DeLong's) into Benjamini-Hochberg q-values within each (metric, test).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from mot_neuro.ablation_results import _plain

#: the smallest number of non-zero pairs for which a two-sided signed-rank p can be below 0.05 (2 / 2**6 = 0.031)
MIN_PAIRS_FOR_SIGNIFICANCE = 6
#: fold differences whose range is at most this fraction of their largest magnitude have no fold-to-fold variance
ZERO_VARIANCE_RTOL = 1e-12

# how the ``tests`` column of a summary names these tests
WILCOXON = "Wilcoxon signed-rank on fold means"
CORRECTED_T = "Nadeau-Bengio corrected t on fold means"

# (p column, q column, name used in notes) of each test of a summary, in the order they are reported
_TESTS = (("p_value", "q_value", "Wilcoxon"), ("p_corrected_t", "q_corrected_t", "corrected t"),
          ("p_delong", "q_delong", "DeLong"))  # fmt: skip


def _wilcoxon(d: np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p of fold-level differences, and a note on why it is missing or limited."""
    n = d.size
    if n < 2:
        return np.nan, f"{n} fold pair(s): no test (Wilcoxon needs >= 2)"
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return 1.0, "all fold differences zero: Wilcoxon p = 1"
    p = float(stats.wilcoxon(d).pvalue)
    if nonzero < MIN_PAIRS_FOR_SIGNIFICANCE:
        # zero differences are dropped by the test, so the bound depends on the non-zero ones
        return p, (
            f"{nonzero} non-zero fold pair(s): smallest attainable Wilcoxon p is {2.0 / 2**nonzero:.4g}; "
            f"p < 0.05 needs >= {MIN_PAIRS_FOR_SIGNIFICANCE} pairs (folds; more seeds do not add pairs)"
        )
    return p, ""


def _corrected_t(d: np.ndarray, ratio: float) -> tuple[float, str]:
    """Nadeau and Bengio's corrected resampled t-test of fold-level differences ``d``, two-sided."""
    j = d.size
    if j < 2:
        return np.nan, f"{j} fold pair(s): no corrected t (needs >= 2)"
    if not np.any(d):
        return 1.0, "all fold differences zero: corrected t p = 1"
    # equal up to rounding (a constant shift of 0.1 leaves a ptp of ~1e-17): one relative tolerance, so an exact
    # and a rounded constant difference get the same answer rather than NaN and p ~ 1e-78
    if float(np.ptp(d)) <= ZERO_VARIANCE_RTOL * float(np.max(np.abs(d))):
        return np.nan, "no fold-to-fold variance (every fold difference equal, non-zero): the t-test is undefined"
    t = float(d.mean()) / math.sqrt((1.0 / j + ratio) * float(d.var(ddof=1)))
    return float(2.0 * stats.t.sf(abs(t), j - 1)), ""


def _resolve_ratio(test_train_ratio, folds: list) -> float:
    if isinstance(test_train_ratio, Mapping):
        missing = [_plain(f) for f in folds if f not in test_train_ratio]
        if missing:
            raise ValueError(f"test_train_ratio has no ratio for fold(s) {missing}; it has {list(test_train_ratio)}")
        return float(np.mean([float(test_train_ratio[f]) for f in folds]))
    return float(test_train_ratio)


def _check_ratio(test_train_ratio) -> None:
    if test_train_ratio is None:
        return
    values = test_train_ratio.values() if isinstance(test_train_ratio, Mapping) else [test_train_ratio]
    for value in values:
        number = isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)
        if not (number and math.isfinite(value) and value > 0):
            raise ValueError(
                f"test_train_ratio must be n_test / n_train > 0 (a number or fold -> number); got {value!r}"
            )


def _adjust_by_family(summary: pd.DataFrame) -> pd.DataFrame:
    """Benjamini-Hochberg q-values of ``summary``, within each (metric, test); returns ``summary``, changed in place.

    Every comparison of a metric is against the same reference: one family per (metric, test), whose members are
    the rows flagged in the column ``_<p column>``. Members with a NaN p are untestable: they keep q NaN, and
    every member's note says how many of the family were untestable. ``n_untestable`` counts those of the
    Wilcoxon family on every row of the metric.
    """
    by_metric = summary.groupby("metric", sort=False).indices
    untestable_count = np.zeros(len(summary), dtype=int)
    family_notes: list[list[str]] = [[] for _ in range(len(summary))]
    for p_col, q_col, name in _TESTS:
        p = summary[p_col].to_numpy(dtype=float)
        member = summary[f"_{p_col}"].to_numpy(dtype=bool)
        q = np.full(len(summary), np.nan)
        for metric, where in by_metric.items():
            family = where[member[where]]
            tested = family[np.isfinite(p[family])]
            if tested.size:
                q[tested] = stats.false_discovery_control(p[tested])
            untestable = int(family.size - tested.size)
            if p_col == "p_value":
                untestable_count[where] = untestable
            if untestable:
                for i in family:
                    family_notes[i].append(
                        f"{untestable} of {family.size} {name} comparison(s) of {metric} untestable (p NaN): "
                        f"BH over the other {tested.size}"
                    )
        summary[q_col] = q
    summary["n_untestable"] = untestable_count
    summary["note"] = [
        "; ".join(filter(None, [note, *extra])) for note, extra in zip(summary["note"], family_notes, strict=True)
    ]
    return summary
