"""Statistics and plots of an ablation study: dense vs MoT partial untyings, leave-one-modality-out.

An ablation grid runs *cells*: a model ``variant`` (``dense``, ``mot_ffn``, ``mot_ffn_attention``, ``mot``, ...),
a ``dropped`` modality (``"none"``, the name of the modality left out of training, or ``"<modality>@test"`` for
the full model tested with that modality hidden), a ``seed`` and a ``fold``. Each finished cell yields final
metrics; :func:`tidy_results` puts them in one long table, one row per (variant, dropped, seed, fold, metric).

How cells are compared (:func:`summarize`)
------------------------------------------
Every (variant, dropped) is compared with one *reference*, by default the full model ``("mot", "none")``.

*The unit of replication is the fold, not the (seed, fold) cell.* Seeds of one fold share its training and test
subjects, so their differences to the reference share that fold's luck; treating seeds x folds as independent
pairs makes the tests anti-conservative (in simulations with fold effects and no true difference it rejected
10-20% of the time at a nominal 5%; on fold means, 5%: see tests/test_analysis_reference.py). So, per metric,
the difference ``cell - reference`` is first computed for every (seed, fold) defined on both sides, then
averaged over the seeds of each fold (only seeds defined on both sides of that fold enter, so both sides average
the same seeds); the tests run on these *fold-level differences*, one per fold. More seeds make each fold's
difference less noisy, they do not add pairs.

Three tests, each two-sided, each reported with its own p and q column:

* ``p_value`` - Wilcoxon signed-rank test of the fold-level differences (``scipy.stats.wilcoxon`` with its
  defaults: ``zero_method="wilcox"`` drops zero differences, no continuity correction, ``method="auto"``). In
  scipy 1.17, against which this was written, ``"auto"`` resolves as follows, with n the number of differences
  *including* zeros: n > 50 -> normal approximation (tie-corrected variance); otherwise, with no ties and no
  zeros -> the exact null distribution of the statistic; with ties or zeros and n <= 13 -> an exhaustive sign-flip
  permutation test (``scipy.stats.permutation_test``, deterministic since 2**13 < its 9999 resamples); with ties
  or zeros and 14 <= n <= 50 -> the normal approximation. Other scipy versions resolve ``"auto"`` in their own
  way (see their ``scipy.stats.wilcoxon`` notes). The test needs no normality, which five or ten fold-level
  differences cannot support. Its null distribution is discrete: with k non-zero differences the smallest
  attainable two-sided p is ``2 / 2**k`` (0.0625 for 5 folds, 0.03125 for 6), so nothing is significant at 0.05
  by this test with fewer than 6 folds, however many seeds; the ``note`` says so.
* ``p_corrected_t`` - the corrected resampled t-test of Nadeau and Bengio (2003, "Inference for the
  generalization error"), which accounts for the overlap of the training sets of cross-validation folds:
  ``t = mean(d) / sqrt((1/J + n_test/n_train) * var(d, ddof=1))`` on ``J - 1`` degrees of freedom, with ``d``
  the J fold-level differences and ``n_test/n_train`` the ratio of test to training subjects, which only the
  caller knows: pass ``test_train_ratio`` (one number, or fold -> ratio, then the mean over the folds paired).
  Without it this test is not run and the note says so. Unlike the signed-rank test it can reach p < 0.05 with
  5 folds, at the price of assuming roughly normal fold differences. Fold differences that are all equal and
  non-zero (their range within 1e-12 of their largest magnitude, so rounding does not decide) have no
  fold-to-fold variance: the t-test is undefined, p is NaN with a note, and the comparison counts as untestable.
* ``p_delong`` - DeLong's test of two correlated AUROCs (:func:`delong_test`), on the rows of metrics named
  ``<stage>/<target>/auroc`` when ``predictions`` (per-subject scores) of that stage are given: predictions
  with a ``stage`` column are matched to the metric's stage; predictions without one are test-stage
  predictions, used for ``test/<target>/auroc`` only (other stages' rows get no DeLong p and are in no DeLong
  family). It compares the *pooled out-of-fold AUROC*: the cell's and the reference's finite predictions are
  matched per (fold, seed, subject), so both sides average the same seeds for every subject; every subject's
  score is averaged over those seeds, the test subjects of all folds are pooled (each subject is tested in
  exactly one fold), and the two pooled scores are compared. The note says how many (subject, seed)
  predictions the matching left out. This is a different number from ``mean_diff`` (the mean of per-fold
  AUROC differences): ``delong_diff`` reports it. It treats the fitted models as fixed, so it speaks to these
  models on this cohort, not to the training procedure's variability. Two models that rank the subjects
  identically (e.g. one score a monotone transform of the other) differ by zero at every placement: p = 1.

Undefined values: a metric that was undefined on a cell's evaluated set (AUROC on a test fold holding one class,
r2 of a constant target) is logged as NaN. It is never averaged or paired as a number: ``n_cells`` counts the
cells run, ``n`` the defined ones that ``mean`` and ``sd`` use (NaN when none, ``sd`` when fewer than 2), and
pairs undefined on either side are left out of the fold means; the ``note`` says how many cells were undefined.

Multiple comparisons: within each metric, all cells are tested against the same reference, so the p-values of
one (metric, test) form one family, adjusted with Benjamini-Hochberg (``scipy.stats.false_discovery_control``):
a q is the smallest false discovery rate at which that comparison would be called a discovery. The family does
not shrink with the data: a comparison whose fold differences are all zero enters with p = 1 (for every test;
for DeLong, identical rankings of the pooled subjects); one with fewer than 2 fold pairs (or, for the corrected
t, equal non-zero fold differences; for DeLong, a single class) cannot be tested, keeps p = NaN, and is
counted: ``n_untestable`` and the note of every row of that metric say how many of its comparisons were
untestable (so a reader sees the size of the family that was adjusted). Metrics are adjusted separately because
they are different questions (and usually strongly correlated).

Comparable metrics: a masked-modelling loss is a sum of one reconstruction term per active modality
(``<stage>/recon`` = the sum of ``<stage>/recon/<modality>``, and ``<stage>/loss`` includes it), so leaving a
modality out (or hiding it at test time, whose term is then undefined) lowers the total by construction. Hence:

* ``<stage>/recon`` of a cell whose modality set differs from the reference's is compared like with like: the
  paired difference is the sum, over the modalities whose term ``<stage>/recon/<modality>`` is defined on both
  sides (the left-out modality never counts), of cell term minus reference term; the note names the modalities.
  A (seed, fold) where one of these terms is undefined on either side is left out (the sum would cover fewer
  modalities there); the note says how many, which term, and which folds that removed entirely. The cell's own
  ``mean`` and ``sd`` stay the logged totals.
* ``<stage>/loss`` of such a cell, when the results have ``<stage>/recon`` metrics, is not comparable: its
  differences and p-values are NaN, ``comparable`` is False and the note says to compare ``<stage>/recon`` or a
  supervised metric. So is ``<stage>/recon/<m>`` of the cell that left ``m`` out (nothing was reconstructed).
  Non-comparable rows are no hypotheses and are not part of any FDR family.

Direction: ``worse`` says whether the cell is worse than the reference on average (the sign of ``mean_diff``),
using whether the metric is higher-is-better (names ending in r2, pearson, auroc, auprc, accuracy) or
lower-is-better (loss, mae, mse, brier, ece, and reconstruction losses); pass ``higher_is_better`` for other
names. :func:`modality_contributions` turns the leave-one-out differences into "how much the metric drops
without this modality" (positive = the modality helps), and refuses metrics that are not comparable.

Training efficiency (:func:`steps_to_reference_quality`) is the MoT paper's measure: how many training steps a
variant needs to reach the dense model's validation loss, as a fraction of the dense model's steps (the paper
reports 0.35-0.56 at 7B). A run that never gets there is right-censored at the ratio of its last step, and the
summary is a Kaplan-Meier median and a restricted mean (the KM estimate of E[min(ratio, tau)], with one tau for
all variants), so runs that fail are not silently left out. With FLOPs per step it becomes a compute ratio.

This module uses pandas, numpy, scipy and (lazily, in the plot) matplotlib only: no torch, so it runs anywhere the
results tables are.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from data_adapters.io import atomic_write_bytes

__all__ = [
    "CELL_KEYS",
    "PREDICTION_COLUMNS",
    "RESULT_COLUMNS",
    "ablation_figure",
    "delong_test",
    "modality_contributions",
    "plot_ablation",
    "steps_to_reference_quality",
    "summarize",
    "tidy_results",
    "write_report",
]

CELL_KEYS = ("variant", "dropped", "seed", "fold")
RESULT_COLUMNS = (*CELL_KEYS, "metric", "value")
CURVE_COLUMNS = (*CELL_KEYS, "step", "value")
#: per-subject predictions for DeLong's test: ``row`` is the subject's position in the cohort, ``truth`` 0/1 and
#: ``score`` P(class 1)
PREDICTION_COLUMNS = (*CELL_KEYS, "target", "row", "truth", "score")

#: the smallest number of non-zero pairs for which a two-sided signed-rank p can be below 0.05 (2 / 2**6 = 0.031)
MIN_PAIRS_FOR_SIGNIFICANCE = 6

#: fold differences whose range is at most this fraction of their largest magnitude have no fold-to-fold variance
ZERO_VARIANCE_RTOL = 1e-12
#: DeLong placements (multiples of 1 / (2 n)) that differ by less than this are equal
PLACEMENT_ATOL = 1e-12

#: the suffix of a ``dropped`` name for a modality hidden at test time rather than left out of training
AT_TEST = "@test"

WILCOXON = "Wilcoxon signed-rank on fold means"
CORRECTED_T = "Nadeau-Bengio corrected t on fold means"
DELONG = "DeLong on pooled out-of-fold AUROC"

_HIGHER_IS_BETTER_SUFFIXES = ("r2", "pearson", "auroc", "auprc", "accuracy")
# "mse" also covers "rmse"
_LOWER_IS_BETTER_SUFFIXES = ("loss", "mae", "mse", "brier", "ece")

_SUMMARY_COLUMNS = [
    "variant",
    "dropped",
    "metric",
    "n_cells",
    "n",
    "mean",
    "sd",
    "n_pairs",
    "n_seeds",
    "mean_diff",
    "sd_diff",
    "p_value",
    "q_value",
    "p_corrected_t",
    "q_corrected_t",
    "delong_diff",
    "p_delong",
    "q_delong",
    "n_untestable",
    "tests",
    "worse",
    "higher_is_better",
    "is_reference",
    "comparable",
    "note",
]
# what modality_contributions and the plot need (summaries written before the other columns existed still work)
_CORE_SUMMARY_COLUMNS = [
    "variant", "dropped", "metric", "n_cells", "n", "mean", "sd", "n_pairs", "mean_diff", "sd_diff",
    "p_value", "q_value", "worse", "higher_is_better", "is_reference", "note",
]  # fmt: skip
# (p column, q column, name used in notes) of each test, in the order they are reported
_TESTS = (("p_value", "q_value", "Wilcoxon"), ("p_corrected_t", "q_corrected_t", "corrected t"),
          ("p_delong", "q_delong", "DeLong"))  # fmt: skip


def _higher_is_better(metric: str, overrides: Mapping[str, bool] | None = None) -> bool:
    """Whether larger values of ``metric`` are better: ``overrides`` first, then the name's ending."""
    if overrides and metric in overrides:
        return bool(overrides[metric])
    name = metric.lower()
    if "recon" in name.split("/"):  # masked-token reconstruction losses: test/recon, test/recon/<modality>
        return False
    if name.endswith(_HIGHER_IS_BETTER_SUFFIXES):
        return True
    if name.endswith(_LOWER_IS_BETTER_SUFFIXES):
        return False
    raise ValueError(
        f"cannot tell whether metric {metric!r} is higher- or lower-is-better from its name; "
        f"pass higher_is_better={{{metric!r}: True or False}}"
    )


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def _plain(value):
    # .item(): numpy scalars would print as np.int64(0) instead of 0
    return value.item() if isinstance(value, np.generic) else value


def _cell_name(row: Mapping) -> str:
    return ", ".join(f"{k}={_plain(row[k])!r}" for k in RESULT_COLUMNS[:-1])


def tidy_results(records: Iterable[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, dropped, seed, fold, metric) with its ``value``, sorted.

    ``records`` are mappings with the keys ``variant, dropped, seed, fold, metric, value`` (extra keys are
    ignored), or a DataFrame with those columns. ``variant``, ``dropped`` and ``metric`` become strings and
    ``value`` a float; a repeated cell is an error naming it, because silently averaging or keeping one of two
    results for the same run would hide a bookkeeping mistake in the grid.
    """
    if isinstance(records, pd.DataFrame):
        df = records.copy()
    else:
        rows = []
        for i, rec in enumerate(records):
            missing = [k for k in RESULT_COLUMNS if k not in rec]
            if missing:
                raise ValueError(f"result record {i} lacks key(s) {missing}: {dict(rec)!r}")
            rows.append({k: rec[k] for k in RESULT_COLUMNS})
        df = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    _require_columns(df, RESULT_COLUMNS, "results")
    df = df.loc[:, list(RESULT_COLUMNS)]
    for col in ("variant", "dropped", "metric"):
        df[col] = df[col].astype(str)
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)

    key = list(RESULT_COLUMNS[:-1])
    dup = df.duplicated(subset=key, keep=False)
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise ValueError(
            f"duplicate result for cell {_cell_name(first)} ({int(dup.sum())} duplicated rows in all); "
            "each (variant, dropped, seed, fold, metric) must appear once"
        )
    return df.sort_values(key, kind="mergesort").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- the tests
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


def delong_test(truth, score_a, score_b) -> dict:
    """DeLong's test of two correlated AUROCs measured on the same subjects, two-sided.

    ``truth`` holds 0/1 labels (1 = the positive class) and ``score_a``, ``score_b`` each model's score for the
    same subjects, larger = more likely positive. Subjects with a non-finite label or score are left out.
    Computed with the midrank ("fast DeLong", Sun and Xu 2014) form of DeLong, DeLong and Clarke-Pearson
    (1988): each positive's placement is the fraction of negatives scored below it (ties count one half), each
    negative's the fraction of positives scored above it; the AUROC is the mean placement, and the variance of
    ``auc_a - auc_b`` is ``var(V10_a - V10_b) / n_pos + var(V01_a - V01_b) / n_neg`` (variances with ddof=1).

    Returns a dict: ``auc_a, auc_b, diff`` (a - b), ``se`` (of diff), ``z``, ``p_value`` (two-sided, normal),
    ``n_pos, n_neg`` (the subjects used: finite label and both scores) and ``reason``, empty when the test ran.

    *Identical rankings*: when every placement of ``a`` equals that of ``b`` (within 1e-12; the two models rank
    the subjects identically: the same scores, a monotone transform of them, or a constant score in each model),
    ``diff`` and ``se`` are 0 and the comparison is an all-zero difference: ``p_value`` 1, ``z`` 0 and reason
    "identical rankings", as the fold-level tests give p = 1 to all-zero differences (so it stays in the FDR
    family). Otherwise ``se``, ``z`` and ``p_value`` (and, with one class only, the AUROCs) are NaN, with the
    reason: a single class, fewer than 2 subjects of a class (no variance), or a standard error of 0 with
    placements that differ (a non-zero difference with no spread: z would be infinite). Never a number for an
    undefined test.
    """
    truth = np.asarray(truth, dtype=float).ravel()
    a = np.asarray(score_a, dtype=float).ravel()
    b = np.asarray(score_b, dtype=float).ravel()
    if not truth.size == a.size == b.size:
        raise ValueError(f"truth, score_a and score_b differ in length: {truth.size}, {a.size}, {b.size}")
    keep = np.isfinite(truth) & np.isfinite(a) & np.isfinite(b)
    truth, a, b = truth[keep], a[keep], b[keep]
    labels = set(np.unique(truth).tolist())
    if not labels <= {0.0, 1.0}:
        raise ValueError(f"truth must be 0/1 for DeLong's test; it holds {sorted(labels)[:10]}")
    pos = truth == 1.0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    out = {
        "auc_a": np.nan,
        "auc_b": np.nan,
        "diff": np.nan,
        "se": np.nan,
        "z": np.nan,
        "p_value": np.nan,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "reason": "",
    }
    if n_pos == 0 or n_neg == 0:
        out["reason"] = f"one class only ({n_pos} positive, {n_neg} negative): AUROC undefined"
        return out

    def placements(score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        x, y = score[pos], score[~pos]
        joint = stats.rankdata(np.concatenate([x, y]))  # midranks over everyone
        v10 = (joint[:n_pos] - stats.rankdata(x)) / n_neg  # negatives below each positive (+ half the ties)
        v01 = 1.0 - (joint[n_pos:] - stats.rankdata(y)) / n_pos  # positives above each negative (+ half)
        return float(v10.mean()), v10, v01

    auc_a, v10_a, v01_a = placements(a)
    auc_b, v10_b, v01_b = placements(b)
    out.update(auc_a=auc_a, auc_b=auc_b, diff=auc_a - auc_b)
    if n_pos < 2 or n_neg < 2:
        out["reason"] = f"{n_pos} positive, {n_neg} negative: the variance needs >= 2 of each class"
        return out
    d10, d01 = v10_a - v10_b, v01_a - v01_b
    if np.all(np.abs(d10) <= PLACEMENT_ATOL) and np.all(np.abs(d01) <= PLACEMENT_ATOL):
        # the same ranking of every positive against every negative: an all-zero difference, p = 1
        out.update(diff=0.0, se=0.0, z=0.0, p_value=1.0)
        out["reason"] = "identical rankings (every placement difference zero): p = 1"
        return out
    # variances of the differences: algebraically the usual S10/S01 covariance form, without its cancellation
    var = float(np.var(d10, ddof=1)) / n_pos + float(np.var(d01, ddof=1)) / n_neg
    se = math.sqrt(max(var, 0.0))
    out["se"] = se
    if se <= 1e-12:
        out["se"] = 0.0
        out["reason"] = f"standard error 0 with a non-zero difference ({out['diff']:.4g}; no spread): no test"
        return out
    z = out["diff"] / se
    out.update(z=z, p_value=float(2.0 * stats.norm.sf(abs(z))))
    return out


# ------------------------------------------------------------------------------------- what is comparable
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


def _sorted(values: Iterable) -> list:
    values = list(values)
    try:
        return sorted(values)
    except TypeError:  # folds of mixed types: any fixed order will do
        return sorted(values, key=repr)


def _fold_means(diffs: dict) -> tuple[list, np.ndarray, np.ndarray]:
    """Folds, the mean difference over each fold's seeds, and how many seeds each averaged."""
    by_fold: dict = {}
    for (_, fold), d in diffs.items():
        by_fold.setdefault(fold, []).append(d)
    folds = _sorted(by_fold)
    means = np.array([float(np.mean(by_fold[f])) for f in folds])
    return folds, means, np.array([len(by_fold[f]) for f in folds])


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


# -------------------------------------------------------------------------------------------- DeLong wiring
def _auroc_target(metric: str) -> tuple[str, str] | None:
    parts = metric.split("/")
    if len(parts) >= 3 and parts[-1] == "auroc":
        return parts[0], "/".join(parts[1:-1])
    return None


def _tidy_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    _require_columns(predictions, PREDICTION_COLUMNS, "predictions")
    extra = ["stage"] if "stage" in predictions.columns else []
    df = predictions.loc[:, [*PREDICTION_COLUMNS, *extra]].copy()
    for col in ("variant", "dropped", "target", *extra):
        df[col] = df[col].astype(str)
    for col in ("truth", "score"):
        df[col] = pd.to_numeric(df[col], errors="raise").astype(float)
    dup = df.duplicated(subset=[*CELL_KEYS, "target", "row", *extra])
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise ValueError(
            f"predictions repeat subject row={_plain(first['row'])!r} for variant={first['variant']!r}, "
            f"dropped={first['dropped']!r}, seed={_plain(first['seed'])!r}, fold={_plain(first['fold'])!r}, "
            f"target={first['target']!r}"
        )
    return df


def _check_subjects(side: pd.DataFrame, what: str) -> None:
    """Each subject of one side is tested in one fold and has one truth over its seeds."""
    folds = side.groupby("row")["fold"].nunique()
    if (folds > 1).any():
        row = _plain(folds.index[folds.to_numpy() > 1][0])
        raise ValueError(f"predictions of {what}: subject row={row!r} is in more than one test fold")
    truths = side.groupby("row")["truth"].nunique()
    if (truths > 1).any():
        row = _plain(truths.index[truths.to_numpy() > 1][0])
        raise ValueError(f"predictions of {what}: subject row={row!r} has different truths in different seeds")


def _delong_stages(preds: pd.DataFrame) -> set[str]:
    """Stages the predictions are of: their ``stage`` column, or ``test`` alone without one."""
    return set(preds["stage"]) if "stage" in preds.columns else {"test"}


def _delong_for(preds: pd.DataFrame, cell: tuple[str, str], ref: tuple[str, str], stage: str, target: str):
    """(result of delong_test or None, note) for the pooled out-of-fold scores of cell vs reference.

    The two sides are inner-joined on (fold, seed, row) after dropping non-finite scores and truths, so for every
    subject both sides average the same seeds; the note says how many predictions that left out."""
    sel = preds["target"] == target
    if "stage" in preds.columns:
        sel &= preds["stage"] == stage
    preds = preds.loc[sel & np.isfinite(preds["score"]) & np.isfinite(preds["truth"])]
    keys = ["fold", "seed", "row"]
    sides = {}
    for name, (variant, dropped) in (("cell", cell), ("reference", ref)):
        side = preds.loc[(preds["variant"] == variant) & (preds["dropped"] == dropped), [*keys, "truth", "score"]]
        if side.empty:
            return None, f"DeLong not run: no predictions of target {target!r} for the {name}"
        _check_subjects(side, f"{name} {cell if name == 'cell' else ref}")
        sides[name] = side
    labels = set(np.unique(pd.concat([sides["cell"]["truth"], sides["reference"]["truth"]])).tolist())
    if not labels <= {0.0, 1.0}:
        return None, f"DeLong not run: target {target!r} is not binary 0/1 (truth holds {sorted(labels)[:5]})"
    # (subject, seed) predictions present on both sides: both sides average the same seeds for every subject
    joined = sides["cell"].merge(sides["reference"], on=keys, suffixes=("_cell", "_ref"))
    differ = joined["truth_cell"] != joined["truth_ref"]
    if differ.any():
        row = _plain(joined.loc[differ, "row"].iloc[0])
        raise ValueError(
            f"predictions of target {target!r}: subject row={row!r} has different truths in {cell} and {ref}"
        )
    if joined.empty:
        return None, "DeLong not run: no (subject, seed) with a finite prediction on both sides"
    both = joined.groupby("row").agg(
        truth=("truth_cell", "first"), score_cell=("score_cell", "mean"), score_ref=("score_ref", "mean")
    )
    result = delong_test(both["truth"], both["score_cell"], both["score_ref"])
    notes = [f"DeLong: {result['reason']}" if result["reason"] else ""]
    unmatched = {name: len(side) - len(joined) for name, side in sides.items()}
    if any(unmatched.values()):
        notes.append(
            f"DeLong on {len(both)} subjects: {unmatched['cell']} of the cell's and {unmatched['reference']} of "
            "the reference's (subject, seed) predictions left out because the other side lacked them (each "
            "subject's score averages the same seeds on both sides)"
        )
    return result, "; ".join(filter(None, notes))


# ------------------------------------------------------------------------------------------------- summarize
def summarize(
    results: pd.DataFrame,
    *,
    reference: tuple[str, str] = ("mot", "none"),
    higher_is_better: Mapping[str, bool] | None = None,
    test_train_ratio: float | Mapping[object, float] | None = None,
    predictions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (variant, dropped, metric): the cell's spread and its comparison with ``reference``.

    Pairing (see the module docstring): per (seed, fold) ``cell - reference`` where both are defined, averaged
    over the seeds of each fold; every test runs on these fold-level differences. Columns:

    * ``variant, dropped, metric``;
    * ``n_cells``: cells with a row for the metric, NaN included; ``n``: those where it is defined (not NaN);
      ``mean``, ``sd`` (ddof=1) over the defined ones: the cell's own values as logged;
    * ``n_pairs``: fold-level pairs (folds with at least one seed defined on both sides); ``n_seeds``: seeds
      averaged per fold (the largest number when folds differ; the note then gives the range);
    * ``mean_diff``, ``sd_diff`` (ddof=1): mean and sd of the fold-level differences ``cell - reference``;
    * ``p_value``, ``q_value``: two-sided Wilcoxon signed-rank test of the fold-level differences and its
      Benjamini-Hochberg q within the metric;
    * ``p_corrected_t``, ``q_corrected_t``: Nadeau and Bengio's corrected resampled t-test of the same
      differences, with ``test_train_ratio`` (n_test / n_train: one number, or fold -> number, then the mean
      over the folds paired) and its q; NaN, and a note, without ``test_train_ratio``;
    * ``delong_diff``, ``p_delong``, ``q_delong``: on rows of metrics named ``<stage>/<target>/auroc`` when
      ``predictions`` of that stage are given (without a ``stage`` column: ``test`` only), the pooled
      out-of-fold AUROC of the cell minus the reference's and DeLong's test of it (see below) and its q; NaN
      elsewhere;
    * ``n_untestable``: how many comparisons of this metric got no Wilcoxon p (fewer than 2 fold pairs): the BH
      family was the other ones (the note gives the same count for the other tests);
    * ``tests``: the tests behind this row's p-values, each with its number of folds (or subjects);
    * ``worse``: the mean difference points the wrong way for the metric; ``higher_is_better``;
      ``is_reference``; ``comparable``: False where the metric cannot be compared with the reference's (a
      masked-modelling loss summed over different modality sets), with every difference and p NaN;
    * ``note``: why a test is missing or limited, undefined cells, like-with-like comparisons, family sizes.

    The reference rows have ``n_pairs`` 0, NaN differences, p and q, and ``worse`` False.

    Every p is two-sided. A comparison whose fold differences are all zero gets p = 1 from each test (DeLong: the
    pooled scores rank the subjects identically); one with fewer than 2 fold pairs gets NaN, is counted as
    untestable, and stays out of the BH family of its (metric, test), which is otherwise every comparable
    comparison of that metric. So does a corrected t of equal non-zero fold differences (no fold-to-fold
    variance: the t-test is undefined) and a DeLong test that is undefined (e.g. one class).

    ``predictions``: a DataFrame with columns ``variant, dropped, seed, fold, target, row, truth, score`` (and
    optionally ``stage``; without it they are the test stage's): one row per test subject of each cell, ``row``
    the subject's position in the cohort (the same subject in every cell of a fold), ``truth`` 0/1 and
    ``score`` P(class 1). For each compared cell and each ``<stage>/<target>/auroc`` metric of a stage the
    predictions have, the cell's and the reference's predictions with finite scores are matched per (fold,
    seed, subject), each subject's score is averaged over its matched seeds (the same ones on both sides), the
    test subjects of all folds are pooled, and DeLong's test compares the two pooled out-of-fold AUROCs; the
    note counts the (subject, seed) predictions left out because the other side lacked them.

    ``higher_is_better`` maps metric names to a direction; other names are recognised by their ending (see the
    module docstring) or rejected.
    """
    results = tidy_results(results)
    _check_ratio(test_train_ratio)
    preds = _tidy_predictions(predictions) if predictions is not None else None
    delong_stages = _delong_stages(preds) if preds is not None else set()
    ref_key = (str(reference[0]), str(reference[1]))
    cells = set(zip(results["variant"], results["dropped"], strict=True))
    if ref_key not in cells:
        raise ValueError(
            f"reference cell (variant={ref_key[0]!r}, dropped={ref_key[1]!r}) is not in the results; "
            f"cells present: {sorted(cells)}"
        )
    recon_stages = _recon_stages(set(results["metric"]))
    # plain dicts: (variant, dropped, metric) -> {(seed, fold): value}; pandas indexing per comparison is slow
    lookup: dict[tuple[str, str, str], _Values] = {}
    columns = [results[c].tolist() for c in RESULT_COLUMNS]
    for variant, dropped, seed, fold, metric, value in zip(*columns, strict=True):
        lookup.setdefault((variant, dropped, metric), {})[(seed, fold)] = value
    metrics_of: dict[tuple[str, str], set[str]] = {}
    for variant, dropped, metric in lookup:
        metrics_of.setdefault((variant, dropped), set()).add(metric)

    rows = []
    for key in sorted(lookup):
        variant, dropped, metric = key
        cell_values = np.fromiter(lookup[key].values(), dtype=float)
        values = cell_values[np.isfinite(cell_values)]
        undefined = int(cell_values.size - values.size)
        row = {
            "variant": variant,
            "dropped": dropped,
            "metric": metric,
            "n_cells": int(cell_values.size),
            "n": int(values.size),
            "mean": float(values.mean()) if values.size else np.nan,
            "sd": float(values.std(ddof=1)) if values.size > 1 else np.nan,
            "n_pairs": 0,
            "n_seeds": 0,
            "mean_diff": np.nan,
            "sd_diff": np.nan,
            "p_value": np.nan,
            "p_corrected_t": np.nan,
            "delong_diff": np.nan,
            "p_delong": np.nan,
            "tests": "",
            "worse": False,
            "higher_is_better": _higher_is_better(metric, higher_is_better),
            "is_reference": (variant, dropped) == ref_key,
            "comparable": True,
            # which BH families the row belongs to
            "_p_value": False,
            "_p_corrected_t": False,
            "_p_delong": False,
        }
        notes = [f"{undefined} of {cell_values.size} cell(s) undefined (NaN), left out of mean, sd and pairs"]
        notes = notes if undefined else []
        if row["is_reference"]:
            row["note"] = "; ".join(["reference", *notes])
            rows.append(row)
            continue
        reason = _not_comparable_reason(metric, dropped, ref_key[1], recon_stages)
        if reason:
            row["comparable"] = False
            row["note"] = "; ".join([reason, *notes])
            rows.append(row)
            continue

        tests: list[str] = []
        terms = _like_for_like_terms(metric, dropped, ref_key[1], metrics_of[(variant, dropped)], lookup,
                                     (variant, dropped), ref_key)  # fmt: skip
        if terms is None:
            diffs = _pair_diffs([lookup[key]], [lookup.get((*ref_key, metric), {})])
        elif terms:
            cell_terms = [lookup[(variant, dropped, t)] for t in terms]
            ref_terms = [lookup[(*ref_key, t)] for t in terms]
            diffs = _pair_diffs(cell_terms, ref_terms)
            modalities = ", ".join(t.rsplit("/", 1)[1] for t in terms)
            notes.append(
                f"compared like with like: sum over {modalities} of (cell - reference) {metric}/<modality> terms "
                "(the totals sum different modality sets; mean and sd are the cell's logged totals)"
            )
            notes.append(_left_out_by_terms(terms, cell_terms, ref_terms, diffs))
        else:
            stage = metric.split("/")[0]
            row["comparable"] = False
            row["note"] = "; ".join(
                [
                    f"not comparable: a sum over modalities, and no {stage}/recon/<modality> term is defined on "
                    "both sides to compare like with like",
                    *notes,
                ]
            )
            rows.append(row)
            continue

        row["_p_value"] = True
        row["_p_corrected_t"] = test_train_ratio is not None
        if not diffs:
            notes.append("no (seed, fold) defined on both sides: no test")
        else:
            folds, d, seeds = _fold_means(diffs)
            row["n_pairs"] = int(d.size)
            row["n_seeds"] = int(seeds.max())
            if seeds.min() != seeds.max():
                notes.append(f"seeds per fold unequal ({int(seeds.min())}-{int(seeds.max())})")
            row["mean_diff"] = float(d.mean())
            row["sd_diff"] = float(d.std(ddof=1)) if d.size > 1 else np.nan
            row["worse"] = bool(row["mean_diff"] < 0 if row["higher_is_better"] else row["mean_diff"] > 0)
            each = f"{int(seeds.max())} seed(s) each" if seeds.min() == seeds.max() else "seeds averaged"
            row["p_value"], note = _wilcoxon(d)
            notes.append(note)
            if np.isfinite(row["p_value"]):
                tests.append(f"{WILCOXON} ({d.size} folds, {each})")
            if test_train_ratio is not None:
                ratio = _resolve_ratio(test_train_ratio, folds)
                row["p_corrected_t"], note = _corrected_t(d, ratio)
                notes.append(note)
                if np.isfinite(row["p_corrected_t"]):
                    tests.append(f"{CORRECTED_T} ({d.size} folds, n_test/n_train={ratio:.3g})")
        if test_train_ratio is None:
            notes.append("corrected t not run: pass test_train_ratio (n_test / n_train)")

        target = _auroc_target(metric)
        if preds is not None and target is not None and target[0] not in delong_stages:
            # not a DeLong hypothesis: no predictions of this stage (without a stage column they are test's)
            notes.append(f"DeLong not run: no {target[0]}-stage predictions")
        elif preds is not None and target is not None:
            row["_p_delong"] = True
            result, note = _delong_for(preds, (variant, dropped), ref_key, *target)
            notes.append(note)
            if result is not None:
                row["delong_diff"] = result["diff"]
                row["p_delong"] = result["p_value"]
                if np.isfinite(row["p_delong"]):
                    tests.append(f"{DELONG} ({result['n_pos'] + result['n_neg']} subjects)")
        row["tests"] = "; ".join(tests)
        row["note"] = "; ".join(filter(None, notes))
        rows.append(row)

    summary = pd.DataFrame(rows)
    # BH within each (metric, test): every comparison of a metric is against the same reference, one family
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
    return summary.loc[:, _SUMMARY_COLUMNS]


def _reference_cell(summary: pd.DataFrame, metric: str) -> tuple[str, str]:
    ref = summary.loc[summary["is_reference"].astype(bool) & (summary["metric"] == metric)]
    if ref.empty:
        raise ValueError(f"summary has no reference row for metric {metric!r}")
    return str(ref["variant"].iloc[0]), str(ref["dropped"].iloc[0])


def _comparable(summary: pd.DataFrame) -> pd.Series:
    """The summary's ``comparable`` column; for a summary written before it existed, the same rule by name."""
    if "comparable" in summary.columns:
        return summary["comparable"].astype(bool)
    recon_stages = _recon_stages(set(summary["metric"].astype(str)))
    ref = summary.loc[summary["is_reference"].astype(bool)]
    ref_dropped = str(ref["dropped"].iloc[0]) if len(ref) else "none"
    return pd.Series(
        [
            not _not_comparable_reason(str(m), str(d), ref_dropped, recon_stages)
            for m, d in zip(summary["metric"], summary["dropped"], strict=True)
        ],
        index=summary.index,
    )


def modality_contributions(summary: pd.DataFrame, metric: str, *, variant: str = "mot") -> pd.DataFrame:
    """How much ``metric`` drops when each modality is left out of ``variant``; positive = the modality helps.

    The contribution is reference minus cell for a higher-is-better metric and cell minus reference otherwise,
    the mean over folds of the fold-level differences (seeds averaged within a fold); ``sd`` is the sd of those
    differences, ``n_pairs`` their number and ``p_value``/``q_value`` the summary's Wilcoxon p and q. Rows are
    sorted by contribution, largest first. The summary must have been made with ``reference=(variant, "none")``,
    since a contribution is a difference to the same variant with everything in.

    A metric that is not comparable across modality sets is refused with a ValueError: a masked-modelling
    ``<stage>/loss`` sums one term per modality, so it falls when one is left out whatever the modality does;
    use ``<stage>/recon`` (compared like with like) or a supervised metric. Reconstruction metrics are never
    refused as a whole: for a per-modality term ``<stage>/recon/<m>`` the row of ``m`` itself, and for
    ``<stage>/recon`` a row with no ``<stage>/recon/<modality>`` term defined on both sides, has no contribution
    (NaN, with the summary's note); the other rows keep theirs.
    """
    _require_columns(summary, _CORE_SUMMARY_COLUMNS, "summary")
    if metric not in set(summary["metric"]):
        raise ValueError(f"metric {metric!r} is not in the summary; it has {sorted(set(summary['metric']))}")
    ref = _reference_cell(summary, metric)
    if ref != (variant, "none"):
        raise ValueError(
            f"the summary compares with reference {ref}, not ({variant!r}, 'none'); "
            f"call summarize(results, reference=({variant!r}, 'none')) for the contributions of {variant!r}"
        )
    select = (summary["metric"] == metric) & (summary["variant"] == variant) & (summary["dropped"] != "none")
    rows = summary.loc[select]
    parts = metric.split("/")
    # reconstruction metrics (<stage>/recon, <stage>/recon/<m>): a row that cannot be compared (its own term,
    # or a total with no term shared with the reference) gets NaN and its note; the others stand
    reconstruction = len(parts) in (2, 3) and parts[1] == "recon"
    if not reconstruction and not _comparable(summary).loc[rows.index].all():
        # never a reconstruction metric here, so the advice never names the metric refused
        stage = parts[0]
        raise ValueError(
            f"{metric!r} is not comparable between cells with different modalities: it is a sum over modalities "
            f"and falls when one is left out, whatever that modality contributes; use {stage}/recon (compared "
            "like with like over the modalities both cells have) or a supervised metric"
        )
    sign = np.where(rows["higher_is_better"].astype(bool), -1.0, 1.0)
    out = pd.DataFrame(
        {
            "modality": rows["dropped"].to_numpy(),
            "contribution": sign * rows["mean_diff"].to_numpy(dtype=float),
            "sd": rows["sd_diff"].to_numpy(dtype=float),
            "n_pairs": rows["n_pairs"].to_numpy(),
            "p_value": rows["p_value"].to_numpy(dtype=float),
            "q_value": rows["q_value"].to_numpy(dtype=float),
            "note": rows["note"].fillna("").to_numpy(),
        }
    )
    return out.sort_values("contribution", ascending=False, na_position="last", kind="mergesort").reset_index(drop=True)


# ------------------------------------------------------------------------------------- steps to dense quality
def _kaplan_meier(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct event times and the Kaplan-Meier survival just after each (events before censorings at a tie)."""
    event_times = np.unique(time[event])
    at_risk = np.array([np.sum(time >= t) for t in event_times], dtype=float)
    events = np.array([np.sum((time == t) & event) for t in event_times], dtype=float)
    return event_times, np.cumprod(1.0 - events / at_risk)


def _km_horizon(time: np.ndarray, event: np.ndarray) -> float:
    """How far the Kaplan-Meier curve of these cells is known: the largest time followed (reached or censored),
    or inf when the curve reaches 0 (every cell still at risk reached the target: it stays 0 afterwards)."""
    _, survival = _kaplan_meier(time, event)
    return math.inf if survival.size and survival[-1] <= 1e-12 else float(time.max())


def _km_summary(time: np.ndarray, event: np.ndarray, tau: float | None = None) -> tuple[float, float, float]:
    """(KM median, restricted mean up to tau, tau); NaN without cells. ``tau`` defaults to the largest time and
    must not exceed :func:`_km_horizon` (the curve is not extrapolated).

    The median is the smallest event time t with S(t) <= 0.5, inf when the survival never gets there (fewer
    than half reached the target within the times followed). When S(t) is exactly 0.5 over an interval
    [t_i, t_(i+1)) this is its left end t_i; R's survival package reports the midpoint (t_i + t_(i+1)) / 2
    instead. The restricted mean is the Kaplan-Meier estimate of E[min(T, tau)], the area under the KM curve
    from 0 to tau: with censored cells a lower bound of the mean (it is the plain mean of min(time, tau) only
    when nothing is censored before tau).
    """
    if time.size == 0:
        return np.nan, np.nan, np.nan
    tau = float(time.max()) if tau is None else float(tau)
    event_times, survival = _kaplan_meier(time, event)
    halved = survival <= 0.5 + 1e-12
    median = float(event_times[np.argmax(halved)]) if halved.any() else math.inf
    edges = np.minimum(np.concatenate([[0.0], event_times, [tau]]), tau)
    levels = np.concatenate([[1.0], survival])
    return median, float(np.sum(levels * np.diff(edges))), tau


def steps_to_reference_quality(
    curves: pd.DataFrame,
    *,
    reference_variant: str = "dense",
    metric: str = "val/loss",
    flops_per_step: Mapping[str, float] | None = None,
    target: str = "final",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps each variant needs to reach the reference variant's quality, as a fraction of the reference's steps.

    ``target="final"`` (the paper's setting: long runs whose validation loss still falls) takes the
    reference's last value; ``target="best"`` takes its best value and the first step it got there, which is
    what a small cohort needs: once a model overfits, its final loss is worse than its early ones and every
    variant "reaches" it within an epoch. ``reference_final_step`` is then the step of that best value.

    ``curves`` has columns ``variant, dropped, seed, fold, step, value`` (and optionally ``metric``, then only
    rows of ``metric`` are used): a validation curve per cell. Only ``dropped == "none"`` cells take part. For
    each (seed, fold) the target is the reference variant's value; a variant's ``step_reached`` is the first
    step whose value is at least as good as the target (``<=`` for a lower-is-better metric such as a loss,
    ``>=`` for higher-is-better), and ``ratio = step_reached / reference_final_step``. With ``flops_per_step``
    (variant -> training FLOPs per step) ``flops_ratio`` compares the compute spent instead.

    A curve that never reaches the target is *right-censored*: its ratio is only known to exceed
    ``censored_at_ratio = last step it ran / reference_final_step`` (``ratio`` stays NaN, ``reached`` False).
    Leaving such cells out would make a variant that mostly fails look fast.

    Returns ``(per_cell, per_variant)``. ``per_cell``: one row per (variant, seed, fold) with ``target,
    reference_final_step, step_reached, last_step, reached, ratio, censored_at_ratio`` (and ``flops_ratio,
    censored_at_flops_ratio``) and a note. ``per_variant``: ``n_cells``, ``n_compared`` (cells with a
    reference curve for their (seed, fold)), ``n_reached``, ``n_censored``; ``km_median_ratio``, the
    Kaplan-Meier median of the ratio (inf = not reached by half the cells within the ratios followed; where the
    KM curve is exactly 0.5 over an interval, its left end, whereas R's survival takes the midpoint);
    ``restricted_mean_ratio``, the Kaplan-Meier estimate of E[min(ratio, tau)], i.e. the area under the KM
    curve from 0 to tau = ``restricted_mean_ratio_tau`` (a lower bound of the mean while cells are censored);
    the same three for ``flops_ratio`` when given; and a note.

    tau is *common to all variants* (the same in every row): the smallest, over the variants, of how far each
    variant's KM curve is known, i.e. its largest ratio followed (reached or censored), a variant whose curve
    reaches 0 (its cells all reached the target) being known beyond it; when every curve reaches 0, the largest
    ratio of any variant. With each variant's own tau a variant whose runs all stop early would be measured over
    a shorter range and get the smallest restricted mean, looking fastest. The note says when tau cuts a
    variant's own follow-up short.
    """
    df = curves
    if "metric" in df.columns:
        df = df.loc[df["metric"].astype(str) == metric]
    _require_columns(df, CURVE_COLUMNS, "curves")
    df = df.loc[df["dropped"].astype(str) == "none", list(CURVE_COLUMNS)].copy()
    df["variant"] = df["variant"].astype(str)
    df = df.dropna(subset=["step", "value"]).sort_values(["variant", "seed", "fold", "step"], kind="mergesort")
    if df.empty:
        raise ValueError(f"curves have no rows with dropped='none' (metric {metric!r})")
    if reference_variant not in set(df["variant"]):
        raise ValueError(
            f"reference variant {reference_variant!r} has no curve with dropped='none'; "
            f"variants present: {sorted(set(df['variant']))}"
        )
    if df.duplicated(subset=["variant", "seed", "fold", "step"]).any():
        raise ValueError("curves have more than one value for the same (variant, seed, fold, step)")
    higher = _higher_is_better(metric)
    if flops_per_step is not None:
        unknown = sorted(set(df["variant"]) - set(flops_per_step))
        if unknown:
            raise ValueError(f"flops_per_step lacks variant(s) {unknown}")

    if target not in ("final", "best"):
        raise ValueError(f"target={target!r}: choose 'final' or 'best'")
    # The reference's point per (seed, fold): its last one, or the first one with its best value.
    reference = df.loc[df["variant"] == reference_variant]
    if target == "final":
        ref_final = reference.groupby(["seed", "fold"]).last()
    else:
        signed = reference["value"] * (-1.0 if higher else 1.0)  # lower is better after this
        first_best = signed.groupby([reference["seed"], reference["fold"]]).idxmin()  # first occurrence
        ref_final = reference.loc[first_best.to_numpy()].set_index(["seed", "fold"])

    rows = []
    for (variant, seed, fold), curve in df.groupby(["variant", "seed", "fold"], sort=True):
        last_step = float(curve["step"].iloc[-1])
        row = {
            "variant": variant,
            "seed": seed,
            "fold": fold,
            "target": np.nan,
            "reference_final_step": np.nan,
            "step_reached": np.nan,
            "last_step": last_step,
            "reached": False,
            "ratio": np.nan,
            "censored_at_ratio": np.nan,
            "note": "",
        }
        if flops_per_step is not None:
            row["flops_ratio"] = np.nan
            row["censored_at_flops_ratio"] = np.nan
        if (seed, fold) not in ref_final.index:
            row["note"] = f"no {reference_variant!r} curve for this (seed, fold)"
            rows.append(row)
            continue
        goal = float(ref_final.loc[(seed, fold), "value"])
        final_step = float(ref_final.loc[(seed, fold), "step"])
        if final_step <= 0:
            raise ValueError(f"reference curve for seed={seed!r}, fold={fold!r} ends at step {final_step:g}")
        row["target"], row["reference_final_step"] = goal, final_step
        flops = float(flops_per_step[variant]) / float(flops_per_step[reference_variant]) if flops_per_step else 1.0
        values = curve["value"].to_numpy(dtype=float)
        reached = values >= goal if higher else values <= goal
        if not reached.any():
            best = values.max() if higher else values.min()
            row["note"] = (
                f"never reached {goal:.6g} in {int(last_step)} steps (best {best:.6g}): censored at ratio "
                f"{last_step / final_step:.4g}"
            )
            row["censored_at_ratio"] = last_step / final_step
            if flops_per_step is not None:
                row["censored_at_flops_ratio"] = last_step / final_step * flops
        else:
            step = float(curve["step"].to_numpy()[np.argmax(reached)])
            row.update(step_reached=step, reached=True, ratio=step / final_step)
            if flops_per_step is not None:
                row["flops_ratio"] = step / final_step * flops
        rows.append(row)
    per_cell = pd.DataFrame(rows)

    ratio_cols = ["ratio"] + (["flops_ratio"] if flops_per_step is not None else [])
    # (time, reached) per variant and ratio column, over the cells with a reference curve
    survival_data: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for variant, cells in per_cell.groupby("variant", sort=True):
        compared = cells["reference_final_step"].notna()
        for col in ratio_cols:
            time = cells.loc[compared, col].fillna(cells.loc[compared, f"censored_at_{col}"]).to_numpy(dtype=float)
            survival_data[(variant, col)] = time, (cells["reached"].astype(bool) & compared)[compared].to_numpy()
    # one tau per ratio column for every variant: the shortest follow-up of any variant, so that a variant whose
    # runs stop early is not measured over a shorter range (and does not look fast for it)
    common_tau: dict[str, float] = {}
    for col in ratio_cols:
        followed = {v: d for (v, c), d in survival_data.items() if c == col and d[0].size}
        horizons = [_km_horizon(*d) for d in followed.values()]
        finite = [h for h in horizons if math.isfinite(h)]
        # every curve reaches 0: each area is complete once tau covers every time
        common_tau[col] = min(finite) if finite else max((float(d[0].max()) for d in followed.values()), default=np.nan)

    summary_rows = []
    for variant, cells in per_cell.groupby("variant", sort=True):
        compared = cells["reference_final_step"].notna()
        reached = cells["reached"].astype(bool) & compared
        censored = compared & ~reached
        srow = {
            "variant": variant,
            "n_cells": int(len(cells)),
            "n_compared": int(compared.sum()),
            "n_reached": int(reached.sum()),
            "n_censored": int(censored.sum()),
        }
        for col in ratio_cols:
            time, event = survival_data[(variant, col)]
            median, restricted, tau = _km_summary(time, event, common_tau[col])
            srow[f"km_median_{col}"] = median
            srow[f"restricted_mean_{col}"] = restricted
            srow[f"restricted_mean_{col}_tau"] = tau
        notes = []
        if censored.any():
            notes.append(
                f"{int(censored.sum())} of {int(compared.sum())} cell(s) never reached the target: censored at the "
                "ratio of their last step (Kaplan-Meier)"
            )
            if math.isinf(srow["km_median_ratio"]):
                notes.append("km_median inf: not reached by half the cells within the ratios followed")
            notes.append(
                "restricted_mean is the Kaplan-Meier estimate of E[min(ratio, tau)] (the area under the KM curve "
                "up to tau): a lower bound of the mean"
            )
        time, _ = survival_data[(variant, "ratio")]
        if time.size and float(time.max()) > common_tau["ratio"]:
            notes.append(
                f"restricted_mean up to the common tau {common_tau['ratio']:.4g} (the shortest follow-up of any "
                f"variant), below this variant's largest ratio {float(time.max()):.4g}"
            )
        if (~compared).any():
            notes.append(f"{int((~compared).sum())} cell(s) without a {reference_variant!r} curve left out")
        srow["note"] = "; ".join(notes)
        summary_rows.append(srow)
    return per_cell, pd.DataFrame(summary_rows)


# --------------------------------------------------------------------------------------------------- plots
def _variant_order(variants: Iterable[str], reference_variant: str) -> list[str]:
    # dense first and the full model last reads as "less untied -> more untied" for the usual grids.
    present = set(variants)
    first = [v for v in ("dense",) if v in present]
    last = [reference_variant] if reference_variant in present and reference_variant not in first else []
    return first + sorted(present - set(first) - set(last)) + last


def _bars(ax, heights: np.ndarray, errs: np.ndarray, colors: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Bars where the height is defined, error bars where the sd is too, "n/a" where the height is not.

    Returns the x positions and the error-bar top (height +- sd, or the height without an sd) of every bar."""
    x = np.arange(heights.size)
    defined = np.isfinite(heights)
    with_err = defined & np.isfinite(errs)
    ax.bar(x[defined], heights[defined], color=[c for c, d in zip(colors, defined, strict=True) if d])
    if with_err.any():
        ax.errorbar(x[with_err], heights[with_err], yerr=errs[with_err], fmt="none", ecolor="black", capsize=4)
    for xi in x[~defined]:
        ax.annotate("n/a", (xi, 0.0), ha="center", va="bottom", fontsize=9, color="dimgray")
    reach = np.where(np.isfinite(errs), np.abs(heights) + errs, np.abs(heights)) * np.sign(heights)
    return x, reach


def ablation_figure(summary: pd.DataFrame, metric: str, *, title: str | None = None):
    """The two-panel matplotlib Figure that :func:`plot_ablation` writes (Agg canvas, no pyplot state).

    Left: the contribution of each modality to the reference variant (bar per left-out modality, error bar =
    sd of the fold-level differences, a star where q < 0.05). Right: the metric of every variant with nothing
    left out (mean +- sd over seeds x folds). An undefined contribution or mean gets no bar, and "n/a"; an
    undefined sd (fewer than 2 folds or cells) gets no error bar: neither is drawn as 0.
    """
    # Lazy and explicit Agg canvas: no display needed, and pyplot's global backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _require_columns(summary, _CORE_SUMMARY_COLUMNS, "summary")
    ref_variant, _ = _reference_cell(summary, metric)
    contrib = modality_contributions(summary, metric, variant=ref_variant)
    full = summary.loc[(summary["metric"] == metric) & (summary["dropped"] == "none")].set_index("variant")
    order = _variant_order(full.index, ref_variant)
    full = full.loc[order]
    direction = "higher is better" if bool(full["higher_is_better"].iloc[0]) else "lower is better"

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)

    if contrib.empty:
        left.text(0.5, 0.5, "no leave-one-modality-out cells", ha="center", va="center", transform=left.transAxes)
    else:
        heights = contrib["contribution"].to_numpy(dtype=float)
        colors = ["tab:gray" if h < 0 else "tab:blue" for h in heights]
        x, reach = _bars(left, heights, contrib["sd"].to_numpy(dtype=float), colors)
        left.axhline(0.0, color="black", linewidth=0.8)
        for xi, h, y, q in zip(x, heights, reach, contrib["q_value"], strict=True):
            if np.isfinite(h) and np.isfinite(q) and q < 0.05:
                left.annotate("*", (xi, y), ha="center", va="bottom" if h >= 0 else "top", fontsize=14)
        left.set_xticks(x, contrib["modality"].tolist())
        left.margins(y=0.12)  # room for the stars above the error bars
    left.set_xlabel("modality left out")
    left.set_ylabel(f"drop in {metric} without it")
    left.set_title(f"modality contributions ({ref_variant}; * q < 0.05)")

    colors = ["tab:orange" if v == "dense" else "tab:blue" for v in full.index]
    x, _ = _bars(right, full["mean"].to_numpy(dtype=float), full["sd"].to_numpy(dtype=float), colors)
    right.set_xticks(x, list(full.index), rotation=20, ha="right")
    right.set_ylabel(f"{metric} (mean ± sd)")
    right.set_title(f"variants, nothing left out ({direction})")

    if title:
        fig.suptitle(title)
    return fig


def plot_ablation(summary: pd.DataFrame, metric: str, path: str | Path, *, title: str | None = None) -> Path:
    """One PNG, two panels, of ``metric`` in a :func:`summarize` table (see :func:`ablation_figure`); written
    atomically; returns ``path``. Refuses a metric that is not comparable across modality sets (see
    :func:`modality_contributions`)."""
    fig = ablation_figure(summary, metric, title=title)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    return atomic_write_bytes(path, image.getvalue())


def write_report(
    results: pd.DataFrame | Iterable[Mapping], summary: pd.DataFrame, out_dir: str | Path, *, metric: str
) -> dict[str, Path]:
    """Write ``results.csv`` (tidy), ``summary.csv``, ``contributions.csv`` (of ``metric``, for the summary's
    reference variant) and ``ablation.png`` into ``out_dir``, each atomically.

    Returns ``{"results", "summary", "contributions", "ablation"}`` -> path. ``metric`` must be comparable
    across modality sets (not a masked-modelling ``<stage>/loss``; see :func:`modality_contributions`).
    """
    out_dir = Path(out_dir)
    tidy = tidy_results(results)
    _require_columns(summary, _CORE_SUMMARY_COLUMNS, "summary")
    ref_variant, _ = _reference_cell(summary, metric)
    contrib = modality_contributions(summary, metric, variant=ref_variant)

    def csv(df: pd.DataFrame, name: str) -> Path:
        return atomic_write_bytes(out_dir / name, df.to_csv(index=False).encode())

    return {
        "results": csv(tidy, "results.csv"),
        "summary": csv(summary, "summary.csv"),
        "contributions": csv(contrib, "contributions.csv"),
        "ablation": plot_ablation(summary, metric, out_dir / "ablation.png"),
    }
