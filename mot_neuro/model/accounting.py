"""Parameter and FLOP accounting for MoT backbones and their dense twins."""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from .layout import ModalityLayout
from .mot import MoESwiGLU, MoTBackbone


def count_parameters(model: MoTBackbone) -> dict:
    """Total parameters, and the parameters a token of each modality actually uses.

    ``per_modality[m]`` is what a token of ``m`` uses (its towers); for the dense twin every
    modality uses everything, so it equals ``total``. In an MoE tower a token uses the router and
    its ``top_k`` experts (activated parameters), though all experts are stored:
    ``per_modality_stored[m]`` counts every expert of the towers ``m`` reaches, and ``moe`` gives
    ``{tower: {"n_experts", "top_k", "total", "activated"}}`` summed over the layers (empty without MoE).
    """
    cfg = model.cfg
    total = sum(p.numel() for p in model.parameters())
    stored: dict[tuple[str, str], int] = {}
    used: dict[tuple[str, str], int] = {}
    moe: dict[str, dict[str, int]] = {}
    for part, tower, _, module in model.tower_modules():
        n = sum(p.numel() for p in module.parameters())
        n_used = n
        if isinstance(module, MoESwiGLU):
            n_used = module.activated_parameters()
            entry = moe.setdefault(
                tower, {"n_experts": module.n_experts, "top_k": module.top_k, "total": 0, "activated": 0}
            )
            entry["total"] += n
            entry["activated"] += n_used
        stored[(part, tower)] = stored.get((part, tower), 0) + n
        used[(part, tower)] = used.get((part, tower), 0) + n_used

    def per_modality(counts: dict[tuple[str, str], int]) -> dict[str, int]:
        return {
            m: outside + sum(n for (part, tower), n in counts.items() if cfg.tower(part, m) == tower)
            for m in cfg.modalities
        }

    # Anything outside the towers (none today) is used by every token.
    outside = total - sum(stored.values())
    return {
        "total": total,
        "per_modality": per_modality(used),
        "per_modality_stored": per_modality(stored),
        "per_part": {
            part: sum(n for (p, _), n in stored.items() if p == part) for part in ("attention", "ffn", "norm")
        },
        "moe": moe,
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
    elementwise work (norms, activations) is not counted, as usual. These are the FLOPs the code
    executes: an MoE tower evaluates all its experts densely (:class:`MoESwiGLU`), so measured FLOPs
    exceed the activated FLOPs (router + ``top_k`` experts) that a sparse dispatch would run.
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
