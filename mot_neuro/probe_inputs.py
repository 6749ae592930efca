"""The checks on what :func:`mot_neuro.probe.probe` is given: its options, splits, targets and their kinds, feature
sets, groups and class labels. Each raises ``ValueError`` naming what is wrong, or returns the input indexed by
subject ID as a string.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mot_neuro.probe_features import _SPLIT_PARTS, _ids

KINDS = ("regression", "binary", "multiclass")


def _check_options(n_bootstrap, inner_folds) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    if isinstance(inner_folds, bool) or not isinstance(inner_folds, (int, np.integer)) or inner_folds < 2:
        raise ValueError(f"inner_folds must be an integer >= 2, got {inner_folds!r}")


def _split_pools(splits: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The subject IDs fitted on (train and val) and held out (test), sorted; they must not overlap."""
    unknown = sorted(set(splits) - set(_SPLIT_PARTS))
    if unknown or "train" not in splits or "test" not in splits:
        raise ValueError(f"splits must have the keys 'train' and 'test' (and 'val'), got {sorted(splits)}")
    part = {key: _ids(splits.get(key, ())) for key in _SPLIT_PARTS}
    fit_pool = np.union1d(part["train"], part["val"]).astype(object)
    test_pool = np.unique(part["test"]).astype(object)
    overlap = np.intersect1d(fit_pool, test_pool)
    if len(overlap):
        raise ValueError(f"{len(overlap)} subject(s) are both in test and in train/val; the splits must not overlap")
    return fit_pool, test_pool


def _check_frame(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame indexed by subject ID, got {type(frame).__name__}")
    frame = frame.set_axis(_ids(frame.index), axis=0)
    if not frame.index.is_unique:
        raise ValueError(f"{what} has {int(frame.index.duplicated().sum())} repeated subject ID(s) in its index")
    return frame


def _check_targets(targets: pd.DataFrame, kinds: Mapping[str, str]) -> pd.DataFrame:
    """``targets`` indexed by subject ID as a string; every target needs a kind of :data:`KINDS`."""
    targets = _check_frame(targets, "targets")
    missing_kinds = [t for t in targets.columns if t not in kinds]
    if missing_kinds:
        raise ValueError(f"no kind given for target(s) {missing_kinds}; pass kinds={{target: one of {KINDS}}}")
    bad = {t: kinds[t] for t in targets.columns if kinds[t] not in KINDS}
    if bad:
        raise ValueError(f"target kinds must be one of {KINDS}, got {bad}")
    return targets


def _check_feature_set(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` indexed by subject ID as a string; it needs columns, all of them numeric."""
    x = _check_frame(frame, f"feature set {name!r}")
    non_numeric = [str(c) for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
    if non_numeric:
        raise ValueError(f"feature set {name!r} has non-numeric column(s) {non_numeric[:5]}")
    if x.shape[1] == 0:
        raise ValueError(f"feature set {name!r} has no columns")
    return x


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


def _check_class_labels(kind: str, target: str, *labels: np.ndarray) -> None:
    """A classification target's values must be class labels 0, 1, ... (binary: 0 and 1 only)."""
    if kind == "regression":
        return
    if not all(np.array_equal(v, np.round(v)) and (v >= 0).all() for v in labels):
        raise ValueError(f"target {target!r} is {kind} but holds values that are not class labels 0, 1, ...")
    if kind == "binary" and not all(np.isin(v, (0.0, 1.0)).all() for v in labels):
        raise ValueError(f"target {target!r} is binary but holds values other than 0 and 1")
