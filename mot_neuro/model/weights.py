"""Initialisation and warm start of a backbone's towers (every parameter set is handled on its own)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .ffn import MoESwiGLU, SwiGLU

if TYPE_CHECKING:
    from .mot import MoTBackbone


@torch.no_grad()
def init_weights(model: MoTBackbone, generator: torch.Generator | None = None) -> None:
    """Normal(0, init_std) projections; the two projections that write into the residual
    stream (attention output, FFN output) scaled by 1/sqrt(2 * n_layers) so the stream's
    variance stays flat with depth; norms start at one. Every tower is drawn independently."""
    std = model.cfg.init_std
    out_std = std / math.sqrt(2 * model.cfg.n_layers)
    for _, _, name, module in model.tower_modules():
        if isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, SwiGLU):
            nn.init.normal_(module.w_in.weight, 0.0, std, generator=generator)
            nn.init.normal_(module.w_out.weight, 0.0, out_std, generator=generator)
        elif isinstance(module, MoESwiGLU):
            nn.init.normal_(module.router.weight, 0.0, std, generator=generator)
            nn.init.normal_(module.w_in, 0.0, std, generator=generator)
            nn.init.normal_(module.w_out, 0.0, out_std, generator=generator)
        else:
            writes_residual = ".attn_out." in name
            nn.init.normal_(module.weight, 0.0, out_std if writes_residual else std, generator=generator)


def _warm_start_plan(model: MoTBackbone, source: MoTBackbone) -> dict[str, str]:
    """Module name here -> the one module name in ``source`` it copies."""
    if source.cfg.dim != model.cfg.dim or source.cfg.n_layers != model.cfg.n_layers:
        raise ValueError(
            f"cannot warm start: source has dim={source.cfg.dim}, n_layers={source.cfg.n_layers}; "
            f"this model dim={model.cfg.dim}, n_layers={model.cfg.n_layers}"
        )
    missing = [m for m in model.cfg.modalities if m not in source.cfg.modalities]
    if missing:
        raise ValueError(f"cannot warm start: source model has no modality {missing}")
    plan: dict[str, str] = {}
    for part, tower, name, _ in model.tower_modules():
        prefix = name.rsplit(".", 1)[0]
        sources = {
            f"{prefix}.{source.cfg.tower(part, m)}" for m in model.cfg.modalities if model.cfg.tower(part, m) == tower
        }
        if len(sources) != 1:
            raise ValueError(f"cannot warm start {name}: it would need one of several source sets {sorted(sources)}")
        plan[name] = sources.pop()
    return plan


@torch.no_grad()
def load_towers_from(model: MoTBackbone, source: MoTBackbone) -> None:
    """Warm start: copy each of ``source``'s parameter sets into every tower of ``model`` that uses it.

    See :meth:`MoTBackbone.load_towers_from`.
    """
    plan = _warm_start_plan(model, source)
    source_modules = {name: module for _, _, name, module in source.tower_modules()}
    for _, _, name, module in model.tower_modules():
        if plan[name] not in source_modules:
            raise ValueError(
                f"cannot warm start {name}: source has no {plan[name]} (different qk_norm/norm_placement?)"
            )
        source_module = source_modules[plan[name]]
        if isinstance(module, MoESwiGLU) and isinstance(source_module, SwiGLU):
            module.load_from_dense(source_module)
            continue
        if type(module) is not type(source_module):
            raise ValueError(
                f"cannot warm start {name} ({type(module).__name__}) from {plan[name]} ({type(source_module).__name__})"
            )
        try:
            module.load_state_dict(source_module.state_dict())
        except RuntimeError as error:  # shapes differ: other FFN width or number of experts
            raise ValueError(f"cannot warm start {name} from {plan[name]}: {error}") from error
