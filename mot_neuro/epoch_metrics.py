"""What the LightningModule does at an epoch's end: the metrics of each target over every rank (NaN with a note
when undefined), the pooled reconstruction errors of masked modelling, the test predictions table, and the stop
on a NaN or infinite loss (:class:`FiniteLossGuard`).

During the epoch, steps keep predictions and "target observed" flags on the device, and reconstruction errors as
running sums and counts; nothing here runs per step, so a step never asks the host about the data.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
from lightning.pytorch.callbacks import Callback

from mot_neuro.metrics import SET_NAMES, metric_rules

log = logging.getLogger(__name__)


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


class EpochMetrics:
    """Mixed into :class:`mot_neuro.lit_module.NeuroOmicsModule`: its epoch-end bookkeeping."""

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
        kind = self.targets[name].kind
        device = self.device
        head = torch.tensor([float(rows), float(truth.numel())], device=device)
        if kind in ("binary", "multiclass"):
            n_classes = 2 if kind == "binary" else self.targets[name].n_classes
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
            kind = self.targets[name].kind
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
                sd, mean = self.targets[name].sd, self.targets[name].mean
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
                        value = value * self.targets[name].sd
                    if metric_name in notes:
                        self._note(key, notes[metric_name], warn=key)
                self.log(key, value.float(), sync_dist=False)
            metrics.reset()
        if stage == "test" and self.collect_test_predictions and self.heads:
            self._test_predictions = self._gather_records(collected)

    def _prediction_record(self, name: str, rows: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> dict:
        """One target's observed test predictions on this rank, on the host: cohort rows, truth and scores in the
        coding the metrics use (regression: truth and prediction back in the target's units)."""
        kind = self.targets[name].kind
        truth = truth.detach().double().cpu().numpy()
        prediction = prediction.detach().double().cpu().numpy()
        if kind == "regression":
            sd, mean = self.targets[name].sd, self.targets[name].mean
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
        widths = [t.n_classes for name, t in self.targets.items() if name in self.heads and t.kind == "multiclass"]
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
            f" and no checkpoint was saved from it. Check the learning rate"
            f" (model.optimizer.lr={self.optimizer_options.lr:g}: try 10x lower, or a longer"
            " model.optimizer.warmup_steps) and the input scale (extreme values in a modality or"
            " a target)"
        )
