"""The probe's penalty search: imputer -> scaler -> ridge or logistic regression, its penalty chosen by an inner CV
of the whole pipeline over a grid tied to the data (see ``mot_neuro.probe``), and the notes on that choice.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

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
