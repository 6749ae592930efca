"""The tidy results table of an ablation grid: its columns, :func:`tidy_results`, and which way a metric is better.

The other ablation-analysis modules (``mot_neuro.analysis`` and the ones it draws on) read this table; it has no
dependency of its own beyond pandas and numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

CELL_KEYS = ("variant", "dropped", "seed", "fold")
RESULT_COLUMNS = (*CELL_KEYS, "metric", "value")

_HIGHER_IS_BETTER_SUFFIXES = ("r2", "pearson", "auroc", "auprc", "accuracy")
# "mse" also covers "rmse"
_LOWER_IS_BETTER_SUFFIXES = ("loss", "mae", "mse", "brier", "ece")


def _higher_is_better(metric: str, overrides: Mapping[str, bool] | None = None) -> bool:
    """Whether larger values of ``metric`` are better: ``overrides`` first, then the name's ending."""
    if overrides and metric in overrides:
        return bool(overrides[metric])
    name = metric.lower()
    if "recon" in name.split("/"):  # masked-token reconstruction losses: test/recon, test/recon/<modality>
        return False
    if name.endswith(_HIGHER_IS_BETTER_SUFFIXES):
        return True
    if name.endswith(_LOWER_IS_BETTER_SUFFIXES):
        return False
    raise ValueError(
        f"cannot tell whether metric {metric!r} is higher- or lower-is-better from its name; "
        f"pass higher_is_better={{{metric!r}: True or False}}"
    )


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def _plain(value):
    # .item(): numpy scalars would print as np.int64(0) instead of 0
    return value.item() if isinstance(value, np.generic) else value


def _sorted(values: Iterable) -> list:
    values = list(values)
    try:
        return sorted(values)
    except TypeError:  # folds of mixed types: any fixed order will do
        return sorted(values, key=repr)


def _cell_name(row: Mapping) -> str:
    return ", ".join(f"{k}={_plain(row[k])!r}" for k in RESULT_COLUMNS[:-1])


def tidy_results(records: Iterable[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, dropped, seed, fold, metric) with its ``value``, sorted.

    ``records`` are mappings with the keys ``variant, dropped, seed, fold, metric, value`` (extra keys are
    ignored), or a DataFrame with those columns. ``variant``, ``dropped`` and ``metric`` become strings and
    ``value`` a float; a repeated cell is an error naming it, because silently averaging or keeping one of two
    results for the same run would hide a bookkeeping mistake in the grid.
    """
    if isinstance(records, pd.DataFrame):
        df = records.copy()
    else:
        rows = []
        for i, rec in enumerate(records):
            missing = [k for k in RESULT_COLUMNS if k not in rec]
            if missing:
                raise ValueError(f"result record {i} lacks key(s) {missing}: {dict(rec)!r}")
            rows.append({k: rec[k] for k in RESULT_COLUMNS})
        df = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    _require_columns(df, RESULT_COLUMNS, "results")
    df = df.loc[:, list(RESULT_COLUMNS)]
    for col in ("variant", "dropped", "metric"):
        df[col] = df[col].astype(str)
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)

    key = list(RESULT_COLUMNS[:-1])
    dup = df.duplicated(subset=key, keep=False)
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise ValueError(
            f"duplicate result for cell {_cell_name(first)} ({int(dup.sum())} duplicated rows in all); "
            "each (variant, dropped, seed, fold, metric) must appear once"
        )
    return df.sort_values(key, kind="mergesort").reset_index(drop=True)
