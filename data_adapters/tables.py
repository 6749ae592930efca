"""Reading subject tables (CSV/TSV/parquet), and their columns as numbers, the same way in every adapter."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .core import DEFAULT_ID_COLUMN, AdapterError, beyond_float32

log = logging.getLogger(__name__)
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t", ".parquet": None, ".pq": None}


def table_suffix(path: Path) -> str:
    """The format suffix of ``path``, looking through a trailing ``.gz``/``.bz2``/``.zip``/``.xz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in {".gz", ".bz2", ".zip", ".xz"}:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def read_table(
    path_or_df: str | os.PathLike | pd.DataFrame, *, id_column: str | None = DEFAULT_ID_COLUMN, what: str = "table"
) -> tuple[pd.DataFrame, str | None]:
    """A CSV/TSV/parquet file (chosen by extension) or a DataFrame, and the file name for messages.

    The ID column of text files is read as text so that IDs such as ``007`` keep their zeros. A
    DataFrame indexed by the ID column is accepted as if the index were a column.
    """
    if isinstance(path_or_df, pd.DataFrame):
        df = path_or_df
        check_unique_columns(df.columns, file=None, what=what)
        if id_column is not None and id_column not in df.columns and df.index.name == id_column:
            df = df.reset_index()
        return df.copy(), None
    if not isinstance(path_or_df, (str, os.PathLike)):
        raise AdapterError(f"expected a {what} file path or a pandas DataFrame, got {type(path_or_df).__name__}")
    path = Path(path_or_df)
    if not path.is_file():
        raise AdapterError(f"{what} file not found", file=path)
    suffix = table_suffix(path)
    if suffix not in TABLE_SUFFIXES:
        known = ", ".join(sorted(TABLE_SUFFIXES))
        raise AdapterError(f"unknown {what} format {suffix or '(no extension)'!r}; use one of {known}", file=path)
    try:
        if TABLE_SUFFIXES[suffix] is None:
            import pyarrow.parquet as pq

            # parquet may store two columns of one name; pandas then fails with an arrow message
            check_unique_columns(pq.read_schema(path).names, file=path, what=what)
            df = pd.read_parquet(path)
        else:
            sep = TABLE_SUFFIXES[suffix]
            # pandas renames a repeated header "x" to "x.1": only the raw header row shows the repeat.
            header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
            check_unique_columns(header.iloc[0].tolist() if len(header) else [], file=path, what=what)
            # IDs as text: "007" must not become 7, "1.00012E+06" must stay visible as what a spreadsheet wrote,
            # and 1001 must not become 1001.0 when a row is blank.
            ids_as_text = None if id_column is None else {id_column: str}
            df = pd.read_csv(path, sep=sep, dtype=ids_as_text)
            df = _without_unnamed_columns(df, header.iloc[0].tolist() if len(header) else [], path, what)
    except pd.errors.EmptyDataError as err:
        raise AdapterError(f"{what} is empty (no header, no rows)", file=path) from err
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        if isinstance(err, AdapterError):
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AdapterError(f"cannot read the {what}: {first_line}", file=path) from err
    check_unique_columns(df.columns, file=path, what=what)  # parquet keeps repeated names as they are
    return df, str(path)


def _without_unnamed_columns(df: pd.DataFrame, header: list, path: Path, what: str) -> pd.DataFrame:
    """Drop the empty, nameless columns that trailing separators make (pandas calls them "Unnamed: <i>"), saying
    so; refuse a nameless column that holds values. Kept, each would become a token present in no subject."""
    if len(header) != len(df.columns):
        return df
    nameless = [column for column, name in zip(df.columns, header, strict=True) if not str(name).strip()]
    if not nameless:
        return df
    holding = [c for c in nameless if df[c].notna().any()]
    if holding:
        position = list(df.columns).index(holding[0]) + 1
        raise AdapterError(
            f"column {position} of the {what} has no name in the header but holds values; name it, or remove it",
            file=path,
        )
    log.warning("%s: %d empty column(s) without a name (trailing separators) ignored", path, len(nameless))
    return df.drop(columns=nameless)


def check_unique_columns(columns, *, file: str | os.PathLike | None, what: str = "table") -> None:
    """Refuse a header that names a column twice (also when the two differ only by surrounding spaces, or are
    ``1`` and ``"1"``): one of them would be used without a word, and which one depends on the reader."""
    seen: dict[str, int] = {}
    for position, column in enumerate(columns):
        key = str(column).strip()
        if not key:  # empty names (trailing commas) are no one's: pandas calls them "Unnamed: <i>"
            continue
        if key in seen:
            raise AdapterError(
                f"the {what}'s header names this column twice (columns {seen[key] + 1} and {position + 1}); a"
                f" reader would use one of them without a word (pandas renames the second {key + '.1'!r}):"
                " rename or remove one",
                file=file,
                column=key,
            )
        seen[key] = position


def require_id_column(df: pd.DataFrame, id_column: str, file: str | None) -> None:
    if id_column not in df.columns:
        shown = ", ".join(repr(str(c)) for c in list(df.columns)[:20]) + (" ..." if len(df.columns) > 20 else "")
        raise AdapterError(
            f"subject ID column {id_column!r} not found; columns are {shown}. Pass id_column= to name it",
            file=file,
        )


def require_rows(df: pd.DataFrame, file: str | None, what: str = "table") -> None:
    """A header-only file reads as a frame with columns and no rows: say so, before anything indexes into it."""
    if len(df) == 0:
        raise AdapterError(f"{what} has no rows (header only?): it needs one row per subject", file=file)


def _text_mask(series: pd.Series) -> np.ndarray:
    """Entries that are present but are not numbers (``"abc"``, ``"12,5"``)."""
    as_number = pd.to_numeric(series, errors="coerce")
    return (series.notna() & as_number.isna()).to_numpy()


def numeric_column(series: pd.Series, *, column: str, ids: np.ndarray, file: str | None) -> np.ndarray:
    """A measure column as float64 (NaN for missing), or an error saying why it is not numeric."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif not series.notna().any():
        values = np.full(len(series), np.nan)
    else:
        if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_datetime64_any_dtype(series):
            raise AdapterError(
                f"{series.dtype} column is not a number; declare it with categorical=[{column!r}]"
                " or convert it to numbers first",
                file=file,
                column=column,
            )
        text = _text_mask(series)
        if text[series.notna().to_numpy()].all():
            examples = sorted({str(v) for v in series[text].head(50)})[:3]
            raise AdapterError(
                f"non-numeric column (values such as {examples});"
                f" if it holds categories, pass categorical=[{column!r}]",
                file=file,
                column=column,
            )
        if text.any():
            row = int(np.flatnonzero(text)[0])
            raise AdapterError(
                f"mixed numbers and text: {int(text.sum())} of {int(series.notna().sum())} entries are text"
                f" (first: {str(series.iloc[row])!r}); fix those entries, or pass categorical=[{column!r}]"
                " if the column holds categories",
                file=file,
                column=column,
                subject=str(ids[row]),
            )
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    # beyond float32's range a finite value would become inf once stored
    infinite = np.flatnonzero(beyond_float32(values))
    if len(infinite):
        raise AdapterError(
            f"infinite or out-of-range value ({values[infinite[0]]}) in {len(infinite)} row(s);"
            " use NaN/empty for missing values",
            file=file,
            column=column,
            subject=str(ids[infinite[0]]),
        )
    return values
