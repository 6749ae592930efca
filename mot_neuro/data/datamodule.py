"""LightningDataModule over a cached cohort: saved splits, fold-safe preprocessing, batches from memory maps.

Batches are built a whole batch at a time (the sampler yields lists of rows, the dataset slices the
memory-mapped arrays and preprocesses the block), so preprocessing is vectorised and a worker reads only
the rows it needs: cohorts larger than RAM work. What a batch holds: :mod:`mot_neuro.data.batches`.

Sizes the model needs (tokens and features per modality, target kinds) are in :attr:`model_inputs`,
available right after construction, so the CLI links them into the model config (no copying by hand).

Checks made while preparing, so that a run never trains on a wrong number: option ranges (at construction),
target kinds decided once for the cohort, every fold's training part holding every class, a saved splits
file matching the settings, and the fold's held-out rows transformed once (about a quarter of the fit's
reading) so that a value the training statistics would make non-finite stops the run before any step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import pandas as pd
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveInt, restricted_number_type
from torch.utils.data import DataLoader

from data_adapters.cache import load_cohort
from data_adapters.cohort import DEFAULT_MIN_MATCH
from data_adapters.core import AdapterError
from mot_neuro.model.inputs import DataSpec, TargetSpec
from mot_neuro.model.tokenizers import ModalitySpec

from .batches import SPLIT_CODES, CohortBatches, ResumableLoader, RowBatches
from .harmonize import check_harmonize
from .preprocess import (
    FoldPreprocessor,
    check_categorical_confounds,
    class_labels,
    decide_targets,
    permuted_target_rows,
)
from .relatedness import as_relatedness, check_relatedness_option
from .sources import build_cached_cohort, check_modality_names
from .splits import (
    SCHEMES,
    Splits,
    fraction_problems,
    held_out_problem,
    kfold_test_sets,
    load_or_make_splits,
    split_group_labels,
    stratum_codes,
)
from .withdrawals import read_withdrawals

log = logging.getLogger(__name__)
STAGES = ("train", "val", "test")
PREDICT_SPLITS = ("all", *STAGES)
JOINS = ("inner", "outer")
TARGET_KIND = Literal["regression", "binary", "multiclass"]
# types the CLI's parser checks when it reads the option, so a bad value is refused (naming it) before any run
AtLeastTwoInt = restricted_number_type("AtLeastTwoInt", int, (">=", 2))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_data_options(
    *,
    batch_size,
    num_workers,
    scheme,
    n_folds,
    fold,
    val_fraction,
    test_fraction,
    split_seed,
    join,
    predict_split,
    confounds=(),
    categorical_confounds=(),
) -> None:
    """Range checks of the DataModule's options, for the Python API (the CLI's parser already checks the
    types): a ValueError naming the option as it is written in a config (``data.batch_size``).
    ``categorical_confounds`` must be a subset of ``confounds``."""
    problems = []
    try:
        check_categorical_confounds(confounds, categorical_confounds, prefix="data.")
    except AdapterError as err:
        problems.append(err.reason)
    if not _is_int(batch_size) or batch_size < 1:
        problems.append(f"data.batch_size must be a positive integer, got {batch_size!r}")
    if not _is_int(num_workers) or num_workers < 0:
        problems.append(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
    if scheme not in SCHEMES:
        problems.append(f"data.scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    if not _is_int(n_folds) or n_folds < 2:
        problems.append(f"data.n_folds must be an integer >= 2, got {n_folds!r}")
    problems += fraction_problems(val_fraction, test_fraction, prefix="data.")
    if not _is_int(split_seed) or split_seed < 0:
        problems.append(f"data.split_seed must be an integer >= 0, got {split_seed!r}")
    if join not in JOINS:
        problems.append(f"data.join must be one of {list(JOINS)}, got {join!r}")
    if predict_split not in PREDICT_SPLITS:
        problems.append(f"data.predict_split must be one of {list(PREDICT_SPLITS)}, got {predict_split!r}")
    if problems:
        raise ValueError(problems[0])
    n_available = n_folds if scheme == "kfold" else 1
    if not _is_int(fold) or not 0 <= fold < n_available:
        valid = f"0..{n_folds - 1} (data.n_folds is {n_folds})" if scheme == "kfold" else "0 (holdout has one fold)"
        raise ValueError(f"data.fold {fold!r} does not exist: the {scheme} splits have fold(s) {valid}")
    problem = held_out_problem(scheme, n_folds, val_fraction, test_fraction, prefix="data.")
    if problem:
        raise ValueError(problem)


INNER_FOLD_KEYS = ("n_folds", "fold", "seed")


def check_inner_fold(inner_fold) -> dict | None:
    """``data.inner_fold`` checked and completed (``seed`` defaults to 0), or None when off: a ValueError of one
    line naming the option otherwise."""
    if inner_fold is None:
        return None
    if not isinstance(inner_fold, Mapping):
        raise ValueError(f"data.inner_fold must be a mapping {{n_folds: K, fold: j, seed: s}}, got {inner_fold!r}")
    unknown = sorted(set(inner_fold) - set(INNER_FOLD_KEYS))
    missing = [key for key in ("n_folds", "fold") if key not in inner_fold]
    if unknown or missing:
        what = f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}"
        raise ValueError(f"data.inner_fold has {what}; give {{n_folds: K, fold: j, seed: s}} (seed optional)")
    settings = {"seed": 0, **inner_fold}
    n_folds, fold, seed = (settings[key] for key in INNER_FOLD_KEYS)
    if not _is_int(n_folds) or n_folds < 2:
        raise ValueError(f"data.inner_fold n_folds must be an integer >= 2, got {n_folds!r}")
    if not _is_int(fold) or not 0 <= fold < n_folds:
        raise ValueError(
            f"data.inner_fold fold must be an integer in 0..{n_folds - 1} (n_folds is {n_folds}), got {fold!r}"
        )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"data.inner_fold seed must be an integer >= 0, got {seed!r}")
    return {key: int(settings[key]) for key in INNER_FOLD_KEYS}


class NeuroOmicsDataModule(pl.LightningDataModule):
    """A cohort from a data config, split once into ``splits_file`` and preprocessed per fold.

    Args:
        participants: participants table (CSV/TSV/parquet) with the ID, targets and confounds.
        modalities: modality name -> ``{adapter: <name>, <its arguments>}`` (see ``mot_neuro.data.sources``).
        targets: target columns of participants; ``target_kinds`` may fix their kind
            (``regression``, ``binary``, ``multiclass``), otherwise inferred once from the whole cohort
            (0/1 or PLINK's 1/2 -> binary, else regression), the same for every fold. A constant target, or
            one beyond float32's range, is refused; so is a fold whose training part lacks a class.
        confounds: participants columns regressed out of every numeric input feature (training fold fit).
            Text columns are categories (a centred one-hot block), numeric columns one number each (z-scored).
        categorical_confounds: confounds that are categories whatever their dtype: declare integer site, centre
            or batch codes here (UK Biobank's assessment centre, field 54: 11025, 11026, ...), else they are
            regressed as a single linear trend across the codes. Values are matched as categories by value
            (``11025``, ``11025.0`` and ``"11025"`` are one); a held-out category unseen in training gets the
            training average. Each name must be in ``confounds``. A numeric confound left undeclared that holds
            3 to 30 distinct whole numbers in the training rows is warned about. The declaration, with
            ``confounds`` and ``standardize``, is recorded in checkpoints (:attr:`preprocessing`), and a
            checkpoint made with other settings is refused by test, embed and resume.
        drop_modalities: modalities left out of the inputs (leave-one-modality-out) without touching files.
        splits_file: the saved folds; made on first use (stratified by ``stratify``, grouped by ``group``),
            then reused by every experiment that points at it. A saved file made with other settings (scheme,
            folds, fractions, seed, stratify, group) is refused, as are saved folds where a group crosses
            train/val/test: delete it, or point here another path, to make new splits.
        fold: which fold trains (k-fold: ``0 .. n_folds-1``).
        predict_split: the rows ``predict_dataloader`` serves: ``all`` (train + val + test of the fold, in cohort
            order), ``train``, ``val`` or ``test``.
        generate_demo: a folder for the built-in synthetic demo cohort, written there if it does not exist.
        cohort_dir: a cohort already saved as a folder (``data_adapters.cache.CohortWriter`` or ``save_cohort``),
            used in place of ``participants`` + ``modalities`` (give one or the other): nothing is built, the
            arrays are memory-mapped from there. ``targets`` and ``confounds`` must be its participants columns.
        min_match: the share of a modality's subjects that must be participants, and of the participants that must
            be in the modality (a number, or modality -> number); below it the IDs are taken to be written
            differently (leading zeros, a ``sub-`` prefix) and the build stops. Lower it for a modality that
            really covers part of the cohort (e.g. ``{brain: 0.1}`` when a tenth were scanned).
        relatedness: relatives kept inside one of train/val/test: a relatedness file, or ``{path: <file>,
            threshold: <kinship>}``. UK Biobank's ``ukb_rel.dat`` / KING's ``.kin0`` (header naming ``ID1 ID2
            ... Kinship``): a pair is related when ``Kinship >= threshold`` (default 0.0442, KING's lower bound of
            third degree; at most 0.5); a two-column ``ID1 ID2`` table: every listed pair is related. Subjects
            linked by related pairs, or by a shared ``group`` value, form one group (connected components); IDs
            not in the cohort are ignored. The threshold and the file's fingerprint are recorded in the splits
            file (another file or threshold refuses it), with the counts of related groups; saved folds where a
            related pair crosses parts are refused. See :mod:`mot_neuro.data.relatedness`.
        withdrawals: a file of withdrawn IDs (one per line, no header or a header naming the ID column, blank
            lines and ``#`` comments skipped), removed before anything else: left out of the cohort build and its
            cache (the file is part of the cache key), of a ``cohort_dir`` cohort's splits and loaders (the folder
            is not rewritten), and so of every split, embedding and prediction. A saved splits file holding them
            has them removed, every other subject keeping its part, and is saved again. How many of its IDs were
            found in the cohort and how many not is logged (and tracked as ``cohort/withdrawn/*``).
        harmonize: ComBat harmonisation of site effects fitted on the training rows of the fold, before confound
            regression and standardization: ``{method: combat, batch: site, covariates: [age, sex], modalities:
            [brain]}`` (``method: none`` or null: off). ``batch`` and ``covariates`` are participants columns (any
            column of the participants table; they need not be confounds), never a target. Recorded in
            checkpoints like ``confounds``. See :mod:`mot_neuro.data.harmonize`.
        permute_targets: a seed, for a null model: every target is shuffled among the fold's training subjects
            and, separately, among its validation subjects (the same shuffle for every target); test subjects keep
            their own values, so a null model's test metrics are honest chance. ``mot-neuro explain`` compares a
            model's attributions with such a model's. Recorded with the checkpoint's preprocessing: a null
            checkpoint is only tested or explained with the same seed. Null (default): off.
        inner_fold: an inner fold of the fold, for choosing settings without its test part (``mot-neuro tune
            --inner-folds``): ``{n_folds: K, fold: j, seed: s}``. The fold's training and validation rows are
            pooled and cut into K parts (seeded by ``s``, groups of ``group``/``relatedness`` kept whole,
            stratified by ``stratify`` as the splits are); part ``j`` validates and the rest trains (and fits the
            preprocessing). The fold's test rows are in neither (their ``split`` code is -1) and there is no test
            loader. Recorded in checkpoints; a checkpoint of another inner fold, or of the whole fold, is refused
            by an inner run (its weights saw this run's validation rows). Null (default): off.
    """

    def __init__(
        self,
        participants: str | None = None,
        modalities: Mapping[str, Mapping] | None = None,
        targets: Sequence[str] = ("target",),
        confounds: Sequence[str] = (),
        categorical_confounds: Sequence[str] = (),
        target_kinds: Mapping[str, TARGET_KIND] | None = None,
        join: Literal["inner", "outer"] = "outer",
        id_column: str = "eid",
        drop_modalities: Sequence[str] = (),
        cache_dir: str = "outputs/cache",
        splits_file: str = "outputs/splits.json",
        scheme: Literal["kfold", "holdout"] = "kfold",
        n_folds: AtLeastTwoInt = 5,
        fold: NonNegativeInt = 0,
        val_fraction: OpenUnitInterval = 0.1,
        test_fraction: OpenUnitInterval = 0.2,
        stratify: str | None = None,
        group: str | None = None,
        split_seed: NonNegativeInt = 0,
        standardize: bool = True,
        batch_size: PositiveInt = 32,
        num_workers: NonNegativeInt = 0,
        generate_demo: str | None = None,
        predict_split: Literal["all", "train", "val", "test"] = "all",
        cohort_dir: str | None = None,
        min_match: float | dict[str, float] = DEFAULT_MIN_MATCH,
        relatedness: str | dict[str, str | float] | None = None,
        withdrawals: str | None = None,
        harmonize: dict | None = None,
        permute_targets: NonNegativeInt | None = None,
        inner_fold: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # before anything is read or tracked: a bad option costs nothing and names itself
        check_data_options(
            batch_size=batch_size,
            num_workers=num_workers,
            scheme=scheme,
            n_folds=n_folds,
            fold=fold,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            join=join,
            predict_split=predict_split,
            confounds=confounds,
            categorical_confounds=categorical_confounds,
        )
        check_relatedness_option(relatedness, prefix="data.")
        self.inner_fold = check_inner_fold(inner_fold)
        if cohort_dir is not None:
            if participants is not None or modalities is not None:
                raise AdapterError(
                    "give either cohort_dir (a saved cohort) or participants and modalities (a data config to build"
                    " one from), not both"
                )
            if not Path(cohort_dir).is_dir():
                raise AdapterError(
                    "cohort_dir not found; write one with data_adapters.cache.CohortWriter", file=cohort_dir
                )
            from data_adapters.cache import saved_cohort_info

            modalities = saved_cohort_info(cohort_dir)["modalities"]  # names only: the arrays load in _prepare
        elif participants is None or modalities is None:
            given = {"participants": participants, "modalities": modalities}
            lacking = [name for name, value in given.items() if value is None]
            raise AdapterError(
                f"no data: give participants and modalities (a data config; missing: {lacking}) or cohort_dir"
                " (a saved cohort folder)"
            )
        # names become parameter keys, folders and MLflow keys: one rule, checked before anything is read
        check_modality_names(dict.fromkeys(modalities))
        check_harmonize(harmonize, targets=list(targets), modalities=list(modalities))
        unknown = sorted(set(drop_modalities) - set(modalities))
        if unknown:
            raise AdapterError(f"drop_modalities names unknown modality(ies) {unknown}; known: {sorted(modalities)}")
        if len(set(drop_modalities)) >= len(modalities):
            raise AdapterError("drop_modalities would leave no modality to train on")
        self.modality_names = list(modalities)
        self.kept = [m for m in modalities if m not in set(drop_modalities)]
        self._prepared = False
        self._train_loader: ResumableLoader | None = None
        self._train_resume: dict | None = None  # loader state from a checkpoint, applied to the next loader

    # ------------------------------------------------------------------ cohort, splits, preprocessing
    def _prepare(self) -> None:
        """Build or load the cohort, the splits and this fold's preprocessing (idempotent)."""
        if self._prepared:
            return
        hp = self.hparams
        if hp.generate_demo:
            self._write_demo(Path(hp.generate_demo))
        if hp.cohort_dir is not None:
            self.cohort, self.data_fingerprint = self._saved_cohort(Path(hp.cohort_dir))
            self.cohort_dir = Path(hp.cohort_dir)
        else:
            self.cohort, self.data_fingerprint = build_cached_cohort(
                participants=hp.participants,
                modalities=hp.modalities,
                targets=list(hp.targets),
                confounds=list(hp.confounds),
                join=hp.join,
                id_column=hp.id_column,
                cache_dir=hp.cache_dir,
                min_match=hp.min_match,
                withdrawals=hp.withdrawals,
            )
            self.cohort_dir = Path(hp.cache_dir) / f"cohort-{self.data_fingerprint}"
        self.withdrawn = None if hp.withdrawals is None else read_withdrawals(hp.withdrawals, id_column=hp.id_column)
        kept_rows = self._rows_not_withdrawn()  # a saved cohort folder still holds them: their rows are left out
        participants = self.cohort.participants if kept_rows is None else self.cohort.participants.iloc[kept_rows]
        # a target's kind is the cohort's, decided once: every fold trains the same kind of head
        self.target_specs = decide_targets(self._kept_cohort(participants), hp.target_kinds)
        stratify = None
        if hp.stratify is not None:
            if hp.stratify not in participants.columns:
                raise AdapterError(f"stratify column {hp.stratify!r} is not a target/confound of the cohort")
            stratify = participants[hp.stratify]  # a named Series: the splits file records the column
        groups = None
        if hp.group is not None:
            if hp.group not in participants.columns:
                raise AdapterError(
                    f"group column {hp.group!r} is not in the cohort's participants columns"
                    f" {list(participants.columns)}; list it under confounds or targets"
                )
            groups = participants[hp.group].astype(str)
        relatedness = as_relatedness(hp.relatedness)  # read once: for the splits and for their group labels
        self.splits: Splits = load_or_make_splits(
            hp.splits_file,
            participants.index.to_numpy().astype(str),
            class_targets=self._class_targets(kept_rows),
            fold=hp.fold,
            scheme=hp.scheme,
            n_folds=hp.n_folds,
            val_fraction=hp.val_fraction,
            test_fraction=hp.test_fraction,
            stratify=stratify,
            groups=groups,
            seed=hp.split_seed,
            relatedness=relatedness,
            withdrawn=None if self.withdrawn is None else self.withdrawn.ids,
        )
        # subject ID -> the group the splits keep whole (text; related subjects joined with the group column), for
        # whoever must keep them whole too (the probes' inner CV and cluster bootstrap); None without either
        self.split_groups = split_group_labels(participants.index.to_numpy().astype(str), groups, relatedness)
        position = {sid: i for i, sid in enumerate(self.cohort.subject_ids)}
        fold = self.splits.fold(hp.fold)
        self.rows = {stage: np.sort(np.array([position[s] for s in fold[stage]], dtype=np.int64)) for stage in STAGES}
        if self.inner_fold is not None:
            self.rows = self._inner_rows(stratify)
        # one byte per cohort row, so every batch can say which split each of its rows belongs to (an inner run:
        # the outer test rows are -1, outside this run, like rows of no fold)
        self.split_of_row = np.full(len(position), -1, dtype=np.int8)
        for stage, code in SPLIT_CODES.items():
            self.split_of_row[self.rows[stage]] = code
        self.preprocessor = FoldPreprocessor(
            standardize=hp.standardize,
            confounds=list(hp.confounds),
            categorical_confounds=list(hp.categorical_confounds),
            target_kinds=hp.target_kinds,
            target_specs=self.target_specs,
            harmonize=self._kept_harmonize(),
        ).fit(self.cohort, self.rows["train"])
        # fit bounded the training rows; a held-out value that the training statistics make non-finite stops
        # the run here, before any step (and outside DataLoader workers, whose errors come wrapped)
        if hp.get("permute_targets") is not None:
            self.preprocessor.target_rows = permuted_target_rows(
                self.cohort.n_subjects, [self.rows["train"], self.rows["val"]], int(hp.permute_targets)
            )
        held_out = np.concatenate([self.rows["val"], self.rows["test"]])
        self.preprocessor.check_rows(held_out, self.kept)
        self._prepared = True

    def _inner_rows(self, stratify: pd.Series | None) -> dict[str, np.ndarray]:
        """The rows of :attr:`inner_fold`: the fold's train + val rows cut into parts as the splits cut folds
        (whole groups, stratified, the same binning of a continuous column); the chosen part validates, the rest
        trains; no test rows."""
        n_folds, fold, seed = (self.inner_fold[key] for key in INNER_FOLD_KEYS)
        pool = np.sort(np.concatenate([self.rows["train"], self.rows["val"]]))
        ids = self.cohort.subject_ids[pool].astype(str)
        strata = None
        if stratify is not None:
            n_bins = int(self.splits.settings.get("n_bins", 5))
            strata = stratum_codes(
                stratify.set_axis(stratify.index.astype(str)).reindex(ids).reset_index(drop=True), n_bins
            )
        group_codes = None
        if self.split_groups is not None:
            group_codes = pd.factorize(self.split_groups.reindex(ids).astype(str).to_numpy(), sort=True)[0]
        n_units = len(pool) if group_codes is None else len(np.unique(group_codes))
        if n_units < n_folds:
            unit = "subjects" if group_codes is None else "groups"
            raise ValueError(
                f"data.inner_fold n_folds {n_folds}: fold {self.hparams.fold}'s train + val rows hold only"
                f" {n_units} {unit}; use fewer inner folds"
            )
        parts = kfold_test_sets(len(pool), n_folds, strata, group_codes, seed)
        val = np.sort(pool[parts[fold]])
        return {"train": np.setdiff1d(pool, val), "val": val, "test": np.empty(0, dtype=np.int64)}

    def _class_targets(self, kept_rows: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, list[float]]]:
        """Raw labels (in cohort order, of ``kept_rows`` when given) and class labels of each categorical target,
        for the splits' checks."""
        out = {}
        for name, spec in self.target_specs.items():
            if spec["kind"] == "regression":
                continue
            labels = pd.to_numeric(self.cohort.participants[name]).to_numpy(dtype=np.float64, na_value=np.nan)
            out[name] = (labels if kept_rows is None else labels[kept_rows], class_labels(spec))
        return out

    def _kept_harmonize(self) -> dict | None:
        """The harmonisation settings for the modalities this run trains on: a modality left out
        (``drop_modalities``) is neither fitted nor able to stop the run (e.g. a site too small for ComBat)."""
        settings = check_harmonize(self.hparams.harmonize)
        if settings is None:
            return None
        kept = [name for name in settings["modalities"] if name in self.kept]
        return {**settings, "modalities": kept} if kept else None

    def _rows_not_withdrawn(self) -> np.ndarray | None:
        """Rows of the cohort that are not withdrawn, or None when none is to be left out. A built cohort never
        holds withdrawn subjects (left out before it was cached); a saved ``cohort_dir`` cannot be rewritten,
        so its withdrawn rows are left out here, and the data fingerprint takes the withdrawal file in."""
        if self.withdrawn is None or self.hparams.cohort_dir is None:
            return None  # none asked, or left out at build time (the build logged and recorded the counts)
        ids = self.cohort.subject_ids
        withdrawn = np.isin(ids, np.asarray(sorted(self.withdrawn.ids), dtype=str))
        counts = {**self.withdrawn.counts(ids), "in_participants": int(withdrawn.sum())}
        self.withdrawn.check_ids(ids[~withdrawn], found=counts["found"])  # IDs written otherwise are refused
        self.cohort.build_info["withdrawn"] = counts  # in memory only: tracked with the cohort's match counts
        log.info(
            "withdrawals: %d withdrawn ID(s) found in the saved cohort and left out of its splits and loaders,"
            " %d not found",
            counts["found"],
            counts["not_found"],
        )
        text = f"{self.data_fingerprint}:withdrawals:{self.withdrawn.fingerprint}"
        self.data_fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
        if withdrawn.all():
            raise AdapterError("every subject of the saved cohort is withdrawn", file=self.withdrawn.path)
        return np.flatnonzero(~withdrawn) if withdrawn.any() else None

    def _kept_cohort(self, participants: pd.DataFrame):
        """The cohort, or (withdrawn rows left out of a saved one) its participants alone, for deciding targets."""
        if participants is self.cohort.participants:
            return self.cohort
        from data_adapters.cohort import Cohort

        cohort = self.cohort
        return Cohort(participants, {}, cohort.targets, cohort.confounds, cohort.id_column, cohort.join)

    def _saved_cohort(self, folder: Path):
        """The cohort of ``cohort_dir`` (memory-mapped) with this config's targets and confounds, and its key."""
        import dataclasses

        from data_adapters.cache import cohort_fingerprint

        cohort = load_cohort(folder, mmap=True)
        targets, confounds = list(self.hparams.targets), list(self.hparams.confounds)
        if (targets, confounds) != (cohort.targets, cohort.confounds):
            try:
                cohort = dataclasses.replace(cohort, targets=targets, confounds=confounds)
            except AdapterError as err:
                raise AdapterError(
                    f"{err.reason}; the saved cohort's participants columns are {list(cohort.participants.columns)}",
                    file=folder,
                ) from err
        return cohort, cohort_fingerprint(folder)

    @staticmethod
    def _write_demo(folder: Path) -> None:
        from data_adapters.demo import write_demo_cohort

        if not (folder / "ground_truth.json").is_file():
            log.info("writing the demo cohort into %s", folder)
            write_demo_cohort(folder)

    @property
    def preprocessing(self) -> dict:
        """The settings that decide how input features are preprocessed (besides the data and the fold's rows,
        which the data and splits fingerprints identify), recorded in checkpoints."""
        hp = self.hparams
        settings = {
            "standardize": bool(hp.standardize),
            "confounds": [str(c) for c in hp.confounds],
            "categorical_confounds": check_categorical_confounds(hp.confounds, hp.categorical_confounds),
        }
        harmonize = check_harmonize(hp.get("harmonize"))
        if harmonize is not None:  # only when on: checkpoints made without the option keep their fingerprint
            settings["harmonize"] = harmonize
        if hp.get("permute_targets") is not None:  # a null model: refused for (or by) a model of the real targets
            settings["permute_targets"] = int(hp.permute_targets)
        return settings

    @property
    def preprocessing_fingerprint(self) -> str:
        """A hash of :attr:`preprocessing`: equal fingerprints, the same preprocessing of the same data."""
        text = json.dumps(self.preprocessing, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def model_inputs(self) -> DataSpec:
        """What the model needs from the data: modality specs (dropped ones with 0 tokens) and targets."""
        self._prepare()
        specs = []
        for name in self.modality_names:
            modality = self.cohort.modalities[name]
            kept = name in self.kept
            categorical = {
                t: len(modality.categories[token])
                for t, token in enumerate(modality.token_names)
                if token in modality.categories
            }
            specs.append(
                ModalitySpec(
                    name=name,
                    n_tokens=modality.n_tokens if kept else 0,
                    n_features=modality.n_features,
                    feature_mask=modality.feature_mask.tolist() if kept else (),
                    categorical=categorical if kept else {},
                )
            )
        fitted = self.preprocessor.state_dict()["targets"]
        targets = {
            name: TargetSpec(
                kind=self.preprocessor.target_kinds[name],
                n_classes=self.preprocessor.n_classes.get(name),
                # training-fold mean and sd: the model reports regression metrics in the target's units
                mean=fitted[name].get("mean", 0.0),
                sd=fitted[name].get("sd", 1.0),
                # raw labels of classes 0 and 1 (PLINK's 1/2), recorded with the model
                coding=fitted[name].get("coding") or None,
            )
            for name in self.hparams.targets
        }
        return DataSpec(modalities=tuple(specs), targets=targets, fingerprint=self.data_fingerprint)

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        if self.hparams.generate_demo:
            self._write_demo(Path(self.hparams.generate_demo))

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    @staticmethod
    def _check_predict_split(split: str) -> None:
        if split not in PREDICT_SPLITS:
            raise AdapterError(f"predict_split must be one of {list(PREDICT_SPLITS)}, got {split!r}")

    def _refuse_test_of_inner_fold(self) -> None:
        if self.inner_fold is not None:
            raise ValueError(
                f"an inner fold has no test part (data.inner_fold {self.inner_fold}): its runs choose settings, and"
                " the fold's test rows are kept out of them; test a fit without data.inner_fold"
            )

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        if stage == "test":  # test_dataloader, or predict_split test
            self._refuse_test_of_inner_fold()
        self._prepare()
        if stage == "all":
            rows = np.sort(np.concatenate([self.rows[s] for s in STAGES]))
        else:
            rows = self.rows[stage]
        if len(rows) == 0:
            raise AdapterError(f"the {stage} set of fold {self.hparams.fold} is empty; check the split fractions")
        dataset = CohortBatches(
            self.cohort_dir, self.preprocessor.state_dict(), self.kept, self.split_of_row, preload_rows=rows
        )
        loader_class = ResumableLoader if stage == "train" else DataLoader
        return loader_class(
            dataset,
            sampler=RowBatches(rows, self.hparams.batch_size, shuffle=shuffle, seed=self.hparams.split_seed),
            batch_size=None,  # the dataset returns whole batches
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        loader.batches_done = self._train_batches_done  # a bound method: ddp_spawn pickles the loader
        if self._train_resume is not None:
            loader.load_state_dict(self._train_resume)
            self._train_resume = None
        self._train_loader = loader
        return loader

    # Mid-epoch resume goes through the DataModule's checkpoint state as well as Lightning's own
    # loader-state mechanism: Lightning restores loader states only if it has not built the training
    # loader yet, and it has whenever configure_optimizers asks for trainer.estimated_stepping_batches
    # (ours does, for the LR schedule). The DataModule's state is restored before the loader is built.
    def _train_batches_done(self) -> int:
        """The training loop's own count of this epoch's finished batches (the loader is read ahead of it)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def state_dict(self) -> dict:
        # how the inputs were preprocessed: weights trained on other residuals must not be tested on these
        state = {"preprocessing": self.preprocessing, "preprocessing_fingerprint": self.preprocessing_fingerprint}
        loader = getattr(self, "_train_loader", None)
        if loader is not None:
            state["train_loader"] = loader.state_dict()
        if self._prepared:  # which subjects trained the weights: a checkpoint must not be tested on them
            state.update(
                fold=int(self.hparams.fold),
                splits_fingerprint=self.splits.fingerprint(),
                data_fingerprint=self.data_fingerprint,
            )
        if self.inner_fold is not None:  # trained on part of the fold's train + val rows: an inner run's weights
            state["inner_fold"] = dict(self.inner_fold)
        seed = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything: which seed trained it (explain's table)
        if seed is not None and seed.lstrip("-").isdigit():
            state["seed"] = int(seed)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._check_checkpoint_preprocessing(state_dict)
        self._check_checkpoint_fold(state_dict)
        self._train_resume = state_dict.get("train_loader")

    def _check_checkpoint_preprocessing(self, state: dict) -> None:
        """Refuse a checkpoint whose inputs were preprocessed otherwise (confounds, which of them are categorical,
        standardization): its weights learned features that this run's preprocessing no longer gives, so test,
        embed or a resumed fit would silently use other numbers. Checkpoints written before this was recorded
        carry nothing to compare."""
        recorded = state.get("preprocessing_fingerprint")
        if recorded is None or recorded == self.preprocessing_fingerprint:
            return
        saved, now = dict(state.get("preprocessing") or {}), self.preprocessing
        differs = [
            f"data.{key} {saved.get(key)!r} (this run: {now.get(key)!r})"
            for key in dict.fromkeys([*now, *saved])
            if ((key in saved and key in now) or key in ("harmonize", "permute_targets"))
            and saved.get(key) != now.get(key)
        ]
        what = ", ".join(differs) or f"fingerprint {recorded}, this run's {self.preprocessing_fingerprint}"
        raise AdapterError(
            f"the checkpoint was trained with other preprocessing of its inputs: {what}; its weights learned"
            " features this run would preprocess differently. Run with the checkpoint's data settings"
            " (e.g. the same data.categorical_confounds), or train a new checkpoint"
        )

    def _check_checkpoint_fold(self, state: dict) -> None:
        """Refuse a checkpoint trained on another fold or other splits (test, embed, or a resume picking another
        fold's last.ckpt): its weights saw subjects that this fold holds out, so every held-out number would leak.
        Checkpoints written before this was recorded carry nothing to compare."""
        if "fold" not in state or not self._prepared:
            return
        fold, splits = int(state["fold"]), state.get("splits_fingerprint")
        # splits with withdrawn subjects removed keep every other subject's part: their earlier versions match
        if splits in (self.splits.settings.get("withdrawn") or {}).get("earlier_fingerprints", []):
            splits = self.splits.fingerprint()
        if fold != self.hparams.fold or splits != self.splits.fingerprint():
            what = (
                f"fold {fold} (this run: fold {self.hparams.fold})"
                if splits == self.splits.fingerprint()
                else f"other splits (splits fingerprint {splits}, this run's {self.splits.fingerprint()})"
            )
            raise AdapterError(
                f"the checkpoint was trained on {what}: its weights saw subjects this fold holds out, so its"
                " validation and test numbers would leak. Use this fold's own checkpoint (a --checkpoint_dir per"
                f" fold), or run with the checkpoint's --data.fold {fold} and its splits_file"
            )
        if self.inner_fold is not None and state.get("inner_fold") != self.inner_fold:
            trained = state.get("inner_fold") or "the whole fold (no inner fold)"
            raise AdapterError(
                f"the checkpoint was trained on {trained}, this run on data.inner_fold {self.inner_fold}: its weights"
                " saw rows this inner fold validates on. Use a checkpoint of the same inner fold"
            )
        if state.get("data_fingerprint") not in (None, self.data_fingerprint):
            log.warning(
                "the checkpoint was trained on other input files or data settings (data fingerprint %s, this run's"
                " %s); its token layout matches, but check that the features mean what they meant",
                state.get("data_fingerprint"),
                self.data_fingerprint,
            )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        self._check_predict_split(self.hparams.predict_split)  # hparams may be changed after construction
        return self._loader(self.hparams.predict_split, shuffle=False)
