"""Precomputed embeddings as tokens: how foundation-model embeddings of genomes, scans or text enter a cohort.

Accepted inputs (one row per subject):

* parquet (or a DataFrame) with the ID column and either one list/array column holding a vector per row,
  or many numeric columns (``emb_0 .. emb_k``), one per dimension;
* a ``.npy`` array ``[N, D]`` or ``[N, T, D]`` with its subject IDs in ``ids.npy`` beside it (or in the
  file or sequence given as ``ids=``). Pickled (object) arrays are refused: they can run code on load.

Tokens per subject: ``tokens=None`` keeps the input's own layout (one token of D features for vectors,
the T axis of a 3-D array); ``tokens=k`` flattens each subject's embedding and cuts it into ``k`` equal
tokens (an error when the size is not divisible by ``k``), so ``tokens=1`` gives one token of all features.

A row that is entirely NaN (or a null vector) marks the subject absent; a NaN inside a row stays NaN,
as for every modality; an infinite value is an error naming the subject.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .core import (
    DEFAULT_ID_COLUMN,
    AdapterError,
    TokenizedModality,
    beyond_float32,
    check_finite_or_missing,
    load_npy,
    normalize_ids,
    read_subject_ids,
)
from .tables import read_table, require_id_column, table_suffix


def _is_vector_cell(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _vector_column(series: pd.Series, *, column: str, ids: np.ndarray, file: str | None) -> np.ndarray:
    """A list column as a float64 matrix [N, D]; null cells become NaN rows."""
    cells = series.tolist()
    lengths = {}
    for row, cell in enumerate(cells):
        if cell is None or (not _is_vector_cell(cell) and pd.isna(cell)):
            continue
        if not _is_vector_cell(cell):
            raise AdapterError(
                f"expected a vector in every row, found {type(cell).__name__} {cell!r}",
                file=file,
                column=column,
                subject=str(ids[row]),
            )
        lengths.setdefault(len(cell), row)
    if not lengths:
        raise AdapterError("every vector is missing", file=file, column=column)
    if len(lengths) > 1:
        (common_len, common_row), (other_len, other_row) = sorted(lengths.items(), key=lambda kv: kv[1])[:2]
        raise AdapterError(
            f"ragged vectors: length {other_len} here but {common_len} for subject {ids[common_row]}"
            f" ({len(lengths)} different lengths); every subject needs the same dimension",
            file=file,
            column=column,
            subject=str(ids[other_row]),
        )
    dim = next(iter(lengths))
    matrix = np.full((len(cells), dim), np.nan, dtype=np.float64)
    for row, cell in enumerate(cells):
        if _is_vector_cell(cell):
            try:
                matrix[row] = np.asarray(cell, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise AdapterError(
                    f"vector holds a non-number ({err})", file=file, column=column, subject=str(ids[row])
                ) from err
    return matrix


def _wide_columns(df: pd.DataFrame, columns: Sequence[str], *, file: str | None) -> np.ndarray:
    not_numeric = [c for c in columns if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])]
    if not_numeric:
        raise AdapterError(
            f"embedding column(s) {not_numeric[:5]} are not numeric; pass columns=[...] with the embedding"
            " dimensions only, or column='name' for a list column",
            file=file,
        )
    return df[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)


def _from_table(
    path_or_df, *, id_column: str, column: str | None, columns: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, str | None, list[str] | None]:
    """(ids, array [N, D], file, per-dimension names or None) from a parquet file or a DataFrame."""
    if isinstance(path_or_df, (str, os.PathLike)) and table_suffix(Path(path_or_df)) not in {".parquet", ".pq"}:
        raise AdapterError("embeddings tables must be parquet (or pass a .npy array)", file=path_or_df)
    df, file = read_table(path_or_df, id_column=id_column)
    df.columns = [str(c) for c in df.columns]
    require_id_column(df, id_column, file)
    ids = normalize_ids(df[id_column], file=file, column=id_column)
    others = [c for c in df.columns if c != id_column]
    if column is not None and columns is not None:
        raise AdapterError("pass either column= (one list column) or columns= (one column per dimension)", file=file)
    if columns is not None:
        unknown = [c for c in columns if c not in others]
        if unknown:
            raise AdapterError(f"columns {unknown[:5]} not in the table (columns: {others[:20]})", file=file)
        return ids, _wide_columns(df, columns, file=file), file, list(columns)
    if column is None:
        list_columns = [c for c in others if df[c].map(_is_vector_cell).any()]
        if len(list_columns) > 1:
            raise AdapterError(f"several vector columns {list_columns}; choose one with column=", file=file)
        if not list_columns:
            if not others:
                raise AdapterError("no embedding columns besides the subject ID", file=file)
            return ids, _wide_columns(df, others, file=file), file, others
        column = list_columns[0]
    if column not in others:
        raise AdapterError(f"column {column!r} not in the table (columns: {others[:20]})", file=file)
    return ids, _vector_column(df[column], column=column, ids=ids, file=file), file, None


def _from_npy(path: Path, ids) -> tuple[np.ndarray, np.ndarray, str, str]:
    array = load_npy(path, "embedding array")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise AdapterError(f"embedding array must be real numbers, got dtype {array.dtype}", file=path)
    if array.ndim not in (2, 3):
        raise AdapterError(f"embedding array must be [N, D] or [N, T, D], got shape {array.shape}", file=path)
    subject_ids, ids_file = read_subject_ids(ids, path)
    if len(subject_ids) != array.shape[0]:
        raise AdapterError(
            f"{array.shape[0]} rows but {len(subject_ids)} subject IDs in {ids_file}; they must match one to one",
            file=path,
        )
    return subject_ids, array, str(path), ids_file


def _as_float32(array: np.ndarray, *, where: str, subject_ids: np.ndarray) -> np.ndarray:
    """``array`` as float32 (no copy when it already is), refusing finite values beyond float32's range."""
    if array.dtype == np.float32:
        return array
    overflow = beyond_float32(array) & np.isfinite(array)
    if overflow.any():
        row = int(np.argwhere(overflow)[0][0])
        raise AdapterError("value beyond float32 range", file=where, subject=str(subject_ids[row]))
    return array.astype(np.float32)


def load_embeddings(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    name: str = "embedding",
    id_column: str = DEFAULT_ID_COLUMN,
    tokens: int | None = None,
    column: str | None = None,
    columns: Sequence[str] | None = None,
    ids: str | os.PathLike | Sequence | None = None,
) -> TokenizedModality:
    """Embeddings from a parquet table, a DataFrame, or a ``.npy`` array (see the module docstring).

    ``column`` names the list column of a table and ``columns`` its per-dimension columns (default: the
    single list column, else every non-ID column); ``ids`` gives the subject IDs of a ``.npy`` array.
    Token names are ``f"{name}_{i}"``.
    """
    feature_names = None
    ids_file = None
    if isinstance(path_or_df, (str, os.PathLike)) and Path(path_or_df).suffix.lower() == ".npy":
        if column is not None or columns is not None:
            raise AdapterError("column=/columns= apply to tables, not to a .npy array", file=path_or_df)
        subject_ids, array, file, ids_file = _from_npy(Path(path_or_df), ids)
    else:
        if ids is not None:
            raise AdapterError("ids= applies to .npy arrays; a table carries its own ID column", file=None)
        subject_ids, array, file, feature_names = _from_table(
            path_or_df, id_column=id_column, column=column, columns=columns
        )
    where = file or f"embeddings {name!r}"
    if array.shape[0] == 0:
        raise AdapterError("no subjects (zero rows)", file=where)
    if array.ndim == 2:
        array = array[:, None, :]
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 1:
            raise AdapterError(f"tokens must be a positive integer or None, got {tokens!r}", file=where)
        size = array.shape[1] * array.shape[2]
        if size % tokens:
            raise AdapterError(
                f"{size} embedding values per subject cannot be split into {tokens} equal tokens"
                f" (choose a divisor of {size})",
                file=where,
            )
        if tokens != array.shape[1]:
            feature_names = None
        array = array.reshape(array.shape[0], int(tokens), size // int(tokens))
    n_tokens = array.shape[1]
    token_names = [f"{name}_{i}" for i in range(n_tokens)]
    check_finite_or_missing(array, file=where, token_names=token_names, subject_ids=subject_ids)
    values = _as_float32(array, where=where, subject_ids=subject_ids)
    return TokenizedModality(
        name=name,
        values=values,
        present=~np.isnan(values).all(axis=2),
        token_names=token_names,
        subject_ids=subject_ids,
        feature_names=feature_names,
        source={
            "adapter": "embeddings.load_embeddings",
            "file": file,
            "ids_file": ids_file,
            "id_column": id_column,
            "tokens": tokens,
            "column": column,
            "columns": None if columns is None else list(columns),
        },
    )
