"""Executable specification of MoT: the block and the stack written per modality with boolean masks.

This is the paper's formulation read literally (Liang et al., arXiv 2411.04996, and the routing of its
published reference code): for every modality ``i`` and every projection, the tokens of ``i`` are picked
with ``x[mask_i]``, go through modality ``i``'s own parameters, and are written back by masked
assignment; attention alone is global. Nothing is fused, grouped, sorted or cached, and every modality
has its own copy of every parameter -- tied parts and towers shared by several modalities are equal
copies (:meth:`MaskRoutedMoT.copy_from`).

It is slow on purpose and not for use in models. :class:`~mot_neuro.model.mot.MoTBackbone` must compute
the same function (``tests/test_mot_spec.py``), and ``benchmarks/backbone.py`` uses it as the
boolean-mask routing baseline. Not covered: mixture-of-experts FFN towers and dropout (eval only).

Tokens that are absent (``present`` False) or padding (in no modality's mask) are not processed: they
are never attended, and come out equal to their input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .mot import MoTBackbone


def _per_modality(make: Callable[[int], nn.Module], n_modalities: int) -> nn.ModuleList:
    return nn.ModuleList(make(i) for i in range(n_modalities))


def _routed(fn: Callable[[int, torch.Tensor], torch.Tensor], x: torch.Tensor, masks: list[torch.Tensor]):
    """``out[mask_i] = fn(i, x[mask_i])`` for every modality ``i``; zeros where no mask is set."""
    outputs = [fn(i, x[mask]) for i, mask in enumerate(masks)]
    # zeros (not empty like the published reference) so padding never reads uninitialised memory
    merged = outputs[0].new_zeros(*x.shape[:-1], outputs[0].shape[-1])
    for out, mask in zip(outputs, masks, strict=True):
        merged[mask] = out
    return merged


class MaskRoutedMoTBlock(nn.Module):
    """One MoT layer; ``forward(x, masks, real, causal)`` with disjoint ``[B, S]`` masks of real tokens."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        hidden: int | Sequence[int],
        n_modalities: int,
        eps: float,
        *,
        norm_placement: str = "output",
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if norm_placement not in ("pre", "output"):
            raise ValueError(f"norm_placement must be 'pre' or 'output', got {norm_placement!r}")
        self.n_heads, self.norm_placement, self.qk_norm = n_heads, norm_placement, qk_norm
        widths = [hidden] * n_modalities if isinstance(hidden, int) else list(hidden)
        head_dim = dim // n_heads

        def linear(d_in: int, d_out: int) -> Callable[[int], nn.Module]:
            return lambda i: nn.Linear(d_in, d_out, bias=False)

        def rms(width: int) -> Callable[[int], nn.Module]:
            return lambda i: nn.RMSNorm(width, eps=eps)

        self.wq = _per_modality(linear(dim, dim), n_modalities)
        self.wk = _per_modality(linear(dim, dim), n_modalities)
        self.wv = _per_modality(linear(dim, dim), n_modalities)
        self.wo = _per_modality(linear(dim, dim), n_modalities)
        self.attn_norm = _per_modality(rms(dim), n_modalities)
        if qk_norm:
            self.q_norm = _per_modality(rms(head_dim), n_modalities)
            self.k_norm = _per_modality(rms(head_dim), n_modalities)
        self.w_gate = _per_modality(lambda i: nn.Linear(dim, widths[i], bias=False), n_modalities)
        self.w_up = _per_modality(lambda i: nn.Linear(dim, widths[i], bias=False), n_modalities)
        self.w_down = _per_modality(lambda i: nn.Linear(widths[i], dim, bias=False), n_modalities)
        self.ffn_norm = _per_modality(rms(dim), n_modalities)

    def _query(self, i: int, t: torch.Tensor) -> torch.Tensor:
        q = self.wq[i](t)
        return self.q_norm[i](q.unflatten(-1, (self.n_heads, -1))).flatten(-2) if self.qk_norm else q

    def _key(self, i: int, t: torch.Tensor) -> torch.Tensor:
        k = self.wk[i](t)
        return self.k_norm[i](k.unflatten(-1, (self.n_heads, -1))).flatten(-2) if self.qk_norm else k

    def _ffn(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """Modality ``i``'s SwiGLU: ``W_down(silu(t W_gate) * t W_up)``."""
        return self.w_down[i](F.silu(self.w_gate[i](t)) * self.w_up[i](t))

    def _attention(self, x: torch.Tensor, masks: list[torch.Tensor], allowed: torch.Tensor | None):
        """Per-modality Q, K, V of ``x``; one attention over every token of every modality."""
        b, s, d = x.shape
        q = _routed(self._query, x, masks)
        k = _routed(self._key, x, masks)
        v = _routed(lambda i, t: self.wv[i](t), x, masks)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2)

        attn = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=allowed)
        return attn.transpose(1, 2).reshape(b, s, d)

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor], allowed: torch.Tensor | None = None):
        """``allowed [B, 1, S, S]``: which query may attend to which key (``None``: all of them)."""
        if self.norm_placement == "output":
            # h = x + Norm_attn(Attn(x) W_O);  y = h + Norm_ffn(FFN(h))
            attn = self._attention(x, masks, allowed)
            h = x + _routed(lambda i, t: self.attn_norm[i](self.wo[i](t)), attn, masks)
            return h + _routed(lambda i, t: self.ffn_norm[i](self._ffn(i, t)), h, masks)
        # "pre": h = x + Attn(Norm_attn(x)) W_O;  y = h + FFN(Norm_ffn(h))
        attn = self._attention(_routed(lambda i, t: self.attn_norm[i](t), x, masks), masks, allowed)
        h = x + _routed(lambda i, t: self.wo[i](t), attn, masks)
        return h + _routed(lambda i, t: self._ffn(i, self.ffn_norm[i](t)), h, masks)


class MaskRoutedMoT(nn.Module):
    """Stack of :class:`MaskRoutedMoTBlock` (plus a per-modality final norm with ``"pre"`` placement).

    ``forward(x, masks, present=None)``: ``x [B, S, dim]``, one ``[B, S]`` boolean mask per modality (a
    token in no mask is padding), ``present [B, S]`` the real tokens (``None``: all). Build one with the
    weights of a backbone with :meth:`from_backbone`.
    """

    def __init__(
        self,
        dim: int,
        n_layers: int,
        n_heads: int,
        hidden: int | Sequence[int],
        n_modalities: int,
        eps: float = 1e-5,
        *,
        norm_placement: str = "output",
        qk_norm: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.norm_placement, self.qk_norm, self.causal = norm_placement, qk_norm, causal
        self.blocks = nn.ModuleList(
            MaskRoutedMoTBlock(dim, n_heads, hidden, n_modalities, eps, norm_placement=norm_placement, qk_norm=qk_norm)
            for _ in range(n_layers)
        )
        if norm_placement == "pre":
            self.final_norm = _per_modality(lambda i: nn.RMSNorm(dim, eps=eps), n_modalities)

    def _allowed(self, real: torch.Tensor) -> torch.Tensor:
        """``[B, 1, S, S]``: which query may attend to which key: real keys only, earlier ones if causal."""
        seq = real.shape[1]
        allowed = real[:, None, None, :].expand(-1, 1, seq, -1)
        if self.causal:
            allowed = allowed & torch.ones(seq, seq, dtype=torch.bool, device=real.device).tril()
        # A query that is not real is not processed: let it see every key so that its row stays finite.
        return allowed | ~real[:, None, :, None]

    def forward(
        self, x: torch.Tensor, masks: Sequence[torch.Tensor], present: torch.Tensor | None = None
    ) -> torch.Tensor:
        masks = [m.expand(x.shape[:2]) for m in masks]
        real = torch.stack(masks).any(0)
        if present is not None:
            real = real & present
        masks = [m & real for m in masks]
        # With every token real, skip what would change nothing (the benchmark times this path).
        everything = bool(real.all())
        allowed = None if everything and not self.causal else self._allowed(real)

        def keep_unreal(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
            return new if everything else torch.where(real[..., None], new, old)

        h = x
        for block in self.blocks:
            h = keep_unreal(block(h, masks, allowed), h)
        if self.norm_placement == "pre":
            h = keep_unreal(_routed(lambda i, t: self.final_norm[i](t), h, masks), h)
        return h

    @classmethod
    def from_backbone(cls, model: MoTBackbone) -> MaskRoutedMoT:
        """The specification of ``model``'s configuration, holding ``model``'s weights."""
        cfg = model.cfg
        spec = cls(
            cfg.dim,
            cfg.n_layers,
            cfg.n_heads,
            [cfg.ffn_width(cfg.tower("ffn", m)) for m in cfg.modalities],
            len(cfg.modalities),
            cfg.norm_eps,
            norm_placement=cfg.norm_placement,
            qk_norm=cfg.qk_norm,
            causal=cfg.causal,
        )
        spec.copy_from(model)
        return spec.to(next(model.parameters()).device).eval()

    @torch.no_grad()
    def copy_from(self, model: MoTBackbone) -> None:
        """Take the weights of ``model``: every modality gets a copy of the parameter sets it uses there."""
        cfg = model.cfg
        if (cfg.norm_placement, cfg.qk_norm, cfg.causal) != (self.norm_placement, self.qk_norm, self.causal):
            raise ValueError(
                f"copy_from: model has norm_placement={cfg.norm_placement!r}, qk_norm={cfg.qk_norm}, "
                f"causal={cfg.causal}; this specification {self.norm_placement!r}, {self.qk_norm}, {self.causal}"
            )
        if cfg.moe:
            raise ValueError("copy_from: the specification has no mixture-of-experts FFN (cfg.moe is set)")
        for ours, theirs in zip(self.blocks, model.blocks, strict=True):
            for i, modality in enumerate(cfg.modalities):
                norm, attention, ffn = (cfg.tower(part, modality) for part in ("norm", "attention", "ffn"))
                wq, wk, wv = theirs.qkv[attention].weight.chunk(3, dim=0)
                ours.wq[i].weight.copy_(wq)
                ours.wk[i].weight.copy_(wk)
                ours.wv[i].weight.copy_(wv)
                ours.wo[i].weight.copy_(theirs.attn_out[attention].weight)
                ours.attn_norm[i].weight.copy_(theirs.attn_norm[norm].weight)
                if self.qk_norm:
                    ours.q_norm[i].weight.copy_(theirs.q_norm[norm].weight)
                    ours.k_norm[i].weight.copy_(theirs.k_norm[norm].weight)
                gate, up = theirs.ffn[ffn].w_in.weight.chunk(2, dim=0)
                ours.w_gate[i].weight.copy_(gate)
                ours.w_up[i].weight.copy_(up)
                ours.w_down[i].weight.copy_(theirs.ffn[ffn].w_out.weight)
                ours.ffn_norm[i].weight.copy_(theirs.ffn_norm[norm].weight)
        if self.norm_placement == "pre":
            for i, modality in enumerate(cfg.modalities):
                self.final_norm[i].weight.copy_(model.final_norm[cfg.tower("norm", modality)].weight)
