"""The optimiser and learning-rate schedule of training: :class:`OptimizerOptions` (``model.optimizer`` in the CLI
and configs) and :func:`build_optimizer`: AdamW, linear warm-up, then cosine decay to a floor at the last step."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(kw_only=True)
class OptimizerOptions:
    """AdamW with a warm-up and cosine schedule, declared once.

    lr: peak learning rate, reached after ``warmup_steps`` steps.
    weight_decay: AdamW's decoupled weight decay of the weight matrices (norms, biases and embeddings get none).
    warmup_steps: steps of linear warm-up from ``lr / warmup_steps``.
    min_lr_ratio: the cosine decay ends at ``min_lr_ratio * lr`` on the run's last step.
    """

    lr: float = 3e-4
    weight_decay: float = 0.1
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1

    def check(self) -> OptimizerOptions:
        """Itself, with each option a plain number in its range, or one ValueError naming the first that is not.
        (Not done on construction: the CLI builds the options before the model, which names them in full.)"""
        for name, low, low_ok, high, high_ok in (
            ("lr", 0.0, False, math.inf, False),
            ("weight_decay", 0.0, True, math.inf, False),
            ("warmup_steps", 0, True, math.inf, False),
            ("min_lr_ratio", 0.0, True, 1.0, True),
        ):
            value = getattr(self, name)
            whole = name == "warmup_steps"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and int(value) != value):
                raise ValueError(f"{name}={value!r}: expected {'a whole' if whole else 'a'} number")
            if not math.isfinite(value):
                raise ValueError(f"{name}={value!r}: expected a finite number")
            if value < low or (value == low and not low_ok) or value > high or (value == high and not high_ok):
                interval = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
                raise ValueError(f"{name}={value!r} is out of range: use a value in {interval}")
            setattr(self, name, int(value) if whole else float(value))
        return self

    def options(self) -> dict:
        return asdict(self)


def parameter_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: weight matrices decayed; norms, biases and embeddings not."""
    decay, no_decay = [], []
    for name, parameter in named_parameters:
        if not parameter.requires_grad:  # frozen towers stay exactly as they are
            continue
        (no_decay if parameter.ndim < 2 or "embedding" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, floor: float):
    """Learning-rate factor of step ``step``: ``(step + 1) / warmup`` during warm-up, then a cosine from 1 to
    ``floor`` over the remaining steps up to ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(module: nn.Module, options: OptimizerOptions, total_steps: int) -> dict:
    """AdamW over ``module``'s trainable parameters and its per-step schedule over ``total_steps`` steps, in the
    form Lightning's ``configure_optimizers`` returns."""
    groups = parameter_groups(module.named_parameters(), options.weight_decay)
    parameters = [p for group in groups for p in group["params"]]
    # The fused kernel updates a group's parameters in one call instead of looping over tensors, which costs a
    # model of many small tensors (MoT's towers) most (BENCHMARKS.md, "Optimiser step").
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    optimizer = torch.optim.AdamW(groups, lr=options.lr, fused=fused or None)
    warmup = min(options.warmup_steps, max(total_steps - 1, 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total_steps, options.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
