"""Targets: each one's kind (regression, binary, multiclass) decided once from the whole cohort, its classes,
and its statistics on a fold's training rows.

A target's kind (and a multiclass target's number of classes, a binary target's coding) is a property of the
cohort, not of a fold: :func:`decide_targets` decides it from every row, so a rare class absent from one fold's
training rows cannot turn the target into regression on that fold. :func:`fit_targets` then requires every
class in the training rows and computes a regression target's training mean and SD.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from data_adapters.cohort import Cohort
from data_adapters.core import AdapterError

from .column_values import as_float, is_numeric, refuse_beyond_float32
from .column_values import number_label as _label
from .scaling import scaled_mean_sd, usable_sd

TARGET_KINDS = ("regression", "binary", "multiclass")
PLINK_CODING = (1.0, 2.0)  # a binary target coded control = 1, case = 2

log = logging.getLogger(__name__)


def check_target_kinds(target_kinds: Mapping[str, str] | None) -> dict[str, str]:
    """The declared kinds as a dict; a kind that is not one of :data:`TARGET_KINDS` is refused."""
    declared = dict(target_kinds or {})
    for name, kind in declared.items():
        if kind not in TARGET_KINDS:
            raise AdapterError(f"target kind must be one of {TARGET_KINDS}, got {kind!r}", column=name)
    return declared


def _check_declared_are_targets(declared: Mapping[str, str], cohort: Cohort) -> None:
    unknown = sorted(set(declared) - set(cohort.targets))
    if unknown:
        raise AdapterError(
            f"target_kinds names column(s) that are not targets of the cohort (targets: {cohort.targets})",
            column=unknown[0],
        )


def check_cohort_range(cohort: Cohort) -> None:
    """Refuse a target or numeric confound holding a value beyond float32's range anywhere in the cohort
    (batches are float32, where it would be infinite; the cohort build already refuses infinite values)."""
    participants = cohort.participants
    for role, columns in (("target", cohort.targets), ("confound", cohort.confounds)):
        for name in columns:
            if name in participants.columns:
                refuse_beyond_float32(participants, name, role, "it would be infinite in the float32 batches")


def decide_targets(cohort: Cohort, target_kinds: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Each target's kind, from the whole cohort (every row): ``{name: {"kind", ["n_classes"], ["coding"]}}``.

    Declared kinds (``target_kinds``) win; otherwise a numeric target holding exactly 0 and 1 is binary, one
    holding exactly 1 and 2 is binary in PLINK's coding (1 = control -> 0, 2 = case -> 1: ``coding`` [1, 2]),
    anything else is regression (multiclass is never inferred; two other values are regression with a
    warning, and binary when declared: the lower is class 0). A multiclass target's ``n_classes`` is
    K for labels 0..K-1, and every label must be used. Refused, naming the column: text, no observed value, a
    single distinct value (nothing to learn), values beyond float32's range.
    """
    declared = check_target_kinds(target_kinds)
    _check_declared_are_targets(declared, cohort)
    check_cohort_range(cohort)
    return {name: _decide_target(name, cohort.participants[name], declared.get(name)) for name in cohort.targets}


def _decide_target(name: str, series: pd.Series, kind: str | None) -> dict:
    """The spec of one target (``kind``: the declared kind, or None to infer it)."""
    distinct = _distinct_values(name, series)
    integer = bool(np.all(distinct == np.round(distinct)))
    pair = tuple(distinct.tolist()) if len(distinct) == 2 else None
    if kind is None:
        kind = _inferred_kind(name, distinct, integer, pair)
    spec: dict = {"kind": kind}
    if kind == "binary":
        spec.update(_binary_coding(name, distinct, pair))
    elif kind == "multiclass":
        spec.update(_multiclass_classes(name, distinct, integer))
    return spec


def _distinct_values(name: str, series: pd.Series) -> np.ndarray:
    """The distinct observed values of a target; refused when it holds text, nothing, or one value."""
    if not is_numeric(series):
        raise AdapterError(
            "target holds text; encode classes as integers 0..K-1 and declare"
            f" target_kinds={{{name!r}: 'multiclass'}} (or 'binary' for 0/1)",
            column=name,
        )
    values = as_float(series)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        raise AdapterError("target has no observed value in the cohort; fill it in or drop it", column=name)
    distinct = np.unique(values)
    if len(distinct) == 1:
        raise AdapterError(
            f"target is constant (every observed value is {_label(distinct[0])}): there is nothing to learn;"
            " check the column, or drop it from targets",
            column=name,
        )
    return distinct


def _inferred_kind(name: str, distinct: np.ndarray, integer: bool, pair: tuple | None) -> str:
    """Binary for 0/1 or 1/2, else regression (logged when the values look like classes)."""
    codes = distinct[distinct < 0]
    classes = tuple(distinct[distinct >= 0].tolist())
    if integer and len(codes) and classes in ((0.0, 1.0), PLINK_CODING):
        # read as numbers, a case/control column with missing-data codes would train as regression
        raise AdapterError(
            f"target holds the classes {', '.join(map(_label, classes))} and the negative value(s)"
            f" {', '.join(map(_label, codes[:4]))}, which look like missing-data codes (PLINK -9, UK Biobank"
            " -1/-3): set them to empty cells, or declare target_kinds to say what the column is",
            column=name,
        )
    kind = "binary" if pair in ((0.0, 1.0), PLINK_CODING) else "regression"
    if kind == "regression" and pair is not None:
        log.warning(
            "target %r holds exactly two values (%s, %s) and is treated as regression; declare"
            " target_kinds={%r: 'binary'} if they are classes",
            name,
            _label(pair[0]),
            _label(pair[1]),
            name,
        )
    elif kind == "regression" and integer and 3 <= len(distinct) <= 20:
        log.warning(
            "target %r has %d integer values and is treated as regression; declare"
            " target_kinds={%r: 'multiclass'} for classes",
            name,
            len(distinct),
            name,
        )
    return kind


def _binary_coding(name: str, distinct: np.ndarray, pair: tuple | None) -> dict:
    """``{"coding": [class 0, class 1]}`` for a binary target not coded 0/1 (logged), else nothing."""
    if pair is None:
        raise AdapterError(
            "binary target must hold only 0 and 1 (or two other values, the lower one read as class 0);"
            f" it holds {len(distinct)} distinct values (first: {', '.join(_label(v) for v in distinct[:4])})",
            column=name,
        )
    if pair == (0.0, 1.0):
        return {}
    # recorded, so that labels, predictions and metrics all use classes 0/1
    convention = "PLINK's coding, 1 = control and 2 = case" if pair == PLINK_CODING else "binary"
    log.warning(
        "target %r holds %s and %s: read as %s (%s = class 0, %s = class 1); probabilities are those of %s",
        name,
        _label(pair[0]),
        _label(pair[1]),
        convention,
        _label(pair[0]),
        _label(pair[1]),
        _label(pair[1]),
    )
    return {"coding": list(pair)}


def _multiclass_classes(name: str, distinct: np.ndarray, integer: bool) -> dict:
    """``{"n_classes": K}`` for labels 0..K-1, every one of them used."""
    if not integer or distinct.min() < 0:
        raise AdapterError("multiclass target must hold integer class labels 0..K-1", column=name)
    n_classes = int(distinct.max()) + 1
    unused = np.setdiff1d(np.arange(n_classes), distinct)
    if len(unused):
        raise AdapterError(
            f"multiclass target has no subject of class {int(unused[0])} ({len(unused)} of the labels"
            f" 0..{n_classes - 1} are unused); number the classes 0..K-1 without gaps",
            column=name,
        )
    return {"n_classes": n_classes}


def class_labels(spec: Mapping) -> list[float]:
    """The raw labels of a categorical target's classes, in class order (none for regression)."""
    if spec["kind"] == "binary":
        return list(spec.get("coding") or (0.0, 1.0))
    if spec["kind"] == "multiclass":
        return [float(c) for c in range(int(spec["n_classes"]))]
    return []


def fit_targets(
    cohort: Cohort, rows: np.ndarray, specs: Mapping[str, Mapping], declared_kinds: Mapping[str, str]
) -> dict[str, dict]:
    """Each target's spec with its training statistics (a regression target's ``mean`` and ``sd``), from
    ``rows`` only; the kinds are those ``specs`` decided for the whole cohort. Every class of a categorical
    target must be present in the training rows."""
    _check_declared_are_targets(declared_kinds, cohort)
    fitted = {}
    for name in cohort.targets:
        if name not in specs:
            raise AdapterError("target has no decided kind (target_specs lacks it)", column=name)
        spec = {key: value for key, value in specs[name].items() if key in ("kind", "n_classes", "coding")}
        values = as_float(cohort.participants[name].iloc[rows])
        values = values[~np.isnan(values)]
        if len(values) == 0:
            raise AdapterError("target has no observed value in the training rows", column=name)
        kind = spec["kind"]
        for label in class_labels(spec):
            if not (values == label).any():
                raise AdapterError(
                    f"{kind} target has no subject of class {_label(label)} in the training rows; the model"
                    " cannot learn a class it never sees: stratify the splits by this target or use fewer folds",
                    column=name,
                )
        if kind == "regression":
            mean, sd = scaled_mean_sd(values)  # scaled: no overflow near float32's range
            if not (np.isfinite(mean) and np.isfinite(sd)):
                raise AdapterError("target's training mean or SD is not finite", column=name)
            spec["mean"] = mean
            spec["sd"] = sd if usable_sd(sd, mean) else 1.0
        fitted[name] = spec
    return fitted
