"""Mixture-of-Transformers block and backbone, and its dense twin, in pure PyTorch.

MoT (Liang et al., TMLR 2025, arXiv 2411.04996): every non-embedding parameter of a layer -- the
attention projections, the norms, the feed-forward network -- exists once per modality and each
token uses the set of its own modality, while self-attention stays global over the whole sequence.
The dense baseline is the same code with one shared set ("tower"), so FLOPs per token are equal by
construction. For a token ``x_i`` of modality ``m`` (``"output"`` norm placement, the paper's)::

    Q_i, K_i, V_i = x_i W_Q^m, x_i W_K^m, x_i W_V^m            (per-modality QKV projection)
    a_i = sum_j softmax_j(Q_i K_j^T / sqrt(d_head)) V_j         (global attention, all modalities)
    h_i = x_i + Norm_attn^m(a_i W_O^m)                         (per-modality output projection, norm)
    y_i = h_i + Norm_ffn^m(FFN^m(h_i))                         (per-modality FFN, norm)

``"pre"`` placement moves each norm to the sub-layer's input (``h_i = x_i + Attn(Norm_attn^m(x))_i W_O^m``)
and adds a final per-modality norm. :mod:`mot_neuro.model.reference` writes exactly this with boolean masks,
as an executable specification; :class:`MoTBlock` computes the same without masks.

Layout of the package: :mod:`.config` (what is untied and how), :mod:`.ffn` (SwiGLU, mixture of experts),
:mod:`.routing` (which runs of tokens share a tower), this module (the block and the stack), :mod:`.weights`
(initialisation, warm start), :mod:`.reference` (the specification).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import weights
from .config import PARTS, SHARED, MoTConfig
from .ffn import MoESwiGLU, RouterStats, SwiGLU, _LastForward, routed_ffn
from .layout import ModalityLayout, masks_to_ids
from .routing import FixedRoute, GroupedRoute, Route, Runs, Towers, apply_runs
from .tower_ops import tower_rms_norm

__all__ = ["PARTS", "SHARED", "MoESwiGLU", "MoTBackbone", "MoTBlock", "MoTConfig", "RouterStats", "Routing", "SwiGLU"]

Routing = ModalityLayout | torch.Tensor | Sequence[torch.Tensor]


INFERENCE_FFN_ELEMENTS = 1 << 24
"""Without autograd, above this many FFN hidden values (gate, up and product over the whole stream; 64 MB in
float32) the tower ops run the FFN one run of tokens at a time, to bound inference memory."""


def _per_tower(make: Callable[[], nn.Module], names: Sequence[str]) -> nn.ModuleDict:
    return nn.ModuleDict({name: make() for name in names})


class MoTBlock(nn.Module):
    """One layer: an attention sub-layer and an FFN sub-layer, each with a residual.

    Attention sub-layer: per tower, [norm] -> fused QKV projection [-> QK norm]; one global
    ``scaled_dot_product_attention`` over all modalities; per tower, output projection [-> norm].
    FFN sub-layer: per tower, [norm] -> FFN (:class:`SwiGLU` or :class:`MoESwiGLU`) [-> norm].
    Where the norm goes is decided in one place (:meth:`_norm_in`, :meth:`_norm_out`). Only the
    per-tower modules run per run of tokens; dropout and residuals run once over the whole stream
    (with small towers, per-tower elementwise ops cost more than the matmuls).
    """

    attention_probe: Callable[..., None] | None = None
    """``probe(q, k, v, attn_mask, is_causal, out)`` after attention; ``None`` except inside
    :func:`mot_neuro.model.attention_maps.record_attention`: the inputs and output of the block's SDPA call."""

    def __init__(self, cfg: MoTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        norms = cfg.tower_names("norm")
        attns = cfg.tower_names("attention")

        def rms(width: int = d) -> Callable[[], nn.Module]:
            return lambda: nn.RMSNorm(width, eps=cfg.norm_eps)

        self.attn_norm = _per_tower(rms(), norms)
        self.qkv = _per_tower(lambda: nn.Linear(d, 3 * d, bias=False), attns)
        if cfg.qk_norm:
            self.q_norm = _per_tower(rms(cfg.head_dim), norms)
            self.k_norm = _per_tower(rms(cfg.head_dim), norms)
        self.attn_out = _per_tower(lambda: nn.Linear(d, d, bias=False), attns)
        self.ffn_norm = _per_tower(rms(), norms)
        self.ffn = nn.ModuleDict({tower: self._make_ffn(tower) for tower in cfg.tower_names("ffn")})
        self.dropout = nn.Dropout(cfg.dropout)
        self.has_moe = any(isinstance(ffn, MoESwiGLU) for ffn in self.ffn.values())
        self.router_stats: dict[str, RouterStats] = _LastForward()  # MoE tower -> statistics of the last forward

    def _make_ffn(self, tower: str) -> nn.Module:
        spec = self.cfg.moe.get(tower) if self.cfg.moe else None
        if spec is None:
            return SwiGLU(self.cfg.dim, self.cfg.ffn_width(tower))
        return MoESwiGLU(self.cfg.dim, self.cfg.ffn_width(tower), spec["n_experts"], spec["top_k"])

    def tower_modules(self):
        """``(part, tower, attribute, module)`` for every per-tower module of this block."""
        groups = [("norm", "attn_norm"), ("attention", "qkv"), ("attention", "attn_out")]
        if self.cfg.qk_norm:
            groups += [("norm", "q_norm"), ("norm", "k_norm")]
        groups += [("norm", "ffn_norm"), ("ffn", "ffn")]
        for part, attr in groups:
            for tower, module in getattr(self, attr).items():
                yield part, tower, attr, module

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, route: Route) -> torch.Tensor:
        if route.tower_ops:
            return self._forward_tower_ops(x, route)
        runs = route.runs
        qkv = route.to_attention(apply_runs(runs.dim, runs.qkv, self._qkv, x))
        attn = route.from_attention(self._attend(qkv, route))
        h = x + self.dropout(apply_runs(runs.dim, runs.qkv, self._attn_out, attn))

        stats: dict[str, RouterStats] = {}
        # The presence weights (MoE statistics only) are cut into runs with the tokens.
        weight = () if route.token_weight is None else (route.token_weight,)
        ffn = apply_runs(runs.dim, runs.block, partial(self._ffn, stats=stats), h, *weight)
        self.router_stats = _LastForward(stats)
        return h + self.dropout(ffn)

    def _forward_tower_ops(self, x: torch.Tensor, route: Route) -> torch.Tensor:
        """:meth:`forward` on a token-major stream with one call per projection and norm for all towers
        (:mod:`.tower_ops`): the same computation as the per-run form, with a fraction of its ops. A ``"pre"``
        norm's weights are folded into the projection that follows it."""
        runs, cfg = route.runs, self.cfg
        attn_norm = [self.attn_norm[run.towers.norm].weight for run in runs.qkv]
        qkv_weights = [self.qkv[run.towers.attention].weight for run in runs.qkv]
        a, scales = self._tower_norm_in(x, attn_norm)
        qkv = route.linear(a, runs.qkv, qkv_weights, scales)
        if cfg.qk_norm:
            q, k, v = qkv.unflatten(-1, (3, cfg.n_heads, cfg.head_dim)).unbind(-3)
            q_norm = [self.q_norm[run.towers.norm].weight for run in runs.qkv]
            k_norm = [self.k_norm[run.towers.norm].weight for run in runs.qkv]
            q = tower_rms_norm(q, route.norm_weight(runs.qkv, q_norm, q), cfg.norm_eps)
            k = tower_rms_norm(k, route.norm_weight(runs.qkv, k_norm, k), cfg.norm_eps)
            qkv = torch.stack((q, k, v), dim=-3).flatten(-3)
        attn = route.from_attention(self._attend(route.to_attention(qkv), route))
        out = route.linear(attn, runs.qkv, [self.attn_out[run.towers.attention].weight for run in runs.qkv])
        h = x + self.dropout(self._tower_norm_out(route, runs.qkv, attn_norm, out))

        ffn_norm = [self.ffn_norm[run.towers.norm].weight for run in runs.block]
        ffns = [self.ffn[run.towers.ffn] for run in runs.block]
        same_swiglu = all(type(ffn) is SwiGLU for ffn in ffns) and len({ffn.w_out.in_features for ffn in ffns}) == 1
        # Without autograd nothing is kept for backward, so one tower's hidden activations at a time is the peak:
        # large inference batches (embedding extraction) go run by run, as the per-run form did.
        hidden = h.numel() // h.shape[-1] * 3 * (ffns[0].w_out.in_features if same_swiglu else 0)
        if same_swiglu and (torch.is_grad_enabled() or hidden <= INFERENCE_FFN_ELEMENTS):
            f, scales = self._tower_norm_in(h, ffn_norm)
            gate, up = route.linear(f, runs.block, [ffn.w_in.weight for ffn in ffns], scales).chunk(2, dim=-1)
            f = route.linear(F.silu(gate) * up, runs.block, [ffn.w_out.weight for ffn in ffns])
        else:  # mixture-of-experts towers, FFN widths that differ, or a large inference batch: one call per run
            f = h
            if cfg.norm_placement == "pre":
                f = tower_rms_norm(h, route.norm_weight(runs.block, ffn_norm, h), cfg.norm_eps)
            stats: dict[str, RouterStats] = {}
            weight = () if route.token_weight is None else (route.token_weight,)
            f = apply_runs(runs.dim, runs.block, partial(self._routed_ffn, stats=stats), f, *weight)
            self.router_stats = _LastForward(stats)
        return h + self.dropout(self._tower_norm_out(route, runs.block, ffn_norm, f))

    def _tower_norm_in(self, x: torch.Tensor, weights) -> tuple[torch.Tensor, list | None]:
        """``(input of the projection, scales to fold into it)``: with ``"pre"`` placement the normalised ``x``
        and the norm's weights, else ``x`` as it is."""
        if self.cfg.norm_placement != "pre":
            return x, None
        return F.rms_norm(x, (x.shape[-1],), None, self.cfg.norm_eps), weights

    def _tower_norm_out(self, route: Route, stage, weights, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.norm_placement == "pre":
            return y
        return tower_rms_norm(y, route.norm_weight(stage, weights, y), self.cfg.norm_eps)

    # Norm placement, the one place it is decided: "pre" normalises a sub-layer's input, "output" its output.
    def _norm_in(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return norm(x) if self.cfg.norm_placement == "pre" else x

    def _norm_out(self, norm: nn.Module, y: torch.Tensor) -> torch.Tensor:
        return y if self.cfg.norm_placement == "pre" else norm(y)

    def _qkv(self, towers: Towers, x: torch.Tensor) -> torch.Tensor:
        """Per tower: [norm] -> fused QKV projection [-> QK norm], ``[..., 3 * dim]``."""
        qkv = self.qkv[towers.attention](self._norm_in(self.attn_norm[towers.norm], x))
        if not self.cfg.qk_norm:
            return qkv
        q, k, v = qkv.unflatten(-1, (3, self.cfg.n_heads, self.cfg.head_dim)).unbind(-3)
        q = self.q_norm[towers.norm](q)
        k = self.k_norm[towers.norm](k)
        return torch.stack((q, k, v), dim=-3).flatten(-3)

    def _attend(self, qkv: torch.Tensor, route: Route) -> torch.Tensor:
        """Global attention over the ``[B, S, 3 * dim]`` sequence, every modality at once: ``[B, heads, S,
        head_dim]`` (the route puts it back in stream order)."""
        q, k, v = qkv.unflatten(-1, (3, self.cfg.n_heads, self.cfg.head_dim)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=route.attn_mask,
            dropout_p=self.cfg.attention_dropout if self.training else 0.0,
            is_causal=route.is_causal,
        )
        if self.attention_probe is not None:  # set only inside attention_maps.record_attention
            self.attention_probe(q, k, v, route.attn_mask, route.is_causal, out)
        return out

    def _attn_out(self, towers: Towers, attn: torch.Tensor) -> torch.Tensor:
        """Per tower: output projection [-> norm]."""
        return self._norm_out(self.attn_norm[towers.norm], self.attn_out[towers.attention](attn))

    def _ffn(
        self, towers: Towers, h: torch.Tensor, weight: torch.Tensor | None = None, *, stats: dict[str, RouterStats]
    ) -> torch.Tensor:
        """Per tower: [norm] -> FFN [-> norm]; an MoE tower's router statistics go to ``stats``."""
        norm = self.ffn_norm[towers.norm]
        return self._norm_out(norm, self._routed_ffn(towers, self._norm_in(norm, h), weight, stats=stats))

    def _routed_ffn(
        self, towers: Towers, h: torch.Tensor, weight: torch.Tensor | None = None, *, stats: dict[str, RouterStats]
    ) -> torch.Tensor:
        out, run_stats = routed_ffn(self.ffn[towers.ffn], h, weight)
        if run_stats is not None:
            # A tower can own several runs (e.g. two modalities sharing it, not adjacent): sum, then normalise.
            tower = towers.ffn
            stats[tower] = run_stats if tower not in stats else stats[tower].merge(run_stats)
        return out


class MoTBackbone(nn.Module):
    """A stack of :class:`MoTBlock` over modality-tagged token embeddings ``[B, S, dim]``.

    ``forward(x, routing, present=None, n_blocks=None)`` where ``routing`` is

    * a :class:`ModalityLayout` (fast path: contiguous segments, same for every sample), or
    * a ``[B, S]`` (or ``[S]``) integer tensor of modality ids indexing ``cfg.modalities``,
      ``PAD_ID`` (-1) for padding, or
    * a list of boolean masks ``[B, S]`` (or ``[S]``), one per modality, as in the reference code.

    ``present`` (``[B, S]`` bool) marks real tokens; absent and padding tokens neither attend nor
    are attended, and come out equal to their input. ``n_blocks`` (``1..n_layers``) stops after that many
    blocks and returns their output without the final norm, for embeddings of an inner layer; ``None`` runs
    every block and the final norm.

    With MoE towers (``cfg.moe``), :meth:`aux_loss` gives the load-balancing loss of the last forward
    (add it to the training loss) and :meth:`expert_load` the share of tokens each expert got; only
    present tokens count (the general path never computes the others, the fixed path weights them 0).
    """

    def __init__(self, cfg: MoTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(MoTBlock(cfg) for _ in range(cfg.n_layers))
        if cfg.norm_placement == "pre":
            self.final_norm = _per_tower(lambda: nn.RMSNorm(cfg.dim, eps=cfg.norm_eps), cfg.tower_names("norm"))
        else:
            self.final_norm = None
        self._towers_by_modality = [
            Towers(cfg.tower("norm", m), cfg.tower("attention", m), cfg.tower("ffn", m)) for m in cfg.modalities
        ]
        self._fixed_runs_cache: dict[tuple[ModalityLayout, bool], Runs] = {}
        # One call per projection and norm for all towers (.tower_ops); False = one module call per run of tokens,
        # the plain form (tests compare the two).
        self.tower_ops = True
        self.has_moe = any(block.has_moe for block in self.blocks)
        self.init_weights()

    # ------------------------------------------------------------------------------- forward
    def forward(
        self, x: torch.Tensor, routing: Routing, present: torch.Tensor | None = None, n_blocks: int | None = None
    ) -> torch.Tensor:
        depth = len(self.blocks)
        if n_blocks is not None and (
            isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 1 <= n_blocks <= depth
        ):
            raise ValueError(f"n_blocks must be None or an integer in [1, {depth}], got {n_blocks!r}")
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim:
            raise ValueError(f"expected token embeddings [batch, seq, {self.cfg.dim}], got {tuple(x.shape)}")
        if present is not None:
            present = present.to(device=x.device, dtype=torch.bool)
            if tuple(present.shape) != tuple(x.shape[:2]):
                raise ValueError(f"present mask {tuple(present.shape)} does not match tokens {list(x.shape[:2])}")
        for block in self.blocks:
            block.router_stats = _LastForward()  # a forward stopped early must leave no stale statistics
        route = self._route(x, routing, present)
        h = route.enter(x)
        for block in self.blocks[:n_blocks]:
            h = block(h, route)
        if self.final_norm is not None and n_blocks is None:
            if route.tower_ops:
                weights = [self.final_norm[run.towers.norm].weight for run in route.runs.norm]
                h = tower_rms_norm(h, route.norm_weight(route.runs.norm, weights, h), self.cfg.norm_eps)
            else:
                h = apply_runs(route.runs.dim, route.runs.norm, self._final_norm, h)
        return route.leave(x, h)

    def _final_norm(self, towers: Towers, h: torch.Tensor) -> torch.Tensor:
        return self.final_norm[towers.norm](h)

    # ------------------------------------------------------------------------------- routing
    def _route(self, x: torch.Tensor, routing: Routing, present: torch.Tensor | None) -> Route:
        batch, seq, _ = x.shape
        if isinstance(routing, ModalityLayout):
            if routing.seq_len != seq:
                raise ValueError(f"layout {routing.as_dict()} has {routing.seq_len} tokens, input has {seq}")
            return FixedRoute(self._fixed_runs(routing), present, self.cfg.causal, self.has_moe, batch)
        ids = masks_to_ids(routing) if isinstance(routing, (list, tuple)) else routing
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"routing must be a ModalityLayout, an id tensor or a list of masks, got {type(routing)}")
        ids = ids.to(x.device)
        if ids.dim() == 1:
            ids = ids.expand(batch, seq)
        if tuple(ids.shape) != (batch, seq):
            raise ValueError(f"modality ids have shape {tuple(ids.shape)}, tokens are [{batch}, {seq}]")
        return GroupedRoute(ids, present, self._towers_by_modality, self.cfg.causal, self.tower_ops)

    def _fixed_runs(self, layout: ModalityLayout) -> Runs:
        runs = self._fixed_runs_cache.get((layout, self.tower_ops))
        if runs is None:
            unknown = [n for n in layout.names if n not in self.cfg.modalities]
            if unknown:
                raise ValueError(f"layout modalities {unknown} are not among the model's {list(self.cfg.modalities)}")
            segments = [
                (start, count, self.cfg.modalities.index(name))
                for name, count, start in zip(layout.names, layout.counts, layout.offsets, strict=False)
            ]
            runs = Runs(1, segments, self._towers_by_modality)
            if self.tower_ops and runs.several:  # token-major stream, runs along dim 0
                runs = Runs(0, segments, self._towers_by_modality)
            self._fixed_runs_cache[layout, self.tower_ops] = runs
        return runs

    # ----------------------------------------------------------------------------- parameters
    def tower_modules(self):
        """``(part, tower, name, module)`` for every per-tower module, ``name`` its dotted path."""
        for i, block in enumerate(self.blocks):
            for part, tower, attr, module in block.tower_modules():
                yield part, tower, f"blocks.{i}.{attr}.{tower}", module
        if self.final_norm is not None:
            for tower, module in self.final_norm.items():
                yield "norm", tower, f"final_norm.{tower}", module

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, init_std) projections; the two projections that write into the residual
        stream (attention output, FFN output) scaled by 1/sqrt(2 * n_layers) so the stream's
        variance stays flat with depth; norms start at one. Every tower is drawn independently."""
        weights.init_weights(self, generator)

    def load_towers_from(self, source: MoTBackbone) -> None:
        """Warm start: copy each of ``source``'s parameter sets into every tower that uses it.

        With a dense ``source`` every modality's set becomes a copy of the shared set, so at step 0
        this model computes exactly what the dense model computes. Works between any two tower
        groupings as long as each tower here maps to one tower of ``source``. An MoE tower warm
        started from a plain SwiGLU gets it in every expert (its router keeps its own init): gates sum
        to 1, so the output is still the dense FFN's at step 0. Widths must match.
        """
        weights.load_towers_from(self, source)

    # --------------------------------------------------------------------------- mixture of experts
    def aux_loss(self) -> torch.Tensor:
        """Load-balancing loss of the last forward: sum over MoE layers of ``balance_weight * loss``.

        A 0-d tensor to add to the training loss; zero without MoE. Only present tokens count.
        """
        total = torch.zeros((), device=next(self.parameters()).device)
        for block in self.blocks:
            for tower, stats in block.router_stats.items():
                total = total + self.cfg.moe[tower]["balance_weight"] * stats.balance_loss()
        return total

    def expert_load(self) -> dict[str, torch.Tensor]:
        """Fraction of routing assignments per expert (``[E]``, sums to 1, detached) in the last forward,
        keyed ``"block{i}.{tower}"``; empty without MoE."""
        return {
            f"block{i}.{tower}": stats.load().detach()
            for i, block in enumerate(self.blocks)
            for tower, stats in block.router_stats.items()
        }
