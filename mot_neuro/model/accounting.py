"""Parameter and FLOP accounting for MoT backbones and their dense twins."""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from .layout import ModalityLayout
from .mot import MoTBackbone


def count_parameters(model: MoTBackbone) -> dict:
    """Total parameters, and the parameters a token of each modality actually uses.

    ``per_modality[m]`` is what a token of ``m`` touches (its towers); for the dense twin every
    modality touches everything, so it equals ``total``.
    """
    cfg = model.cfg
    total = sum(p.numel() for p in model.parameters())
    per_tower: dict[tuple[str, str], int] = {}
    for part, tower, _, module in model.tower_modules():
        per_tower[(part, tower)] = per_tower.get((part, tower), 0) + sum(p.numel() for p in module.parameters())
    per_modality = {
        m: sum(n for (part, tower), n in per_tower.items() if cfg.tower(part, m) == tower) for m in cfg.modalities
    }
    # Anything outside the towers (none today) is used by every token.
    outside = total - sum(per_tower.values())
    return {
        "total": total,
        "per_modality": {m: n + outside for m, n in per_modality.items()},
        "per_part": {
            part: sum(n for (p, _), n in per_tower.items() if p == part) for part in ("attention", "ffn", "norm")
        },
    }


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU flash kernel: count it the same way.
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def training_flops(model: MoTBackbone, layout: ModalityLayout, batch_size: int = 2) -> dict:
    """FLOPs of one forward and one forward+backward pass, counted by ``FlopCounterMode``.

    Counts matmuls and attention as torch's flop counter does (2 FLOPs per multiply-add);
    elementwise work (norms, activations) is not counted, as usual.
    """
    device = next(model.parameters()).device
    x = torch.randn(batch_size, layout.seq_len, model.cfg.dim, device=device, requires_grad=True)
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as forward_counter:
        out = model(x, layout)
    forward = forward_counter.get_total_flops()
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        out = model(x, layout)
        out.square().mean().backward()
    model.zero_grad(set_to_none=True)
    both = counter.get_total_flops()
    tokens = batch_size * layout.seq_len
    return {
        "forward": forward,
        "forward_backward": both,
        "forward_per_token": forward / tokens,
        "training_per_token": both / tokens,
    }
