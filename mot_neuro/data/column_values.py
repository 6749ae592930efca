"""Participants' columns read for the preprocessing: as float64 numbers, refused beyond float32's range, and as
category labels matched by value whatever dtype the column was read with (:func:`category_label`)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from data_adapters.core import AdapterError, beyond_float32


def as_float(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="raise").astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def refuse_beyond_float32(participants: pd.DataFrame, column: str, role: str, consequence: str) -> None:
    """Refuse a numeric column holding a value beyond float32's range (NaN is missing, not refused), naming the
    column, one subject and ``consequence`` (what the value would do)."""
    series = participants[column]
    if not is_numeric(series):
        return
    values = as_float(series)
    huge = beyond_float32(values)
    if huge.any():
        row = int(np.flatnonzero(huge)[0])
        raise AdapterError(
            f"{role} holds a value beyond float32's range (|x| > 3.4e38: {values[row]:.3g}) in"
            f" {int(huge.sum())} row(s); {consequence}: fix the value or rescale the column",
            column=column,
            subject=str(participants.index[row]),
        )


_WHOLE_TEXT = re.compile(r"[+-]?\d+(\.0*)?")
_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity)", re.IGNORECASE)
MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "none", "null"})
"""Text that is a missing category (compared stripped and case-insensitively), as a CSV reader's NA values."""
BOOLEAN_TEXT = {"true": "1", "false": "0"}
"""Text booleans (stripped, case-insensitive) take the labels of the booleans themselves: True -> "1"."""


def number_label(value) -> str:
    """A number as written in a table or a category: a whole number as its integer (1 rather than 1.0), else
    the shortest ``repr`` of the float."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def category_label(value) -> str | None:
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
        return number_label(float(np.format_float_positional(value, unique=True)))
    if isinstance(value, (float, np.floating)):
        return number_label(float(value))
    text = str(value).strip()
    lower = text.lower()
    if lower in MISSING_TEXT:
        return None
    if lower in BOOLEAN_TEXT:
        return BOOLEAN_TEXT[lower]
    if _WHOLE_TEXT.fullmatch(text):  # exactly, not through a float: "9007199254740993" stays that integer
        return str(int(text.split(".")[0]))
    if _NUMBER_TEXT.fullmatch(text):
        return number_label(float(text))
    return text


def category_labels(series: pd.Series) -> np.ndarray:
    """:func:`category_label` of each value (object array); None where the value is missing (None, NaN,
    pd.NA, :data:`MISSING_TEXT`). Each distinct value is labelled once: a column of 500,000 centre codes costs
    one hash pass."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    dtype = getattr(series.dtype, "numpy_dtype", series.dtype)
    if isinstance(dtype, np.dtype) and dtype.kind == "f" and dtype.itemsize < 8:
        # factorize hands back a float32 column's values as Python floats (float64): label them as float32
        uniques = np.asarray(uniques, dtype=dtype)
    labels = np.array([*(category_label(value) for value in uniques), None], dtype=object)
    return labels[codes]  # code -1 (missing) takes the None at the end
