"""Imaging-derived phenotype tables (FreeSurfer style ``<measure>_<region>`` columns) as region tokens."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .core import (
    DEFAULT_ID_COLUMN,
    AdapterError,
    TokenizedModality,
    check_choice,
    normalize_ids,
)
from .tables import numeric_column, read_table, require_id_column

IDP_LAYOUTS = ("measure_region", "region_measure")


def idp_table(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    id_column: str = DEFAULT_ID_COLUMN,
    layout: str = "measure_region",
    measures: Sequence[str] | None = None,
    separator: str = "_",
    columns: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    name: str = "brain",
) -> TokenizedModality:
    """One token per region from an imaging-derived phenotype table, its measures as features.

    Column names are ``<measure><separator><region>`` (``layout="measure_region"``, split at the first
    separator) or ``<region><separator><measure>`` (``layout="region_measure"``, split at the last one, as
    in ``lh_superiorfrontal_thickness``). ``measures`` lists the measure names when they contain the
    separator themselves (``gray_volume``): columns are then matched by prefix or suffix. Regions lacking a
    measure have that slot masked (``feature_mask``). Values follow :func:`~data_adapters.tables.numeric_column`:
    empty or NaN is missing, infinite or text is an error naming column and subject. Columns that do not parse
    are an error listing them:
    leave them out with ``exclude=`` or move them to the participants table (``eTIV`` is a confound).
    """
    check_choice(layout, IDP_LAYOUTS, "layout")
    if not separator:
        raise AdapterError("separator must be a non-empty string")
    df, file = read_table(path_or_df, id_column=id_column, what="IDP table")
    df.columns = [str(c) for c in df.columns]
    require_id_column(df, id_column, file)
    if len(df) == 0:
        raise AdapterError("IDP table has no rows (header only?)", file=file)
    ids = normalize_ids(df[id_column], file=file, column=id_column)
    chosen = _chosen_columns(df, id_column, columns, exclude, file)
    parsed = _parse_columns(chosen, layout, measures, separator, file)
    regions = list(dict.fromkeys(region for _, region in parsed.values()))
    measure_names = list(dict.fromkeys(measure for measure, _ in parsed.values()))
    values, feature_mask = _region_values(df, parsed, regions, measure_names, ids, file)
    present = (~np.isnan(values) & feature_mask).any(axis=2)
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=regions,
        subject_ids=ids,
        feature_mask=feature_mask,
        feature_names=measure_names,
        source={
            "adapter": "brain.idp_table",
            "file": file,
            "id_column": id_column,
            "layout": layout,
            "separator": separator,
            "columns": list(parsed),
        },
    )


def _chosen_columns(df: pd.DataFrame, id_column: str, columns, exclude, file) -> list[str]:
    """The IDP columns to tokenize: ``columns`` (default every column but the ID) without ``exclude``."""
    available = [c for c in df.columns if c != id_column]
    exclude = [str(c) for c in exclude]
    unknown = [c for c in [*(columns or ()), *exclude] if c not in available]
    if unknown:
        raise AdapterError(f"column(s) {unknown[:5]} not in the table (from columns=/exclude=)", file=file)
    chosen = [c for c in (available if columns is None else [str(c) for c in columns]) if c not in set(exclude)]
    if not chosen:
        raise AdapterError("no IDP columns left to tokenize (check columns= and exclude=)", file=file)
    return chosen


def _parse_columns(chosen: list[str], layout: str, measures, separator: str, file) -> dict[str, tuple[str, str]]:
    """Column -> (measure, region) for every chosen column; columns that do not parse are an error naming them."""
    parsed, unparsed = {}, []
    for column in chosen:
        pair = _split_idp_column(column, layout, measures, separator)
        if pair is None:
            unparsed.append(column)
        else:
            parsed[column] = pair
    if unparsed:
        parts = ("<measure>", "<region>") if layout == "measure_region" else ("<region>", "<measure>")
        expected = separator.join(parts)
        known = f" with measures {list(measures)}" if measures else ""
        raise AdapterError(
            f"{len(unparsed)} column(s) are not {expected}{known}: {unparsed[:5]}; leave them out with exclude="
            " (or move confounds such as eTIV to the participants table)",
            file=file,
        )
    return parsed


def _region_values(
    df: pd.DataFrame, parsed: dict, regions: list[str], measure_names: list[str], ids: np.ndarray, file
) -> tuple[np.ndarray, np.ndarray]:
    """values [subjects, regions, measures] (0 in unused slots) and feature_mask [regions, measures]."""
    r_of = {r: i for i, r in enumerate(regions)}
    m_of = {m: j for j, m in enumerate(measure_names)}
    values = np.zeros((len(ids), len(regions), len(measure_names)), dtype=np.float32)
    feature_mask = np.zeros((len(regions), len(measure_names)), dtype=bool)
    for column, (measure, region) in parsed.items():
        r, m = r_of[region], m_of[measure]
        values[:, r, m] = numeric_column(df[column], column=column, ids=ids, file=file)
        feature_mask[r, m] = True
    return values, feature_mask


def _split_idp_column(column: str, layout: str, measures, separator: str) -> tuple[str, str] | None:
    if measures:
        for measure in sorted(measures, key=len, reverse=True):  # longest first: "gray_volume" before "volume"
            if layout == "measure_region" and column.startswith(measure + separator):
                region = column[len(measure) + len(separator) :]
            elif layout == "region_measure" and column.endswith(separator + measure):
                region = column[: -len(measure) - len(separator)]
            else:
                continue
            return (measure, region) if region else None
        return None
    if layout == "measure_region":
        measure, sep, region = column.partition(separator)
    else:
        region, sep, measure = column.rpartition(separator)
    return (measure, region) if sep and measure and region else None
