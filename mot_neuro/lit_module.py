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
logged values into numbers for the progress bar and the logger) and the metrics' epoch-end computation
(:mod:`mot_neuro.epoch_metrics`). The optimiser and its schedule: :mod:`mot_neuro.optim`. ``compile`` applies
``torch.compile`` to the encoder (tokenizers + backbone), in place: parameter names, and so checkpoints, are the same
with and without it.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    restricted_number_type,
)
from torch import nn

from mot_neuro.epoch_metrics import EpochMetrics, FiniteLossGuard, NonFiniteLossError
from mot_neuro.fine_tuning import TowerControls
from mot_neuro.metrics import metric_collection, metric_rules
from mot_neuro.model import count_parameters
from mot_neuro.model.encoder import EncoderConfig, EncoderOptions, NeuroOmicsEncoder
from mot_neuro.model.inputs import DataSpec
from mot_neuro.model.tokenizers import ModalityDecoder
from mot_neuro.module_settings import checked_objective_options, checkpoint_settings, names_option, read_options
from mot_neuro.optim import OptimizerOptions, build_optimizer

__all__ = ["NeuroOmicsModule", "NonFiniteLossError", "checkpoint_settings", "compile_mode", "metric_rules"]

OBJECTIVES = ("supervised", "masked", "both")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""Values of ``compile`` besides ``True``/``False`` (``True`` = ``"default"``): ``torch.compile`` modes."""
log = logging.getLogger(__name__)

# Option types that LightningCLI (jsonargparse) checks while parsing, so `--model.mask_fraction 2` ends with one line
# naming it before anything is built or logged. NeuroOmicsModule.__init__ checks the same ranges for Python callers.
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


class NeuroOmicsModule(TowerControls, EpochMetrics, pl.LightningModule):
    """The model of a mot-neuro experiment. ``data_spec`` (a :class:`DataSpec`) comes from the DataModule (linked by
    the CLI).

    ``encoder`` (:class:`EncoderOptions`): the architecture, every backbone option included (``untie: []`` = the
    dense twin; ``ffn_hidden_dims`` and ``moe`` give towers their own capacity: an MoE tower's load-balancing loss
    joins the optimised objective, logged as ``<stage>/objective``, but not ``<stage>/loss``, and expert load is
    logged every step). ``optimizer`` (:class:`OptimizerOptions`): AdamW, linear warm-up, cosine decay.
    Objective: see the module docstring. Speed: ``compile`` (``true`` or a ``torch.compile`` mode, see
    :data:`COMPILE_MODES`) compiles the encoder on its first call; the first steps (and each new batch shape, e.g.
    an epoch's last, smaller batch) are slow. Fine-tuning: ``warm_start_from`` a checkpoint (e.g. of the dense
    twin: every tower starts as its shared set, so step 0 reproduces it), ``reinit_towers`` and ``freeze_towers``
    (tower names; a tower's backbone parameters and its modalities' tokenizers). :attr:`mask_at_test`: modalities
    hidden at test time, a cheap complement to leave-one-modality-out retraining.

    Checkpoints keep the settings as plain data (``hparams``: ``data_spec``, ``encoder``, ``optimizer`` as dicts);
    :func:`checkpoint_settings` reads those of older versions.
    """

    def __init__(
        self,
        data_spec: DataSpec | Mapping | None = None,
        encoder: EncoderOptions = EncoderOptions(),  # noqa: B008 -- read, never mutated
        optimizer: OptimizerOptions = OptimizerOptions(),  # noqa: B008
        objective: Literal["supervised", "masked", "both"] = "supervised",
        supervised_weight: NonNegativeFloat = 1.0,
        masked_weight: NonNegativeFloat = 1.0,
        mask_fraction: ClosedUnitInterval = 0.15,
        modality_mask_prob: ClosedUnitInterval = 0.1,
        modality_dropout: UnitIntervalOpenAbove = 0.0,
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
        self.data_spec = DataSpec.of(data_spec)
        self.encoder_options = read_options(EncoderOptions, encoder, "encoder")
        self.optimizer_options = read_options(OptimizerOptions, optimizer, "optimizer")
        weights = checked_objective_options(locals())
        # Plain data only (lists, dicts, numbers, strings): a checkpoint loads with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "data_spec": self.data_spec.to_dict(),
                "encoder": self.encoder_options.options(),
                "optimizer": self.optimizer_options.options(),
                "objective": objective,
                **weights,
                "warm_start_from": warm_start_from,
                "freeze_towers": list(freeze_towers),
                "reinit_towers": list(reinit_towers),
                "compile": compile,
            }
        )
        self.specs = {s.name: s for s in self.data_spec.modalities}
        self.active = list(self.data_spec.active)
        try:
            self.encoder_config = EncoderConfig(
                modalities=list(self.data_spec.modalities), **self.encoder_options.options()
            )
        except ValueError as err:  # the encoder's own checks name the bare option: say it is a model.encoder option
            raise ValueError(f"model.encoder.{err}" if names_option(str(err), EncoderOptions) else str(err)) from err
        self.encoder = NeuroOmicsEncoder(self.encoder_config)
        self.targets = dict(self.data_spec.targets)
        self._build_outputs(objective)
        self._init_epoch_state()
        if warm_start_from:
            self._warm_start(warm_start_from)
        for tower in reinit_towers:
            self._reinit_tower(tower)
        for tower in freeze_towers:
            for parameter in self._tower_parameters(tower):
                parameter.requires_grad_(False)
        if mode is not None:
            self._compile_encoder(mode)

    def _build_outputs(self, objective: str) -> None:
        """A head per target (supervised), a decoder per modality with tokens (masked), the metrics per stage."""
        supervised = objective in ("supervised", "both")
        if supervised and not self.targets:
            raise ValueError("objective needs targets, but the data config lists none; use objective: masked")
        dim = self.encoder_config.dim
        self.heads = nn.ModuleDict()
        if supervised:
            for name, target in self.targets.items():
                self.heads[name] = nn.Linear(dim, target.width)
        self.decoders = nn.ModuleDict()
        if objective in ("masked", "both"):
            for name in self.active:
                self.decoders[name] = ModalityDecoder(self.specs[name], dim, projection=self.encoder_config.projection)
        self.metrics = nn.ModuleDict()
        if supervised:
            for stage in ("train", "val", "test"):
                for name, target in self.targets.items():
                    self.metrics[f"{stage}__{name}"] = metric_collection(target.kind, target.n_classes)

    def _init_epoch_state(self) -> None:
        """What steps keep until their epoch's end (:class:`EpochMetrics` reads it), and test-time settings."""
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

    # ------------------------------------------------------------------ accounting
    def describe(self) -> dict:
        """Parameter counts of the whole model and of the backbone (what MLflow gets as params)."""
        backbone = count_parameters(self.encoder.backbone)
        return {
            "params_total": sum(p.numel() for p in self.parameters()),
            "params_backbone": backbone["total"],
            "params_backbone_per_token": backbone["per_modality"],  # activated: router + top-k experts for MoE
            "variant": "dense" if not self.encoder_config.untie else "mot",
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

    def _supervised(self, name: str, logits: torch.Tensor, target: torch.Tensor, stage: str) -> torch.Tensor:
        kind = self.targets[name].kind
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
        target = self.targets[name]
        return value * target.sd + target.mean

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
        # An inner layer runs eagerly (forward, not the compiled __call__): one embed run is not worth a second graph.
        out = self.encoder(batch) if layer is None else self.encoder.forward(batch, layer=layer)
        result = {"row": batch["row"], "pooled": out.pooled, "per_modality": out.per_modality}
        if "split" in batch:
            result["split"] = batch["split"]
        if layer is None:  # the heads were trained on the final output only
            for name, head in self.heads.items():
                result[name] = head(out.pooled)
        return result

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's loader, for checkpoints of every mot-neuro version: the settings of older ones are read in
        today's form (:func:`checkpoint_settings`) before the model is built from them."""
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        saved = checkpoint.get("hyper_parameters") or {}
        settings = checkpoint_settings(saved)
        if settings != saved:
            checkpoint["hyper_parameters"] = settings
            checkpoint_path = io.BytesIO()
            torch.save(checkpoint, checkpoint_path)
            checkpoint_path.seek(0)
        elif hasattr(checkpoint_path, "seek"):
            checkpoint_path.seek(0)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint trained on another token layout, saying what differs."""
        saved = (checkpoint.get("hyper_parameters") or {}).get("data_spec")
        before, now = DataSpec.of(saved).token_shapes() if saved else {}, self.data_spec.token_shapes()
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
        estimated = self.trainer.estimated_stepping_batches
        if not math.isfinite(estimated):
            raise ValueError(
                "the learning-rate schedule (warm-up, then cosine decay to the run's last step) needs a run of known"
                " length: set trainer.max_epochs or trainer.max_steps"
            )
        total = max(int(estimated), 1)
        warmup_steps = self.optimizer_options.warmup_steps
        smoke_run = getattr(self.trainer, "fast_dev_run", False)  # a smoke run's one step says nothing of the schedule
        if warmup_steps >= total and not smoke_run and getattr(self.trainer, "global_rank", 0) == 0:
            log.warning(
                "model.optimizer.warmup_steps=%d is not below the run's %d training steps: the learning rate never"
                " reaches model.optimizer.lr; lower model.optimizer.warmup_steps or train longer",
                warmup_steps,
                total,
            )
        return build_optimizer(self, self.optimizer_options, total)
