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

Layout: this module holds :func:`probe` (one probe per feature set and target: fit, predict, score) and
``mot-neuro probe`` (:func:`main`); the checks on what :func:`probe` is given are in :mod:`mot_neuro.probe_inputs`,
the output table's columns and rows in :mod:`mot_neuro.probe_table`, the metrics, bootstrap CIs and their notes in
:mod:`mot_neuro.probe_metrics`, the penalty search in :mod:`mot_neuro.probe_penalty`, the feature sets and the fold
in :mod:`mot_neuro.probe_features`, the command's arguments, checks and table in :mod:`mot_neuro.probe_cli`, the
embeddings file in :mod:`mot_neuro.embeddings_format`. Their public names stay importable from here.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from mot_neuro.embeddings_format import read_embedding_matrices
from mot_neuro.experiment import experiment_overrides
from mot_neuro.probe_cli import (
    _check_embeddings_fold,
    _feature_set_names,
    _overrides,
    _write_csv,
    build_parser,
    format_table,
)
from mot_neuro.probe_features import (
    EARLY_FUSION,
    LATE_FUSION_SUFFIX,
    _early_fusion_matrix,
    _embedding_sets,
    _fold_datamodule,
    _fold_groups,
    _fold_labels,
    early_fusion_features,
    embedding_features,
)
from mot_neuro.probe_inputs import KINDS as KINDS
from mot_neuro.probe_inputs import (
    _check_class_labels,
    _check_feature_set,
    _check_options,
    _check_targets,
    _split_pools,
    _subject_groups,
)
from mot_neuro.probe_metrics import (
    ECE_BINS,
    FEW_CASES,
    MIN_VALID_FRACTION,
    RESAMPLING,
    STRATIFIED_METRICS,
    _bootstrap,
    _metric_notes,
)
from mot_neuro.probe_metrics import _metric_values as _metric_values
from mot_neuro.probe_metrics import _resample_counts as _resample_counts
from mot_neuro.probe_metrics import _resampling as _resampling
from mot_neuro.probe_penalty import (
    FLAT_LOSS_RTOL,
    GRID_STEP,
    LOGISTIC_C_MAX,
    LOGISTIC_MAX_ITER,
    NULL_MODEL_DF,
    RIDGE_ALPHA_MIN,
    _edge_note,
    _flat_note,
    _TunedProbe,
    grouped_inner_splits,
    penalty_grid,
)
from mot_neuro.probe_penalty import _RowSpace as _RowSpace
from mot_neuro.probe_table import COLUMNS, METRICS, _Pair

log = logging.getLogger(__name__)

MISSING_TEST_WARN_FRACTION = 0.1
"""A feature set lacking more than this share of the test subjects is warned about (counts only)."""
_SMALL_FIT_CELLS = 1_000_000
"""Below this many training cells (subjects x features) a probe runs with one BLAS/OpenMP thread: its many small
fits gain nothing from threads, and threads that spin on a busy machine slow them down."""
_UNGROUPABLE = (
    "cannot fit: no inner CV keeps groups whole (fewer than 2 groups, or no grouped split gives every inner training"
    " part every class)"
)


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


def _group_codes(groups: pd.Series, ids: np.ndarray) -> np.ndarray:
    """Codes 0..G-1 of the groups of ``ids`` (in that order)."""
    return pd.factorize(groups.reindex(ids).to_numpy(object), sort=True)[0]


def _observed(y: pd.Series, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Those of ``ids`` whose target ``y`` is observed (finite), and their targets."""
    values = y.reindex(ids).to_numpy(np.float64)
    finite = np.isfinite(values)
    return ids[finite], values[finite]


def _inner_fold_count(kind: str, y_fit: np.ndarray, inner_folds: int) -> tuple[int, str]:
    """The folds of the inner CV that chooses the penalty, and why no probe can be fitted (``""`` when one can).

    Regression needs 3 training subjects. Classification needs 2 classes in the training subjects, each held by 2
    or more of them: the inner CV is stratified, so a rare class limits how many folds it can have.
    """
    if kind == "regression":
        n_train = len(y_fit)
        note = f"cannot fit: {n_train} training subject(s) with an observed target" if n_train < 3 else ""
        return min(inner_folds, n_train), note
    present, per_class = np.unique(y_fit, return_counts=True)
    n_folds = min(inner_folds, int(per_class.min())) if len(per_class) else 0
    if len(per_class) >= 2 and n_folds >= 2:
        return n_folds, ""
    held = ", ".join(f"class {c:g}: {k}" for c, k in zip(present, per_class, strict=True)) or "none"
    return n_folds, (
        f"cannot fit: the training subjects need at least 2 classes, every class held by 2 or more of them ({held})"
    )


def _grouped_cv(kind, y_fit, groups: pd.Series | None, fit_ids, test_ids, inner_folds: int, seed: int):
    """Without ``groups``: ``(None, None)``. With them: the inner CV's splits of the ``fit_ids`` that keep groups
    whole (empty when none can) and the group codes of the ``test_ids`` (the bootstrap draws whole groups)."""
    if groups is None:
        return None, None
    splits = grouped_inner_splits(kind, y_fit, _group_codes(groups, fit_ids), inner_folds, seed)
    return splits, _group_codes(groups, test_ids)


def _cannot_fit(pair: _Pair, note: str) -> list[dict]:
    """Empty rows with ``note``, and a warning at the caller of :func:`probe` (called from :func:`_probe_one`)."""
    warnings.warn(f"probe {pair.feature_set!r} / {pair.target!r}: {note}", stacklevel=4)
    return pair.empty_rows(note)


def _dropped_note(pair: _Pair, observed: np.ndarray) -> str:
    """A note (also logged) on the feature columns not ``observed`` in any training subject, else ``""``."""
    dropped = int((~observed).sum())
    if not dropped:
        return ""
    note = f"{dropped} feature column(s) missing (NaN) in every training subject dropped before fitting"
    log.info("probe %r / %r: %s", pair.feature_set, pair.target, note)
    return note


def _fit(kind: str, n_folds: int, seed: int, inner_splits, x_fit: np.ndarray, y_fit: np.ndarray) -> _TunedProbe:
    """The probe (:func:`_pipeline`, looked up here at each call) fitted with its penalty chosen by the inner CV;
    on one thread below :data:`_SMALL_FIT_CELLS` training cells."""
    with threadpool_limits(limits=1) if x_fit.size < _SMALL_FIT_CELLS else nullcontext():
        return _pipeline(kind, n_folds, seed, inner_splits).fit(x_fit, y_fit)


def _predict(kind: str, model: _TunedProbe, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """What the metrics score: the predicted values (regression), the probability of class 1 (binary) or of every
    class (multiclass, with the classes in their column order; ``None`` otherwise)."""
    if kind == "regression":
        return model.predict(x_test), None
    if kind == "binary":
        return model.predict_proba(x_test)[:, 1], None
    return model.predict_proba(x_test), model.classes_


def _penalty(pair: _Pair, model: _TunedProbe, y_fit: np.ndarray) -> tuple[float, str]:
    """The penalty the inner CV chose, and a note (also logged) when its CV loss was flat across the grid or else
    when it sits on the edge of its grid (``""`` when neither)."""
    penalty, grid = getattr(model, "penalty_", np.nan), getattr(model, "grid_", None)
    note = _flat_note(pair.kind, model.cv_loss_, y_fit) or (
        _edge_note(pair.kind, penalty, grid) if grid is not None and len(grid) else ""
    )
    if note:
        log.warning("probe %r / %r: %s", pair.feature_set, pair.target, note)
    return penalty, note


def _probe_one(
    name, target, kind, x, y, fit_ids, test_ids, n_bootstrap, seed, inner_folds, groups: pd.Series | None = None
) -> list[dict]:
    """The rows of feature set ``name`` x ``target``: the probe fitted on those of ``fit_ids`` with an observed
    target and scored on such ``test_ids``, or rows without values and with a note saying why it could not be.

    ``groups``: subject ID -> group label; the inner CV and the bootstrap then keep groups whole.
    """
    fit_ids, y_fit = _observed(y, fit_ids)
    test_ids, y_test = _observed(y, test_ids)
    pair = _Pair(name, target, kind, len(fit_ids), len(test_ids), n_bootstrap)
    _check_class_labels(kind, target, y_fit, y_test)
    n_folds, note = _inner_fold_count(kind, y_fit, inner_folds)
    if note:
        return _cannot_fit(pair, note)
    if not len(test_ids):
        return pair.empty_rows("no test subject with features and target")
    inner_splits, test_groups = _grouped_cv(kind, y_fit, groups, fit_ids, test_ids, inner_folds, seed)
    if groups is not None and not inner_splits:
        return _cannot_fit(pair, _UNGROUPABLE)
    x_fit = x.loc[fit_ids].to_numpy(np.float64)
    observed = ~np.isnan(x_fit).all(axis=0)  # a column without a value in any training row cannot be imputed
    if not observed.any():
        return _cannot_fit(
            pair, f"cannot fit: every feature column is missing (NaN) in all {pair.n_train} training subjects"
        )
    dropped_note = _dropped_note(pair, observed)
    model = _fit(kind, n_folds, seed, inner_splits, x_fit[:, observed], y_fit)
    pred, classes = _predict(kind, model, x.loc[test_ids].to_numpy(np.float64)[:, observed])
    penalty, penalty_note = _penalty(pair, model, y_fit)
    estimates = _bootstrap(kind, y_test, pred, classes, n_bootstrap, seed, test_groups)
    metric_notes = _metric_notes(kind, estimates, n_bootstrap, y_test, pred, classes, test_groups)
    return pair.scored_rows(
        estimates,
        penalty,
        groups is not None,
        dropped_note=dropped_note,
        metric_notes=metric_notes,
        penalty_note=penalty_note,
    )


def _set_subjects(name: str, x: pd.DataFrame, fit_pool: np.ndarray, test_pool: np.ndarray):
    """The fit and test subjects of feature set ``name`` (sorted, so that feature sets draw paired resamples),
    with a warning at the caller of :func:`probe` when it lacks many test subjects."""
    fit_ids = np.intersect1d(fit_pool, x.index.to_numpy(object))
    test_ids = np.intersect1d(test_pool, x.index.to_numpy(object))
    lacking = len(test_pool) - len(test_ids)
    if len(test_pool) and lacking > MISSING_TEST_WARN_FRACTION * len(test_pool):
        warnings.warn(
            f"feature set {name!r} lacks {lacking} of {len(test_pool)} test subjects (and"
            f" {len(fit_pool) - len(fit_ids)} of {len(fit_pool)} train/val subjects); its metrics are on fewer"
            " subjects than the other sets'",
            stacklevel=3,
        )
    return fit_ids, test_ids


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
    _check_options(n_bootstrap, inner_folds)
    fit_pool, test_pool = _split_pools(splits)
    targets = _check_targets(targets, kinds)
    if not feature_sets:
        raise ValueError("no feature sets to probe")
    if groups is not None:
        groups = _subject_groups(groups, np.union1d(fit_pool, test_pool).astype(object))

    rows = []
    for name, frame in feature_sets.items():
        x = _check_feature_set(name, frame)
        fit_ids, test_ids = _set_subjects(name, x, fit_pool, test_pool)
        for target in targets.columns:
            y = pd.to_numeric(targets[target], errors="raise").astype(np.float64).reindex(x.index)
            rows += _probe_one(
                name, target, kinds[target], x, y, fit_ids, test_ids, int(n_bootstrap), seed, inner_folds, groups
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def main(argv: Sequence[str] | None = None) -> int:
    """``mot-neuro probe``: writes ``<out>/probes.csv`` and prints a table; see :func:`build_parser`."""
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
        info, pooled, per_modality, metadata = read_embedding_matrices(path)
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


__all__ = [
    "COLUMNS",
    "EARLY_FUSION",
    "ECE_BINS",
    "FEW_CASES",
    "FLAT_LOSS_RTOL",
    "GRID_STEP",
    "LATE_FUSION_SUFFIX",
    "LOGISTIC_C_MAX",
    "LOGISTIC_MAX_ITER",
    "METRICS",
    "MIN_VALID_FRACTION",
    "NULL_MODEL_DF",
    "RESAMPLING",
    "RIDGE_ALPHA_MIN",
    "STRATIFIED_METRICS",
    "build_parser",
    "early_fusion_features",
    "embedding_features",
    "format_table",
    "grouped_inner_splits",
    "main",
    "penalty_grid",
    "probe",
]
