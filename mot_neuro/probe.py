"""Downstream probes: how much of each target a simple linear model reads off a set of subject features.

``mot-neuro probe`` compares feature sets on the folds the models were trained on:

* ``<variant>``: the pooled subject embedding of an embeddings file (``mot_neuro.embed``),
* ``<variant>_late_fusion``: the per-modality embeddings of that file side by side,
* ``early_fusion``: the raw input features of the experiment's cohort, preprocessed by the fold's
  ``FoldPreprocessor`` (fitted on the training rows only).

Fit. Each (feature set, target) gets one scikit-learn pipeline (mean imputation -> standardization -> ridge or
logistic regression), fitted on the train + val subjects that have the target. The penalty is chosen by a grid
search that cross-validates the whole pipeline (``inner_folds``-fold CV; stratified for classification; scored by
mean squared error or log loss): the imputer and scaler of each inner split see only its inner training rows.
The chosen penalty is then refitted, pipeline and all, on every training row. The test subjects are never seen.

Penalty grids (:func:`penalty_grid`) are tied to the data: for standardized features the trace of X'X is n x p,
and a ridge fit has at most trace / alpha effective degrees of freedom, so the ridge grid runs in half decades
from alpha = 1e-3 (practically least squares) up to 100 n p, where the fit has at most 0.01 degrees of freedom
(practically the mean); the old fixed grid stopped at 1e3, too weak for 20,000 early-fusion features. Logistic C
runs in whole decades from 1e4 (practically unpenalized) down to 0.04 / (n p), the same bound with a log-loss
curvature of at most 1/4. A choice on either edge is logged (one warning line) and noted in the table. When the
inner CV loss is flat across the whole grid (every penalty scores alike, as with features that are constant in the
training rows) no penalty was chosen at all: that is logged and noted instead of an edge ("CV loss flat across the
penalty grid"). Feature columns missing (NaN) in every training subject of a target are dropped before fitting,
with a note giving their count; with none left the probe cannot fit.

CIs. Test metrics carry percentile bootstrap 95% CIs over resampled test subjects, drawn with replacement
(the ``resampling`` column says which scheme each row used):

* subjects; with groups, whole groups (a cluster bootstrap): every regression metric, and the Brier score, ECE
  and accuracy of a classification target (defined in any resample; their spread includes that of the
  prevalence);
* AUROC and AUPRC of a classification target: within each class, keeping the test set's class counts (a
  stratified bootstrap), so every resample holds every class and both are defined in all of them (a plain
  bootstrap of a test set with one positive in ten loses about a third of its resamples, 0.9^10, and the CI of
  the rest is of a selected subset); with groups, whole groups within strata of the set of classes a group
  holds (all-negative, all-positive, mixed families, ...), which keeps the cluster bootstrap and still puts every
  class in every resample.

A resample where a metric is still undefined (e.g. a constant prediction for ``pearson``) is skipped and counted
(``n_resamples_valid``); when fewer than :data:`MIN_VALID_FRACTION` of the resamples are valid the CI is NaN with
a note, since the survivors are no longer a bootstrap distribution but a selected part of one.

With groups (the data config's ``group``: site, family, a subject's repeated visits) no group is on both sides
of an inner split (grouped k-fold; classification: stratified group k-fold): rows of one group are not
independent, and resampling them one by one gives CIs that are too narrow. Every (feature set, target) draws the
same resamples when they have the same test subjects, so CIs of feature sets are comparable resample by resample.

Metrics (the names training logs): regression ``r2``, ``mae`` (target units), ``pearson``; binary ``auroc``,
``auprc``, ``brier``, ``ece`` (10 equal-width bins); multiclass ``auroc`` and ``auprc`` (one-vs-rest, macro),
``accuracy``, ``ece`` (top-label confidence). All are computed from per-subject weights (a bootstrap resample is
a vector of counts), in blocks of resamples, without a Python loop over resamples.

No torch or Lightning at import: only :func:`early_fusion_features` (which builds the experiment's DataModule)
imports them, when called.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from data_adapters.core import atomic_write_bytes

log = logging.getLogger(__name__)

KINDS = ("regression", "binary", "multiclass")
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
over the valid resamples; ``resampling``: what a resample draws (:data:`RESAMPLING`); ``n_resamples``: requested;
``n_resamples_valid``: those where the metric was defined (the CI's sample); ``penalty``: ridge alpha
(regression) or logistic C (classification, the inverse strength) chosen by the inner CV; ``note``: why a number
is NaN or has no CI, resamples were skipped, a class had few test cases, feature columns missing in every training
subject were dropped, the inner CV loss was flat across the penalty grid, or the penalty sat on the edge of its
grid."""
RESAMPLING = {
    ("plain", False): "subjects",
    ("plain", True): "groups (cluster)",
    ("stratified", False): "subjects within class (stratified)",
    ("stratified", True): "groups (cluster) within class pattern (stratified)",
}
"""``resampling`` column: subjects or whole groups drawn with replacement; for the ranking metrics of a
classification target (:data:`STRATIFIED_METRICS`) within each class (with groups: within each set of classes a
group holds), keeping the test set's counts; ``"none"`` when no resample was drawn."""
STRATIFIED_METRICS = ("auroc", "auprc")
"""Classification metrics resampled within class: they need every class in a resample, and they are conditional on
the class counts anyway (AUROC does not depend on them; AUPRC's baseline is the prevalence). Brier, ECE and
accuracy are defined in any resample and depend on the prevalence, so they are resampled plainly: held to the
test set's class counts, a constant classifier's accuracy would get a CI of zero width."""
MIN_VALID_FRACTION = 0.9
"""Below this share of valid resamples a CI is NaN: the rest would be a selected subset, not a bootstrap."""
FEW_CASES = 5
"""A class held by fewer test subjects (groups) than this gets a note: its few cases limit the CI."""
RIDGE_ALPHA_MIN = 1e-3
LOGISTIC_C_MAX = 1e4
NULL_MODEL_DF = 0.01
"""The heavy end of each penalty grid allows at most this many effective degrees of freedom."""
FLAT_LOSS_RTOL = 1e-9
"""The inner CV loss (mean over inner splits) is flat when its range across the grid is at most this fraction of
its largest magnitude: no penalty did better than another (features constant in the training rows give exactly
equal losses; one pure-noise feature among 20,000 subjects still varies by about 1e-5)."""
_EMPTY_FEATURE_WARNING = "Skipping features without any observed values"
"""SimpleImputer's warning for a column without a value in its fit rows (it leaves such a column out)."""
GRID_STEP = {"regression": 0.5, "classification": 1.0}
"""Decades between penalty grid points: ridge is solved for every alpha of a fold at once (one eigendecomposition),
so its grid is finer; each logistic C is a separate fit (the old grid stepped 0.89 decades)."""
LOGISTIC_MAX_ITER = 2000
ECE_BINS = 10
MISSING_TEST_WARN_FRACTION = 0.1
"""A feature set lacking more than this share of the test subjects is warned about (counts only)."""
EARLY_FUSION = "early_fusion"
LATE_FUSION_SUFFIX = "_late_fusion"
_BLOCK_CELLS = 2_000_000  # resamples x subjects held at once while bootstrapping
_SMALL_FIT_CELLS = 1_000_000
"""Below this many training cells (subjects x features) a probe runs with one BLAS/OpenMP thread: its many small
fits gain nothing from threads, and threads that spin on a busy machine make them several times slower."""
_SPLIT_PARTS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------- metrics
def _levels(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending order of ``scores`` and where each run of tied scores starts in that order."""
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, starts


def _ranking_metrics(counts: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and average precision per row of ``counts`` (NaN where one class has no weight).

    Ties are grouped into one threshold, as sklearn's ``roc_auc_score`` (ties count 1/2) and
    ``average_precision_score`` (one precision-recall point per distinct score) do.
    """
    order, starts = _levels(scores)
    ordered = counts[:, order]
    pos = np.add.reduceat(ordered * positive[order], starts, axis=1)  # weight of positives per score level
    neg = np.add.reduceat(ordered * (1.0 - positive[order]), starts, axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        tp = np.cumsum(pos[:, ::-1], axis=1)  # thresholds from the highest score down
        fp = np.cumsum(neg[:, ::-1], axis=1)
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        auprc = (pos[:, ::-1] * precision).sum(axis=1) / n_pos
    return np.where(defined, auroc, np.nan), np.where(defined, auprc, np.nan)


def _calibration_error(counts: np.ndarray, confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Expected calibration error, 10 equal-width confidence bins: sum over bins |accuracy - confidence| * share."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, ECE_BINS - 1)
    onehot = np.zeros((len(confidence), ECE_BINS))
    onehot[np.arange(len(confidence)), bins] = 1.0
    gap = counts @ (onehot * (correct - confidence)[:, None])
    return np.abs(gap).sum(axis=1) / counts.sum(axis=1)


def _metric_values(kind: str, counts: np.ndarray, y: np.ndarray, pred: np.ndarray, classes=None) -> dict:
    """Every metric of ``kind`` for each row of ``counts`` (``[resamples, subjects]`` weights); NaN = undefined.

    ``pred``: regression predictions; binary P(class 1); multiclass probabilities ``[subjects, classes]`` in the
    order of ``classes``.
    """
    total = counts.sum(axis=1)
    if kind == "regression":
        # centred on the full test means first: the weighted moments below then lose no precision
        yc, pc_ = y - y.mean(), pred - pred.mean()
        mean_y, mean_p = counts @ yc / total, counts @ pc_ / total
        var_y = counts @ (yc * yc) / total - mean_y**2
        var_p = counts @ (pc_ * pc_) / total - mean_p**2
        cov = counts @ (yc * pc_) / total - mean_y * mean_p
        tiny_y = 1e-12 * max(float(np.var(y)), np.finfo(float).tiny)
        tiny_p = 1e-12 * max(float(np.var(pred)), np.finfo(float).tiny)
        with np.errstate(invalid="ignore", divide="ignore"):
            r2 = 1.0 - (counts @ (y - pred) ** 2 / total) / var_y
            pearson = cov / np.sqrt(var_y * var_p)
        return {
            "r2": np.where(var_y > tiny_y, r2, np.nan),
            "mae": counts @ np.abs(y - pred) / total,
            "pearson": np.where((var_y > tiny_y) & (var_p > tiny_p), np.clip(pearson, -1.0, 1.0), np.nan),
        }
    if kind == "binary":
        auroc, auprc = _ranking_metrics(counts, y, pred)
        return {
            "auroc": auroc,
            "auprc": auprc,
            "brier": counts @ (pred - y) ** 2 / total,
            "ece": _calibration_error(counts, pred, y),
        }
    classes = np.asarray(classes)
    per_class = [_ranking_metrics(counts, (y == c).astype(float), pred[:, k]) for k, c in enumerate(classes)]
    auroc = np.mean([a for a, _ in per_class], axis=0)  # NaN as soon as one class is undefined: macro needs all
    auprc = np.mean([p for _, p in per_class], axis=0)
    if not np.isin(y, classes).all():  # a test label the probe never saw: one-vs-rest over its classes is undefined
        auroc = auprc = np.full(len(counts), np.nan)
    correct = (classes[pred.argmax(axis=1)] == y).astype(float)
    return {
        "auroc": auroc,
        "auprc": auprc,
        "accuracy": counts @ correct / total,
        "ece": _calibration_error(counts, pred.max(axis=1), correct),
    }


def _resample_counts(
    rng: np.random.Generator, size: int, n: int, groups: np.ndarray | None, strata: np.ndarray | None = None
) -> np.ndarray:
    """``[size, n]`` bootstrap weights: how often each subject is drawn in each resample.

    The units drawn are the subjects, or with ``groups`` (a code 0..G-1 per subject) whole groups (a cluster
    bootstrap): a subject weighs as often as its group is drawn, so the CI reflects the group, not the visit or
    relative, as the unit of independent data. ``strata`` (a code per unit) makes it a stratified bootstrap: each
    stratum's units are drawn with replacement as many times as the stratum has units, so every resample keeps
    the stratum sizes. Draws: per stratum in ascending code order, ``rng.integers(0, units in it, (size, units
    in it))``; without strata, one stratum of all units."""
    units = n if groups is None else int(groups.max()) + 1 if len(groups) else 0
    strata = np.zeros(units, dtype=np.int64) if strata is None else np.asarray(strata)
    offsets = units * np.arange(size)[:, None]
    counts = np.zeros(size * units)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        picks = members[rng.integers(0, len(members), size=(size, len(members)))] + offsets
        counts += np.bincount(picks.ravel(), minlength=size * units)
    counts = counts.reshape(size, units)
    return counts if groups is None else counts[:, groups]


def _resampling(
    kind: str, y: np.ndarray, groups: np.ndarray | None, metric: str | None = None
) -> tuple[np.ndarray | None, str]:
    """(stratum code per resampled unit, or None for no strata; the ``resampling`` label) of ``metric``.

    Units are the subjects, or the groups 0..G-1 of ``groups``. A classification target's ranking metrics
    (:data:`STRATIFIED_METRICS`; ``metric=None`` means one of them) are stratified: by class, or with groups by
    the set of classes a group holds, the coarsest grouping of whole groups that still puts every class of the
    test set in every resample (strata by a group's majority class would not: a lone case in a family of
    controls could be left out). Everything else is resampled plainly."""
    grouped = groups is not None
    if kind == "regression" or (metric is not None and metric not in STRATIFIED_METRICS):
        return None, RESAMPLING["plain", grouped]
    _, label = np.unique(y, return_inverse=True)
    if not grouped:
        return label.reshape(-1), RESAMPLING["stratified", False]
    held = np.zeros((int(groups.max()) + 1 if len(groups) else 0, int(label.max()) + 1 if len(label) else 0), bool)
    held[groups, label.reshape(-1)] = True
    _, pattern = np.unique(held, axis=0, return_inverse=True)
    return pattern.reshape(-1), RESAMPLING["stratified", True]


def _bootstrap(
    kind, y, pred, classes, n_bootstrap: int, seed: int, groups: np.ndarray | None = None
) -> dict[str, tuple[float, float, float, int, int]]:
    """metric -> (value, ci_low, ci_high, valid resamples, resamples drawn); ``groups``: resample whole groups
    (codes 0..G-1).

    Each resampling scheme (:func:`_resampling`: plain, and stratified for a classification target's ranking
    metrics) draws its own ``n_bootstrap`` resamples from ``default_rng(seed)``, so every feature set with the same
    test subjects gets the same resamples. None are drawn (0) when every stratum has one unit (one test group,
    one subject per class): each resample would be the test set itself, a CI of zero width that would read as
    certainty. The CI is NaN when fewer than :data:`MIN_VALID_FRACTION` of the drawn resamples are valid."""
    n = len(y)
    point = _metric_values(kind, np.ones((1, n)), y, pred, classes)
    schemes: dict[str, list[str]] = {}
    for name in point:
        schemes.setdefault(_resampling(kind, y, groups, name)[1], []).append(name)
    out = {}
    for names in schemes.values():
        strata, _ = _resampling(kind, y, groups, names[0])
        units = np.bincount(strata) if strata is not None else [n if groups is None else len(np.unique(groups))]
        drawn = n_bootstrap if len(units) and max(units) > 1 else 0
        rng = np.random.default_rng(seed)
        draws = {name: [] for name in names}
        block = max(1, _BLOCK_CELLS // max(n, 1))
        for start in range(0, drawn, block):
            size = min(block, drawn - start)
            counts = _resample_counts(rng, size, n, groups, strata)
            values = _metric_values(kind, counts, y, pred, classes)
            for name in names:
                draws[name].append(values[name])
        for name in names:
            values = np.concatenate(draws[name]) if draws[name] else np.empty(0)
            values = values[np.isfinite(values)]
            enough = len(values) > 0 and len(values) >= MIN_VALID_FRACTION * drawn
            low, high = np.percentile(values, [2.5, 97.5]) if enough else (np.nan, np.nan)
            out[name] = (float(point[name][0]), float(low), float(high), int(len(values)), drawn)
    return {name: out[name] for name in point}


# ---------------------------------------------------------------------------------------------- probe
def penalty_grid(kind: str, n_samples: int, n_features: int) -> np.ndarray:
    """The penalties the inner CV chooses from, ascending, in steps of :data:`GRID_STEP` decades.

    After standardization every column of X has a sum of squares of (at most) n, so trace(X'X) <= n p, and a
    ridge fit has at most trace / alpha effective degrees of freedom (sum of l / (l + alpha) over the eigenvalues
    l of X'X). Ridge alpha: from :data:`RIDGE_ALPHA_MIN` (negligible next to eigenvalues of order n) up to
    n p / :data:`NULL_MODEL_DF`, where the fit keeps at most 0.01 degrees of freedom, i.e. predicts about the
    mean: wide enough for any number of features (the old fixed 1e3 was too weak a penalty for 20,000 features).
    Logistic C (sklearn minimizes C * sum(log loss) + |w|^2 / 2, so 1/C plays alpha against a curvature of at
    most 1/4 per row): from 4 :data:`NULL_MODEL_DF` / (n p), about the class prior, up to
    :data:`LOGISTIC_C_MAX` (practically unpenalized). Ends are rounded outwards to whole steps."""
    scale = max(int(n_samples), 1) * max(int(n_features), 1)  # an upper bound on trace(X'X)
    if kind == "regression":
        step = GRID_STEP["regression"]
        low, high = np.log10(RIDGE_ALPHA_MIN), np.ceil(np.log10(scale / NULL_MODEL_DF) / step) * step
    else:
        step = GRID_STEP["classification"]
        low, high = np.floor(np.log10(4 * NULL_MODEL_DF / scale) / step) * step, np.log10(LOGISTIC_C_MAX)
    return 10.0 ** np.arange(low, high + step / 2, step)


class _RowSpace(TransformerMixin, BaseEstimator):
    """x -> its coordinates in the span of the training rows: ``x V`` for ``x_train = U S V'``, computed through
    the n x n Gram matrix (``x x_train' Q / sqrt(l)`` with ``x_train x_train' = Q diag(l) Q'``).

    An L2-penalized linear model's coefficients lie in that span (a component orthogonal to every training row
    leaves the training loss unchanged and only adds penalty), and sklearn does not penalize the intercept, so a
    logistic regression on these coordinates reaches the optimum it reaches on the p features, at n x n instead
    of n x p cost per solver iteration. Used when there are more features than training rows."""

    def fit(self, x, y=None):
        gram = x @ x.T
        eigenvalues, vectors = np.linalg.eigh(gram)
        keep = eigenvalues > 1e-12 * max(float(eigenvalues.max(initial=0.0)), np.finfo(float).tiny)
        self.rows_, self.projection_ = x, vectors[:, keep] / np.sqrt(eigenvalues[keep])
        if not keep.any():  # every feature constant on these rows: one zero column, an intercept-only model
            self.projection_ = np.zeros((len(x), 1))
        return self

    def transform(self, x):
        return (x @ self.rows_.T) @ self.projection_


def _preprocessor(kind: str = "regression", n_rows: int = 0, n_features: int = 0) -> Pipeline:
    """Mean imputation -> standardization (-> :class:`_RowSpace` for a logistic probe with more features than
    rows)."""
    steps = [("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler())]
    if kind != "regression" and n_features > n_rows:
        steps.append(("row_space", _RowSpace()))
    return Pipeline(steps)


def _ridge_fold_errors(x_train, y_train, x_test, y_test, alphas: np.ndarray) -> np.ndarray:
    """Mean squared test error of ``Ridge(alpha)`` (with intercept) for every alpha, from one eigendecomposition.

    Ridge's coefficients are (X'X + alpha I)^-1 X'y on centred data; with X'X = V diag(l) V' (or, when there are
    more features than rows, through the n x n Gram matrix XX' = Q diag(l) Q') every alpha costs a diagonal."""
    x_mean, y_mean = x_train.mean(axis=0), y_train.mean()
    xc, yc, xt = x_train - x_mean, y_train - y_mean, x_test - x_mean
    if xc.shape[1] <= xc.shape[0]:
        eigenvalues, vectors = np.linalg.eigh(xc.T @ xc)
        projected = xt @ vectors  # [test, features]
        weights = vectors.T @ (xc.T @ yc)
    else:
        eigenvalues, vectors = np.linalg.eigh(xc @ xc.T)
        projected = (xt @ xc.T) @ vectors  # [test, train]
        weights = vectors.T @ yc
    eigenvalues = np.clip(eigenvalues, 0.0, None)  # rounding can make a zero eigenvalue slightly negative
    pred = y_mean + projected @ (weights[:, None] / (eigenvalues[:, None] + alphas[None, :]))  # [test, alphas]
    return ((pred - y_test[:, None]) ** 2).mean(axis=0)


class _TunedProbe:
    """imputer -> scaler -> ridge (regression) or logistic regression, its penalty chosen by cross-validating the
    whole pipeline over :func:`penalty_grid`, then refitted on every training row.

    The same choice as ``GridSearchCV(pipeline, {penalty: grid}, cv=cv, scoring="neg_mean_squared_error" or
    log loss over every class)`` followed by its refit, computed with less repetition: the imputer and scaler are
    fitted once per inner split (on its training rows; they do not depend on the penalty), ridge solves every
    alpha of a split from one eigendecomposition, and the log loss is scored directly. Ties go to the first
    (smallest) penalty of the grid, as in ``GridSearchCV``. With more features than rows a logistic probe is
    fitted in the span of its training rows (:class:`_RowSpace`): the same optimum, reached to the solver's
    tolerance (where the classes are separable and C is large, the optimum is barely defined and solvers stop
    at different points).

    A column without a value in an inner training part is left out of that part's fit by the imputer, as in
    ``GridSearchCV``, without its warning (the caller drops columns without a value in every row beforehand).

    ``cv``: a splitter or ``[(train positions, test positions), ...]``. After ``fit``: ``grid_``, ``cv_loss_``
    (``[splits, grid]`` mean squared error or log loss on each inner test part), ``penalty_`` (ridge alpha or
    logistic C), ``pipeline_`` (refitted on all rows), ``classes_`` (classification)."""

    def __init__(self, kind: str, cv) -> None:
        self.kind, self.cv = kind, cv

    def _model(self, penalty: float):
        if self.kind == "regression":
            return Ridge(alpha=penalty)
        # binary and multiclass alike: lbfgs fits the multinomial loss when there are more than 2 classes
        return LogisticRegression(C=penalty, l1_ratio=0.0, max_iter=LOGISTIC_MAX_ITER)

    def fit(self, x: np.ndarray, y: np.ndarray) -> _TunedProbe:
        self.grid_ = penalty_grid(self.kind, *x.shape)
        splits = list(self.cv.split(x, y)) if hasattr(self.cv, "split") else list(self.cv)
        labels = np.unique(y)
        loss = np.empty((len(splits), len(self.grid_)))
        for i, (train, test) in enumerate(splits):
            with warnings.catch_warnings():
                # a column observed only in this split's held-out rows: the imputer leaves it out of this split
                warnings.filterwarnings("ignore", message=_EMPTY_FEATURE_WARNING, category=UserWarning)
                preprocess = _preprocessor(self.kind, len(train), x.shape[1]).fit(x[train])
                x_train, x_test = preprocess.transform(x[train]), preprocess.transform(x[test])
            if self.kind == "regression":
                loss[i] = _ridge_fold_errors(x_train, y[train], x_test, y[test], self.grid_)
                continue
            for j, penalty in enumerate(self.grid_):
                model = self._model(penalty).fit(x_train, y[train])
                # log loss, a proper score (the C with the best probabilities, not just labels), over every
                # class even when an inner test part lacks one
                loss[i, j] = log_loss(y[test], model.predict_proba(x_test), labels=labels)
        self.cv_loss_ = loss
        self.penalty_ = float(self.grid_[int(np.argmin(loss.mean(axis=0)))])
        preprocess = _preprocessor(self.kind, *x.shape)
        self.pipeline_ = Pipeline([*preprocess.steps, ("model", self._model(self.penalty_))]).fit(x, y)
        if self.kind != "regression":
            self.classes_ = self.pipeline_.classes_
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict_proba(x)


def _pipeline(kind: str, n_folds: int, seed: int, inner_splits: list | None = None) -> _TunedProbe:
    """The probe of ``kind``; ``inner_splits``: the inner CV's (train, test) positions, given when a group must
    stay on one side; else ``n_folds``-fold CV, shuffled with ``seed`` (stratified for classification)."""
    if inner_splits is not None:
        cv = inner_splits
    elif kind == "regression":
        cv = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return _TunedProbe(kind, cv)


def grouped_inner_splits(kind: str, y: np.ndarray, groups: np.ndarray, inner_folds: int, seed: int) -> list:
    """Inner CV splits that keep every group on one side: ``[(train positions, test positions), ...]``.

    Regression: ``GroupKFold``; classification: ``StratifiedGroupKFold``, with fewer folds when a class occurs
    in fewer groups than that, down to 2. Empty when no split can be made (fewer than 2 groups, or no number
    of folds gives every inner training part every class)."""
    labels = np.unique(y)
    n_groups = len(np.unique(groups))
    if kind == "regression":
        n_folds = min(inner_folds, n_groups)
        if n_folds < 2:
            return []
        return list(GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(y, y, groups))
    groups_with = [len(np.unique(groups[y == label])) for label in labels]
    for n_folds in range(min(inner_folds, *groups_with), 1, -1):
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class": checked just below
            splits = list(splitter.split(y, y, groups))
        if all(len(np.unique(y[train])) == len(labels) and len(test) for train, test in splits):
            return splits
    return []


def _ids(values) -> np.ndarray:
    return np.asarray([str(v) for v in np.asarray(values, dtype=object).ravel()], dtype=object)


def _check_frame(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame indexed by subject ID, got {type(frame).__name__}")
    frame = frame.set_axis(_ids(frame.index), axis=0)
    if not frame.index.is_unique:
        raise ValueError(f"{what} has {int(frame.index.duplicated().sum())} repeated subject ID(s) in its index")
    return frame


def _group_codes(groups: pd.Series, ids: np.ndarray) -> np.ndarray:
    """Codes 0..G-1 of the groups of ``ids`` (in that order)."""
    return pd.factorize(groups.reindex(ids).to_numpy(object), sort=True)[0]


def _resampling_label(kind: str, metric: str, grouped: bool, drawn: int) -> str:
    if not drawn:
        return "none"
    stratified = kind != "regression" and metric in STRATIFIED_METRICS
    return RESAMPLING["stratified" if stratified else "plain", grouped]


def _empty_rows(name, target, kind, n_train, n_test, note, n_bootstrap: int = 0) -> list[dict]:
    return [
        dict(
            feature_set=name,
            target=target,
            metric=metric,
            value=np.nan,
            ci_low=np.nan,
            ci_high=np.nan,
            n_train=n_train,
            n_test=n_test,
            resampling="none",
            n_resamples=n_bootstrap,
            n_resamples_valid=0,
            penalty=np.nan,
            note=note,
        )
        for metric in METRICS[kind]
    ]


def _flat_note(kind: str, cv_loss: np.ndarray, y: np.ndarray) -> str:
    """A note when the inner CV loss (mean over the inner splits) is flat across the whole penalty grid, else ``""``.

    Then no penalty scored better than another and the first of the grid was kept by the tie rule; that is not a
    choice of a light or heavy penalty, so it replaces the edge note."""
    mean = np.asarray(cv_loss, dtype=np.float64).mean(axis=0)
    if not len(mean) or not np.isfinite(mean).all():
        return ""
    if np.ptp(mean) > FLAT_LOSS_RTOL * max(float(np.abs(mean).max()), np.finfo(float).tiny):
        return ""
    if kind == "regression" and np.ptp(y) == 0:
        return "CV loss flat across the penalty grid: the training target is constant"
    return (
        "CV loss flat across the penalty grid: no usable features (every penalty scored the same; the first of"
        " the grid was kept)"
    )


def _undefined_note(kind: str, metric: str, y: np.ndarray, pred: np.ndarray, classes) -> str:
    """Why ``metric`` is undefined (NaN) on the whole test set, as :func:`_metric_values` decides it."""
    if kind == "regression":
        reasons = []
        if np.ptp(y) == 0:
            reasons.append("the test targets are all equal (constant truth)")
        if metric == "pearson" and np.ptp(pred) == 0:
            reasons.append("the probe predicts one value for every test subject (constant prediction)")
        return "undefined on the test set: " + (" and ".join(reasons) or "a zero variance")
    present = np.unique(y)
    if kind == "binary":
        return f"undefined on the test set: it holds only class {', '.join(f'{c:g}' for c in present)}"
    unseen = np.setdiff1d(present, classes)
    if len(unseen):
        listed = ", ".join(f"{c:g}" for c in unseen)
        return f"undefined on the test set: it holds class(es) {listed} the probe never saw in training"
    absent = ", ".join(f"{c:g}" for c in np.setdiff1d(classes, present))
    return f"undefined on the test set: class(es) {absent} absent there (one-vs-rest macro needs every class)"


def _resample_reason(kind: str, metric: str) -> str:
    """What makes ``metric`` undefined in a resample (as in :func:`_metric_values`)."""
    if kind == "regression":
        return "constant truth" if metric == "r2" else "constant truth or constant prediction"
    return "a class missing"


def _edge_note(kind: str, penalty: float, grid: np.ndarray) -> str:
    """A note when the inner CV chose the first or last penalty of its grid, else ``""``."""
    if kind == "regression":
        name, heavy, light = "ridge alpha", grid[-1], grid[0]
    else:
        name, heavy, light = "logistic C", grid[0], grid[-1]
    if np.isclose(penalty, heavy, rtol=1e-9, atol=0.0):
        return (
            f"{name}={penalty:.3g} on the heavy-penalty edge of its grid: the probe is nearly constant (at most"
            f" {NULL_MODEL_DF} degrees of freedom), the inner CV found no signal it could use"
        )
    if np.isclose(penalty, light, rtol=1e-9, atol=0.0):
        why = " (classes may be separable)" if kind != "regression" else ""
        return f"{name}={penalty:.3g} on the light-penalty edge of its grid: the probe is practically unpenalized{why}"
    return ""


def _few_cases_note(kind: str, y: np.ndarray, groups: np.ndarray | None) -> str:
    """A note when a class is held by fewer than :data:`FEW_CASES` test subjects (groups), else ``""``."""
    if kind == "regression" or not len(y):
        return ""
    labels = np.unique(y)
    held = [len(np.unique(groups[y == c])) if groups is not None else int((y == c).sum()) for c in labels]
    k = int(np.argmin(held))
    if held[k] >= FEW_CASES:
        return ""
    unit = "group" if groups is not None else "subject"
    return (
        f"class {labels[k]:g} in only {held[k]} test {unit}(s): resampled within class, the CI leaves out the"
        " uncertainty of having so few cases"
    )


def _probe_one(
    name, target, kind, x, y, fit_ids, test_ids, n_bootstrap, seed, inner_folds, groups: pd.Series | None = None
) -> list[dict]:
    """``groups``: subject ID -> group label; the inner CV and the bootstrap then keep groups whole."""
    grouped = groups is not None
    fit_ids = fit_ids[np.isfinite(y.reindex(fit_ids).to_numpy(np.float64))]  # subjects with an observed target
    test_ids = test_ids[np.isfinite(y.reindex(test_ids).to_numpy(np.float64))]
    y_fit, y_test = y.reindex(fit_ids).to_numpy(np.float64), y.reindex(test_ids).to_numpy(np.float64)
    n_train, n_test = len(fit_ids), len(test_ids)
    n_folds = min(inner_folds, n_train)
    empty = dict(n_bootstrap=n_bootstrap)
    if kind != "regression":
        labels = (y_fit, y_test)
        if not all(np.array_equal(v, np.round(v)) and (v >= 0).all() for v in labels):
            raise ValueError(f"target {target!r} is {kind} but holds values that are not class labels 0, 1, ...")
        if kind == "binary" and not all(np.isin(v, (0.0, 1.0)).all() for v in labels):
            raise ValueError(f"target {target!r} is binary but holds values other than 0 and 1")
        present, per_class = np.unique(y_fit, return_counts=True)
        # the inner CV is stratified: a rare class limits how many folds it can have
        n_folds = min(inner_folds, int(per_class.min())) if len(per_class) else 0
        if len(per_class) < 2 or n_folds < 2:
            held = ", ".join(f"class {c:g}: {k}" for c, k in zip(present, per_class, strict=True)) or "none"
            note = (
                "cannot fit: the training subjects need at least 2 classes, every class held by 2 or more of them"
                f" ({held})"
            )
            warnings.warn(f"probe {name!r} / {target!r}: {note}", stacklevel=3)
            return _empty_rows(name, target, kind, n_train, n_test, note, **empty)
    elif n_train < 3:
        note = f"cannot fit: {n_train} training subject(s) with an observed target"
        warnings.warn(f"probe {name!r} / {target!r}: {note}", stacklevel=3)
        return _empty_rows(name, target, kind, n_train, n_test, note, **empty)
    if n_test == 0:
        return _empty_rows(name, target, kind, n_train, n_test, "no test subject with features and target", **empty)

    inner_splits = test_groups = None
    if grouped:
        inner_splits = grouped_inner_splits(kind, y_fit, _group_codes(groups, fit_ids), inner_folds, seed)
        if not inner_splits:
            note = (
                "cannot fit: no inner CV keeps groups whole (fewer than 2 groups, or no grouped split gives every"
                " inner training part every class)"
            )
            warnings.warn(f"probe {name!r} / {target!r}: {note}", stacklevel=3)
            return _empty_rows(name, target, kind, n_train, n_test, note, **empty)
        test_groups = _group_codes(groups, test_ids)
    x_fit = x.loc[fit_ids].to_numpy(np.float64)
    observed = ~np.isnan(x_fit).all(axis=0)  # a column without a value in any training row cannot be imputed
    dropped = int((~observed).sum())
    if not observed.any():
        note = f"cannot fit: every feature column is missing (NaN) in all {n_train} training subjects"
        warnings.warn(f"probe {name!r} / {target!r}: {note}", stacklevel=3)
        return _empty_rows(name, target, kind, n_train, n_test, note, **empty)
    dropped_note = (
        f"{dropped} feature column(s) missing (NaN) in every training subject dropped before fitting" if dropped else ""
    )
    if dropped:
        log.info("probe %r / %r: %s", name, target, dropped_note)
    x_fit = x_fit[:, observed]
    with threadpool_limits(limits=1) if x_fit.size < _SMALL_FIT_CELLS else nullcontext():
        model = _pipeline(kind, n_folds, seed, inner_splits).fit(x_fit, y_fit)
    x_test = x.loc[test_ids].to_numpy(np.float64)[:, observed]
    classes = None
    if kind == "regression":
        pred = model.predict(x_test)
    elif kind == "binary":
        pred = model.predict_proba(x_test)[:, 1]
    else:
        pred, classes = model.predict_proba(x_test), model.classes_
    penalty, grid = getattr(model, "penalty_", np.nan), getattr(model, "grid_", None)
    edge = _flat_note(kind, model.cv_loss_, y_fit) or (
        _edge_note(kind, penalty, grid) if grid is not None and len(grid) else ""
    )
    if edge:
        log.warning("probe %r / %r: %s", name, target, edge)

    bootstrap = _bootstrap(kind, y_test, pred, classes, n_bootstrap, seed, test_groups)
    few = _few_cases_note(kind, y_test, test_groups)
    one_group = grouped and len(np.unique(test_groups)) < 2
    rows = []
    for metric, (value, low, high, valid, drawn) in bootstrap.items():
        notes = [dropped_note] if dropped_note else []
        if not np.isfinite(value):
            notes.append(_undefined_note(kind, metric, y_test, pred, classes))
        elif n_bootstrap and not drawn:
            notes.append(
                "no CI: the test subjects are all in one group"
                if one_group
                else "no CI: every resample would be the test set itself (one subject or group per stratum)"
            )
        elif drawn and not np.isfinite(low):
            notes.append(
                f"no CI: the metric is defined in only {valid} of {drawn} resamples (under"
                f" {MIN_VALID_FRACTION:.0%}; undefined in the others: {_resample_reason(kind, metric)}); the rest"
                " would be a selected subset"
            )
        elif valid < drawn:
            notes.append(
                f"{drawn - valid} of {drawn} resamples undefined ({_resample_reason(kind, metric)}) and skipped"
            )
        if np.isfinite(value) and drawn and few and metric in STRATIFIED_METRICS:
            notes.append(few)
        if edge:
            notes.append(edge)
        rows.append(
            dict(
                feature_set=name,
                target=target,
                metric=metric,
                value=value,
                ci_low=low,
                ci_high=high,
                n_train=n_train,
                n_test=n_test,
                resampling=_resampling_label(kind, metric, grouped, drawn),
                n_resamples=n_bootstrap,
                n_resamples_valid=valid,
                penalty=penalty,
                note="; ".join(notes),
            )
        )
    return rows


def _subject_groups(groups, subjects: np.ndarray) -> pd.Series:
    """``groups`` as a Series of strings indexed by subject ID; every one of ``subjects`` must have a group."""
    series = pd.Series(groups) if isinstance(groups, Mapping) else groups
    if not isinstance(series, pd.Series):
        raise ValueError(f"groups must be a Series or a mapping subject ID -> group, not {type(groups).__name__}")
    series = series.set_axis(_ids(series.index), axis=0)
    if not series.index.is_unique:
        raise ValueError(f"groups has {int(series.index.duplicated().sum())} repeated subject ID(s) in its index")
    series = series.reindex(subjects)
    if series.isna().any():
        raise ValueError(
            f"{int(series.isna().sum())} subject(s) of the splits have no group; give every subject a group"
        )
    return series.astype(str)


def probe(
    feature_sets: Mapping[str, pd.DataFrame],
    targets: pd.DataFrame,
    splits: Mapping[str, np.ndarray],
    *,
    kinds: Mapping[str, str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    inner_folds: int = 5,
    groups: pd.Series | Mapping | None = None,
) -> pd.DataFrame:
    """Fit a linear probe per (feature set, target) on train + val subjects and score it on the test subjects.

    The probe is mean imputation -> standardization -> ridge (regression) or logistic regression
    (classification); its penalty is chosen from :func:`penalty_grid` by a grid search that cross-validates the
    whole pipeline on the train + val subjects (so the imputer and scaler of each inner split never see its
    held-out rows), then the pipeline is refitted on all of them. The CIs are percentile bootstrap 95% CIs over
    the test subjects: AUROC and AUPRC resample within each class (stratified, so every resample holds every
    class), every other metric resamples subjects plainly; with ``groups`` whole groups are drawn (cluster
    bootstrap; stratified by the classes a group holds). See the module docstring.

    Args:
        feature_sets: name -> numeric DataFrame indexed by subject ID (NaN allowed: mean-imputed on the fit set;
            a column missing in every fit subject of a target is dropped for that target, with a note).
        targets: DataFrame indexed by subject ID, one column per target (NaN = not observed).
        splits: ``{"train": ids, "val": ids, "test": ids}``; train and val are fitted on, test is held out.
        kinds: target -> ``"regression"``, ``"binary"`` (0/1) or ``"multiclass"`` (labels 0..K-1).
        n_bootstrap: test-set resamples for the 95% percentile CIs (0: no CIs).
        seed: seeds the resamples and the inner CV folds.
        inner_folds: folds of the inner CV that chooses the penalty (fewer when a class is rarer than that).
        groups: subject ID -> group (site, family, the subject of repeated visits), e.g. the data config's
            ``group`` column. Then no group is on both sides of an inner CV split (grouped k-fold; stratified
            group k-fold for classification), and the bootstrap resamples whole test groups, not subjects.
            Every subject of ``splits`` needs a group.

    Returns:
        A tidy DataFrame with the columns :data:`COLUMNS`, one row per feature set, target and metric:
        ``value`` (the metric on all test subjects), ``ci_low``/``ci_high`` (2.5th/97.5th percentiles of the
        valid resamples; NaN without CI), ``n_train``/``n_test`` (subjects with features and target),
        ``resampling`` (what a resample draws, :data:`RESAMPLING`; ``"none"`` without resamples),
        ``n_resamples`` (requested) and ``n_resamples_valid`` (those where the metric was defined: the CI's
        sample; under :data:`MIN_VALID_FRACTION` of the requested the CI is NaN), ``penalty`` (ridge alpha or
        logistic C chosen by the inner CV) and ``note`` (``"; "``-joined: feature columns dropped as missing in
        every fit subject, why a number is NaN or has no CI, resamples skipped, a class with few test cases, an
        inner CV loss flat across the penalty grid or else a penalty on the edge of its grid). A set's subjects
        are its index intersected with the split IDs.
    """
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    if isinstance(inner_folds, bool) or not isinstance(inner_folds, (int, np.integer)) or inner_folds < 2:
        raise ValueError(f"inner_folds must be an integer >= 2, got {inner_folds!r}")
    unknown = sorted(set(splits) - set(_SPLIT_PARTS))
    if unknown or "train" not in splits or "test" not in splits:
        raise ValueError(f"splits must have the keys 'train' and 'test' (and 'val'), got {sorted(splits)}")
    part = {key: _ids(splits.get(key, ())) for key in _SPLIT_PARTS}
    fit_pool = np.union1d(part["train"], part["val"]).astype(object)
    test_pool = np.unique(part["test"]).astype(object)
    overlap = np.intersect1d(fit_pool, test_pool)
    if len(overlap):
        raise ValueError(f"{len(overlap)} subject(s) are both in test and in train/val; the splits must not overlap")
    targets = _check_frame(targets, "targets")
    missing_kinds = [t for t in targets.columns if t not in kinds]
    if missing_kinds:
        raise ValueError(f"no kind given for target(s) {missing_kinds}; pass kinds={{target: one of {KINDS}}}")
    bad = {t: kinds[t] for t in targets.columns if kinds[t] not in KINDS}
    if bad:
        raise ValueError(f"target kinds must be one of {KINDS}, got {bad}")
    if not feature_sets:
        raise ValueError("no feature sets to probe")
    if groups is not None:
        groups = _subject_groups(groups, np.union1d(fit_pool, test_pool).astype(object))

    rows = []
    for name, frame in feature_sets.items():
        x = _check_frame(frame, f"feature set {name!r}")
        non_numeric = [str(c) for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
        if non_numeric:
            raise ValueError(f"feature set {name!r} has non-numeric column(s) {non_numeric[:5]}")
        if x.shape[1] == 0:
            raise ValueError(f"feature set {name!r} has no columns")
        fit_ids = np.intersect1d(fit_pool, x.index.to_numpy(object))
        test_ids = np.intersect1d(test_pool, x.index.to_numpy(object))  # sorted: paired resamples across sets
        lacking = len(test_pool) - len(test_ids)
        if len(test_pool) and lacking > MISSING_TEST_WARN_FRACTION * len(test_pool):
            warnings.warn(
                f"feature set {name!r} lacks {lacking} of {len(test_pool)} test subjects (and"
                f" {len(fit_pool) - len(fit_ids)} of {len(fit_pool)} train/val subjects); its metrics are on fewer"
                " subjects than the other sets'",
                stacklevel=2,
            )
        for target in targets.columns:
            y = pd.to_numeric(targets[target], errors="raise").astype(np.float64).reindex(x.index)
            rows += _probe_one(
                name, target, kinds[target], x, y, fit_ids, test_ids, int(n_bootstrap), seed, inner_folds, groups
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


# ---------------------------------------------------------------------------------------------- embeddings
_JSON_METADATA = ("format_version", "layer", "n_layers", "modalities", "embedding_dim")  # as EmbeddingWriter


def _decode(key: str, text: str):
    if key not in _JSON_METADATA:
        return text  # plain strings (variant, checkpoint, ...) are stored as they are
    try:
        return json.loads(text)
    except ValueError:
        return text


def _list_matrix(column: pa.ChunkedArray, name: str, path: Path) -> np.ndarray:
    """A list<float> column as a ``[rows, dim]`` float32 matrix, without a Python loop over rows."""
    array = column.combine_chunks()
    if array.null_count:
        raise ValueError(f"{path.name}: column {name!r} has {array.null_count} empty row(s)")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise ValueError(f"{path.name}: column {name!r} holds vectors of different lengths {sorted(set(lengths))[:5]}")
    dim = int(lengths[0]) if len(lengths) else 0
    return array.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(array), dim)


def _read_embeddings(path) -> tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray], dict]:
    """(eid/split/fold table, pooled matrix, modality -> matrix in modality order, metadata) of one file.

    Read with pyarrow directly rather than ``mot_neuro.embed.read_embeddings``: that module imports Lightning,
    and turning list columns into per-row arrays is slow for large cohorts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    table = pq.read_table(path)
    metadata = {
        k.decode(): _decode(k.decode(), v.decode())
        for k, v in (table.schema.metadata or {}).items()
        if not k.startswith(b"ARROW:") and k != b"pandas"
    }
    missing = [c for c in ("eid", "split", "fold", "embedding") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path.name} is not an embeddings file: no column(s) {missing} (has {table.column_names})")
    info = pd.DataFrame(
        {
            "eid": _ids(table.column("eid").to_pylist()),
            "split": [str(s) for s in table.column("split").to_pylist()],
            "fold": table.column("fold").to_numpy(),
        }
    )
    if not info["eid"].is_unique:
        raise ValueError(f"{path.name}: {int(info['eid'].duplicated().sum())} subject ID(s) occur more than once")
    pooled = _list_matrix(table.column("embedding"), "embedding", path)
    present = [c[len("embedding_") :] for c in table.column_names if c.startswith("embedding_")]
    listed = metadata.get("modalities")
    listed = [str(m) for m in listed] if isinstance(listed, list) else []
    order = [m for m in listed if m in present] + [m for m in present if m not in listed]
    per_modality = {m: _list_matrix(table.column(f"embedding_{m}"), f"embedding_{m}", path) for m in order}
    return info, pooled, per_modality, metadata


def _embedding_sets(info: pd.DataFrame, pooled: np.ndarray, per_modality: dict, name: str) -> dict:
    index = pd.Index(info["eid"].to_numpy(object), name="eid")
    sets = {name: pd.DataFrame(pooled, index=index, columns=[f"emb_{i}" for i in range(pooled.shape[1])])}
    if per_modality:
        blocks = [
            pd.DataFrame(values, index=index, columns=[f"{m}:emb_{i}" for i in range(values.shape[1])])
            for m, values in per_modality.items()
        ]
        sets[name + LATE_FUSION_SUFFIX] = pd.concat(blocks, axis=1)
    return sets


def embedding_features(path) -> dict[str, pd.DataFrame]:
    """Feature sets of one embeddings parquet, indexed by ``eid``.

    ``{"<variant>": pooled embedding (columns emb_0 ..), "<variant>_late_fusion": the per-modality embeddings
    concatenated in the file's modality order (columns <modality>:emb_0 ..)}``; the late fusion set is left out
    when the file has no per-modality columns. The variant comes from the file's metadata (else the file stem).
    """
    info, pooled, per_modality, metadata = _read_embeddings(path)
    return _embedding_sets(info, pooled, per_modality, str(metadata.get("variant") or Path(path).stem))


# ---------------------------------------------------------------------------------------------- early fusion
def _fold_datamodule(config: str, overrides: Sequence[str]):
    """The experiment's DataModule, prepared (cohort, splits, FoldPreprocessor fitted on the fold's train rows)."""
    from mot_neuro.cli import lightning_cli

    # Only the DataModule is used. Last, so that no --trainer file given by the user undoes them: no logger
    # (building the DataModule must not create an MLflow store or run), and one CPU process whatever
    # accelerator or strategy the experiment trains with
    only_data = ["--trainer.logger", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    only_data += ["--trainer.strategy", "auto", "--trainer.num_nodes", "1"]
    cli = lightning_cli(["--config", str(config), *overrides, *only_data], run=False)
    datamodule = cli.datamodule
    datamodule.setup("fit")
    return datamodule


def _fold_labels(datamodule) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, str]]:
    fold = datamodule.splits.fold(datamodule.hparams.fold)
    splits = {part: np.asarray(sorted(fold[part]), dtype=object) for part in _SPLIT_PARTS}
    names = list(datamodule.hparams.targets)
    targets = datamodule.cohort.participants[names].copy()
    for name in names:  # the classes as the model sees them: a binary target coded 1/2 (PLINK) becomes 0/1
        targets[name] = datamodule.preprocessor.code_target(name, targets[name].to_numpy(dtype=float, na_value=np.nan))
    targets.index = pd.Index(_ids(targets.index), name="eid")
    kinds = {name: datamodule.preprocessor.target_kinds[name] for name in names}
    return targets, splits, kinds


def _fold_groups(datamodule) -> pd.Series | None:
    """Subject ID -> the data config's ``group`` (the column the splits keep whole), or None without one."""
    column = datamodule.hparams.group
    if not column:
        return None
    participants = datamodule.cohort.participants
    if column not in participants.columns:
        raise ValueError(f"data.group {column!r} is not a column of the participants table")
    # as strings, exactly as the DataModule groups its splits
    return pd.Series(participants[column].astype(str).to_numpy(object), index=_ids(participants.index), name=column)


def _modality_columns(name: str, modality, values: np.ndarray, missing: np.ndarray) -> pd.DataFrame:
    """Real slots (``feature_mask``) of one modality as columns ``<modality>:<token>:<feature>``.

    A categorical token holds a category index; it becomes one 0/1 column per category
    (``<modality>:<token>:<feature>=<label>``, all 0 where missing), since a linear probe must not read an
    order into category codes.
    """
    mask = np.asarray(modality.feature_mask, dtype=bool)
    columns, names = [], []
    for t, token in enumerate(modality.token_names):
        for f in np.flatnonzero(mask[t]):
            if token in modality.categories:
                codes = values[:, t, f]
                for c, label in enumerate(modality.categories[token]):
                    columns.append(((codes == c) & ~missing[:, t, f]).astype(np.float32))
                    names.append(f"{name}:{token}:{f}={label}")
            else:
                columns.append(values[:, t, f])
                names.append(f"{name}:{token}:{f}")
    return pd.DataFrame(np.column_stack(columns) if columns else np.empty((len(values), 0)), columns=names)


def _early_fusion_matrix(datamodule) -> pd.DataFrame:
    rows = np.sort(np.concatenate([datamodule.rows[part] for part in _SPLIT_PARTS]))
    cohort = datamodule.cohort
    blocks = []
    for name in datamodule.kept:
        values, missing = datamodule.preprocessor.transform(name, rows, cohort=cohort)
        blocks.append(_modality_columns(name, cohort.modalities[name], values, missing))
    features = pd.concat(blocks, axis=1)
    features.index = pd.Index(cohort.subject_ids[rows].astype(object), name="eid")
    return features


def early_fusion_features(
    config: str, overrides: Sequence[str] = ()
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray], dict[str, str]]:
    """Raw features of an experiment's cohort, preprocessed fold-safely, with its targets, splits and kinds.

    Builds the experiment's DataModule (``lightning_cli(["--config", config, *overrides], run=False)``), whose
    FoldPreprocessor is fitted on the fold's training rows only, and transforms every row of the fold with it.

    Returns:
        ``(features, targets, splits, kinds)``: features indexed by ``eid`` (columns
        ``<modality>:<token>:<feature index>``, categorical tokens one-hot; no NaN: missing values are the
        training mean), the raw targets (original units) indexed by ``eid``, ``{"train", "val", "test"} -> IDs``
        of the fold from the splits file, and ``{target: kind}``.
    """
    datamodule = _fold_datamodule(config, overrides)
    targets, splits, kinds = _fold_labels(datamodule)
    return _early_fusion_matrix(datamodule), targets, splits, kinds


# ---------------------------------------------------------------------------------------------- CLI
def _check_embeddings_fold(path: Path, info: pd.DataFrame, fold: int, splits: Mapping[str, np.ndarray]) -> None:
    """The file must hold embeddings of the config's fold, with the splits file's label for every subject."""
    folds = sorted({int(f) for f in info["fold"]})
    if folds != [fold]:
        raise ValueError(
            f"{path} holds embeddings of fold {', '.join(map(str, folds)) or '(none)'}, but the config trains fold"
            f" {fold}; probe with the embeddings of fold {fold} (or set data.fold to match)"
        )
    expected = {sid: part for part in _SPLIT_PARTS for sid in splits[part]}
    labels = info["eid"].map(expected)
    outside = int(labels.isna().sum())
    differ = int((labels.notna() & (labels != info["split"])).sum())
    if outside or differ:
        raise ValueError(
            f"{path} does not match fold {fold} of the splits file: {differ} subject(s) have another split label"
            f" there and {outside} subject(s) are not in that fold; embed with the same splits file and fold"
        )


def _feature_set_names(paths: Sequence[Path], variants: Sequence[str]) -> list[str]:
    """Each file's variant; files sharing a variant are named by their stem (made unique if stems repeat)."""
    names = []
    for path, variant in zip(paths, variants, strict=True):
        name = variant if variants.count(variant) == 1 else path.stem
        base, k = name, 2
        while name in names or name == EARLY_FUSION:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _overrides(pairs: Sequence[str]) -> list[str]:
    from mot_neuro.cli import set_overrides  # lazily: the CLI module imports torch

    return set_overrides(list(pairs))


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    atomic_write_bytes(path, table.to_csv(index=False).encode())  # readers see the old file or the new one


def format_table(results: pd.DataFrame, digits: int = 3) -> str:
    """``feature_set x target/metric`` with ``value [ci_low, ci_high]`` cells, as text."""

    def cell(row) -> str:
        if not np.isfinite(row["value"]):
            return "nan"
        if not np.isfinite(row["ci_low"]):
            return f"{row['value']:.{digits}f}"
        return f"{row['value']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"

    if results.empty:
        return "(no results)"
    shown = results.assign(
        cell=results.apply(cell, axis=1),
        column=results["target"].astype(str) + "/" + results["metric"].astype(str),
    )
    sets = list(dict.fromkeys(shown["feature_set"]))
    columns = list(dict.fromkeys(shown["column"]))
    wide = shown.pivot(index="feature_set", columns="column", values="cell").reindex(index=sets, columns=columns)
    wide.index.name, wide.columns.name = "feature_set", None
    return wide.fillna("").to_string()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mot-neuro probe",
        description="Linear probes of the experiment's targets on subject embeddings and on the raw features"
        " (early fusion), on the experiment's folds; penalties chosen by an inner CV of the whole pipeline;"
        " bootstrap 95%% CIs on the test subjects (AUROC/AUPRC resampled within class). With the data"
        " config's group set, inner CV splits and bootstrap resamples keep each group whole.",
        epilog=_experiment_help(),
        allow_abbrev=False,  # an abbreviation must not swallow an experiment override such as --data
    )
    parser.add_argument("--config", required=True, help="the experiment config the embeddings' models were fit with")
    parser.add_argument("--embeddings", nargs="*", default=[], metavar="PARQUET", help="embeddings files to probe")
    parser.add_argument(
        "--no-early-fusion", dest="early_fusion", action="store_false", help="leave out the raw features"
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="test-set resamples for the CIs (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the resamples and inner CV folds (default 0)")
    parser.add_argument(
        "--inner-folds",
        type=int,
        default=5,
        help="folds of the inner CV that chooses each probe's penalty (default 5)",
    )
    parser.add_argument("--out", default=None, help="output folder (default outputs/probes/<config name>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set data.fold=1 (repeatable)",
    )
    return parser


def _experiment_help() -> str:
    from mot_neuro.cli import EXPERIMENT_HELP  # lazily: the CLI module imports torch

    return EXPERIMENT_HELP


def main(argv: Sequence[str] | None = None) -> int:
    """``mot-neuro probe``: writes ``<out>/probes.csv`` and prints a table; see :func:`build_parser`."""
    from mot_neuro.cli import experiment_overrides

    args, unparsed = build_parser().parse_known_args(list(argv) if argv is not None else None)
    passed = experiment_overrides("probe", unparsed)  # --data/--model/--trainer mean what they mean in fit
    paths = [Path(p) for p in args.embeddings]
    if not paths and not args.early_fusion:
        raise ValueError("nothing to probe: give --embeddings files, or leave early fusion on")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"embeddings file not found: {path}")
    datamodule = _fold_datamodule(args.config, [*passed, *_overrides(args.overrides)])
    targets, splits, kinds = _fold_labels(datamodule)
    groups = _fold_groups(datamodule)
    fold = int(datamodule.hparams.fold)

    files = []
    for path in paths:
        info, pooled, per_modality, metadata = _read_embeddings(path)
        _check_embeddings_fold(path, info, fold, splits)
        files.append((info, pooled, per_modality, str(metadata.get("variant") or path.stem)))
    feature_sets: dict[str, pd.DataFrame] = {}
    names = _feature_set_names(paths, [variant for *_, variant in files])
    for (info, pooled, per_modality, _), name in zip(files, names, strict=True):
        feature_sets.update(_embedding_sets(info, pooled, per_modality, name))
    if args.early_fusion:
        feature_sets[EARLY_FUSION] = _early_fusion_matrix(datamodule)

    results = probe(
        feature_sets,
        targets,
        splits,
        kinds=kinds,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        inner_folds=args.inner_folds,
        groups=groups,
    )
    out = Path(args.out) if args.out else Path("outputs") / "probes" / Path(args.config).stem
    _write_csv(results, out / "probes.csv")
    unit = "subjects" if groups is None else f"whole groups of {groups.name!r} (inner CV grouped too)"
    print(
        f"mot-neuro probe: fold {fold}, {len(targets.columns)} target(s), {args.bootstrap} bootstrap resamples"
        f" of {unit} (within class for AUROC/AUPRC)"
    )
    print(format_table(results))
    print(f"results: {out / 'probes.csv'}")
    return 0


__all__ = ["COLUMNS", "METRICS", "build_parser", "early_fusion_features", "embedding_features", "main", "probe"]
