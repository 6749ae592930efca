"""Preprocessing fitted on the training rows of a fold only: confound regression, standardization,
imputation of inputs, and target scaling. :class:`FoldPreprocessor` fits it, transforms rows and saves its state;
the steps live in :mod:`~mot_neuro.data.confounds` (confound statistics and design),
:mod:`~mot_neuro.data.slot_statistics` (per-slot regression, centre and scale), :mod:`~mot_neuro.data.targets`
(target kinds and statistics), :mod:`~mot_neuro.data.column_values` and :mod:`~mot_neuro.data.scaling`.

Per modality, every *slot* (a token's feature that ``feature_mask`` keeps, of a numeric token) is
processed on its own, in this order:

0. Harmonisation (when ``harmonize`` names the modality): ComBat fitted on the training rows removes site
   effects while preserving the given covariates (:mod:`~mot_neuro.data.harmonize`); every later step is
   fitted on, and applied to, the harmonised values.
1. Confound regression (when ``confounds`` are given): least squares of the slot on a design of an
   intercept, the numeric confounds z-scored with training statistics, and the categorical confounds
   one-hot coded and centred by their training shares. A confound is categorical when it holds text or
   when it is declared in ``categorical_confounds``, whatever its dtype: integer site or centre codes
   (UK Biobank field 54: 11025, 11026, ...) must be declared, or they are regressed as one number, a
   single linear trend across the codes that leaves most of a site effect in place. A numeric confound
   that is not declared and holds 3 to 30 distinct whole numbers in the training rows is logged as a
   warning (two levels are not: with an intercept, a 0/1 column and a one-hot block span the same space,
   so number or category give the same residuals). A category is matched by value, so that training and
   held-out rows, or a cohort read with another dtype, agree (:func:`~mot_neuro.data.column_values.category_label`):
   whole numbers as integers (``11025``, ``11025.0`` and the text ``"11025"``, ``" 11025.0 "`` are one
   category), other numbers, and text that parses as one, by their shortest ``repr`` (``1.5`` and ``"1.50"``
   are one category, as are ``0.1``, ``"0.1"`` and a float32 ``0.1``), booleans and the text
   ``"True"``/``"False"`` as 1/0, text such as ``""``, ``"NA"``, ``"nan"``, ``"None"`` as missing, other text
   stripped of surrounding spaces. The fit uses the training rows where the slot is observed (token present,
   value not NaN); ``X^T W X`` and ``X^T W y`` are accumulated over blocks of ``block_rows`` rows, so
   memory-mapped arrays are never read whole. A slot observed in fewer training rows than there are design
   columns only has its mean removed. The residual is ``value - prediction``.
2. Standardization: mean and SD of the (residual) values over the observed training values; an SD that is
   zero, or float round-off of a constant (:func:`~mot_neuro.data.scaling.usable_sd`), is 1.
3. Imputation: a missing value becomes the training mean (0 once standardized).

A missing or unseen category of a confound gives an all-zero row in its centred one-hot block, i.e. the
training average, like a missing numeric confound (z = 0). Categorical tokens (names in
``modality.categories``) pass through as category indices (0 where missing). Regression targets are
standardized with training mean and SD; binary and multiclass targets pass through (a binary target coded
1/2, PLINK's control/case, becomes 0/1). NaN targets stay NaN.

A target's kind (and a multiclass target's number of classes, a binary target's coding) is a property of the
cohort, not of a fold: :func:`decide_targets` decides it once from every row, so a rare class absent from one
fold's training rows cannot turn the target into regression on that fold. Every class must then be present in
the training rows. Apart from that decision, nothing is computed from rows outside ``train_rows``: given the
same ``target_specs``, the fitted state (:meth:`FoldPreprocessor.state_dict`) is identical whatever the other
rows hold.

Numbers that would become infinite are refused, never trained on: statistics are float64 (a confound's mean and
SD computed on values scaled by their largest magnitude, so they cannot overflow) and checked finite at fit; a
target or confound beyond float32's range is refused for the whole cohort; the standardized values of the
training rows are bounded at fit time, and every transformed block is checked with one ``np.isfinite`` (the
error names the modality, token, feature and one subject).

Memory is flat in the number of subjects: fitting holds ``block_rows`` rows at a time, and after every block
read from a memory-mapped modality (by fit or transform) the pages it mapped are dropped from the process's
resident set (``data_adapters.io.release_pages``; they stay in the page cache, so a later read is a
minor fault). Without that, a process's RSS grows by what it has read: a pass over a 100,000-subject cohort
leaves the whole mapped size counted, and even a few shuffled batches count tens of MB each, since a fault
maps the whole cached folio around a row (often hundreds of KB), not just the row.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from data_adapters.cohort import Cohort
from data_adapters.core import AdapterError, beyond_float32
from data_adapters.io import release_pages

# Also imported from here by the DataModule (class_labels) and tests (usable_sd, _category_label[s]), as before
# the split: each is defined in the module of its job.
from .column_values import as_float
from .column_values import category_label as _category_label  # noqa: F401
from .column_values import category_labels as _category_labels  # noqa: F401
from .column_values import number_label as _label
from .confounds import check_categorical_confounds, check_confound_range, confound_design, fit_confounds
from .harmonize import CombatApplier, HarmonizedModality, check_columns, check_harmonize, fit_modality_combat
from .scaling import usable_sd  # noqa: F401
from .slot_statistics import blocks, fit_modality, slot_error
from .targets import check_target_kinds, class_labels, decide_targets, fit_targets  # noqa: F401

STATE_FORMAT = "mot-neuro-fold-preprocessor"
STATE_VERSION = 1
IMPUTE = ("mean",)


def _rows(rows, n: int, what: str) -> np.ndarray:
    """Row positions as int64 (a boolean mask of length ``n`` is accepted); out-of-range positions are errors."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise AdapterError(
                f"{what} is a boolean mask of shape {rows.shape}; it must have one entry per subject ({n})"
            )
        return np.flatnonzero(rows)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise AdapterError(f"{what} must be a 1-D array of integer row positions, got {rows.dtype} {rows.shape}")
    rows = rows.astype(np.int64)
    bad = rows[(rows < 0) | (rows >= n)]
    if len(bad):
        raise AdapterError(f"{what} holds row {int(bad[0])}, but the cohort has {n} subjects (rows 0..{n - 1})")
    return rows


class FoldPreprocessor:
    """Fits on a cohort's training rows, then transforms any rows of a modality (see the module docstring).

    ``target_kinds`` declares targets as ``"regression"``, ``"binary"`` or ``"multiclass"``; undeclared ones
    are inferred from the whole cohort's values by :func:`decide_targets` (0/1 or 1/2 -> binary, else
    regression). Multiclass is never inferred: declare it (labels must be integers 0..K-1). ``target_specs``
    (the output of :func:`decide_targets`) skips that decision: a DataModule decides once and gives every fold
    the same specs.

    ``categorical_confounds`` (a subset of ``confounds``) are one-hot coded whatever their dtype: declare
    integer site, centre or batch codes there (see the module docstring).

    ``harmonize`` (``{method: combat, batch, covariates, modalities}``, see :mod:`~mot_neuro.data.harmonize`)
    fits ComBat on the training rows before everything else; its estimates are part of :meth:`state_dict`.
    """

    def __init__(
        self,
        *,
        standardize: bool = True,
        confounds: Sequence[str] = (),
        impute: str = "mean",
        block_rows: int = 4096,
        target_kinds: Mapping[str, str] | None = None,
        target_specs: Mapping[str, Mapping] | None = None,
        categorical_confounds: Sequence[str] = (),
        harmonize: Mapping | None = None,
    ) -> None:
        if impute not in IMPUTE:
            raise AdapterError(f"impute must be one of {IMPUTE}, got {impute!r}")
        if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
            raise AdapterError(f"block_rows must be a positive integer, got {block_rows!r}")
        confounds = [confounds] if isinstance(confounds, str) else [str(c) for c in confounds]
        if len(set(confounds)) != len(confounds):
            raise AdapterError(f"confounds {confounds} list a column twice")
        categorical = check_categorical_confounds(confounds, categorical_confounds)
        declared = check_target_kinds(target_kinds)
        if target_specs is not None:
            check_target_kinds({name: spec.get("kind") for name, spec in target_specs.items()})
        self.harmonize = check_harmonize(harmonize, prefix="")
        self.standardize = bool(standardize)
        self.confounds = confounds
        self.categorical_confounds = categorical
        self.impute = impute
        self.block_rows = int(block_rows)
        self.declared_kinds = declared
        self.target_specs = None if target_specs is None else {k: dict(v) for k, v in target_specs.items()}
        self.target_kinds: dict[str, str] = {}
        self.n_classes: dict[str, int] = {}
        self._confound_specs: list[dict] = []
        self._modalities: dict[str, dict] = {}
        self._array_cache: dict[str, tuple] = {}  # emptied by fit
        # per-cohort columns: (cohort, design of every row, rows with an unseen category per confound, targets)
        self._cohort_columns: tuple | None = None
        self._targets: dict[str, dict] = {}
        self._n_train = 0
        self._cohort: Cohort | None = None
        self._combat: dict[str, dict] = {}  # fitted ComBat state per harmonised modality
        self._appliers: dict[str, tuple] = {}  # modality -> (cohort, CombatApplier), made once per cohort
        # cohort row -> the row whose targets it reads (a null model's shuffle, permuted_target_rows); None: its own
        self.target_rows: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self, cohort: Cohort, train_rows: np.ndarray) -> FoldPreprocessor:
        """Learn every statistic from ``train_rows`` (row positions of ``cohort``) and nothing else."""
        rows = np.unique(_rows(train_rows, cohort.n_subjects, "train_rows"))
        if len(rows) == 0:
            raise AdapterError("train_rows is empty; the preprocessing needs training subjects to fit on")
        participants = cohort.participants
        for column in self.confounds:
            if column not in participants.columns:
                raise AdapterError(
                    f"confound not in participants (columns: {list(participants.columns)[:20]})", column=column
                )
        specs = self.target_specs if self.target_specs is not None else decide_targets(cohort, self.declared_kinds)
        check_confound_range(participants, self.confounds)
        self._fit_harmonize(cohort, rows, specs)
        self._confound_specs = fit_confounds(participants, rows, self.confounds, self.categorical_confounds)
        design = self._design(participants, rows)[0] if self.confounds else None
        self._array_cache = {}
        self._cohort_columns = None
        self._modalities, extremes = {}, {}
        for name, modality in cohort.modalities.items():
            self._modalities[name], extremes[name] = fit_modality(
                self._harmonized(name, modality, cohort),
                rows,
                design,
                block_rows=self.block_rows,
                standardize=self.standardize,
            )
        self._fit_targets(cohort, rows, specs)
        self._n_train = len(rows)
        self._cohort = cohort
        self._array_cache = {}
        for name, too_large in extremes.items():
            if too_large:  # some training value leaves float32's range once transformed: find and name it
                for block in blocks(len(rows), self.block_rows):
                    self.transform(name, rows[block], cohort=cohort)  # raises, naming the subject
                raise AdapterError(
                    f"modality {name!r}: a training value leaves float32's range after preprocessing (fitted"
                    " statistics are extreme); check the modality's values"
                )
        return self

    def _fit_harmonize(self, cohort: Cohort, rows: np.ndarray, specs: Mapping[str, Mapping]) -> None:
        """ComBat per harmonised modality, from the training rows only (see :mod:`~mot_neuro.data.harmonize`)."""
        self._combat, self._appliers = {}, {}
        if self.harmonize is None:
            return
        check_harmonize(self.harmonize, targets=list(specs), modalities=list(cohort.modalities), prefix="")
        check_columns(cohort.participants, self.harmonize)
        for name in self.harmonize["modalities"]:
            self._combat[name] = fit_modality_combat(
                cohort.modalities[name], rows, cohort.participants, self.harmonize, block_rows=self.block_rows
            )

    def _harmonized(self, name: str, modality, cohort: Cohort):
        """The modality as the later steps see it: its values harmonised on read when ComBat was fitted to it."""
        if name not in self._combat:
            return modality
        cached = self._appliers.get(name)
        if cached is None or cached[0] is not cohort:
            cached = (cohort, CombatApplier(self._combat[name], cohort.participants, name))
            self._appliers[name] = cached
        return HarmonizedModality(modality, cached[1])

    def _fit_targets(self, cohort: Cohort, rows: np.ndarray, specs: Mapping[str, Mapping]) -> None:
        """Training statistics of the targets, whose kinds ``specs`` decided for the whole cohort."""
        self._targets = fit_targets(cohort, rows, specs, self.declared_kinds)
        self.target_kinds = {name: spec["kind"] for name, spec in self._targets.items()}
        self.n_classes = {
            name: int(spec["n_classes"]) for name, spec in self._targets.items() if spec["kind"] == "multiclass"
        }

    def _design(self, participants, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The confound design of ``rows`` with the fitted confound statistics (see :func:`confound_design`)."""
        return confound_design(participants, rows, self._confound_specs)

    # ------------------------------------------------------------------------------------------------ transform
    def _bound(self, cohort: Cohort | None) -> Cohort:
        if not self._modalities and not self._targets:
            raise RuntimeError("FoldPreprocessor is not fitted; call fit(cohort, train_rows) first")
        cohort = cohort if cohort is not None else self._cohort
        if cohort is None:
            raise AdapterError("no cohort to transform: pass cohort=..., or from_state_dict(state, cohort)")
        return cohort

    def _fitted_arrays(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The fitted statistics of a modality as arrays, converted once: the state keeps JSON-able lists, and
        converting them on every batch is slow for a modality with many slots (connectivity) and confounds."""
        stats = self._modalities[name]
        key = name
        if key not in self._array_cache:
            beta = None if stats["beta"] is None else np.asarray(stats["beta"])
            self._array_cache[key] = (
                np.asarray(stats["slots"], dtype=np.int64),
                np.asarray(stats["center"]),
                np.asarray(stats["scale"]),
                beta,
            )
        return self._array_cache[key]

    def _columns(self, cohort: Cohort) -> tuple[np.ndarray | None, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The confound design matrix and the float target columns of every row of ``cohort``, made once.

        Made per batch from pandas they would take most of a small batch's loading time; whole, they are small
        (rows x confound columns) and each batch takes its rows with one fancy index."""
        if self._cohort_columns is None or self._cohort_columns[0] is not cohort:
            participants = cohort.participants
            all_rows = np.arange(len(participants))
            design, unseen = None, {}
            if self.confounds and self._confound_specs:
                design, unseen = self._design(participants, all_rows)
            targets = {name: as_float(participants[name]) for name in self._targets if name in participants.columns}
            self._cohort_columns = (cohort, design, unseen, targets)
        return self._cohort_columns[1:]

    def transform(self, modality_name: str, rows, *, cohort: Cohort | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(values, missing)`` for ``rows`` of a modality (of ``cohort``, else of the cohort fitted on).

        ``values`` float32 ``[len(rows), T, F]`` without NaN; ``missing`` bool, True where the raw value was
        NaN or the token absent (only where ``feature_mask`` is True).
        """
        cohort = self._bound(cohort)
        if modality_name not in self._modalities:
            raise AdapterError(f"modality {modality_name!r} was not fitted; fitted: {sorted(self._modalities)}")
        stats = self._modalities[modality_name]
        modality = cohort.modalities.get(modality_name)
        if modality is None or list(modality.token_names) != stats["token_names"]:
            raise AdapterError(f"modality {modality_name!r} of this cohort does not have the tokens it was fitted with")
        if modality.n_features != stats["n_features"]:
            raise AdapterError(
                f"modality {modality_name!r} has {modality.n_features} features per token, fitted with"
                f" {stats['n_features']}"
            )
        rows = _rows(rows, cohort.n_subjects, "rows")
        modality = self._harmonized(modality_name, modality, cohort)
        n_tokens, n_features = modality.n_tokens, modality.n_features
        slots, center, scale, beta = self._fitted_arrays(modality_name)
        design = None
        if beta is not None:
            all_design, unseen_rows, _ = self._columns(cohort)
            design = all_design[rows]
            for name, unseen in unseen_rows.items():
                count = int(unseen[rows].sum())
                if count:
                    warnings.warn(
                        f"confound {name!r}: {count} row(s) hold a category not seen in the training rows;"
                        " they get the training average (an all-zero one-hot row)",
                        stacklevel=2,
                    )
        feature_mask = np.asarray(modality.feature_mask, dtype=bool)
        values = np.zeros((len(rows), n_tokens, n_features), dtype=np.float32)
        missing = np.zeros((len(rows), n_tokens, n_features), dtype=bool)
        fill = 0.0 if self.standardize else center
        for block in blocks(len(rows), self.block_rows):
            raw = np.asarray(modality.values[rows[block]], dtype=np.float32)
            absent = ~np.asarray(modality.present[rows[block]], dtype=bool)
            release_pages(modality.values, modality.present)  # the rows are copied: drop what reading mapped
            miss = (np.isnan(raw) | absent[:, :, None]) & feature_mask
            # categorical tokens pass through; missing and unused slots become 0
            out = np.where(miss | ~feature_mask, np.float32(0), raw)
            if len(slots):
                flat = raw.reshape(len(raw), -1)[:, slots].astype(np.float64)
                observed = ~miss.reshape(len(raw), -1)[:, slots]
                if beta is not None:
                    flat = flat - design[block] @ beta.T
                if self.standardize:
                    flat = (flat - center) / scale
                flat = np.where(observed, flat, fill)
                with np.errstate(over="ignore"):  # an overflow is found, and named, just below
                    flat = flat.astype(np.float32)
                finite = np.isfinite(flat)
                if not finite.all():
                    self._refuse_non_finite(modality, rows[block], slots, finite, raw, beta is not None)
                out.reshape(len(raw), -1)[:, slots] = flat
            values[block] = out
            missing[block] = miss
        return values, missing

    def check_rows(self, rows, modalities: Sequence[str] | None = None, *, cohort: Cohort | None = None) -> None:
        """Transform ``rows`` (of ``modalities``, default all, and the targets) block by block, keeping nothing:
        each block's checks (finite values, known labels) raise, naming the modality, token and subject.

        Run over a fold's held-out rows before training, it stops a run on a value that the training
        statistics would turn infinite before any step is taken, instead of at a batch (in a DataLoader
        worker the error reaches the main process wrapped in a traceback). Costs one read of those rows."""
        cohort = self._bound(cohort)
        rows = _rows(rows, cohort.n_subjects, "rows")
        for name in self._modalities if modalities is None else modalities:
            for block in blocks(len(rows), self.block_rows):
                self.transform(name, rows[block], cohort=cohort)
        self.transform_targets(rows, cohort=cohort)

    def _refuse_non_finite(self, modality, rows, slots, finite, raw, regressed: bool) -> None:
        """Name the first value of a block that preprocessing made non-finite (modality, token, subject, why)."""
        row, column = (int(i[0]) for i in np.nonzero(~finite))
        value = float(raw.reshape(len(raw), -1)[row, slots[column]])
        if not np.isfinite(value):
            problem = "the value is infinite"
        else:
            step = "confound regression and standardization" if regressed else "standardization"
            step = step if self.standardize else "confound regression"
            problem = f"the value {value:.3g} leaves float32's range after {step} with the training statistics"
        raise slot_error(modality, int(slots[column]), str(modality.subject_ids[rows[row]]), problem)

    def transform_targets(self, rows, *, cohort: Cohort | None = None) -> dict[str, np.ndarray]:
        """float32 targets of ``rows``: regression standardized with the training mean/SD; NaN stays NaN."""
        cohort = self._bound(cohort)
        rows = _rows(rows, cohort.n_subjects, "rows")
        out = {}
        for name, spec in self._targets.items():
            if name not in cohort.participants.columns:
                raise AdapterError("target column not in this cohort's participants", column=name)
            source_rows = rows if self.target_rows is None or cohort is not self._cohort else self.target_rows[rows]
            values = self._columns(cohort)[2][name][source_rows]
            observed = values[~np.isnan(values)]
            if spec["kind"] == "regression":
                values = (values - spec["mean"]) / spec["sd"]
                huge = beyond_float32(values)
                if huge.any():
                    raise AdapterError(
                        "target value leaves float32's range once standardized; fix the value",
                        column=name,
                        subject=str(cohort.participants.index[rows[int(np.flatnonzero(huge)[0])]]),
                    )
            elif spec["kind"] == "binary":
                coding = spec.get("coding") or [0.0, 1.0]
                if not np.isin(observed, coding).all():
                    raise AdapterError(
                        f"binary target holds values other than {_label(coding[0])}/{_label(coding[1])} in these rows",
                        column=name,
                    )
                values = self.code_target(name, values)
            elif spec["kind"] == "multiclass":
                valid = (observed == np.round(observed)) & (observed >= 0) & (observed < spec["n_classes"])
                if not valid.all():
                    raise AdapterError(
                        f"multiclass target holds labels outside 0..{spec['n_classes'] - 1} (the classes of the"
                        " training rows) in these rows",
                        column=name,
                    )
            out[name] = values.astype(np.float32)
        return out

    def code_target(self, name: str, values) -> np.ndarray:
        """Raw values of a target as the model sees its classes: a binary target coded 1/2 becomes 0/1 (NaN stays
        NaN); other targets are returned as float64, unscaled. For tools that read targets from participants."""
        if name not in self._targets:
            raise AdapterError(f"not a fitted target (fitted: {sorted(self._targets)})", column=name)
        values = np.asarray(values, dtype=np.float64)
        coding = self._targets[name].get("coding")
        if self._targets[name]["kind"] != "binary" or not coding:
            return values.copy()
        return np.where(values == coding[1], 1.0, np.where(values == coding[0], 0.0, np.nan))

    def inverse_target(self, name: str, values) -> np.ndarray:
        """Undo the standardization of a regression target (e.g. predictions, for MAE in original units)."""
        if name not in self._targets:
            raise AdapterError(f"not a fitted target (fitted: {sorted(self._targets)})", column=name)
        values = np.asarray(values, dtype=np.float64)
        spec = self._targets[name]
        if spec["kind"] != "regression":
            return values.copy()
        return values * spec["sd"] + spec["mean"]

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to transform again, as JSON-able data (for checkpoints)."""
        if not self._modalities and not self._targets:
            raise RuntimeError("FoldPreprocessor is not fitted; call fit(cohort, train_rows) first")
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "settings": {
                "standardize": self.standardize,
                "confounds": list(self.confounds),
                "categorical_confounds": list(self.categorical_confounds),
                "impute": self.impute,
                "block_rows": self.block_rows,
                "target_kinds": dict(self.declared_kinds),
                "harmonize": None if self.harmonize is None else dict(self.harmonize),
            },
            "n_train": self._n_train,
            "confounds": [dict(spec) for spec in self._confound_specs],
            "modalities": {name: dict(stats) for name, stats in self._modalities.items()},
            "targets": {name: dict(spec) for name, spec in self._targets.items()},
            "harmonize": {name: dict(fitted) for name, fitted in self._combat.items()},
            # a null model's shuffle (absent otherwise): the loaders' workers rebuild the preprocessor from this
            **({} if self.target_rows is None else {"target_rows": self.target_rows.tolist()}),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping, cohort: Cohort | None = None) -> FoldPreprocessor:
        """A fitted preprocessor from :meth:`state_dict`; ``cohort`` (optional) is the one to transform."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise AdapterError(f"not a FoldPreprocessor state (no 'format': {STATE_FORMAT!r})")
        if state.get("version") != STATE_VERSION:
            raise AdapterError(
                f"FoldPreprocessor state version {state.get('version')!r}; this code reads version {STATE_VERSION}"
            )
        try:
            settings = state["settings"]
            pre = cls(
                standardize=settings["standardize"],
                confounds=settings["confounds"],
                impute=settings["impute"],
                block_rows=settings["block_rows"],
                target_kinds=settings["target_kinds"],
                categorical_confounds=settings.get("categorical_confounds", ()),  # absent from older states
                harmonize=settings.get("harmonize"),  # absent from older states: none
            )
            pre._n_train = int(state["n_train"])
            pre._confound_specs = [dict(spec) for spec in state["confounds"]]
            pre._modalities = {name: dict(stats) for name, stats in state["modalities"].items()}
            pre._targets = {name: dict(spec) for name, spec in state["targets"].items()}
            pre._combat = {name: dict(fitted) for name, fitted in (state.get("harmonize") or {}).items()}
            if pre.harmonize is not None and sorted(pre._combat) != sorted(pre.harmonize["modalities"]):
                raise KeyError("harmonize")
        except (KeyError, TypeError, AttributeError) as err:
            raise AdapterError(f"FoldPreprocessor state is incomplete ({err!r})") from err
        pre.target_kinds = {name: spec["kind"] for name, spec in pre._targets.items()}
        pre.n_classes = {name: spec["n_classes"] for name, spec in pre._targets.items() if "n_classes" in spec}
        if state.get("target_rows") is not None:
            pre.target_rows = np.asarray(state["target_rows"], dtype=np.int64)
        pre._cohort = cohort
        return pre


def permuted_target_rows(n_rows: int, parts: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """Cohort row -> the row whose targets it reads: within each of ``parts`` (row positions) a random
    permutation drawn with ``seed``, every other row its own. A null model trained on it sees the targets'
    distribution but no subject's own value."""
    mapping = np.arange(n_rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for rows in parts:
        rows = np.asarray(rows, dtype=np.int64)
        mapping[rows] = rows[rng.permutation(len(rows))]
    return mapping
