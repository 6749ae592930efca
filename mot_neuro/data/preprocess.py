"""Preprocessing fitted on the training rows of a fold only: confound regression, standardization,
imputation of inputs, and target scaling.

Per modality, every *slot* (a token's feature that ``feature_mask`` keeps, of a numeric token) is
processed on its own, in this order:

1. Confound regression (when ``confounds`` are given): least squares of the slot on a design of an
   intercept, the numeric confounds z-scored with training statistics, and the categorical confounds
   one-hot coded and centred by their training shares. A confound is categorical when it holds text or
   when it is declared in ``categorical_confounds``, whatever its dtype: integer site or centre codes
   (UK Biobank field 54: 11025, 11026, ...) must be declared, or they are regressed as one number, a
   single linear trend across the codes that leaves most of a site effect in place. A numeric confound
   that is not declared and holds 3 to 30 distinct whole numbers in the training rows is logged as a
   warning (two levels are not: with an intercept, a 0/1 column and a one-hot block span the same space,
   so number or category give the same residuals). A category is matched by value, so that training and
   held-out rows, or a cohort read with another dtype, agree (:func:`_category_label`): whole numbers as
   integers (``11025``, ``11025.0`` and the text ``"11025"``, ``" 11025.0 "`` are one category), other
   numbers, and text that parses as one, by their shortest ``repr`` (``1.5`` and ``"1.50"`` are one category,
   as are ``0.1``, ``"0.1"`` and a float32 ``0.1``), booleans and the text ``"True"``/``"False"`` as 1/0, text
   such as ``""``, ``"NA"``, ``"nan"``, ``"None"`` as missing, other text stripped of surrounding spaces. The
   fit uses the training rows where the slot is observed (token present, value not NaN); ``X^T W X`` and
   ``X^T W y`` are accumulated over blocks of ``block_rows`` rows, so memory-mapped arrays are never read whole.
   A slot observed in fewer training rows than there are design columns only has its mean removed. The residual
   is ``value - prediction``.
2. Standardization: mean and SD of the (residual) values over the observed training values; SD < 1e-12 -> 1.
3. Imputation: a missing value becomes the training mean (0 once standardized).

A missing or unseen category of a confound gives an all-zero row in its centred one-hot block, i.e. the
training average, like a missing numeric confound (z = 0). Categorical tokens (names in
``modality.categories``) pass through as category indices (0 where missing). Regression targets are
standardized with training mean and SD; binary and multiclass targets pass through (a binary target coded
1/2, PLINK's control/case, becomes 0/1). NaN targets stay NaN.

A target's kind (and a multiclass target's number of classes, a binary target's coding) is a property of the
cohort, not of a fold: :func:`decide_targets` decides it once from every row, so a rare class absent from one
fold's training rows cannot turn the target into regression on that fold. Every class must then be present in
the training rows. Apart from that decision, nothing is computed from rows outside ``train_rows``: given the
same ``target_specs``, the fitted state (:meth:`FoldPreprocessor.state_dict`) is identical whatever the other
rows hold.

Numbers that would become infinite are refused, never trained on: statistics are float64 (a confound's mean and
SD computed on values scaled by their largest magnitude, so they cannot overflow) and checked finite at fit; a
target or confound beyond float32's range is refused for the whole cohort; the standardized values of the
training rows are bounded at fit time, and every transformed block is checked with one ``np.isfinite`` (the
error names the modality, token, feature and one subject).

Memory is flat in the number of subjects: fitting holds ``block_rows`` rows at a time, and after every block
read from a memory-mapped modality (by fit or transform) the pages it mapped are dropped from the process's
resident set (``data_adapters.cache.release_pages``; they stay in the page cache, so a later read is a
minor fault). Without that, a process's RSS grows by what it has read: a pass over a 100,000-subject cohort
leaves the whole mapped size counted, and even a few shuffled batches count tens of MB each, since a fault
maps the whole cached folio around a row (often hundreds of KB), not just the row.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from data_adapters.cohort import Cohort
from data_adapters.core import AdapterError
from data_adapters.io import release_pages

STATE_FORMAT = "mot-neuro-fold-preprocessor"
STATE_VERSION = 1
TARGET_KINDS = ("regression", "binary", "multiclass")
IMPUTE = ("mean",)
RIDGE = 1e-8
# A numeric confound not declared categorical, with this many distinct whole-number values or fewer in the
# training rows (and at least 3), is warned about: UK Biobank's assessment centre (field 54) has about 26 codes
# in a whole-cohort extract and multi-site consortia about 20, while age in whole years spans 30 to 40 values or
# more. A quantity with few whole values (a narrow age band, years of education) gets a harmless log line.
FEW_CODES = 30
MIN_RELATIVE_SD = 1e-9  # an SD this small next to the mean is float round-off of a constant, not a spread
FLOAT32_MAX = float(np.finfo(np.float32).max)  # batches are float32: anything larger becomes inf
PLINK_CODING = (1.0, 2.0)  # a binary target coded control = 1, case = 2

log = logging.getLogger(__name__)


def usable_sd(sd, center):
    """Whether an SD measures a real spread (then values are divided by it) or a constant (left unscaled).

    Relative to the mean, not absolute: a feature or target in small units (a diffusivity in mm^2/s, a value
    scaled by 1e-13) has a tiny SD and must still be standardised, not flattened to a constant."""
    sd, center = np.asarray(sd, dtype=np.float64), np.asarray(center, dtype=np.float64)
    return (sd > 0) & (sd > MIN_RELATIVE_SD * np.abs(center))


def _rows(rows, n: int, what: str) -> np.ndarray:
    """Row positions as int64 (a boolean mask of length ``n`` is accepted); out-of-range positions are errors."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise AdapterError(
                f"{what} is a boolean mask of shape {rows.shape}; it must have one entry per subject ({n})"
            )
        return np.flatnonzero(rows)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise AdapterError(f"{what} must be a 1-D array of integer row positions, got {rows.dtype} {rows.shape}")
    rows = rows.astype(np.int64)
    bad = rows[(rows < 0) | (rows >= n)]
    if len(bad):
        raise AdapterError(f"{what} holds row {int(bad[0])}, but the cohort has {n} subjects (rows 0..{n - 1})")
    return rows


def _as_float(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="raise").astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


_WHOLE_TEXT = re.compile(r"[+-]?\d+(\.0*)?")
_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity)", re.IGNORECASE)
MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "none", "null"})
"""Text that is a missing category (compared stripped and case-insensitively), as a CSV reader's NA values."""
BOOLEAN_TEXT = {"true": "1", "false": "0"}
"""Text booleans (stripped, case-insensitive) take the labels of the booleans themselves: True -> "1"."""


def _number_label(value: float) -> str:
    """A finite or infinite float as a category: a whole number as its integer, else ``repr`` (shortest)."""
    return str(int(value)) if value.is_integer() else repr(value)


def _category_label(value) -> str | None:
    """A confound's category as text, matched by value whichever dtype the column was read with; None = missing.

    * Missing: None, NaN, pd.NA, NaT, and the text of :data:`MISSING_TEXT` (``""``, ``"nan"``, ``"NA"``,
      ``"N/A"``, ``"None"``, ``"null"``, any case, surrounding spaces ignored).
    * Booleans are the integers 0 and 1: ``True``, ``np.True_``, ``1``, ``1.0``, ``"1"`` and the text ``"True"``
      / ``" true "`` (:data:`BOOLEAN_TEXT`) are all ``"1"``, and likewise ``"0"`` for false.
    * Whole numbers are integers, exactly for integer dtypes and integer text: ``11025``, ``11025.0``,
      ``np.int64(11025)``, ``"11025"``, ``" 11025.0 "``, ``"011025"``, ``"1.1025e4"`` are all ``"11025"``.
    * Other numbers are the shortest ``repr`` of the value, text parsed with ``float()`` first (``"1.50"`` and
      ``1.5`` are ``"1.5"``; ``"1e20"`` and ``1e20`` are ``"100000000000000000000"``). A float32 (or float16)
      value is read at its own precision, as its shortest text: ``np.float32(0.1)`` is ``"0.1"``, like ``0.1``
      and ``"0.1"`` (not ``0.10000000149011612``, its exact value as a float64).
    * Other text is stripped of surrounding spaces and kept as it is (case matters: ``"A"`` is not ``"a"``).
    """
    missing = pd.isna(value) if np.ndim(value) == 0 else False
    if missing is True or (isinstance(missing, np.bool_) and bool(missing)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, np.floating) and np.finfo(value.dtype).bits < 64:
        # its shortest text at its own precision: np.float32(0.1) reads "0.1", not 0.10000000149011612
        return _number_label(float(np.format_float_positional(value, unique=True)))
    if isinstance(value, (float, np.floating)):
        return _number_label(float(value))
    text = str(value).strip()
    lower = text.lower()
    if lower in MISSING_TEXT:
        return None
    if lower in BOOLEAN_TEXT:
        return BOOLEAN_TEXT[lower]
    if _WHOLE_TEXT.fullmatch(text):  # exactly, not through a float: "9007199254740993" stays that integer
        return str(int(text.split(".")[0]))
    if _NUMBER_TEXT.fullmatch(text):
        return _number_label(float(text))
    return text


def _category_labels(series: pd.Series) -> np.ndarray:
    """:func:`_category_label` of each value (object array); None where the value is missing (None, NaN,
    pd.NA, :data:`MISSING_TEXT`). Each distinct value is labelled once: a column of 500,000 centre codes costs
    one hash pass."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    dtype = getattr(series.dtype, "numpy_dtype", series.dtype)
    if isinstance(dtype, np.dtype) and dtype.kind == "f" and dtype.itemsize < 8:
        # factorize hands back a float32 column's values as Python floats (float64): label them as float32
        uniques = np.asarray(uniques, dtype=dtype)
    labels = np.array([*(_category_label(value) for value in uniques), None], dtype=object)
    return labels[codes]  # code -1 (missing) takes the None at the end


def _blocks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _slot_error(modality, slot: int, subject: str | None, problem: str) -> AdapterError:
    """An error naming the modality, the token and feature of a flat slot, and (when known) one subject."""
    token = modality.token_names[slot // modality.n_features]
    feature = slot % modality.n_features
    names = getattr(modality, "feature_names", None)
    feature_text = f"feature {names[feature]!r}" if names and len(names) > feature else f"feature {feature}"
    return AdapterError(
        f"modality {modality.name!r}, token {token!r} ({feature_text}): {problem}; check the modality's input"
        " (preprocessing must not give the model a non-finite number)",
        subject=subject,
    )


def _label(value: float) -> str:
    """A class label as written in a table: 1 rather than 1.0."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _check_target_kinds(target_kinds: Mapping[str, str] | None) -> dict[str, str]:
    declared = dict(target_kinds or {})
    for name, kind in declared.items():
        if kind not in TARGET_KINDS:
            raise AdapterError(f"target kind must be one of {TARGET_KINDS}, got {kind!r}", column=name)
    return declared


def check_cohort_range(cohort: Cohort) -> None:
    """Refuse a target or numeric confound holding a value beyond float32's range anywhere in the cohort
    (batches are float32, where it would be infinite; the cohort build already refuses infinite values)."""
    participants = cohort.participants
    for role, columns in (("target", cohort.targets), ("confound", cohort.confounds)):
        for name in columns:
            if name not in participants.columns or not _is_numeric(participants[name]):
                continue
            values = _as_float(participants[name])
            huge = np.abs(values) > FLOAT32_MAX  # NaN compares False
            if huge.any():
                row = int(np.flatnonzero(huge)[0])
                raise AdapterError(
                    f"{role} holds a value beyond float32's range (|x| > 3.4e38: {values[row]:.3g}) in"
                    f" {int(huge.sum())} row(s); it would be infinite in the float32 batches: fix the value or"
                    " rescale the column",
                    column=name,
                    subject=str(participants.index[row]),
                )


def check_categorical_confounds(
    confounds: Sequence[str], categorical_confounds: Sequence[str], *, prefix: str = ""
) -> list[str]:
    """The declared categorical confounds, in the order of ``confounds``; a name that is not a confound is
    refused in one line naming it (a declaration must not be silently ignored). ``prefix`` goes before the
    option names in the message (``"data."`` for a data config)."""
    declared = [categorical_confounds] if isinstance(categorical_confounds, str) else list(categorical_confounds or ())
    declared = [str(name) for name in declared]
    confounds = [confounds] if isinstance(confounds, str) else [str(name) for name in confounds or ()]
    for name in declared:
        if name not in confounds:
            raise AdapterError(
                f"{prefix}categorical_confounds lists {name!r}, which is not in {prefix}confounds {confounds};"
                f" a categorical confound must also be listed under {prefix}confounds (or drop it from"
                f" {prefix}categorical_confounds)"
            )
    return [name for name in confounds if name in set(declared)]


def decide_targets(cohort: Cohort, target_kinds: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Each target's kind, from the whole cohort (every row): ``{name: {"kind", ["n_classes"], ["coding"]}}``.

    Declared kinds (``target_kinds``) win; otherwise a numeric target holding exactly 0 and 1 is binary, one
    holding exactly 1 and 2 is binary in PLINK's coding (1 = control -> 0, 2 = case -> 1: ``coding`` [1, 2]),
    anything else is regression (multiclass is never inferred; two other values are regression with a
    warning, and binary when declared: the lower is class 0). A multiclass target's ``n_classes`` is
    K for labels 0..K-1, and every label must be used. Refused, naming the column: text, no observed value, a
    single distinct value (nothing to learn), values beyond float32's range.
    """
    declared = _check_target_kinds(target_kinds)
    unknown = sorted(set(declared) - set(cohort.targets))
    if unknown:
        raise AdapterError(
            f"target_kinds names column(s) that are not targets of the cohort (targets: {cohort.targets})",
            column=unknown[0],
        )
    check_cohort_range(cohort)
    specs = {}
    for name in cohort.targets:
        series = cohort.participants[name]
        if not _is_numeric(series):
            raise AdapterError(
                "target holds text; encode classes as integers 0..K-1 and declare"
                f" target_kinds={{{name!r}: 'multiclass'}} (or 'binary' for 0/1)",
                column=name,
            )
        values = _as_float(series)
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
        integer = bool(np.all(distinct == np.round(distinct)))
        pair = tuple(distinct.tolist()) if len(distinct) == 2 else None
        kind = declared.get(name)
        if kind is None:
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
        spec: dict = {"kind": kind}
        if kind == "binary":
            if pair is None:
                raise AdapterError(
                    "binary target must hold only 0 and 1 (or two other values, the lower one read as class 0);"
                    f" it holds {len(distinct)} distinct values (first: {', '.join(_label(v) for v in distinct[:4])})",
                    column=name,
                )
            if pair != (0.0, 1.0):  # recorded, so that labels, predictions and metrics all use classes 0/1
                spec["coding"] = list(pair)
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
        elif kind == "multiclass":
            if not integer or distinct.min() < 0:
                raise AdapterError("multiclass target must hold integer class labels 0..K-1", column=name)
            spec["n_classes"] = int(distinct.max()) + 1
            unused = np.setdiff1d(np.arange(spec["n_classes"]), distinct)
            if len(unused):
                raise AdapterError(
                    f"multiclass target has no subject of class {int(unused[0])} ({len(unused)} of the labels"
                    f" 0..{spec['n_classes'] - 1} are unused); number the classes 0..K-1 without gaps",
                    column=name,
                )
        specs[name] = spec
    return specs


def class_labels(spec: Mapping) -> list[float]:
    """The raw labels of a categorical target's classes, in class order (none for regression)."""
    if spec["kind"] == "binary":
        return list(spec.get("coding") or (0.0, 1.0))
    if spec["kind"] == "multiclass":
        return [float(c) for c in range(int(spec["n_classes"]))]
    return []


class FoldPreprocessor:
    """Fits on a cohort's training rows, then transforms any rows of a modality (see the module docstring).

    ``target_kinds`` declares targets as ``"regression"``, ``"binary"`` or ``"multiclass"``; undeclared ones
    are inferred from the whole cohort's values by :func:`decide_targets` (0/1 or 1/2 -> binary, else
    regression). Multiclass is never inferred: declare it (labels must be integers 0..K-1). ``target_specs``
    (the output of :func:`decide_targets`) skips that decision: a DataModule decides once and gives every fold
    the same specs.

    ``categorical_confounds`` (a subset of ``confounds``) are one-hot coded whatever their dtype: declare
    integer site, centre or batch codes there (see the module docstring).
    """

    def __init__(
        self,
        *,
        standardize: bool = True,
        confounds: Sequence[str] = (),
        impute: str = "mean",
        block_rows: int = 4096,
        target_kinds: Mapping[str, str] | None = None,
        target_specs: Mapping[str, Mapping] | None = None,
        categorical_confounds: Sequence[str] = (),
    ) -> None:
        if impute not in IMPUTE:
            raise AdapterError(f"impute must be one of {IMPUTE}, got {impute!r}")
        if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
            raise AdapterError(f"block_rows must be a positive integer, got {block_rows!r}")
        confounds = [confounds] if isinstance(confounds, str) else [str(c) for c in confounds]
        if len(set(confounds)) != len(confounds):
            raise AdapterError(f"confounds {confounds} list a column twice")
        categorical = check_categorical_confounds(confounds, categorical_confounds)
        declared = _check_target_kinds(target_kinds)
        if target_specs is not None:
            _check_target_kinds({name: spec.get("kind") for name, spec in target_specs.items()})
        self.standardize = bool(standardize)
        self.confounds = confounds
        self.categorical_confounds = categorical
        self.impute = impute
        self.block_rows = int(block_rows)
        self.declared_kinds = declared
        self.target_specs = None if target_specs is None else {k: dict(v) for k, v in target_specs.items()}
        self.target_kinds: dict[str, str] = {}
        self.n_classes: dict[str, int] = {}
        self._confound_specs: list[dict] = []
        self._modalities: dict[str, dict] = {}
        self._array_cache: dict[str, tuple] = {}  # emptied by fit
        # per-cohort columns: (cohort, design of every row, rows with an unseen category per confound, targets)
        self._cohort_columns: tuple | None = None
        self._targets: dict[str, dict] = {}
        self._n_train = 0
        self._cohort: Cohort | None = None

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self, cohort: Cohort, train_rows: np.ndarray) -> FoldPreprocessor:
        """Learn every statistic from ``train_rows`` (row positions of ``cohort``) and nothing else."""
        rows = np.unique(_rows(train_rows, cohort.n_subjects, "train_rows"))
        if len(rows) == 0:
            raise AdapterError("train_rows is empty; the preprocessing needs training subjects to fit on")
        participants = cohort.participants
        for column in self.confounds:
            if column not in participants.columns:
                raise AdapterError(
                    f"confound not in participants (columns: {list(participants.columns)[:20]})", column=column
                )
        specs = self.target_specs if self.target_specs is not None else decide_targets(cohort, self.declared_kinds)
        self._check_confound_range(cohort)
        self._confound_specs = self._fit_confounds(participants, rows)
        design = self._design(participants, rows)[0] if self.confounds else None
        self._array_cache = {}
        self._cohort_columns = None
        self._modalities, extremes = {}, {}
        for name, modality in cohort.modalities.items():
            self._modalities[name], extremes[name] = self._fit_modality(modality, rows, design)
        self._fit_targets(cohort, rows, specs)
        self._n_train = len(rows)
        self._cohort = cohort
        self._array_cache = {}
        for name, too_large in extremes.items():
            if too_large:  # some training value leaves float32's range once transformed: find and name it
                for block in _blocks(len(rows), self.block_rows):
                    self.transform(name, rows[block], cohort=cohort)  # raises, naming the subject
                raise AdapterError(
                    f"modality {name!r}: a training value leaves float32's range after preprocessing (fitted"
                    " statistics are extreme); check the modality's values"
                )
        return self

    def _check_confound_range(self, cohort: Cohort) -> None:
        """Confounds are float64, but beyond float32's range they are data errors, as in targets and features."""
        for column in self.confounds:
            series = cohort.participants[column]
            if not _is_numeric(series):
                continue
            values = _as_float(series)
            huge = np.abs(values) > FLOAT32_MAX  # NaN compares False
            if huge.any():
                row = int(np.flatnonzero(huge)[0])
                raise AdapterError(
                    f"confound holds a value beyond float32's range (|x| > 3.4e38: {values[row]:.3g}) in"
                    f" {int(huge.sum())} row(s); its regression would overflow: fix the value or rescale the column",
                    column=column,
                    subject=str(cohort.participants.index[row]),
                )

    def _fit_confounds(self, participants: pd.DataFrame, rows: np.ndarray) -> list[dict]:
        specs = []
        for column in self.confounds:
            series = participants[column].iloc[rows]
            if series.isna().all():
                raise AdapterError(
                    "confound has no observed value in the training rows; fill it in or drop it", column=column
                )
            if _is_numeric(series) and column not in self.categorical_confounds:
                values = _as_float(series)
                self._warn_if_codes(column, values)
                # scaled by the largest magnitude first: squares of values near 1e300 overflow float64
                magnitude = float(np.nanmax(np.abs(values))) or 1.0
                mean = magnitude * float(np.nanmean(values / magnitude))
                sd = magnitude * float(np.nanstd(values / magnitude))
                if not (np.isfinite(mean) and np.isfinite(sd)):
                    raise AdapterError(
                        "confound's training mean or SD is not finite; check the column's values", column=column
                    )
                sd = sd if usable_sd(sd, mean) else 1.0
                specs.append({"name": column, "kind": "numeric", "mean": mean, "sd": sd})
            else:
                labels = pd.Series(_category_labels(series), dtype=object).dropna()
                if labels.empty:  # only missing-value text such as "NA" or ""
                    raise AdapterError(
                        "confound has no observed value in the training rows; fill it in or drop it", column=column
                    )
                counts = labels.value_counts().sort_index()
                specs.append(
                    {
                        "name": column,
                        "kind": "categorical",
                        "categories": counts.index.tolist(),
                        "shares": (counts.to_numpy() / counts.sum()).tolist(),
                    }
                )
        return specs

    @staticmethod
    def _warn_if_codes(column: str, values: np.ndarray) -> None:
        """Log a numeric confound whose training values look like category codes (:data:`FEW_CODES`)."""
        distinct = np.unique(values[~np.isnan(values)])
        # two levels are not warned about: with the intercept, the number and one centred dummy span one space
        if 3 <= len(distinct) <= FEW_CODES and bool(np.all(distinct == np.round(distinct))):
            log.warning(
                "confound %r holds %d distinct whole numbers (%s) and is regressed as one number, a linear trend"
                " across them; if they are codes (site, assessment centre, scanner, batch) declare them with the"
                " data option categorical_confounds: [%s]",
                column,
                len(distinct),
                ", ".join(_label(v) for v in distinct[:3]) + (", ..." if len(distinct) > 3 else ""),
                column,
            )

    def _design(self, participants: pd.DataFrame, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Design matrix [len(rows), C] (intercept first) and, per categorical confound, which of the rows hold a
        category not seen in the training rows (bool [len(rows)])."""
        columns = [np.ones((len(rows), 1))]
        unseen = {}
        for spec in self._confound_specs:
            if spec["name"] not in participants.columns:
                raise AdapterError("confound not in this cohort's participants", column=spec["name"])
            series = participants[spec["name"]].iloc[rows]
            if spec["kind"] == "numeric":
                z = (_as_float(series) - spec["mean"]) / spec["sd"]
                columns.append(np.nan_to_num(z, nan=0.0)[:, None])
                continue
            position = {label: i for i, label in enumerate(spec["categories"])}
            labels = pd.Series(_category_labels(series), dtype=object)
            observed = labels.notna().to_numpy()
            codes = labels.map(position).fillna(-1).to_numpy(dtype=np.int64)
            block = np.zeros((len(rows), len(position)))
            known = codes >= 0
            block[known] = -np.asarray(spec["shares"])
            block[known, codes[known]] += 1.0
            columns.append(block)
            unseen[spec["name"]] = observed & ~known
        return np.hstack(columns), unseen

    @staticmethod
    def _slots(modality) -> tuple[np.ndarray, np.ndarray]:
        """Flat [T*F] positions of numeric masked-in slots, and the token of each."""
        numeric = np.array(modality.feature_mask, dtype=bool)
        for t, token in enumerate(modality.token_names):
            if token in modality.categories:
                numeric[t] = False
        slots = np.flatnonzero(numeric.ravel())
        return slots, slots // modality.n_features

    def _read(self, modality, rows: np.ndarray, slots: np.ndarray, tokens: np.ndarray):
        """Slot values (float64, 0 where unobserved) and the observed mask of ``rows``, read in one fancy index."""
        raw = np.asarray(modality.values[rows]).reshape(len(rows), -1)[:, slots].astype(np.float64)
        observed = np.asarray(modality.present[rows])[:, tokens] & ~np.isnan(raw)
        release_pages(modality.values, modality.present)  # see the module docstring: flat memory
        infinite = observed & np.isinf(raw)
        if infinite.any():
            row, slot = (int(i[0]) for i in np.nonzero(infinite))
            raise _slot_error(modality, int(slots[slot]), str(modality.subject_ids[rows[row]]), "the value is infinite")
        return np.where(observed, raw, 0.0), observed

    def _fit_modality(self, modality, rows: np.ndarray, design: np.ndarray | None) -> dict:
        slots, tokens = self._slots(modality)
        n_slots = len(slots)
        n_cols = 1 if design is None else design.shape[1]
        count = np.zeros(n_slots)
        total = np.zeros(n_slots)
        upper = np.triu_indices(n_cols)
        xtwx = np.zeros((n_slots, len(upper[0])))
        xtwy = np.zeros((n_slots, n_cols))
        regress = design is not None and n_cols > 1
        for block in _blocks(len(rows), self.block_rows):
            y, observed = self._read(modality, rows[block], slots, tokens)
            weight = observed.astype(np.float64)
            count += weight.sum(axis=0)
            total += y.sum(axis=0)
            if regress:
                x = design[block]
                # only the upper triangle of the per-slot X^T W X: a single matmul over the block
                xtwx += weight.T @ (x[:, upper[0]] * x[:, upper[1]])
                xtwy += y.T @ x
        mean = np.divide(total, count, out=np.zeros(n_slots), where=count > 0)
        beta = None
        if regress:
            beta = np.zeros((n_slots, n_cols))
            beta[:, 0] = mean
            solvable = count >= n_cols
            if solvable.any():
                gram = np.zeros((int(solvable.sum()), n_cols, n_cols))
                gram[:, upper[0], upper[1]] = xtwx[solvable]
                gram[:, upper[1], upper[0]] = xtwx[solvable]
                ridge = RIDGE * np.trace(gram, axis1=1, axis2=2)
                gram += ridge[:, None, None] * np.eye(n_cols)
                beta[solvable] = np.linalg.solve(gram, xtwy[solvable][..., None])[..., 0]

        # second pass: moments of what standardization sees (residuals, or raw values around their mean)
        offset = np.zeros(n_slots) if regress else mean
        first = np.zeros(n_slots)
        second = np.zeros(n_slots)
        # the extreme deviations bound what transform gives the training rows: checked below, cheaply
        low = np.zeros(n_slots)
        high = np.zeros(n_slots)
        for block in _blocks(len(rows), self.block_rows):
            y, observed = self._read(modality, rows[block], slots, tokens)
            base = design[block] @ beta.T if regress else mean
            deviation = np.where(observed, y - base, 0.0)
            first += deviation.sum(axis=0)
            second += (deviation * deviation).sum(axis=0)
            if len(deviation):
                low = np.minimum(low, deviation.min(axis=0))
                high = np.maximum(high, deviation.max(axis=0))
        safe = np.maximum(count, 1)
        shift = np.where(count > 0, first / safe, 0.0)
        center = offset + shift
        sd = np.sqrt(np.maximum(second / safe - shift * shift, 0.0))
        scale = np.where((count > 0) & usable_sd(sd, center), sd, 1.0)
        fitted = [center, scale] + ([] if beta is None else [beta])
        for statistic in fitted:
            bad = ~np.isfinite(statistic.reshape(n_slots, -1)).all(axis=1)
            if bad.any():
                slot = int(slots[np.flatnonzero(bad)[0]])
                raise _slot_error(modality, slot, None, "a fitted mean, SD or confound coefficient is not finite")
        if self.standardize:
            bounds = np.maximum(np.abs(low - shift), np.abs(high - shift)) / scale
        else:
            bounds = np.maximum(np.abs(low + offset), np.abs(high + offset))
        too_large = bool((~np.isfinite(bounds) | (bounds > FLOAT32_MAX)).any())
        unobserved = int((count == 0).sum())
        if unobserved:
            log.warning(
                "modality %r: %d of %d slot(s) have no observed training value; they are imputed as 0",
                modality.name,
                unobserved,
                n_slots,
            )
        stats = {
            "token_names": list(modality.token_names),
            "n_features": int(modality.n_features),
            "slots": slots.tolist(),
            "count": count.astype(np.int64).tolist(),
            "mean": mean.tolist(),
            "beta": None if beta is None else beta.tolist(),
            "center": center.tolist(),
            "scale": scale.tolist(),
        }
        return stats, too_large

    def _fit_targets(self, cohort: Cohort, rows: np.ndarray, specs: Mapping[str, Mapping]) -> None:
        """Training statistics of the targets, whose kinds ``specs`` decided for the whole cohort."""
        unknown = sorted(set(self.declared_kinds) - set(cohort.targets))
        if unknown:
            raise AdapterError(
                f"target_kinds names column(s) that are not targets of the cohort (targets: {cohort.targets})",
                column=unknown[0],
            )
        self._targets, self.target_kinds, self.n_classes = {}, {}, {}
        for name in cohort.targets:
            if name not in specs:
                raise AdapterError("target has no decided kind (target_specs lacks it)", column=name)
            spec = {key: value for key, value in specs[name].items() if key in ("kind", "n_classes", "coding")}
            values = _as_float(cohort.participants[name].iloc[rows])
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
            if kind == "multiclass":
                self.n_classes[name] = int(spec["n_classes"])
            if kind == "regression":
                magnitude = float(np.abs(values).max()) or 1.0  # scaled: no overflow near float32's range
                mean = magnitude * float((values / magnitude).mean())
                sd = magnitude * float((values / magnitude).std())
                if not (np.isfinite(mean) and np.isfinite(sd)):
                    raise AdapterError("target's training mean or SD is not finite", column=name)
                spec["mean"] = mean
                spec["sd"] = sd if usable_sd(sd, mean) else 1.0
            self._targets[name] = spec
            self.target_kinds[name] = kind

    # ------------------------------------------------------------------------------------------------ transform
    def _bound(self, cohort: Cohort | None) -> Cohort:
        if not self._modalities and not self._targets:
            raise RuntimeError("FoldPreprocessor is not fitted; call fit(cohort, train_rows) first")
        cohort = cohort if cohort is not None else self._cohort
        if cohort is None:
            raise AdapterError("no cohort to transform: pass cohort=..., or from_state_dict(state, cohort)")
        return cohort

    def _fitted_arrays(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The fitted statistics of a modality as arrays, converted once: the state keeps JSON-able lists, and
        converting them on every batch costs tens of ms for a connectivity modality (160k slots x confounds)."""
        stats = self._modalities[name]
        key = name
        if key not in self._array_cache:
            beta = None if stats["beta"] is None else np.asarray(stats["beta"])
            self._array_cache[key] = (
                np.asarray(stats["slots"], dtype=np.int64),
                np.asarray(stats["center"]),
                np.asarray(stats["scale"]),
                beta,
            )
        return self._array_cache[key]

    def _columns(self, cohort: Cohort) -> tuple[np.ndarray | None, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The confound design matrix and the float target columns of every row of ``cohort``, made once.

        Made per batch from pandas they cost about 2 ms, most of a demo batch's loading time; whole, they
        are small (rows x confound columns) and each batch takes its rows with one fancy index."""
        if self._cohort_columns is None or self._cohort_columns[0] is not cohort:
            participants = cohort.participants
            all_rows = np.arange(len(participants))
            design, unseen = None, {}
            if self.confounds and self._confound_specs:
                design, unseen = self._design(participants, all_rows)
            targets = {name: _as_float(participants[name]) for name in self._targets if name in participants.columns}
            self._cohort_columns = (cohort, design, unseen, targets)
        return self._cohort_columns[1:]

    def transform(self, modality_name: str, rows, *, cohort: Cohort | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(values, missing)`` for ``rows`` of a modality (of ``cohort``, else of the cohort fitted on).

        ``values`` float32 ``[len(rows), T, F]`` without NaN; ``missing`` bool, True where the raw value was
        NaN or the token absent (only where ``feature_mask`` is True).
        """
        cohort = self._bound(cohort)
        if modality_name not in self._modalities:
            raise AdapterError(f"modality {modality_name!r} was not fitted; fitted: {sorted(self._modalities)}")
        stats = self._modalities[modality_name]
        modality = cohort.modalities.get(modality_name)
        if modality is None or list(modality.token_names) != stats["token_names"]:
            raise AdapterError(f"modality {modality_name!r} of this cohort does not have the tokens it was fitted with")
        if modality.n_features != stats["n_features"]:
            raise AdapterError(
                f"modality {modality_name!r} has {modality.n_features} features per token, fitted with"
                f" {stats['n_features']}"
            )
        rows = _rows(rows, cohort.n_subjects, "rows")
        n_tokens, n_features = modality.n_tokens, modality.n_features
        slots, center, scale, beta = self._fitted_arrays(modality_name)
        design = None
        if beta is not None:
            all_design, unseen_rows, _ = self._columns(cohort)
            design = all_design[rows]
            for name, unseen in unseen_rows.items():
                count = int(unseen[rows].sum())
                if count:
                    warnings.warn(
                        f"confound {name!r}: {count} row(s) hold a category not seen in the training rows;"
                        " they get the training average (an all-zero one-hot row)",
                        stacklevel=2,
                    )
        feature_mask = np.asarray(modality.feature_mask, dtype=bool)
        values = np.zeros((len(rows), n_tokens, n_features), dtype=np.float32)
        missing = np.zeros((len(rows), n_tokens, n_features), dtype=bool)
        fill = 0.0 if self.standardize else center
        for block in _blocks(len(rows), self.block_rows):
            raw = np.asarray(modality.values[rows[block]], dtype=np.float32)
            absent = ~np.asarray(modality.present[rows[block]], dtype=bool)
            release_pages(modality.values, modality.present)  # the rows are copied: drop what reading mapped
            miss = (np.isnan(raw) | absent[:, :, None]) & feature_mask
            # categorical tokens pass through; missing and unused slots become 0
            out = np.where(miss | ~feature_mask, np.float32(0), raw)
            if len(slots):
                flat = raw.reshape(len(raw), -1)[:, slots].astype(np.float64)
                observed = ~miss.reshape(len(raw), -1)[:, slots]
                if beta is not None:
                    flat = flat - design[block] @ beta.T
                if self.standardize:
                    flat = (flat - center) / scale
                flat = np.where(observed, flat, fill)
                with np.errstate(over="ignore"):  # an overflow is found, and named, just below
                    flat = flat.astype(np.float32)
                finite = np.isfinite(flat)
                if not finite.all():
                    self._refuse_non_finite(modality, rows[block], slots, finite, raw, beta is not None)
                out.reshape(len(raw), -1)[:, slots] = flat
            values[block] = out
            missing[block] = miss
        return values, missing

    def check_rows(self, rows, modalities: Sequence[str] | None = None, *, cohort: Cohort | None = None) -> None:
        """Transform ``rows`` (of ``modalities``, default all, and the targets) block by block, keeping nothing:
        each block's checks (finite values, known labels) raise, naming the modality, token and subject.

        Run over a fold's held-out rows before training, it stops a run on a value that the training
        statistics would turn infinite before any step is taken, instead of at a batch (in a DataLoader
        worker the error reaches the main process wrapped in a traceback). Costs one read of those rows."""
        cohort = self._bound(cohort)
        rows = _rows(rows, cohort.n_subjects, "rows")
        for name in self._modalities if modalities is None else modalities:
            for block in _blocks(len(rows), self.block_rows):
                self.transform(name, rows[block], cohort=cohort)
        self.transform_targets(rows, cohort=cohort)

    def _refuse_non_finite(self, modality, rows, slots, finite, raw, regressed: bool) -> None:
        """Name the first value of a block that preprocessing made non-finite (modality, token, subject, why)."""
        row, column = (int(i[0]) for i in np.nonzero(~finite))
        value = float(raw.reshape(len(raw), -1)[row, slots[column]])
        if not np.isfinite(value):
            problem = "the value is infinite"
        else:
            step = "confound regression and standardization" if regressed else "standardization"
            step = step if self.standardize else "confound regression"
            problem = f"the value {value:.3g} leaves float32's range after {step} with the training statistics"
        raise _slot_error(modality, int(slots[column]), str(modality.subject_ids[rows[row]]), problem)

    def transform_targets(self, rows, *, cohort: Cohort | None = None) -> dict[str, np.ndarray]:
        """float32 targets of ``rows``: regression standardized with the training mean/SD; NaN stays NaN."""
        cohort = self._bound(cohort)
        rows = _rows(rows, cohort.n_subjects, "rows")
        out = {}
        for name, spec in self._targets.items():
            if name not in cohort.participants.columns:
                raise AdapterError("target column not in this cohort's participants", column=name)
            values = self._columns(cohort)[2][name][rows]
            observed = values[~np.isnan(values)]
            if spec["kind"] == "regression":
                values = (values - spec["mean"]) / spec["sd"]
                huge = np.abs(values) > FLOAT32_MAX
                if huge.any():
                    raise AdapterError(
                        "target value leaves float32's range once standardized; fix the value",
                        column=name,
                        subject=str(cohort.participants.index[rows[int(np.flatnonzero(huge)[0])]]),
                    )
            elif spec["kind"] == "binary":
                coding = spec.get("coding") or [0.0, 1.0]
                if not np.isin(observed, coding).all():
                    raise AdapterError(
                        f"binary target holds values other than {_label(coding[0])}/{_label(coding[1])} in these rows",
                        column=name,
                    )
                values = self.code_target(name, values)
            elif spec["kind"] == "multiclass":
                valid = (observed == np.round(observed)) & (observed >= 0) & (observed < spec["n_classes"])
                if not valid.all():
                    raise AdapterError(
                        f"multiclass target holds labels outside 0..{spec['n_classes'] - 1} (the classes of the"
                        " training rows) in these rows",
                        column=name,
                    )
            out[name] = values.astype(np.float32)
        return out

    def code_target(self, name: str, values) -> np.ndarray:
        """Raw values of a target as the model sees its classes: a binary target coded 1/2 becomes 0/1 (NaN stays
        NaN); other targets are returned as float64, unscaled. For tools that read targets from participants."""
        if name not in self._targets:
            raise AdapterError(f"not a fitted target (fitted: {sorted(self._targets)})", column=name)
        values = np.asarray(values, dtype=np.float64)
        coding = self._targets[name].get("coding")
        if self._targets[name]["kind"] != "binary" or not coding:
            return values.copy()
        return np.where(values == coding[1], 1.0, np.where(values == coding[0], 0.0, np.nan))

    def inverse_target(self, name: str, values) -> np.ndarray:
        """Undo the standardization of a regression target (e.g. predictions, for MAE in original units)."""
        if name not in self._targets:
            raise AdapterError(f"not a fitted target (fitted: {sorted(self._targets)})", column=name)
        values = np.asarray(values, dtype=np.float64)
        spec = self._targets[name]
        if spec["kind"] != "regression":
            return values.copy()
        return values * spec["sd"] + spec["mean"]

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to transform again, as JSON-able data (for checkpoints)."""
        if not self._modalities and not self._targets:
            raise RuntimeError("FoldPreprocessor is not fitted; call fit(cohort, train_rows) first")
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "settings": {
                "standardize": self.standardize,
                "confounds": list(self.confounds),
                "categorical_confounds": list(self.categorical_confounds),
                "impute": self.impute,
                "block_rows": self.block_rows,
                "target_kinds": dict(self.declared_kinds),
            },
            "n_train": self._n_train,
            "confounds": [dict(spec) for spec in self._confound_specs],
            "modalities": {name: dict(stats) for name, stats in self._modalities.items()},
            "targets": {name: dict(spec) for name, spec in self._targets.items()},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping, cohort: Cohort | None = None) -> FoldPreprocessor:
        """A fitted preprocessor from :meth:`state_dict`; ``cohort`` (optional) is the one to transform."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise AdapterError(f"not a FoldPreprocessor state (no 'format': {STATE_FORMAT!r})")
        if state.get("version") != STATE_VERSION:
            raise AdapterError(
                f"FoldPreprocessor state version {state.get('version')!r}; this code reads version {STATE_VERSION}"
            )
        try:
            settings = state["settings"]
            pre = cls(
                standardize=settings["standardize"],
                confounds=settings["confounds"],
                impute=settings["impute"],
                block_rows=settings["block_rows"],
                target_kinds=settings["target_kinds"],
                categorical_confounds=settings.get("categorical_confounds", ()),  # absent from older states
            )
            pre._n_train = int(state["n_train"])
            pre._confound_specs = [dict(spec) for spec in state["confounds"]]
            pre._modalities = {name: dict(stats) for name, stats in state["modalities"].items()}
            pre._targets = {name: dict(spec) for name, spec in state["targets"].items()}
        except (KeyError, TypeError, AttributeError) as err:
            raise AdapterError(f"FoldPreprocessor state is incomplete ({err!r})") from err
        pre.target_kinds = {name: spec["kind"] for name, spec in pre._targets.items()}
        pre.n_classes = {name: spec["n_classes"] for name, spec in pre._targets.items() if "n_classes" in spec}
        pre._cohort = cohort
        return pre
