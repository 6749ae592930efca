"""Checks of a cohort's target and confound columns: each is a participants column (not the ID column, not in
both roles), is observed among the subjects the join keeps, and holds values its role allows (see
:mod:`data_adapters.cohort` for the rules)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .core import AdapterError


def check_columns(
    df: pd.DataFrame, targets: list[str], confounds: list[str], modalities: Mapping, id_column: str, file
) -> None:
    """Refuse a target or confound that is not a participants column (naming the modality that has a token of
    that name), is the ID column, or is listed in both roles."""
    both = sorted(set(targets) & set(confounds))
    if both:
        raise AdapterError(f"column(s) {both} are listed both as target and as confound; choose one role", file=file)
    for role, names in (("target", targets), ("confound", confounds)):
        for column in names:
            if column == id_column:
                raise AdapterError(f"the subject ID column cannot be a {role}", file=file, column=column)
            if column in df.columns:
                continue
            holders = [m for m, mod in modalities.items() if column in getattr(mod, "token_names", [])]
            hint = (
                f"; it is a token of modality {holders[0]!r}: targets and confounds must be participants columns,"
                " add it to the participants table"
                if holders
                else ""
            )
            shown = list(df.columns)[:20]
            raise AdapterError(f"{role} column not in participants (columns: {shown}){hint}", file=file, column=column)


def _check_values(series: pd.Series, *, role: str, column: str, file) -> None:
    """Values a target or confound column may hold, among the cohort's subjects.

    Missing (empty, NaN) is allowed in both. Infinite values are errors. Targets must be numbers (class
    labels as integers); a confound may be all numbers or all labels (site, sex), but numbers mixed with
    text is a data error (``"n/a "``, ``"12,5"``) that would otherwise turn the column into categories.
    """
    observed = series.notna().to_numpy()
    numbers = series if pd.api.types.is_numeric_dtype(series) else pd.to_numeric(series, errors="coerce")
    if pd.api.types.is_bool_dtype(numbers):
        return
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    text = observed & np.isnan(numbers)
    infinite = np.isinf(numbers)
    ids = series.index
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise AdapterError(
            f"{role} column holds an infinite value in {int(infinite.sum())} row(s); leave a missing value empty",
            file=file,
            column=column,
            subject=str(ids[row]),
        )
    if not text.any() or (role == "confound" and text[observed].all()):
        return
    row = int(np.flatnonzero(text)[0])
    first = str(series.iloc[row])
    if role == "target":
        problem = (
            f"target column holds text ({int(text.sum())} of {int(observed.sum())} entries, first: {first!r});"
            f" targets must be numbers: fix those entries, or encode classes as integers 0..K-1 and declare"
            f" target_kinds={{{column!r}: 'multiclass'}} (or 'binary' for 0/1)"
        )
    else:
        problem = (
            f"confound column mixes numbers and text ({int(text.sum())} of {int(observed.sum())} entries are"
            f" text, first: {first!r}); fix those entries (leave a missing value empty), or make every entry a"
            " label if the column holds categories"
        )
    raise AdapterError(problem, file=file, column=column, subject=str(ids[row]))


def check_observed_values(
    full_table: pd.DataFrame, table: pd.DataFrame, targets: list[str], confounds: list[str], file
) -> None:
    """Refuse a target or confound with no observed value among the kept subjects (``table``; ``full_table`` is
    every participant, to tell an empty column from one empty only there), then check the values it holds."""
    for role, names in (("target", targets), ("confound", confounds)):
        for column in names:
            if not full_table[column].notna().any():
                problem = f"is entirely missing in participants ({len(full_table)} rows)"
            elif not table[column].notna().any():
                problem = f"has no observed value among the {len(table)} subjects shared with the modalities"
            else:
                continue
            raise AdapterError(
                f"{role} column {problem}; choose another {role} or fill it in", file=file, column=column
            )

    for role, names in (("target", targets), ("confound", confounds)):
        for column in names:
            _check_values(table[column], role=role, column=column, file=file)
