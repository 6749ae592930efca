"""The table :func:`mot_neuro.probe.probe` returns: its columns (:data:`COLUMNS`), the metrics of each target kind
(:data:`METRICS`), and the rows of one (feature set, target) pair (:class:`_Pair`), scored or left empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mot_neuro.probe_metrics import _resampling_label

METRICS = {
    "regression": ("r2", "mae", "pearson"),
    "binary": ("auroc", "auprc", "brier", "ece"),
    "multiclass": ("auroc", "auprc", "accuracy", "ece"),
}
COLUMNS = (
    "feature_set",
    "target",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_train",
    "n_test",
    "resampling",
    "n_resamples",
    "n_resamples_valid",
    "penalty",
    "note",
)
"""The output table. ``value``: the metric on all test subjects; ``ci_low``/``ci_high``: 2.5th/97.5th percentiles
over the valid resamples; ``resampling``: what a resample draws (:data:`mot_neuro.probe_metrics.RESAMPLING`);
``n_resamples``: requested; ``n_resamples_valid``: those where the metric was defined (the CI's sample);
``penalty``: ridge alpha (regression) or logistic C (classification, the inverse strength) chosen by the inner CV;
``note``: why a number is NaN or has no CI, resamples were skipped, a class had few test cases, feature columns
missing in every training subject were dropped, the inner CV loss was flat across the penalty grid, or the penalty
sat on the edge of its grid."""


@dataclass(frozen=True)
class _Pair:
    """One (feature set, target) pair and the counts every one of its rows carries."""

    feature_set: str
    target: str
    kind: str
    n_train: int
    n_test: int
    n_resamples: int

    def row(
        self,
        metric: str,
        *,
        value=np.nan,
        ci_low=np.nan,
        ci_high=np.nan,
        resampling: str = "none",
        n_resamples_valid: int = 0,
        penalty=np.nan,
        note: str = "",
    ) -> dict:
        """The row of ``metric`` (:data:`COLUMNS`); by default one without a value or resamples."""
        return dict(
            feature_set=self.feature_set,
            target=self.target,
            metric=metric,
            value=value,
            ci_low=ci_low,
            ci_high=ci_high,
            n_train=self.n_train,
            n_test=self.n_test,
            resampling=resampling,
            n_resamples=self.n_resamples,
            n_resamples_valid=n_resamples_valid,
            penalty=penalty,
            note=note,
        )

    def empty_rows(self, note: str) -> list[dict]:
        """A row per metric of the kind, all NaN: ``note`` says why nothing was scored."""
        return [self.row(metric, note=note) for metric in METRICS[self.kind]]

    def scored_rows(
        self, estimates: dict, penalty, grouped: bool, *, dropped_note: str, metric_notes: dict, penalty_note: str
    ) -> list[dict]:
        """A row per metric of ``estimates`` (``(value, low, high, valid, drawn)`` from
        :func:`mot_neuro.probe_metrics._bootstrap`); its note joins, in this order, the feature columns dropped,
        the metric's own notes (``metric_notes``, from :func:`mot_neuro.probe_metrics._metric_notes`) and the
        note on the penalty, leaving out those that are empty."""
        rows = []
        for metric, (value, low, high, valid, drawn) in estimates.items():
            notes = [dropped_note, *metric_notes[metric], penalty_note]
            rows.append(
                self.row(
                    metric,
                    value=value,
                    ci_low=low,
                    ci_high=high,
                    resampling=_resampling_label(self.kind, metric, grouped, drawn),
                    n_resamples_valid=valid,
                    penalty=penalty,
                    note="; ".join(note for note in notes if note),
                )
            )
        return rows
