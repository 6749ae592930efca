"""Subject x feature tables (polygenic scores, gene burden, expression) as tokens: one column, a chunk of
columns, or a gene set (a GMT file or a ``{set: [members]}`` dict) per token."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .core import DEFAULT_ID_COLUMN, AdapterError, TokenizedModality, beyond_float32, check_choice, normalize_ids
from .tables import read_table
from .token_fill import column_index, fill_tokens
from .variant_groups import EMPTY_GROUP_POLICIES


def feature_table(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    id_column: str = DEFAULT_ID_COLUMN,
    grouping: str | int | os.PathLike | Mapping[str, Sequence[str]] = "feature",
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    name: str = "gene",
    empty_groups: str = "drop",
) -> TokenizedModality:
    """Tokens from a subjects x features table (polygenic scores, gene burden, expression).

    ``path_or_df``: ``.csv``, ``.tsv``/``.txt``/``.tab`` (optionally ``.gz``), ``.parquet``, or a DataFrame
    (the ID may be a column or the index). ``columns`` selects feature columns (default: every column but the
    ID and ``exclude``). ``grouping``:

    * ``"feature"``: one token per column (F = 1);
    * an int ``k``: chunks of ``k`` consecutive columns, the last one padded (``feature_mask`` False);
    * a GMT file path (or a ``{set: [members]}`` dict): one token per gene set, its features the members
      found among the columns, in the set's order. Members absent from the table are skipped and listed
      in ``source["skipped_members"]``. A set with no member in the table is dropped with a warning and
      listed in ``source["dropped_groups"]`` (``empty_groups="drop"``, default) or is an error
      (``empty_groups="error"``); no set left is always an error.

    Empty cells and NaN are missing values (kept NaN); infinite or non-numeric values are errors that name
    the column and subject.
    """
    check_choice(empty_groups, EMPTY_GROUP_POLICIES, "empty_groups")
    label, frame, subject_ids = _read_frame(path_or_df, id_column)
    columns = _feature_columns(frame, columns, exclude, id_column, label)
    matrix = _numeric_matrix(frame, list(columns), subject_ids, label)
    columns = [str(c) for c in columns]

    source: dict = {"adapter": "gene.feature_table", "files": [] if label == "<DataFrame>" else [label]}
    source.update(id_column=id_column, columns=columns)
    token_names, groups = _column_groups(grouping, columns, empty_groups, label, source)
    source["token_features"] = {t: [columns[j] for j in g] for t, g in zip(token_names, groups, strict=True)}

    def read_columns(cols: np.ndarray) -> np.ndarray:
        return matrix[:, column_index(cols)]

    values, feature_mask, present = fill_tokens(len(subject_ids), groups, read_columns)
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=token_names,
        subject_ids=subject_ids,
        feature_mask=feature_mask,
        source=source,
    )


def _read_frame(path_or_df, id_column: str) -> tuple[str, pd.DataFrame, np.ndarray]:
    """The table's label (its path, or ``<DataFrame>``), the table with the ID as a column, the subject IDs."""
    if isinstance(path_or_df, pd.DataFrame):
        label, frame = "<DataFrame>", path_or_df
        if id_column not in frame.columns and frame.index.name == id_column:
            frame = frame.reset_index()
    else:
        label = str(path_or_df)
        frame, _ = read_table(path_or_df, id_column=id_column, what="feature table")
    if len(frame) == 0:
        raise AdapterError("no rows (header only?): the table needs one row per subject", file=label)
    duplicated_columns = frame.columns[frame.columns.duplicated()].tolist()
    if duplicated_columns:
        raise AdapterError(f"duplicated column name(s) {duplicated_columns[:5]}", file=label)
    if id_column not in frame.columns:
        raise AdapterError(
            f"no subject ID column {id_column!r}; columns are {list(frame.columns)[:10]} "
            "(set id_column= to the one holding subject IDs)",
            file=label,
        )
    return label, frame, normalize_ids(frame[id_column], file=label, column=id_column)


def _feature_columns(frame: pd.DataFrame, columns, exclude, id_column: str, label: str) -> list:
    """The feature columns: ``columns`` (default every column) without the ID column and ``exclude``."""
    unknown = [c for c in [*(columns or ()), *exclude] if c not in frame.columns]
    if unknown:
        raise AdapterError(f"column(s) {unknown[:5]} not in the table (from columns=/exclude=)", file=label)
    if columns is None:
        columns = [c for c in frame.columns if c != id_column and c not in set(exclude)]
    else:
        columns = [c for c in columns if c != id_column and c not in set(exclude)]
    if not columns:
        raise AdapterError("no feature columns left after removing the ID column and exclude=", file=label)
    return columns


def _column_groups(grouping, columns: list[str], empty_groups: str, label: str, source: dict):
    """Token names and each token's column positions for ``grouping``; what it used goes into ``source``."""
    if isinstance(grouping, str) and grouping == "feature":
        token_names, groups = columns, [np.array([j]) for j in range(len(columns))]
        source["grouping"] = "feature"
    elif isinstance(grouping, (int, np.integer)) and not isinstance(grouping, bool):
        if grouping < 1:
            raise AdapterError(f"grouping={grouping}: a chunk size must be a positive number of columns")
        starts = range(0, len(columns), int(grouping))
        token_names = [f"chunk{i}" for i in range(len(starts))]
        groups = [np.arange(s, min(s + int(grouping), len(columns))) for s in starts]
        source["grouping"] = int(grouping)
    elif isinstance(grouping, Mapping) or _looks_like_path(grouping):
        if isinstance(grouping, Mapping):
            gene_sets, set_label = {str(k): [str(m) for m in v] for k, v in grouping.items()}, "<gene-set dict>"
        else:
            gene_sets, set_label = read_gmt(grouping), str(grouping)
            source["files"].append(set_label)
        token_names, groups, notes = _gene_set_groups(gene_sets, columns, empty_groups, set_label, label)
        source["grouping"] = "gene_sets"
        source.update(notes)
    else:
        raise AdapterError(
            f"unknown grouping {grouping!r}: use 'feature', an int chunk size, a GMT file path, "
            "or a {set name: [columns]} dict"
        )
    return token_names, groups


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Gene sets from a GMT file: ``name<TAB>description<TAB>member1<TAB>member2...`` per line.

    Members keep their order; repeated members and empty fields (trailing tabs) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterError("GMT gene-set file not found", file=path)
    gene_sets: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise AdapterError(
                    f"line {line_number}: expected 'name<TAB>description<TAB>members...', got no tab "
                    "(is the file space-separated?)",
                    file=path,
                )
            set_name = fields[0].strip()
            if not set_name:
                raise AdapterError(f"line {line_number}: gene set without a name", file=path)
            if set_name in gene_sets:
                raise AdapterError(f"line {line_number}: gene set {set_name!r} defined twice", file=path)
            members = [m.strip() for m in fields[2:] if m.strip()]
            gene_sets[set_name] = list(dict.fromkeys(members))
    if not gene_sets:
        raise AdapterError("no gene set in the file", file=path)
    return gene_sets


def _gene_set_groups(
    gene_sets: Mapping[str, Sequence[str]], columns: list[str], empty_groups: str, set_label: str, table_label: str
) -> tuple[list[str], list[np.ndarray], dict]:
    position = {c: j for j, c in enumerate(columns)}
    token_names, groups, skipped, dropped = [], [], {}, []
    for set_name, members in gene_sets.items():
        found = [position[m] for m in members if m in position]
        missing = [m for m in members if m not in position]
        if missing:
            skipped[set_name] = missing
        if not found:
            if empty_groups == "error":
                raise AdapterError(
                    f"gene set {set_name!r}: none of its {len(members)} members is a column of {table_label} "
                    f"(first: {list(members)[:3]}); pass empty_groups='drop' to skip such sets",
                    file=set_label,
                )
            dropped.append(set_name)
            continue
        token_names.append(set_name)
        groups.append(np.asarray(found))
    if not groups:
        raise AdapterError(
            f"no gene set has a member among the {len(columns)} columns of {table_label} "
            f"(columns start {columns[:3]}): do the set members and column names use the same gene IDs?",
            file=set_label,
        )
    if dropped:
        warnings.warn(
            f"{set_label}: dropped {len(dropped)} gene set(s) with no member in the table: {dropped[:5]}", stacklevel=4
        )
    return token_names, groups, {"skipped_members": skipped, "dropped_groups": dropped}


def _numeric_matrix(frame: pd.DataFrame, columns: list, subject_ids: np.ndarray, label: str) -> np.ndarray:
    """float32 [subjects, columns]; NaN stays missing, text and +-inf are errors naming column and subject."""
    converted = {}
    for column, dtype in zip(columns, frame[columns].dtypes, strict=True):
        if pd.api.types.is_bool_dtype(dtype):
            converted[column] = frame[column].astype("float64")
        elif not pd.api.types.is_numeric_dtype(dtype):
            series = frame[column]
            numbers = pd.to_numeric(series, errors="coerce")
            bad = np.flatnonzero((numbers.isna() & series.notna()).to_numpy())
            if len(bad):
                raise AdapterError(
                    f"non-numeric value {series.iloc[bad[0]]!r} ({len(bad)} row(s)); encode it as numbers "
                    "or leave the column out with exclude=",
                    file=label,
                    column=str(column),
                    subject=subject_ids[bad[0]],
                )
            converted[column] = numbers
    # One bulk conversion: per-column copies are slow on expression tables with thousands of genes.
    numeric = frame[columns]
    if converted:
        numeric = pd.DataFrame({c: converted.get(c, numeric[c]) for c in columns}, index=frame.index)
    wide = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    too_big = beyond_float32(wide)  # +-inf, or finite but infinite once stored as float32
    if too_big.any():
        row, col = np.argwhere(too_big)[0]
        value = wide[row, col]
        raise AdapterError(
            f"infinite value {value} ({int(too_big[:, col].sum())} row(s)); use an empty cell or NaN for a missing "
            "value"
            if np.isinf(value)
            else f"value {value:g} is beyond float32 range; rescale the column",
            file=label,
            column=str(columns[col]),
            subject=subject_ids[row],
        )
    return wide.astype(np.float32)


def _looks_like_path(grouping) -> bool:
    if isinstance(grouping, os.PathLike):
        return True
    return isinstance(grouping, str) and (
        grouping.lower().endswith(".gmt") or os.sep in grouping or Path(grouping).is_file()
    )
