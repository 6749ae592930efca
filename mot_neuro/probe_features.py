"""The feature sets a probe compares, and the fold they are compared on.

* embeddings files (``mot-neuro embed``): the pooled embedding, and the per-modality ones side by side (late
  fusion), read with :func:`mot_neuro.embeddings_format.read_embedding_matrices`;
* early fusion: the raw input features of the experiment's cohort, preprocessed by the fold's FoldPreprocessor;
* the fold's targets (as the model sees them), splits and groups (with relatedness, the families the splits
  kept whole), from the experiment's DataModule.

No torch or Lightning at import: only the functions that build the experiment's DataModule import them (through
:func:`mot_neuro.experiment.lightning_cli`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mot_neuro.embeddings_format import read_embedding_matrices
from mot_neuro.experiment import lightning_cli

EARLY_FUSION = "early_fusion"
LATE_FUSION_SUFFIX = "_late_fusion"
_SPLIT_PARTS = ("train", "val", "test")


def _ids(values) -> np.ndarray:
    return np.asarray([str(v) for v in np.asarray(values, dtype=object).ravel()], dtype=object)


def _embedding_sets(info: pd.DataFrame, pooled: np.ndarray, per_modality: dict, name: str) -> dict:
    index = pd.Index(info["eid"].to_numpy(object), name="eid")
    sets = {name: pd.DataFrame(pooled, index=index, columns=[f"emb_{i}" for i in range(pooled.shape[1])])}
    if per_modality:
        blocks = [
            pd.DataFrame(values, index=index, columns=[f"{m}:emb_{i}" for i in range(values.shape[1])])
            for m, values in per_modality.items()
        ]
        sets[name + LATE_FUSION_SUFFIX] = pd.concat(blocks, axis=1)
    return sets


def embedding_features(path) -> dict[str, pd.DataFrame]:
    """Feature sets of one embeddings parquet, indexed by ``eid``.

    ``{"<variant>": pooled embedding (columns emb_0 ..), "<variant>_late_fusion": the per-modality embeddings
    concatenated in the file's modality order (columns <modality>:emb_0 ..)}``; the late fusion set is left out
    when the file has no per-modality columns. The variant comes from the file's metadata (else the file stem).
    """
    info, pooled, per_modality, metadata = read_embedding_matrices(path)
    return _embedding_sets(info, pooled, per_modality, str(metadata.get("variant") or Path(path).stem))


def _fold_datamodule(config: str, overrides: Sequence[str]):
    """The experiment's DataModule, prepared (cohort, splits, FoldPreprocessor fitted on the fold's train rows)."""
    # Only the DataModule is used. Last, so that no --trainer file given by the user undoes them: no logger
    # (building the DataModule must not create an MLflow store or run), and one CPU process whatever
    # accelerator or strategy the experiment trains with
    only_data = ["--trainer.logger", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    only_data += ["--trainer.strategy", "auto", "--trainer.num_nodes", "1"]
    cli = lightning_cli(["--config", str(config), *overrides, *only_data], run=False)
    datamodule = cli.datamodule
    datamodule.setup("fit")
    return datamodule


def _fold_labels(datamodule) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, str]]:
    fold = datamodule.splits.fold(datamodule.hparams.fold)
    splits = {part: np.asarray(sorted(fold[part]), dtype=object) for part in _SPLIT_PARTS}
    names = list(datamodule.hparams.targets)
    targets = datamodule.cohort.participants[names].copy()
    for name in names:  # the classes as the model sees them: a binary target coded 1/2 (PLINK) becomes 0/1
        targets[name] = datamodule.preprocessor.code_target(name, targets[name].to_numpy(dtype=float, na_value=np.nan))
    targets.index = pd.Index(_ids(targets.index), name="eid")
    # only the fold's subjects: rows of a saved cohort outside every part (withdrawn) must reach no probe
    targets = targets[targets.index.isin(np.concatenate(list(splits.values())))]
    kinds = {name: datamodule.preprocessor.target_kinds[name] for name in names}
    return targets, splits, kinds


def _fold_groups(datamodule) -> pd.Series | None:
    """Subject ID -> the group the splits keep whole, for the fold's subjects: the data config's ``group``, or
    with ``relatedness`` the DataModule's ``split_groups`` (related subjects, and the subjects sharing a group
    value with them, one group); None without either."""
    column = datamodule.hparams.group
    fold = datamodule.splits.fold(datamodule.hparams.fold)
    subjects = np.concatenate([fold[part] for part in _SPLIT_PARTS])
    if datamodule.hparams.relatedness is not None:
        labels = datamodule.split_groups  # the labels the splits were made with
        name = f"{column} + relatedness" if column else "relatedness"
        groups = pd.Series(labels.to_numpy(object), index=_ids(labels.index), name=name)
        return groups[groups.index.isin(subjects)]
    if not column:
        return None
    participants = datamodule.cohort.participants
    if column not in participants.columns:
        raise ValueError(f"data.group {column!r} is not a column of the participants table")
    # as strings, exactly as the DataModule groups its splits
    groups = pd.Series(participants[column].astype(str).to_numpy(object), index=_ids(participants.index), name=column)
    return groups[groups.index.isin(subjects)]


def _modality_columns(name: str, modality, values: np.ndarray, missing: np.ndarray) -> pd.DataFrame:
    """Real slots (``feature_mask``) of one modality as columns ``<modality>:<token>:<feature>``.

    A categorical token holds a category index; it becomes one 0/1 column per category
    (``<modality>:<token>:<feature>=<label>``, all 0 where missing), since a linear probe must not read an
    order into category codes.
    """
    mask = np.asarray(modality.feature_mask, dtype=bool)
    columns, names = [], []
    for t, token in enumerate(modality.token_names):
        for f in np.flatnonzero(mask[t]):
            if token in modality.categories:
                codes = values[:, t, f]
                for c, label in enumerate(modality.categories[token]):
                    columns.append(((codes == c) & ~missing[:, t, f]).astype(np.float32))
                    names.append(f"{name}:{token}:{f}={label}")
            else:
                columns.append(values[:, t, f])
                names.append(f"{name}:{token}:{f}")
    return pd.DataFrame(np.column_stack(columns) if columns else np.empty((len(values), 0)), columns=names)


def _early_fusion_matrix(datamodule) -> pd.DataFrame:
    rows = np.sort(np.concatenate([datamodule.rows[part] for part in _SPLIT_PARTS]))
    cohort = datamodule.cohort
    blocks = []
    for name in datamodule.kept:
        values, missing = datamodule.preprocessor.transform(name, rows, cohort=cohort)
        blocks.append(_modality_columns(name, cohort.modalities[name], values, missing))
    features = pd.concat(blocks, axis=1)
    features.index = pd.Index(cohort.subject_ids[rows].astype(object), name="eid")
    return features


def early_fusion_features(
    config: str, overrides: Sequence[str] = ()
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray], dict[str, str]]:
    """Raw features of an experiment's cohort, preprocessed fold-safely, with its targets, splits and kinds.

    Builds the experiment's DataModule (``lightning_cli(["--config", config, *overrides], run=False)``), whose
    FoldPreprocessor is fitted on the fold's training rows only, and transforms every row of the fold with it.

    Returns:
        ``(features, targets, splits, kinds)``: features indexed by ``eid`` (columns
        ``<modality>:<token>:<feature index>``, categorical tokens one-hot; no NaN: missing values are the
        training mean), the raw targets (original units) indexed by ``eid``, ``{"train", "val", "test"} -> IDs``
        of the fold from the splits file, and ``{target: kind}``.
    """
    datamodule = _fold_datamodule(config, overrides)
    targets, splits, kinds = _fold_labels(datamodule)
    return _early_fusion_matrix(datamodule), targets, splits, kinds
