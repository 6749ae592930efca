"""What ``mot-neuro probe`` needs around :func:`mot_neuro.probe.probe`: its arguments, the checks of the
embeddings files against the fold, the feature sets' names and the output table (``mot_neuro.probe.main`` runs it).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data_adapters.core import atomic_write_bytes
from mot_neuro.experiment import EXPERIMENT_HELP, set_overrides
from mot_neuro.probe_features import _SPLIT_PARTS, EARLY_FUSION


def _check_embeddings_fold(path: Path, info: pd.DataFrame, fold: int, splits: Mapping[str, np.ndarray]) -> None:
    """The file must hold embeddings of the config's fold, with the splits file's label for every subject."""
    folds = sorted({int(f) for f in info["fold"]})
    if folds != [fold]:
        raise ValueError(
            f"{path} holds embeddings of fold {', '.join(map(str, folds)) or '(none)'}, but the config trains fold"
            f" {fold}; probe with the embeddings of fold {fold} (or set data.fold to match)"
        )
    expected = {sid: part for part in _SPLIT_PARTS for sid in splits[part]}
    labels = info["eid"].map(expected)
    outside = int(labels.isna().sum())
    differ = int((labels.notna() & (labels != info["split"])).sum())
    if outside or differ:
        raise ValueError(
            f"{path} does not match fold {fold} of the splits file: {differ} subject(s) have another split label"
            f" there and {outside} subject(s) are not in that fold; embed with the same splits file and fold"
        )


def _feature_set_names(paths: Sequence[Path], variants: Sequence[str]) -> list[str]:
    """Each file's variant; files sharing a variant are named by their stem (made unique if stems repeat)."""
    names = []
    for path, variant in zip(paths, variants, strict=True):
        name = variant if variants.count(variant) == 1 else path.stem
        base, k = name, 2
        while name in names or name == EARLY_FUSION:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _overrides(pairs: Sequence[str]) -> list[str]:
    return set_overrides(list(pairs))


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    atomic_write_bytes(path, table.to_csv(index=False).encode())  # readers see the old file or the new one


def format_table(results: pd.DataFrame, digits: int = 3) -> str:
    """``feature_set x target/metric`` with ``value [ci_low, ci_high]`` cells, as text."""

    def cell(row) -> str:
        if not np.isfinite(row["value"]):
            return "nan"
        if not np.isfinite(row["ci_low"]):
            return f"{row['value']:.{digits}f}"
        return f"{row['value']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"

    if results.empty:
        return "(no results)"
    shown = results.assign(
        cell=results.apply(cell, axis=1),
        column=results["target"].astype(str) + "/" + results["metric"].astype(str),
    )
    sets = list(dict.fromkeys(shown["feature_set"]))
    columns = list(dict.fromkeys(shown["column"]))
    wide = shown.pivot(index="feature_set", columns="column", values="cell").reindex(index=sets, columns=columns)
    wide.index.name, wide.columns.name = "feature_set", None
    return wide.fillna("").to_string()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mot-neuro probe",
        description="Linear probes of the experiment's targets on subject embeddings and on the raw features"
        " (early fusion), on the experiment's folds; penalties chosen by an inner CV of the whole pipeline;"
        " bootstrap 95%% CIs on the test subjects (AUROC/AUPRC resampled within class). With the data"
        " config's group set, inner CV splits and bootstrap resamples keep each group whole.",
        epilog=_experiment_help(),
        allow_abbrev=False,  # an abbreviation must not swallow an experiment override such as --data
    )
    parser.add_argument("--config", required=True, help="the experiment config the embeddings' models were fit with")
    parser.add_argument("--embeddings", nargs="*", default=[], metavar="PARQUET", help="embeddings files to probe")
    parser.add_argument(
        "--no-early-fusion", dest="early_fusion", action="store_false", help="leave out the raw features"
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="test-set resamples for the CIs (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the resamples and inner CV folds (default 0)")
    parser.add_argument(
        "--inner-folds",
        type=int,
        default=5,
        help="folds of the inner CV that chooses each probe's penalty (default 5)",
    )
    parser.add_argument("--out", default=None, help="output folder (default outputs/probes/<config name>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set data.fold=1 (repeatable)",
    )
    return parser


def _experiment_help() -> str:
    return EXPERIMENT_HELP
