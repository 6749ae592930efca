"""Tabular measures (behaviour, cognition, questionnaires, clinical scores) as tokens: one token per measure.

A table of N subjects (rows) and measures (columns) becomes a :class:`~data_adapters.core.TokenizedModality`
with ``values`` ``[N, T, 1]``: token ``t`` is measure ``t``, with a single feature ``"value"``.

* Numeric columns are kept as they are (float32); a missing entry (empty cell, NaN) stays NaN and its token is
  absent. An infinite value (or one beyond float32's range) is an error naming the column and subject.
* Columns declared ``categorical`` hold the index of their label in ``categories[token]``; labels are
  sorted (numerically when every label is a number), or kept in the order of a pandas ``Categorical``
  dtype, so the same data always gives the same indices whatever the row order.
* Text in a column not declared categorical is an error naming the column: text hides mistakes
  (``"12,5"``, ``"n/a "``) that a silent conversion would turn into missing values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .core import DEFAULT_ID_COLUMN, AdapterError, TokenizedModality, normalize_ids
from .tables import numeric_column, read_table, require_id_column, require_rows

FEATURE_NAME = "value"


def _check_names(wanted: Iterable[str], available: Sequence[str], what: str, file: str | None) -> list[str]:
    wanted = [str(w) for w in wanted]
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise AdapterError(f"{what} names column(s) {unknown} not in the table (columns: {list(available)})", file=file)
    return wanted


def _label(value) -> str:
    """One category label as text; ``1``, ``1.0`` and ``" 1"`` are the same label."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value).strip()


def _sorted_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def categorical_column(series: pd.Series, *, column: str) -> tuple[np.ndarray, list[str]]:
    """Category indices as float64 (NaN for missing) and the labels they index."""
    missing = series.isna().to_numpy()
    if isinstance(series.dtype, pd.CategoricalDtype):
        labels = [_label(c) for c in series.dtype.categories]
        codes = series.cat.codes.to_numpy().astype(np.float64)
        codes[missing] = np.nan
        if len(set(labels)) == len(labels):
            return codes, labels
    text = np.array([None if m else _label(v) for v, m in zip(series.tolist(), missing, strict=True)], dtype=object)
    blank = np.array([t == "" for t in text], dtype=bool)  # dtype: an empty column must stay boolean
    missing = missing | blank
    labels = _sorted_labels({t for t, m in zip(text, missing, strict=True) if not m})
    index = {label: i for i, label in enumerate(labels)}
    codes = np.array([np.nan if m else index[t] for t, m in zip(text, missing, strict=True)], dtype=np.float64)
    return codes, labels


def measures_table(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    id_column: str = DEFAULT_ID_COLUMN,
    categorical: Iterable[str] = (),
    columns: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    name: str = "behaviour",
) -> TokenizedModality:
    """One token per measure (``F=1``) from a CSV/TSV/parquet table or a DataFrame with one row per subject.

    ``columns`` picks the measures (default: every column but the ID); ``exclude`` drops some (names that
    are not in the table are an error, so that a typo cannot let a target through). ``categorical``
    columns become category indices with their labels in ``categories``.
    """
    df, file = read_table(path_or_df, id_column=id_column)
    df.columns = [str(c) for c in df.columns]
    require_id_column(df, id_column, file)
    require_rows(df, file, "measures table")
    ids = normalize_ids(df[id_column], file=file, column=id_column)
    available = [c for c in df.columns if c != id_column]
    categorical = _check_names(categorical, available, "categorical", file)
    exclude = _check_names(exclude, available, "exclude", file)
    if columns is None:
        chosen = available
    else:
        if isinstance(columns, str):
            columns = [columns]
        chosen = _check_names(columns, available, "columns", file)
    chosen = [c for c in chosen if c not in set(exclude)]
    if not chosen:
        raise AdapterError("no measure columns left to tokenize (check columns= and exclude=)", file=file)
    not_chosen = [c for c in categorical if c not in chosen]
    if not_chosen:
        raise AdapterError(f"categorical column(s) {not_chosen} are excluded from the measures", file=file)

    values = np.empty((len(df), len(chosen), 1), dtype=np.float32)
    categories: dict[str, list[str]] = {}
    for t, column in enumerate(chosen):
        if column in categorical:
            codes, labels = categorical_column(df[column], column=column)
            categories[column] = labels
        else:
            codes = numeric_column(df[column], column=column, ids=ids, file=file)
        values[:, t, 0] = codes
    return TokenizedModality(
        name=name,
        values=values,
        present=~np.isnan(values[:, :, 0]),
        token_names=chosen,
        subject_ids=ids,
        feature_names=[FEATURE_NAME],
        categories=categories,
        source={
            "adapter": "behaviour.measures_table",
            "file": file,
            "id_column": id_column,
            "columns": list(chosen),
            "categorical": list(categorical),
            "exclude": list(exclude),
        },
    )
