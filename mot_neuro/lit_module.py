"""LightningModule: per-modality tokenizers -> MoT (or dense) backbone -> supervised heads and/or masked
token reconstruction. Glue only: the network is ``mot_neuro.model.encoder`` (pure torch).

Objectives (``objective``): ``supervised`` (a head per target), ``masked`` (mask a fraction of present
tokens, and with ``modality_mask_prob`` a whole modality of a subject, and reconstruct their values per
modality), or ``both`` (weighted by ``supervised_weight`` and ``masked_weight``). ``modality_dropout``
hides a whole modality of a subject during training (present -> False).

Logged per stage: ``<stage>/loss``, the task loss (supervised + ``masked_weight`` x reconstruction), comparable
between variants with and without mixture-of-experts towers; with MoE, training optimises ``<stage>/objective`` =
``<stage>/loss`` + ``<stage>/moe_balance`` (the load-balancing term), logged beside it. ``<stage>/<target>/<metric>``
(binary: auroc, auprc, brier, ece, balanced_accuracy; multiclass: auroc, auprc, accuracy (plain: the share of
subjects classified right), balanced_accuracy (the mean of the per-class recalls), ece; regression: r2, mae in the
target's units, pearson). Masked modelling: ``<stage>/recon/<modality>``, the epoch's mean over every counted entry
(squared error of a numeric slot, cross-entropy of a categorical token) of the masked tokens of that modality, pooled
over batches (and ranks), and ``<stage>/recon``, the sum of those defined. A metric that is undefined on the
evaluated set (AUROC of a set holding one class, r2 of a constant target, pearson of a constant prediction, anything
on fewer than two observed values, the reconstruction of a modality of which no entry was masked and observed, as
for one hidden by ``mask_at_test``) is logged as NaN with one warning line saying why, never as 0 (see
:func:`metric_rules`). Multiclass AUROC, AUPRC and balanced accuracy average over the classes present in the set
(one-vs-rest for AUROC and AUPRC), and say so when one is absent. Regression metrics are computed in float64 on the
standardised scale (r2 and Pearson r do not change under the same affine map of truth and prediction; mae is scaled
back to the target's units).

With :attr:`NeuroOmicsModule.collect_test_predictions` set (``--predictions_file`` of the CLI), the test stage
keeps each subject's prediction: :meth:`NeuroOmicsModule.test_predictions_table`.

A NaN or infinite training or validation loss (the optimised objective) stops fit at the epoch's end with
:class:`NonFiniteLossError` (a ValueError: one line and exit status 2 through the CLI, the MLflow run FAILED),
before the checkpoint callbacks of that epoch run, so no checkpoint is ever chosen on a NaN ``val/loss``.

GPU readiness: a step (loss, masks, metric bookkeeping) asks the host nothing about the data. Predictions are
kept on the device with their "target observed" flags, and reconstruction errors as running sums and counts; the
metrics see the observed ones once per epoch, so the only host synchronisations left are Lightning's own (turning
logged values into numbers for the progress bar and the logger) and the metrics' epoch-end computation. AdamW is the
fused kernel (one call per parameter group). ``compile`` applies ``torch.compile`` to the encoder (tokenizers +
backbone), in place: parameter names, and so checkpoints, are the same with and without it.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)
from lightning.pytorch.callbacks import Callback
from torch import nn

from mot_neuro.model import count_parameters
from mot_neuro.model.encoder import EncoderConfig, NeuroOmicsEncoder
from mot_neuro.model.tokenizers import ModalityDecoder, ModalitySpec

OBJECTIVES = ("supervised", "masked", "both")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""Values of ``compile`` besides ``True``/``False`` (``True`` = ``"default"``): ``torch.compile`` modes."""
log = logging.getLogger(__name__)

# Option types that LightningCLI (jsonargparse) checks while parsing, so `--model.dim -4` ends with one line naming
# model.dim before anything is built or logged. NeuroOmicsModule.__init__ checks the same ranges for Python callers.
UnitIntervalOpenAbove = restricted_number_type("UnitIntervalOpenAbove", float, [(">=", 0), ("<", 1)], join="and")


def compile_mode(value: bool | str | None) -> str | None:
    """The ``torch.compile`` mode that ``compile=value`` asks for, or ``None`` for eager; clear error otherwise."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"compile={value!r}: use true, false or a torch.compile mode, one of {list(COMPILE_MODES)}")


class ClassRecall(torchmetrics.Metric):
    """Recall of each class (subjects of that true class predicted as it / subjects of that class): a vector.

    Averaged over the classes present in the set it is the balanced accuracy (scikit-learn's
    ``balanced_accuracy_score``); the module takes that mean at the epoch's end, as for multiclass AUROC. Predicted
    class: the largest probability (multiclass ``[N, K]``), or class 1 when P(class 1) > 0.5 (binary ``[N]``, the
    threshold of torchmetrics' binary metrics). Counts are summed over ranks."""

    full_state_update = False

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = int(n_classes)
        self.add_state("correct", torch.zeros(self.n_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(self.n_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        label = preds.argmax(-1) if preds.dim() > 1 else (preds > 0.5).long()
        target = target.long().reshape(-1)
        # a comparison, not bincount: bincount has no deterministic CUDA kernel (trainer.deterministic=true)
        of_class = target[:, None] == torch.arange(self.n_classes, device=target.device)
        self.total += of_class.sum(0)
        self.correct += (of_class & (label.reshape(-1) == target)[:, None]).sum(0)

    def compute(self) -> torch.Tensor:
        return self.correct.double() / self.total.clamp_min(1).double()


def _metrics(kind: str, n_classes: int | None) -> torchmetrics.MetricCollection:
    # compute_groups=False: each metric is updated and computed on its own (an undefined one is skipped)
    if kind == "binary":
        return torchmetrics.MetricCollection(
            {
                "auroc": torchmetrics.classification.BinaryAUROC(),
                "auprc": torchmetrics.classification.BinaryAveragePrecision(),
                "brier": torchmetrics.MeanSquaredError(),  # on probabilities: the Brier score
                "ece": torchmetrics.classification.BinaryCalibrationError(n_bins=10),
                # per class, averaged over the classes present: the mean of sensitivity and specificity at 0.5
                "balanced_accuracy": ClassRecall(2),
            },
            compute_groups=False,
        )
    if kind == "multiclass":
        return torchmetrics.MetricCollection(
            {
                # per class, averaged here over the classes present (torchmetrics scores an absent class 0)
                "auroc": torchmetrics.classification.MulticlassAUROC(num_classes=n_classes, average=None),
                "auprc": torchmetrics.classification.MulticlassAveragePrecision(num_classes=n_classes, average=None),
                # plain accuracy, as `mot-neuro probe` reports (torchmetrics' default is macro = balanced accuracy)
                "accuracy": torchmetrics.classification.MulticlassAccuracy(num_classes=n_classes, average="micro"),
                # per class, averaged over the classes present (torchmetrics' macro average counts a class that is
                # absent but predicted as a recall of 0; scikit-learn leaves it out)
                "balanced_accuracy": ClassRecall(int(n_classes)),
                "ece": torchmetrics.classification.MulticlassCalibrationError(num_classes=n_classes, n_bins=10),
            },
            compute_groups=False,
        )
    return torchmetrics.MetricCollection(
        {
            "r2": torchmetrics.R2Score(),
            "mae": torchmetrics.MeanAbsoluteError(),
            "pearson": torchmetrics.PearsonCorrCoef(),
        },
        compute_groups=False,
    )


METRIC_NAMES = {
    "binary": ("auroc", "auprc", "brier", "ece", "balanced_accuracy"),
    "multiclass": ("auroc", "auprc", "accuracy", "balanced_accuracy", "ece"),
    "regression": ("r2", "mae", "pearson"),
}
SET_NAMES = {"train": "training", "val": "validation", "test": "test"}


def metric_rules(
    kind: str,
    *,
    target: str,
    stage: str,
    n_observed: int,
    class_counts: Sequence[int] | None = None,
    truth_range: tuple[float, float] | None = None,
    prediction_range: tuple[float, float] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Which metrics of ``target`` are undefined on the evaluated set, and which are defined with a caveat.

    ``n_observed``: observed values of the target in the set; ``class_counts``: observed values per class
    (classification); ``truth_range``/``prediction_range``: (min, max) of the truth and of the predictions
    (regression). Returns ``(undefined, notes)``: metric -> why it is NaN, and metric -> a note on what it was
    computed from (multiclass AUROC/AUPRC and balanced accuracy averaged over the classes present when one is
    absent).

    The rules: nothing is computed on fewer than 2 observed values; AUROC and AUPRC need both classes (binary)
    or at least 2 classes present (multiclass); r2 needs a truth that varies; pearson needs a truth and a
    prediction that both vary. Brier, ECE, accuracy, balanced accuracy (the mean recall of the classes present:
    with one class present, that class's recall, i.e. the accuracy) and MAE are defined on any set of 2 or more
    values.
    """
    names = METRIC_NAMES["regression" if kind not in METRIC_NAMES else kind]
    where = f"the {SET_NAMES.get(stage, stage)} set"
    if n_observed < 2:
        what = "no observed value" if n_observed == 0 else "1 observed value"
        return {name: f"{where} holds {what} of {target} (needs >= 2)" for name in names}, {}
    undefined: dict[str, str] = {}
    notes: dict[str, str] = {}
    if kind in ("binary", "multiclass"):
        counts = list(class_counts or [])
        present = [c for c, n in enumerate(counts) if n > 0]
        absent = [c for c, n in enumerate(counts) if n == 0]
        if len(present) < 2:
            reason = f"{where} holds one class ({present[0] if present else '?'}) of {target}"
            undefined.update(auroc=reason, auprc=reason)
        elif kind == "multiclass" and absent:
            note = (
                f"one-vs-rest average over the {len(present)} classes present; class(es) {absent} absent from {where}"
            )
            notes.update(auroc=note, auprc=note)
        if absent and present:
            notes["balanced_accuracy"] = (
                f"mean recall of the {len(present)} class(es) present; class(es) {absent} absent from {where}"
            )
        return undefined, notes
    low, high = truth_range if truth_range is not None else (math.nan, math.nan)
    if low == high:
        reason = f"{target} is constant ({low:.6g}) in {where}"
        undefined.update(r2=reason, pearson=reason)
    elif prediction_range is not None and prediction_range[0] == prediction_range[1]:
        undefined["pearson"] = f"the model predicts one constant value ({prediction_range[0]:.6g}) for {where}"
    return undefined, notes


def _option_int(name: str, value) -> int:
    """``value`` as a plain int, or a ValueError naming ``model.<name>`` (bools and fractions are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"model.{name}={value!r}: expected a whole number")
    return int(value)


def _option_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"model.{name}={value!r}: expected a finite number")
    return float(value)


# option -> (lowest, lowest allowed?, highest, highest allowed?): the same ranges as the signature's types
_OPTION_RANGES = {
    "dim": (1, True, math.inf, False),
    "n_layers": (1, True, math.inf, False),
    "n_heads": (1, True, math.inf, False),
    "n_summary_tokens": (0, True, math.inf, False),
    "warmup_steps": (0, True, math.inf, False),
    "dropout": (0.0, True, 1.0, False),
    "modality_dropout": (0.0, True, 1.0, False),
    "mask_fraction": (0.0, True, 1.0, True),
    "modality_mask_prob": (0.0, True, 1.0, True),
    "min_lr_ratio": (0.0, True, 1.0, True),
    "lr": (0.0, False, math.inf, False),
    "weight_decay": (0.0, True, math.inf, False),
    "supervised_weight": (0.0, True, math.inf, False),
    "masked_weight": (0.0, True, math.inf, False),
}


def _check_option_ranges(options: Mapping) -> None:
    """One ValueError naming the first option out of its range, for callers that bypass the CLI's parser."""
    for name, (low, low_ok, high, high_ok) in _OPTION_RANGES.items():
        value = options[name]
        if value < low or (value == low and not low_ok) or value > high or (value == high and not high_ok):
            interval = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
            raise ValueError(f"model.{name}={value!r} is out of range: use a value in {interval}")
    if options["dim"] % options["n_heads"]:
        raise ValueError(
            f"model.dim={options['dim']} is not divisible by model.n_heads={options['n_heads']}: each attention head"
            " gets dim / n_heads channels"
        )
    if options["pooling"] == "summary" and options["n_summary_tokens"] < 1:
        raise ValueError('model.n_summary_tokens=0 with model.pooling="summary": use >= 1, or pooling "mean"')


def _with_option_prefix(message: str) -> str:
    """Errors of the model's own config checks start with the option's bare name: say it is a ``model.`` option."""
    options = set(inspect.signature(NeuroOmicsModule.__init__).parameters) - {"self"}
    head = message
    for separator in ("[", ":", "=", " "):
        head = head.split(separator)[0]
    return f"model.{message}" if head in options else message


class NonFiniteLossError(ValueError):
    """The training or validation loss became NaN or infinite: fit stops (a ValueError: one line, exit 2)."""


class FiniteLossGuard(Callback):
    """Stops fit at the end of an epoch (and of each validation) whose loss was NaN or infinite.

    Lightning runs the callbacks a module returns from ``configure_callbacks`` before any ModelCheckpoint (it
    moves those last), and a callback's ``on_validation_epoch_end`` before every ``on_validation_end``, where
    ModelCheckpoint saves: so the error comes before a checkpoint of that epoch is written or chosen."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            if not trainer.sanity_checking:
                pl_module.check_finite_loss("train")  # a mid-epoch validation comes after some training steps
            pl_module.check_finite_loss("val")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.check_finite_loss("train")


class NeuroOmicsModule(pl.LightningModule):
    """The model of a mot-neuro experiment. ``data_spec`` comes from the DataModule (linked by the CLI).

    Architecture: ``dim``, ``n_layers``, ``n_heads``, ``untie`` (``[]`` = the dense twin), ``towers``,
    ``norm_placement``, ``qk_norm``, ``dropout``, ``projection`` (``per_token`` or ``shared`` value
    projections), ``n_summary_tokens``, ``pooling`` (``summary`` or ``mean``).
    Optimisation: AdamW (``lr``, ``weight_decay``), linear warm-up over ``warmup_steps`` then cosine
    decay to ``min_lr_ratio * lr`` at the trainer's last step.
    Capacity per tower: ``ffn_hidden_dims`` (tower -> SwiGLU width) and ``moe`` (tower -> ``{n_experts,
    top_k, hidden_dim, balance_weight}``: that tower's FFN becomes a mixture of experts with a learned top-k
    router; its load-balancing loss joins the optimised objective, logged as ``<stage>/objective``, but not
    ``<stage>/loss``, and expert load is logged every step).
    Speed: ``compile`` (``true`` or a ``torch.compile`` mode, see :data:`COMPILE_MODES`) compiles the encoder on
    its first call; the first steps (and each new batch shape, e.g. an epoch's last, smaller batch) are slow.
    Fine-tuning: ``warm_start_from`` a checkpoint (e.g. of the dense twin: every tower starts as its shared
    set, so step 0 reproduces it), ``reinit_towers`` and ``freeze_towers`` (tower names; a tower's backbone
    parameters and its modalities' tokenizers). :attr:`mask_at_test`: modalities hidden at test time, a
    cheap complement to leave-one-modality-out retraining.
    """

    def __init__(
        self,
        data_spec: Mapping | None = None,
        dim: PositiveInt = 64,
        n_layers: PositiveInt = 2,
        n_heads: PositiveInt = 4,
        untie: Sequence[Literal["attention", "ffn", "norm"]] = ("attention", "ffn", "norm"),
        towers: Mapping[str, str] | None = None,
        norm_placement: Literal["pre", "output"] = "pre",
        qk_norm: bool = False,
        dropout: UnitIntervalOpenAbove = 0.1,
        projection: Literal["per_token", "shared"] = "per_token",
        n_summary_tokens: NonNegativeInt = 1,
        pooling: Literal["summary", "mean"] = "summary",
        objective: Literal["supervised", "masked", "both"] = "supervised",
        supervised_weight: NonNegativeFloat = 1.0,
        masked_weight: NonNegativeFloat = 1.0,
        mask_fraction: ClosedUnitInterval = 0.15,
        modality_mask_prob: ClosedUnitInterval = 0.1,
        modality_dropout: UnitIntervalOpenAbove = 0.0,
        lr: PositiveFloat = 1e-3,
        weight_decay: NonNegativeFloat = 0.01,
        warmup_steps: NonNegativeInt = 50,
        min_lr_ratio: ClosedUnitInterval = 0.1,
        ffn_hidden_dims: Mapping[str, PositiveInt] | None = None,
        moe: Mapping[str, Mapping] | None = None,
        warm_start_from: str | None = None,
        freeze_towers: Sequence[str] = (),
        reinit_towers: Sequence[str] = (),
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        if data_spec is None:
            raise ValueError(
                "data_spec is missing: it comes from the DataModule's model_inputs (the CLI links it); in Python"
                " pass NeuroOmicsModule(data_spec=datamodule.model_inputs, ...)"
            )
        if objective not in OBJECTIVES:
            raise ValueError(f"model.objective={objective!r}: choose one of {OBJECTIVES}")
        mode = compile_mode(compile)
        # Plain Python numbers from here on: jsonargparse hands over its restricted subclasses (PositiveInt, ...),
        # which would go into the checkpoint's hyperparameters and fail its weights_only loading.
        dim, n_layers, n_heads, n_summary_tokens, warmup_steps = (
            _option_int(name, value)
            for name, value in (
                ("dim", dim),
                ("n_layers", n_layers),
                ("n_heads", n_heads),
                ("n_summary_tokens", n_summary_tokens),
                ("warmup_steps", warmup_steps),
            )
        )
        dropout, supervised_weight, masked_weight, mask_fraction, modality_mask_prob, modality_dropout = (
            _option_float(name, value)
            for name, value in (
                ("dropout", dropout),
                ("supervised_weight", supervised_weight),
                ("masked_weight", masked_weight),
                ("mask_fraction", mask_fraction),
                ("modality_mask_prob", modality_mask_prob),
                ("modality_dropout", modality_dropout),
            )
        )
        lr, weight_decay, min_lr_ratio = (
            _option_float(name, value)
            for name, value in (("lr", lr), ("weight_decay", weight_decay), ("min_lr_ratio", min_lr_ratio))
        )
        if ffn_hidden_dims:
            ffn_hidden_dims = {str(k): _option_int(f"ffn_hidden_dims.{k}", v) for k, v in ffn_hidden_dims.items()}
        _check_option_ranges(locals())
        self.save_hyperparameters()
        specs = [
            ModalitySpec(
                name=m["name"],
                n_tokens=int(m["n_tokens"]),
                n_features=int(m["n_features"]),
                feature_mask=tuple(tuple(bool(v) for v in row) for row in m["feature_mask"]) or None,
                categorical={int(k): int(v) for k, v in dict(m.get("categorical") or {}).items()},
            )
            for m in data_spec["modalities"]
        ]
        self.specs = {s.name: s for s in specs}
        self.active = [s.name for s in specs if s.n_tokens > 0]
        try:
            self.encoder_config = EncoderConfig(
                modalities=specs,
                dim=dim,
                n_layers=n_layers,
                n_heads=n_heads,
                untie=tuple(untie),
                towers=dict(towers) if towers else None,
                norm_placement=norm_placement,
                qk_norm=qk_norm,
                dropout=dropout,
                projection=projection,
                n_summary_tokens=n_summary_tokens,
                pooling=pooling,
                ffn_hidden_dims=dict(ffn_hidden_dims) if ffn_hidden_dims else None,
                moe={tower: dict(spec) for tower, spec in moe.items()} if moe else None,
            )
        except ValueError as err:  # the encoder's own checks name the bare option: say it is a model option
            raise ValueError(_with_option_prefix(str(err))) from err
        self.encoder = NeuroOmicsEncoder(self.encoder_config)
        self.targets = dict(data_spec.get("targets") or {})
        supervised = objective in ("supervised", "both")
        if supervised and not self.targets:
            raise ValueError("objective needs targets, but the data config lists none; use objective: masked")
        self.heads = nn.ModuleDict()
        if supervised:
            for name, target in self.targets.items():
                width = int(target["n_classes"]) if target["kind"] == "multiclass" else 1
                self.heads[name] = nn.Linear(dim, width)
        self.decoders = nn.ModuleDict()
        if objective in ("masked", "both"):
            for name in self.active:
                self.decoders[name] = ModalityDecoder(self.specs[name], dim, projection=projection)
        self.metrics = nn.ModuleDict()
        if supervised:
            for stage in ("train", "val", "test"):
                for name, target in self.targets.items():
                    self.metrics[f"{stage}__{name}"] = _metrics(target["kind"], target.get("n_classes"))
        self._mask_at_test: tuple[str, ...] = ()
        # per stage and target: (prediction, truth, observed) of each step, on the device, until the epoch ends
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        # per stage: "every loss of this epoch was finite", a device tensor (no host sync per step)
        self._loss_finite: dict[str, torch.Tensor] = {}
        # per stage: [modality, (summed reconstruction error, entries counted)] of the epoch so far, on the device
        self._recon: dict[str, torch.Tensor] = {}
        # the cohort rows of each test step (for test_predictions_table), when collect_test_predictions is set
        self._rows: dict[str, list[torch.Tensor]] = {}
        self.collect_test_predictions = False
        self._test_predictions: list[dict] | None = None
        # "<stage>/<target>/<metric>" -> why it is NaN ("undefined: ...") or how it was computed: for RunSummary
        self.metric_notes: dict[str, str] = {}
        self._warned: set[tuple[str, str]] = set()
        if warm_start_from:
            self._warm_start(warm_start_from)
        for tower in reinit_towers:
            self._reinit_tower(tower)
        for tower in freeze_towers:
            for parameter in self._tower_parameters(tower):
                parameter.requires_grad_(False)
        if mode is not None:
            self._compile_encoder(mode)

    def _compile_encoder(self, mode: str) -> None:
        """``torch.compile`` the encoder in place (``nn.Module.compile``): no wrapper module, so no ``_orig_mod.`` in
        parameter names, and a checkpoint saved with compile loads without it and vice versa. Compilation happens on
        the first call. Random ops (dropout) run as in eager mode (inductor's ``fallback_random``): the same seed
        draws the same masks compiled or not, and inductor's own CPU random numbers made attention dropout the
        slowest kernel of the demo model."""
        from torch._inductor import list_mode_options

        self.encoder.compile(options={**list_mode_options(mode), "fallback_random": True})

    def __setstate__(self, state: dict) -> None:
        # torch drops the compiled call when pickling (deepcopy, spawned processes): a copy is compiled as well
        super().__setstate__(state)
        mode = compile_mode(self.hparams.get("compile"))
        if mode is not None:
            self._compile_encoder(mode)

    @property
    def mask_at_test(self) -> tuple[str, ...]:
        """Modalities hidden at test time (``mot-neuro test --mask_at_test``): not a hyperparameter of the model,
        so a checkpoint's saved settings cannot override it."""
        return self._mask_at_test

    @mask_at_test.setter
    def mask_at_test(self, modalities: Sequence[str]) -> None:
        unknown = sorted(set(modalities) - set(self.active))
        if unknown:
            raise ValueError(f"mask_at_test names modality(ies) {unknown}; the model's modalities are {self.active}")
        self._mask_at_test = tuple(modalities)

    # ------------------------------------------------------------------ fine-tuning controls
    def _towers(self) -> dict[str, list[str]]:
        """Tower name -> the modalities it serves (``summary`` included)."""
        towers: dict[str, list[str]] = {}
        for modality, tower in self.encoder.backbone.cfg.towers.items():
            towers.setdefault(tower, []).append(modality)
        return towers

    def _tower_parameters(self, tower: str) -> list[nn.Parameter]:
        """The backbone's parameters of ``tower`` and the tokenizers of its modalities."""
        towers = self._towers()
        if tower not in towers:
            raise ValueError(f"unknown tower {tower!r}; this model's towers are {sorted(towers)}")
        if not self.encoder.backbone.cfg.untie:
            raise ValueError("the dense model has one shared set: there is no tower to freeze or re-initialise")
        found = []
        for name, parameter in self.encoder.backbone.named_parameters():
            parts = name.split(".")
            # blocks.<i>.<part>.<tower>.* and final_norm.<tower>.*: the tower is a fixed position in the name
            position = 3 if parts[0] == "blocks" else 1
            if len(parts) > position and parts[position] == tower:
                found.append(parameter)
        for modality in towers[tower]:
            if modality in self.encoder.tokenizers:
                found += list(self.encoder.tokenizers[modality].parameters())
        return found

    def _reinit_tower(self, tower: str) -> None:
        """Fresh weights for one tower, drawn by the backbone's own initialisation (depth-scaled)."""
        from mot_neuro.model import MoTBackbone

        fresh = MoTBackbone(self.encoder.backbone.cfg)
        targets = {id(p) for p in self._tower_parameters(tower)}
        with torch.no_grad():
            for parameter, new in zip(self.encoder.backbone.parameters(), fresh.parameters(), strict=True):
                if id(parameter) in targets:
                    parameter.copy_(new)
        for modality in self._towers()[tower]:
            if modality in self.encoder.tokenizers:
                self.encoder.tokenizers[modality].reset_parameters()

    def _warm_start(self, path: str) -> None:
        """Start from a trained model (typically the dense twin): every tower gets a copy of its parameter set,
        so at step 0 this model computes what the source computes. Tokenizers, heads and decoders are copied."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        source_hparams = dict(checkpoint.get("hyper_parameters") or {})
        if "data_spec" not in source_hparams:
            raise ValueError(f"{path}: not a mot-neuro checkpoint (no data_spec in its hyper_parameters)")
        self.on_load_checkpoint({"hyper_parameters": source_hparams})  # same token layout, or a clear error
        accepted = set(inspect.signature(NeuroOmicsModule.__init__).parameters) - {"self"}
        kwargs = {k: v for k, v in source_hparams.items() if k in accepted}  # drops LightningCLI's own entries
        kwargs.update(warm_start_from=None, freeze_towers=(), reinit_towers=(), compile=False)
        source = NeuroOmicsModule(**kwargs)
        source.load_state_dict(checkpoint["state_dict"])
        self.encoder.backbone.load_towers_from(source.encoder.backbone)
        own = self.state_dict()
        copied = {
            key: value
            for key, value in source.state_dict().items()
            if not key.startswith("encoder.backbone.") and key in own and own[key].shape == value.shape
        }
        self.load_state_dict(copied, strict=False)

    # ------------------------------------------------------------------ accounting
    def describe(self) -> dict:
        """Parameter counts of the whole model and of the backbone (what MLflow gets as params)."""
        backbone = count_parameters(self.encoder.backbone)
        return {
            "params_total": sum(p.numel() for p in self.parameters()),
            "params_backbone": backbone["total"],
            "params_backbone_per_token": backbone["per_modality"],  # activated: router + top-k experts for MoE
            "variant": "dense" if not self.hparams.untie else "mot",
        }

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Mapping, masked: Mapping | None = None):
        return self.encoder(batch, masked=masked)

    def _inputs(self, batch: Mapping, train: bool, stage: str = "") -> Mapping:
        if stage == "test" and self.mask_at_test:
            # eval-time masking: the modality's tokens are absent, as for a subject without that modality
            present = dict(batch["present"])
            for name in self.mask_at_test:
                present[name] = torch.zeros_like(present[name])
            return {**batch, "present": present}
        if not (train and self.hparams.modality_dropout > 0):
            return batch
        present = {}
        for name, mask in batch["present"].items():
            keep = torch.rand(mask.shape[0], 1, device=mask.device) >= self.hparams.modality_dropout
            present[name] = mask & keep
        return {**batch, "present": present}

    def _mask(self, batch: Mapping) -> dict[str, torch.Tensor]:
        masked = {}
        for name in self.active:
            present = batch["present"][name]
            tokens = torch.rand(present.shape, device=present.device) < self.hparams.mask_fraction
            whole = torch.rand(present.shape[0], 1, device=present.device) < self.hparams.modality_mask_prob
            masked[name] = (tokens | whole) & present
        return masked

    def _step(self, batch: Mapping, stage: str) -> torch.Tensor:
        """The step's task loss (logged as ``<stage>/loss``) plus, with MoE towers, their load-balancing term: the
        objective that training optimises (logged as ``<stage>/objective``); returns the objective."""
        train = stage == "train"
        inputs = self._inputs(batch, train, stage)
        objective = self.hparams.objective
        masked = self._mask(inputs) if objective in ("masked", "both") else None
        out = self.encoder(inputs, masked=masked)
        batch_size = next(iter(batch["row"].shape))
        loss = torch.zeros((), device=out.pooled.device)
        if masked is not None:
            recon = torch.zeros((), device=out.pooled.device)
            sums = []
            for name in self.active:
                total, count = self.decoders[name].loss_sum(
                    out.tokens[name], inputs["values"][name], inputs["missing"][name], masked[name]
                )
                # the batch's mean per entry (0 when nothing is counted) for the optimiser, as before; the epoch's
                # logged value pools the sums and counts (see _log_recon)
                recon = recon + total / count.clamp_min(1)
                sums.append(torch.stack([total.detach().to(self._sum_dtype), count.to(self._sum_dtype)]))
            step_sums = torch.stack(sums)
            seen = self._recon.get(stage)
            self._recon[stage] = step_sums if seen is None else seen + step_sums
            loss = loss + self.hparams.masked_weight * recon
        if objective in ("supervised", "both"):
            supervised = torch.zeros((), device=out.pooled.device)
            for name, head in self.heads.items():
                supervised = supervised + self._supervised(name, head(out.pooled), batch["targets"][name], stage)
            loss = loss + self.hparams.supervised_weight * supervised
            if stage == "test" and self.collect_test_predictions:
                self._rows.setdefault(stage, []).append(batch["row"])
        optimised = loss
        if self.encoder.backbone.cfg.moe:
            # load balancing of the MoE towers: optimised, but not part of <stage>/loss, which stays comparable with
            # a model without MoE (checkpoint selection and ablations compare val/loss); expert load per step
            balance = self.encoder.backbone.aux_loss()
            optimised = loss + balance
            self.log(
                f"{stage}/moe_balance",
                balance,
                batch_size=batch_size,
                on_step=train,
                on_epoch=True,
                sync_dist=not train,
            )
            self.log(
                f"{stage}/objective",
                optimised,
                batch_size=batch_size,
                on_step=train,
                on_epoch=True,
                sync_dist=not train,
            )
            if train:
                for key, load in self.encoder.backbone.expert_load().items():
                    for expert, share in enumerate(load):
                        self.log(f"train/expert_load/{key}/e{expert}", share, batch_size=batch_size, on_step=True)
        if stage in ("train", "val"):  # what is optimised: a NaN balancing term stops training too
            finite = torch.isfinite(optimised.detach())
            seen = self._loss_finite.get(stage)
            self._loss_finite[stage] = finite if seen is None else seen & finite
        # evaluation losses averaged over ranks (one all-reduce per epoch); training steps stay sync-free
        self.log(
            f"{stage}/loss",
            loss,
            batch_size=batch_size,
            prog_bar=True,
            on_step=train,
            on_epoch=True,
            sync_dist=not train,
        )
        return optimised

    @property
    def _sum_dtype(self) -> torch.dtype:
        """Epoch sums in float64 (MPS has none: float32 there)."""
        return torch.float32 if self.device.type == "mps" else torch.float64

    def _log_recon(self, stage: str) -> None:
        """Log the epoch's ``<stage>/recon/<modality>``: summed error / entries counted, over every batch and rank;
        NaN with a note when no entry of that modality was counted (none masked and observed: e.g. hidden by
        mask_at_test, or absent from every subject). ``<stage>/recon``: the sum of the defined ones."""
        if not self.decoders:
            return
        sums = self._recon.pop(stage, None)
        ran = torch.ones(1, dtype=self._sum_dtype, device=self.device)
        if sums is None:
            sums, ran = torch.zeros(len(self.active), 2, dtype=self._sum_dtype, device=self.device), ran * 0
        if self._run_state("world_size", 1) > 1:  # every rank calls this at the epoch's end: one all-reduce
            packed = self.trainer.strategy.reduce(torch.cat([sums.flatten(), ran]), reduce_op="sum")
            sums, ran = packed[:-1].reshape(-1, 2), packed[-1:]
        values = sums.tolist()
        if float(ran) == 0:  # this stage evaluated no batch: nothing to report
            return
        where = f"the {SET_NAMES.get(stage, stage)} set"
        defined = []
        for name, (total, count) in zip(self.active, values, strict=True):
            key = f"{stage}/recon/{name}"
            if count > 0:
                value = total / count
                defined.append(value)
            else:
                value = math.nan
                hidden = " (hidden by mask_at_test)" if stage == "test" and name in self.mask_at_test else ""
                reason = f"no entry of {name} was masked and observed in {where}{hidden}"
                self._note(key, f"undefined: {reason}", warn=f"{key} is undefined")
            self.log(key, torch.tensor(value, dtype=torch.float32, device=self.device), sync_dist=False)
        total = sum(defined) if defined else math.nan
        if not defined:
            reason = f"undefined: no entry of any modality was masked and observed in {where}"
            self._note(f"{stage}/recon", reason, warn=f"{stage}/recon is undefined")
        self.log(f"{stage}/recon", torch.tensor(total, dtype=torch.float32, device=self.device), sync_dist=False)

    def _supervised(self, name: str, logits: torch.Tensor, target: torch.Tensor, stage: str) -> torch.Tensor:
        kind = self.targets[name]["kind"]
        observed = ~torch.isnan(target)
        weight = observed.float()
        count = weight.sum().clamp(min=1.0)
        safe = torch.where(observed, target, torch.zeros_like(target))
        if kind == "binary":
            logit = logits.squeeze(-1)
            loss = (F.binary_cross_entropy_with_logits(logit, safe, reduction="none") * weight).sum() / count
            prediction, truth = torch.sigmoid(logit), safe.long()
        elif kind == "multiclass":
            loss = (F.cross_entropy(logits, safe.long(), reduction="none") * weight).sum() / count
            prediction, truth = logits.softmax(-1), safe.long()
        else:
            value = logits.squeeze(-1)
            loss = (((value - safe) ** 2) * weight).sum() / count
            # Metrics on the standardised scale: r2 and Pearson r do not change under the same affine map of
            # truth and prediction, and mae is scaled back to the target's units when logged. In raw units a
            # target far from 0 (+3e4) lost r2 to float32 cancellation, and one in small units (x1e-4) read r2 = 1
            # (torchmetrics' absolute tolerance on the residual sum of squares).
            prediction, truth = value, safe
        # No subset here (that would ask the host how many targets are observed): the epoch's end does it once.
        self._outputs.setdefault(f"{stage}__{name}", []).append((prediction.detach(), truth, observed))
        return loss

    def _unscale(self, name: str, value: torch.Tensor) -> torch.Tensor:
        scale = self.targets[name].get("scale") or {}
        return value * float(scale.get("sd", 1.0)) + float(scale.get("mean", 0.0))

    def _epoch_predictions(self, stage: str, name: str) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """The epoch's observed (prediction, truth) of ``name`` on this rank, how many rows it saw, and the
        positions of the observed ones among the epoch's rows."""
        outputs = self._outputs.pop(f"{stage}__{name}", [])
        if not outputs:
            empty = torch.empty(0, dtype=torch.long, device=self.device)
            return torch.empty(0, device=self.device), empty, 0, empty
        prediction, truth, observed = (torch.cat(parts) for parts in zip(*outputs, strict=True))
        keep = observed.nonzero().squeeze(-1)  # one host sync per target and epoch
        return prediction[keep], truth[keep], int(observed.numel()), keep

    def _set_statistics(self, name: str, prediction: torch.Tensor, truth: torch.Tensor, rows: int) -> dict:
        """What decides whether a metric is defined, over every rank: row and observed counts, class counts
        (classification) or the ranges of truth and prediction (regression)."""
        kind = self.targets[name]["kind"]
        device = self.device
        head = torch.tensor([float(rows), float(truth.numel())], device=device)
        if kind in ("binary", "multiclass"):
            n_classes = 2 if kind == "binary" else int(self.targets[name]["n_classes"])
            # a comparison, not bincount: bincount has no deterministic CUDA kernel (trainer.deterministic=true)
            classes = torch.arange(n_classes, device=device)
            tail = (truth.long().reshape(-1, 1) == classes).sum(0).float()
            stats = torch.cat([head, tail])
        else:
            values = [truth.float().reshape(-1), prediction.float().reshape(-1)]
            ranges = []
            for v in values:
                ranges += [v.min(), v.max()] if v.numel() else [torch.tensor(math.inf), torch.tensor(-math.inf)]
            stats = torch.cat([head, torch.stack([r.to(device) for r in ranges])])
        if self._run_state("world_size", 1) > 1:
            gathered = self.all_gather(stats)  # [world, k]
            totals = gathered.sum(0)
            if kind not in ("binary", "multiclass"):
                totals[2], totals[4] = gathered[:, 2].min(), gathered[:, 4].min()
                totals[3], totals[5] = gathered[:, 3].max(), gathered[:, 5].max()
            stats = totals
        values = stats.tolist()
        out = {"rows": int(values[0]), "n_observed": int(values[1])}
        if kind in ("binary", "multiclass"):
            out["class_counts"] = [int(v) for v in values[2:]]
        else:
            out["truth_range"], out["prediction_range"] = (values[2], values[3]), (values[4], values[5])
        return out

    def _run_state(self, name: str, alone):
        """``trainer.<name>``, or ``alone`` when the module runs without a trainer (hooks called by hand)."""
        return alone if self._trainer is None else getattr(self._trainer, name)

    def _clear_outputs(self, stage: str) -> None:
        """Drop what an interrupted epoch of ``stage`` left behind."""
        for key in [key for key in self._outputs if key.startswith(f"{stage}__")]:
            del self._outputs[key]
        self._recon.pop(stage, None)
        self._rows.pop(stage, None)

    def _log_metrics(self, stage: str) -> None:
        """Compute and log the epoch's metrics of every target; undefined ones as NaN with a one-line warning."""
        for key in [key for key in self.metric_notes if key.startswith(f"{stage}/")]:
            del self.metric_notes[key]
        self._log_recon(stage)
        cohort_rows = self._rows.pop(stage, None)
        cohort_rows = torch.cat(cohort_rows) if cohort_rows else None
        collected: list[dict] = []
        for name in self.heads:
            kind = self.targets[name]["kind"]
            prediction, truth, rows, keep = self._epoch_predictions(stage, name)
            if cohort_rows is not None and len(cohort_rows) == rows:
                collected.append(self._prediction_record(name, cohort_rows[keep], prediction, truth))
            stats = self._set_statistics(name, prediction, truth, rows)
            metrics = self.metrics[f"{stage}__{name}"]
            if stats["rows"] == 0:  # this stage evaluated no batch: nothing to report
                metrics.reset()
                continue
            ranges = {key: stats.get(key) for key in ("truth_range", "prediction_range")}
            if kind == "regression":  # predictions are on the standardised scale: the notes speak the target's units
                scale = self.targets[name].get("scale") or {}
                sd, mean = float(scale.get("sd", 1.0)), float(scale.get("mean", 0.0))
                ranges = {key: tuple(v * sd + mean for v in pair) for key, pair in ranges.items()}
            undefined, notes = metric_rules(
                kind,
                target=name,
                stage=stage,
                n_observed=stats["n_observed"],
                class_counts=stats.get("class_counts"),
                **ranges,
            )
            if truth.numel():
                if kind == "regression" and self.device.type != "mps":
                    # float64 sums: float32 ones lose digits over a large set (MPS has no float64)
                    metrics.set_dtype(torch.float64)
                    prediction, truth = prediction.double(), truth.double()
                for metric_name, metric in metrics.items():
                    metric.update(prediction, truth.float() if metric_name == "brier" else truth)
            present = None
            if stats.get("class_counts") is not None:
                present = torch.tensor([n > 0 for n in stats["class_counts"]], device=self.device)
            for metric_name, metric in metrics.items():
                key = f"{stage}/{name}/{metric_name}"
                if metric_name in undefined:
                    value = torch.tensor(math.nan, device=self.device)
                    self._note(key, f"undefined: {undefined[metric_name]}", warn=f"{key} is undefined")
                else:
                    with warnings.catch_warnings():
                        # torchmetrics warns for a class absent from the set; averaged over present ones below
                        warnings.simplefilter("ignore", UserWarning)
                        value = metric.compute()
                    if value.numel() > 1:  # per-class multiclass AUROC/AUPRC
                        value = value[present].mean()
                    if metric_name == "mae":  # computed on the standardised scale: back to the target's units
                        value = value * float((self.targets[name].get("scale") or {}).get("sd", 1.0))
                    if metric_name in notes:
                        self._note(key, notes[metric_name], warn=key)
                self.log(key, value.float(), sync_dist=False)
            metrics.reset()
        if stage == "test" and self.collect_test_predictions and self.heads:
            self._test_predictions = self._gather_records(collected)

    def _prediction_record(self, name: str, rows: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> dict:
        """One target's observed test predictions on this rank, on the host: cohort rows, truth and scores in the
        coding the metrics use (regression: truth and prediction back in the target's units)."""
        kind = self.targets[name]["kind"]
        truth = truth.detach().double().cpu().numpy()
        prediction = prediction.detach().double().cpu().numpy()
        if kind == "regression":
            scale = self.targets[name].get("scale") or {}
            sd, mean = float(scale.get("sd", 1.0)), float(scale.get("mean", 0.0))
            truth, prediction = truth * sd + mean, prediction * sd + mean
        return {"target": name, "kind": kind, "row": rows.detach().cpu().numpy(), "truth": truth, "score": prediction}

    def _gather_records(self, records: list[dict]) -> list[dict]:
        """Every rank's records (all ranks call this at the test epoch's end); each rank gets them all."""
        if self._run_state("world_size", 1) <= 1:
            return records
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return records
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, records)
        return [record for part in gathered for record in part]

    def test_predictions_table(self):
        """The last test stage's predictions (with :attr:`collect_test_predictions` set) as a pandas DataFrame,
        one row per (subject, target) with an observed target: ``row`` (the subject's position in the cohort, never
        its ID), ``target``, ``kind``, ``truth`` (binary 0/1 and multiclass class index, as the metrics code them;
        regression in the target's units), ``score`` (binary: P(class 1); regression: the prediction in the
        target's units; multiclass: NaN) and, when a target is multiclass, ``score_0`` .. ``score_{K-1}`` (its class
        probabilities; NaN for other targets). ``None`` when no test stage ran with collection on."""
        import numpy as np
        import pandas as pd

        if self._test_predictions is None:
            return None
        widths = [
            int(t["n_classes"]) for name, t in self.targets.items() if name in self.heads and t["kind"] == "multiclass"
        ]
        n_classes = max(widths, default=0)
        frames = []
        for record in self._test_predictions:
            n = len(record["row"])
            if n == 0:
                continue
            score = record["score"].reshape(n, -1)
            frame = {
                "row": record["row"].astype(np.int64),
                "target": np.full(n, record["target"], dtype=object),
                "kind": np.full(n, record["kind"], dtype=object),
                "truth": record["truth"].astype(np.float64),
                "score": score[:, 0] if record["kind"] != "multiclass" else np.full(n, np.nan),
            }
            for k in range(n_classes):
                multiclass = record["kind"] == "multiclass" and k < score.shape[1]
                frame[f"score_{k}"] = score[:, k] if multiclass else np.full(n, np.nan)
            frames.append(pd.DataFrame(frame))
        columns = ["row", "target", "kind", "truth", "score", *(f"score_{k}" for k in range(n_classes))]
        if not frames:
            dtypes = {"row": "int64", "target": object, "kind": object}
            return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})
        table = pd.concat(frames, ignore_index=True)[columns]
        # a distributed sampler may give a rank a repeated batch to even out the ranks: one row per subject
        table = table.drop_duplicates(["target", "row"], keep="first")
        return table.sort_values(["target", "row"], kind="stable").reset_index(drop=True)

    def _note(self, key: str, text: str, warn: str) -> None:
        """Record a metric's note for the summary and warn once per run (not once per epoch)."""
        if self._run_state("sanity_checking", False):  # a couple of batches: real epochs will say it if it holds
            return
        self.metric_notes[key] = text
        if (key, text) not in self._warned and self._run_state("global_rank", 0) == 0:
            self._warned.add((key, text))
            detail = text.removeprefix("undefined: ")
            log.warning("%s: %s; logged as NaN" if warn.endswith("undefined") else "%s: %s", warn, detail)

    def check_finite_loss(self, stage: str) -> None:
        """Raise :class:`NonFiniteLossError` when a loss of ``stage`` was NaN or infinite in this epoch (one host
        sync, and one all-reduce so that every rank stops together)."""
        seen = self._loss_finite.get(stage)
        bad = torch.zeros((), device=self.device) if seen is None else (~seen).float()
        if self._run_state("world_size", 1) > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        if float(bad) == 0:
            return
        trainer = self.trainer
        when = "in the sanity check before training" if trainer.sanity_checking else f"in epoch {trainer.current_epoch}"
        raise NonFiniteLossError(
            f"{stage}/loss became NaN or infinite {when} (global step {trainer.global_step}); training stopped"
            f" and no checkpoint was saved from it. Check the learning rate (model.lr={self.hparams.lr:g}: try"
            f" 10x lower, or a longer model.warmup_steps) and the input scale (extreme values in a modality or"
            " a target)"
        )

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        self._clear_outputs("train")
        self._loss_finite.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self._clear_outputs("val")
        self._loss_finite.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._clear_outputs("test")
        self._test_predictions = None

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch, batch_idx):
        # embed_layer (set by mot_neuro.embed.EmbeddingWriter; None = final output) picks the encoder layer
        layer = getattr(self, "embed_layer", None)
        # An inner layer's output needs a hook that stops the backbone early, which a compiled graph cannot do:
        # calling forward directly runs it eagerly (a compiled encoder is compiled through its __call__ only).
        out = self.encoder(batch) if layer is None else self.encoder.forward(batch, layer=layer)
        result = {"row": batch["row"], "pooled": out.pooled, "per_modality": out.per_modality}
        if "split" in batch:
            result["split"] = batch["split"]
        if layer is None:  # the heads were trained on the final output only
            for name, head in self.heads.items():
                result[name] = head(out.pooled)
        return result

    # ------------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint trained on another token layout, saying what differs."""
        saved = (checkpoint.get("hyper_parameters") or {}).get("data_spec") or {}

        def shape(spec) -> dict:
            return {m["name"]: (int(m["n_tokens"]), int(m["n_features"])) for m in spec.get("modalities", [])}

        before, now = shape(saved), shape(self.hparams.data_spec)
        if before and before != now:
            differs = sorted(
                f"{name}: (tokens, features) {before.get(name)} in the checkpoint, {now.get(name)} now"
                for name in set(before) | set(now)
                if before.get(name) != now.get(name)
            )
            raise ValueError(
                f"checkpoint was trained on another token layout: {'; '.join(differs)}. Use the data config"
                " (and drop_modalities) it was trained with, or train a new model"
            )

    # ------------------------------------------------------------------ optimisation
    def configure_callbacks(self):
        # per-batch seeds: a resumed run draws the same dropout and masks as an uninterrupted one
        from mot_neuro.resume import StepSeed

        return [StepSeed(), FiniteLossGuard()]

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:  # frozen towers stay exactly as they are
                continue
            # norms, biases and embeddings are not weight-decayed
            (no_decay if parameter.ndim < 2 or "embedding" in name else decay).append(parameter)
        # The fused kernel updates a group's parameters in one call. On CPU the default loops over tensors, which MoT
        # (68 tensors at demo size, dense 29) paid ~1.9 ms a step against ~0.4 ms fused (dense: 0.8 and 0.2 ms).
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            fused=fused or None,
        )
        estimated = self.trainer.estimated_stepping_batches
        if not math.isfinite(estimated):
            raise ValueError(
                "the learning-rate schedule (warm-up, then cosine decay to the run's last step) needs a run of known"
                " length: set trainer.max_epochs or trainer.max_steps"
            )
        total = max(int(estimated), 1)
        smoke_run = getattr(self.trainer, "fast_dev_run", False)  # a smoke run's one step says nothing of the schedule
        if self.hparams.warmup_steps >= total and not smoke_run and getattr(self.trainer, "global_rank", 0) == 0:
            log.warning(
                "model.warmup_steps=%d is not below the run's %d training steps: the learning rate never reaches"
                " model.lr; lower model.warmup_steps or train longer",
                self.hparams.warmup_steps,
                total,
            )
        warmup = min(self.hparams.warmup_steps, max(total - 1, 0))
        floor = self.hparams.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(warmup, 1)
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
