"""The evaluation metrics of a target and when each is defined: torchmetrics collections per target kind, the
per-class recall behind balanced accuracy, and :func:`metric_rules` (which metrics a set of values cannot define,
and the notes that say how a defined one was computed)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchmetrics


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


def metric_collection(kind: str, n_classes: int | None) -> torchmetrics.MetricCollection:
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
