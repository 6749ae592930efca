"""MoT routed the way the published reference routes: boolean masks at every projection.

For each modality and each projection (Q, K, V, O, norms, FFN) the tokens are picked with
``x[mask]`` and the results merged back by masked assignment into a fresh buffer. This is the
comparison point for ``benchmarks/backbone.py``; it computes the same function as
``MoTBackbone(norm_placement="output")`` with every part untied (``tests/test_benchmark_reference.py``
checks that), so the benchmark compares routing cost only. Not for use in models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mot_neuro.model import MoTBackbone


def _merge(outputs: list[torch.Tensor], masks: list[torch.Tensor], shape) -> torch.Tensor:
    # zeros (not empty like the reference) so padding never reads uninitialised memory
    merged = outputs[0].new_zeros(*shape, outputs[0].shape[-1])
    for out, mask in zip(outputs, masks, strict=True):
        merged[mask] = out
    return merged


class MaskRoutedMoTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, hidden: int, n_modalities: int, eps: float) -> None:
        super().__init__()
        self.n_heads = n_heads

        def per_modality(make):
            return nn.ModuleList(make() for _ in range(n_modalities))

        self.wq = per_modality(lambda: nn.Linear(dim, dim, bias=False))
        self.wk = per_modality(lambda: nn.Linear(dim, dim, bias=False))
        self.wv = per_modality(lambda: nn.Linear(dim, dim, bias=False))
        self.wo = per_modality(lambda: nn.Linear(dim, dim, bias=False))
        self.attn_norm = per_modality(lambda: nn.RMSNorm(dim, eps=eps))
        self.w_gate = per_modality(lambda: nn.Linear(dim, hidden, bias=False))
        self.w_up = per_modality(lambda: nn.Linear(dim, hidden, bias=False))
        self.w_down = per_modality(lambda: nn.Linear(hidden, dim, bias=False))
        self.ffn_norm = per_modality(lambda: nn.RMSNorm(dim, eps=eps))

    def _routed(self, modules, x, masks):
        return _merge([modules[i](x[m]) for i, m in enumerate(masks)], masks, x.shape[:-1])

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        b, s, d = x.shape
        q = self._routed(self.wq, x, masks)
        k = self._routed(self.wk, x, masks)
        v = self._routed(self.wv, x, masks)

        def heads(t):
            return t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2)

        attn = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        attn = attn.transpose(1, 2).reshape(b, s, d)
        attn = self._routed(self.wo, attn, masks)
        h = x + self._routed(self.attn_norm, attn, masks)
        ffn = _merge(
            [
                self.ffn_norm[i](self.w_down[i](F.silu(self.w_gate[i](h[m])) * self.w_up[i](h[m])))
                for i, m in enumerate(masks)
            ],
            masks,
            h.shape[:-1],
        )
        return h + ffn


class MaskRoutedMoT(nn.Module):
    """Stack of :class:`MaskRoutedMoTBlock`; ``forward(x, masks)`` with one ``[B, S]`` mask per modality."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, hidden: int, n_modalities: int, eps: float = 1e-5):
        super().__init__()
        self.blocks = nn.ModuleList(
            MaskRoutedMoTBlock(dim, n_heads, hidden, n_modalities, eps) for _ in range(n_layers)
        )

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, masks)
        return x

    @torch.no_grad()
    def copy_from(self, model: MoTBackbone) -> None:
        """Take the weights of an all-untied, output-norm ``MoTBackbone`` (same function afterwards)."""
        cfg = model.cfg
        if cfg.norm_placement != "output" or cfg.qk_norm or set(cfg.untie) != {"attention", "ffn", "norm"}:
            raise ValueError("copy_from needs norm_placement='output', qk_norm=False and every part untied")
        for ours, theirs in zip(self.blocks, model.blocks, strict=True):
            for i, modality in enumerate(cfg.modalities):
                wq, wk, wv = theirs.qkv[cfg.tower("attention", modality)].weight.chunk(3, dim=0)
                ours.wq[i].weight.copy_(wq)
                ours.wk[i].weight.copy_(wk)
                ours.wv[i].weight.copy_(wv)
                ours.wo[i].weight.copy_(theirs.attn_out[cfg.tower("attention", modality)].weight)
                ours.attn_norm[i].weight.copy_(theirs.attn_norm[cfg.tower("norm", modality)].weight)
                ffn = theirs.ffn[cfg.tower("ffn", modality)]
                gate, up = ffn.w_in.weight.chunk(2, dim=0)
                ours.w_gate[i].weight.copy_(gate)
                ours.w_up[i].weight.copy_(up)
                ours.w_down[i].weight.copy_(ffn.w_out.weight)
                ours.ffn_norm[i].weight.copy_(theirs.ffn_norm[cfg.tower("norm", modality)].weight)
