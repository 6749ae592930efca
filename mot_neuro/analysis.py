"""Statistics and plots of an ablation study: dense vs MoT partial untyings, leave-one-modality-out.

An ablation grid runs *cells*: a model ``variant`` (``dense``, ``mot_ffn``, ``mot_ffn_attention``, ``mot``, ...),
a ``dropped`` modality (``"none"``, the name of the modality left out of training, or ``"<modality>@test"`` for
the full model tested with that modality hidden), a ``seed`` and a ``fold``. Each finished cell yields its test
metrics (``mot-neuro ablate`` tests each cell's best checkpoint, the one its ``ModelCheckpoint`` kept: by
``val/loss`` in the shipped trainer configs; a ``@test`` cell tests the best checkpoint of the full model it
masks); :func:`tidy_results` puts them in one long table, one row per (variant, dropped, seed, fold, metric).

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

Training efficiency (:func:`steps_to_reference_quality`, in ``mot_neuro.convergence``): the steps a variant
needs to reach the dense model's validation loss (its final value, or its best with ``target="best"``, which
``mot-neuro ablate`` passes), as a fraction of the dense model's steps to it, with runs that never get there
right-censored (Kaplan-Meier).

Where the parts live: this module is the entry point (:func:`summarize`, :func:`write_report`, and every name
above re-exported); ``mot_neuro.ablation_results`` holds the tidy table and metric directions,
``mot_neuro.ablation_pairing`` what is comparable and the fold-level differences, ``mot_neuro.paired_tests`` the
Wilcoxon and corrected t tests and BH, ``mot_neuro.delong`` DeLong's test and its pooled predictions,
``mot_neuro.ablation_contributions`` the per-modality contributions, ``mot_neuro.ablation_plots`` the figure and
``mot_neuro.convergence`` the steps to reference quality.

These modules use pandas, numpy, scipy and (lazily, in the plot) matplotlib only: no torch, so they run anywhere
the results tables are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_adapters.io import atomic_write_bytes
from mot_neuro.ablation_contributions import _CORE_SUMMARY_COLUMNS, _reference_cell, modality_contributions
from mot_neuro.ablation_pairing import (
    _fold_means,
    _left_out_by_terms,
    _like_for_like_terms,
    _not_comparable_reason,
    _pair_diffs,
    _recon_stages,
    _Values,
)
from mot_neuro.ablation_plots import ablation_figure, plot_ablation
from mot_neuro.ablation_results import CELL_KEYS, RESULT_COLUMNS, _higher_is_better, _require_columns, tidy_results
from mot_neuro.convergence import steps_to_reference_quality
from mot_neuro.delong import (
    DELONG,
    PREDICTION_COLUMNS,
    _auroc_target,
    _delong_for,
    _delong_stages,
    _tidy_predictions,
    delong_test,
)
from mot_neuro.paired_tests import (
    CORRECTED_T,
    WILCOXON,
    _adjust_by_family,
    _check_ratio,
    _corrected_t,
    _resolve_ratio,
    _wilcoxon,
)

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
    context = _comparison(results, reference, higher_is_better, test_train_ratio, predictions)
    summary = pd.DataFrame([_summary_row(context, key) for key in sorted(context.lookup)])
    # BH within each (metric, test): every comparison of a metric is against the same reference, one family
    return _adjust_by_family(summary).loc[:, _SUMMARY_COLUMNS]


@dataclass(frozen=True)
class _Comparison:
    """What every row of one :func:`summarize` call needs: the results, the reference and the test options."""

    lookup: dict[tuple[str, str, str], _Values]  # (variant, dropped, metric) -> {(seed, fold): value}
    metrics_of: dict[tuple[str, str], set[str]]  # (variant, dropped) -> its metrics
    ref_key: tuple[str, str]
    recon_stages: set[str]
    higher_is_better: Mapping[str, bool] | None
    test_train_ratio: float | Mapping[object, float] | None
    preds: pd.DataFrame | None
    delong_stages: set[str]


def _comparison(
    results: pd.DataFrame,
    reference: tuple[str, str],
    higher_is_better: Mapping[str, bool] | None,
    test_train_ratio: float | Mapping[object, float] | None,
    predictions: pd.DataFrame | None,
) -> _Comparison:
    """The :class:`_Comparison` of tidy ``results``; checks the predictions and that the reference cell is there."""
    preds = _tidy_predictions(predictions) if predictions is not None else None
    ref_key = (str(reference[0]), str(reference[1]))
    cells = set(zip(results["variant"], results["dropped"], strict=True))
    if ref_key not in cells:
        raise ValueError(
            f"reference cell (variant={ref_key[0]!r}, dropped={ref_key[1]!r}) is not in the results; "
            f"cells present: {sorted(cells)}"
        )
    lookup, metrics_of = _index_results(results)
    return _Comparison(
        lookup=lookup,
        metrics_of=metrics_of,
        ref_key=ref_key,
        recon_stages=_recon_stages(set(results["metric"])),
        higher_is_better=higher_is_better,
        test_train_ratio=test_train_ratio,
        preds=preds,
        delong_stages=_delong_stages(preds) if preds is not None else set(),
    )


def _index_results(results: pd.DataFrame) -> tuple[dict, dict]:
    """(variant, dropped, metric) -> {(seed, fold): value}, and (variant, dropped) -> its metrics, from tidy results.

    Plain dicts: pandas indexing per comparison would be slower than a dict lookup."""
    lookup: dict[tuple[str, str, str], _Values] = {}
    columns = [results[c].tolist() for c in RESULT_COLUMNS]
    for variant, dropped, seed, fold, metric, value in zip(*columns, strict=True):
        lookup.setdefault((variant, dropped, metric), {})[(seed, fold)] = value
    metrics_of: dict[tuple[str, str], set[str]] = {}
    for variant, dropped, metric in lookup:
        metrics_of.setdefault((variant, dropped), set()).add(metric)
    return lookup, metrics_of


def _summary_row(context: _Comparison, key: tuple[str, str, str]) -> dict:
    """The summary row of one (variant, dropped, metric), with its BH family flags (``_<p column>``), before BH."""
    row, notes = _cell_spread(context, key)
    if row["is_reference"]:
        row["note"] = "; ".join(["reference", *notes])
        return row
    diffs, reason = _differences(context, key, notes)
    if reason:
        row["comparable"] = False
        row["note"] = "; ".join([reason, *notes])
        return row
    tests: list[str] = []
    row["_p_value"] = True
    row["_p_corrected_t"] = context.test_train_ratio is not None
    _fold_tests(row, diffs, context.test_train_ratio, notes, tests)
    _delong_columns(row, context, notes, tests)
    row["tests"] = "; ".join(tests)
    row["note"] = "; ".join(filter(None, notes))
    return row


def _cell_spread(context: _Comparison, key: tuple[str, str, str]) -> tuple[dict, list[str]]:
    """The row of one (variant, dropped, metric) with its own values (n, mean, sd) and every comparison column
    still empty, and the note on its undefined cells (none when all are defined)."""
    variant, dropped, metric = key
    cell_values = np.fromiter(context.lookup[key].values(), dtype=float)
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
        "higher_is_better": _higher_is_better(metric, context.higher_is_better),
        "is_reference": (variant, dropped) == context.ref_key,
        "comparable": True,
        # which BH families the row belongs to
        "_p_value": False,
        "_p_corrected_t": False,
        "_p_delong": False,
    }
    notes = [f"{undefined} of {cell_values.size} cell(s) undefined (NaN), left out of mean, sd and pairs"]
    return row, notes if undefined else []


def _differences(context: _Comparison, key: tuple[str, str, str], notes: list[str]) -> tuple[dict, str]:
    """(seed, fold) -> ``cell - reference`` of one row, and "" ; or no differences and why the row cannot be
    compared. A ``<stage>/recon`` over another modality set is compared like with like, which ``notes`` tells."""
    variant, dropped, metric = key
    ref_key = context.ref_key
    reason = _not_comparable_reason(metric, dropped, ref_key[1], context.recon_stages)
    if reason:
        return {}, reason
    lookup = context.lookup
    terms = _like_for_like_terms(metric, dropped, ref_key[1], context.metrics_of[(variant, dropped)], lookup,
                                 (variant, dropped), ref_key)  # fmt: skip
    if terms is None:
        return _pair_diffs([lookup[key]], [lookup.get((*ref_key, metric), {})]), ""
    if not terms:
        stage = metric.split("/")[0]
        return {}, (
            f"not comparable: a sum over modalities, and no {stage}/recon/<modality> term is defined on "
            "both sides to compare like with like"
        )
    cell_terms = [lookup[(variant, dropped, t)] for t in terms]
    ref_terms = [lookup[(*ref_key, t)] for t in terms]
    diffs = _pair_diffs(cell_terms, ref_terms)
    modalities = ", ".join(t.rsplit("/", 1)[1] for t in terms)
    notes.append(
        f"compared like with like: sum over {modalities} of (cell - reference) {metric}/<modality> terms "
        "(the totals sum different modality sets; mean and sd are the cell's logged totals)"
    )
    notes.append(_left_out_by_terms(terms, cell_terms, ref_terms, diffs))
    return diffs, ""


def _fold_tests(row: dict, diffs: dict, test_train_ratio, notes: list[str], tests: list[str]) -> None:
    """Fill ``row`` with the fold-level differences of ``diffs`` and their Wilcoxon and corrected t tests."""
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


def _delong_columns(row: dict, context: _Comparison, notes: list[str], tests: list[str]) -> None:
    """Fill ``row`` with DeLong's test of the pooled out-of-fold AUROC, for a ``<stage>/<target>/auroc`` metric
    whose stage has predictions."""
    target = _auroc_target(row["metric"])
    if context.preds is None or target is None:
        return
    if target[0] not in context.delong_stages:
        # not a DeLong hypothesis: no predictions of this stage (without a stage column they are test's)
        notes.append(f"DeLong not run: no {target[0]}-stage predictions")
        return
    row["_p_delong"] = True
    result, note = _delong_for(context.preds, (row["variant"], row["dropped"]), context.ref_key, *target)
    notes.append(note)
    if result is not None:
        row["delong_diff"] = result["diff"]
        row["p_delong"] = result["p_value"]
        if np.isfinite(row["p_delong"]):
            tests.append(f"{DELONG} ({result['n_pos'] + result['n_neg']} subjects)")


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
