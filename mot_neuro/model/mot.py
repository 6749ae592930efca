"""Mixture-of-Transformers backbone and its dense twin, in pure PyTorch.

MoT (Liang et al., TMLR 2025, arXiv 2411.04996): every non-embedding parameter of a layer -- the
attention projections, the norms, the feed-forward network -- exists once per modality and each
token uses the set of its own modality, while self-attention stays global over the whole sequence.
The dense baseline is the same code with one shared set ("tower"), so FLOPs per token are equal by
construction.

Reading order: :class:`MoTConfig` (what is untied and how), :class:`MoTBlock` (one layer, written
as two per-token stages around one global attention), :class:`MoTBackbone` (the stack, routing).

Routing never indexes with boolean masks inside a layer. A :class:`_Route` is built once per
forward and tells every stage which contiguous runs of tokens share a tower:

* fixed layout: the runs are slices of the ``[B, S, D]`` sequence (no gather, no host sync);
* general ids/masks: tokens are sorted by modality once (:func:`group_tokens`); the residual
  stream then lives as ``[N_real, D]`` in that order, and only attention goes back to ``[B, S]``.

Two per-tower FFN options sit on top (configuration only): a tower's own SwiGLU width
(``ffn_hidden_dims``), and a mixture of SwiGLU experts with a learned router for chosen towers
(``moe``, :class:`MoESwiGLU`): MoT's rule-based routing by modality, then learned routing inside
a modality.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layout import ModalityLayout, check_modality_names, group_tokens, masks_to_ids

PARTS = ("attention", "ffn", "norm")
"""Parts of a layer that can be untied (given one parameter set per tower)."""

SHARED = "shared"
"""Tower name of a tied part."""

Routing = ModalityLayout | torch.Tensor | Sequence[torch.Tensor]


@dataclass
class MoTConfig:
    """Architecture of a MoT backbone (or, with ``untie=()``, of its dense twin).

    modalities: model's modality order; general-path ids index into it.
    untie: parts that get one parameter set per tower: any subset of ``PARTS``. Empty = dense.
    towers: modality -> tower name. Default: every modality its own tower (plain MoT). Modalities
        mapped to one tower share its parameters (the paper's modality-separation analysis).
    norm_placement: ``"pre"``: ``h = x + Attn(Norm(x)); out = h + FFN(Norm(h))`` with a final norm;
        ``"output"`` (the MoT paper/reference): ``h = x + Norm(Attn(x)); out = h + Norm(FFN(h))``.
    qk_norm: RMS-normalise queries and keys per head (weights follow the ``norm`` part).
    ffn_hidden_dim: SwiGLU hidden width; default 8/3 * dim rounded up to a multiple of 64.
    ffn_hidden_dims: FFN tower name -> its own SwiGLU width (towers not listed use ``ffn_hidden_dim``).
        Needs ``"ffn"`` in ``untie``; attention keeps one width (it is global over all modalities).
    moe: FFN tower name -> mixture-of-experts spec, e.g. ``{"brain": {"n_experts": 4, "top_k": 2}}``.
        Keys: ``n_experts`` (required), ``top_k`` (default ``min(2, n_experts)``), ``hidden_dim`` (expert
        width, default the tower's FFN width), ``balance_weight`` (weight of the load-balancing loss, default
        0.01). With a tied FFN the only tower is ``"shared"`` (a dense MoE transformer). See :class:`MoESwiGLU`.
    """

    modalities: Sequence[str]
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    ffn_hidden_dim: int | None = None
    untie: Sequence[str] = PARTS
    towers: Mapping[str, str] | None = None
    ffn_hidden_dims: Mapping[str, int] | None = None
    moe: Mapping[str, Mapping] | None = None
    norm_placement: Literal["pre", "output"] = "pre"
    qk_norm: bool = False
    causal: bool = False
    dropout: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    _tower_of: dict[str, dict[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        check_modality_names(self.modalities)
        unknown = sorted(set(self.untie) - set(PARTS))
        if unknown:
            raise ValueError(f"untie: unknown part(s) {unknown}; choose from {list(PARTS)}")
        self.untie = tuple(p for p in PARTS if p in set(self.untie))
        towers = dict(self.towers) if self.towers is not None else {m: m for m in self.modalities}
        if set(towers) != set(self.modalities):
            missing, extra = sorted(set(self.modalities) - set(towers)), sorted(set(towers) - set(self.modalities))
            raise ValueError(
                f"towers must map exactly the modalities {list(self.modalities)}; missing {missing}, extra {extra}"
            )
        check_modality_names(sorted(set(towers.values())), what="tower")
        self.towers = towers
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.norm_placement not in ("pre", "output"):
            raise ValueError(f"norm_placement must be 'pre' or 'output', got {self.norm_placement!r}")
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.ffn_hidden_dim is None:
            self.ffn_hidden_dim = 64 * math.ceil(8 * self.dim / 3 / 64)
        self._tower_of = {
            part: {m: (towers[m] if part in self.untie else SHARED) for m in self.modalities} for part in PARTS
        }
        self._check_ffn_options()

    def _check_ffn_options(self) -> None:
        """Validate and normalise ``ffn_hidden_dims`` and ``moe`` to plain dicts (JSON-able, idempotent)."""
        ffn_towers = self.tower_names("ffn")
        if self.ffn_hidden_dims:
            if "ffn" not in self.untie:
                raise ValueError(
                    f"ffn_hidden_dims gives towers their own FFN width, which needs 'ffn' in untie "
                    f"(untie={list(self.untie)}); with a tied FFN set ffn_hidden_dim instead"
                )
            self.ffn_hidden_dims = {tower: int(width) for tower, width in self.ffn_hidden_dims.items()}
            unknown = sorted(set(self.ffn_hidden_dims) - set(ffn_towers))
            if unknown:
                raise ValueError(f"ffn_hidden_dims: unknown FFN tower(s) {unknown}; the FFN towers are {ffn_towers}")
            bad = [f"{t}={w}" for t, w in self.ffn_hidden_dims.items() if w < 1]
            if bad:
                raise ValueError(f"ffn_hidden_dims must be >= 1, got {', '.join(bad)}")
        else:
            self.ffn_hidden_dims = None
        if not self.moe:
            self.moe = None
            return
        unknown = sorted(set(self.moe) - set(ffn_towers))
        if unknown:
            raise ValueError(
                f"moe: unknown FFN tower(s) {unknown}; the FFN towers are {ffn_towers} (untie={list(self.untie)})"
            )
        self.moe = {tower: self._moe_spec(tower, spec) for tower, spec in self.moe.items()}

    def _moe_spec(self, tower: str, spec: Mapping) -> dict:
        keys = ("n_experts", "top_k", "hidden_dim", "balance_weight")
        unknown = sorted(set(spec) - set(keys))
        if unknown or "n_experts" not in spec:
            raise ValueError(f"moe[{tower!r}]: keys are {list(keys)} with n_experts required; got {sorted(spec)}")
        n_experts = int(spec["n_experts"])
        top_k = int(spec.get("top_k", min(2, n_experts)))
        if n_experts < 1 or not 1 <= top_k <= n_experts:
            raise ValueError(f"moe[{tower!r}]: need n_experts >= 1 and 1 <= top_k <= n_experts, got {dict(spec)}")
        hidden_dim = spec.get("hidden_dim")
        if hidden_dim is not None:
            hidden_dim = int(hidden_dim)
            if hidden_dim < 1:
                raise ValueError(f"moe[{tower!r}]: hidden_dim must be >= 1, got {hidden_dim}")
            if self.ffn_hidden_dims and tower in self.ffn_hidden_dims:
                raise ValueError(
                    f"tower {tower!r} has a width in both ffn_hidden_dims and moe[{tower!r}]['hidden_dim']; "
                    "give it once"
                )
        balance_weight = float(spec.get("balance_weight", 0.01))
        if balance_weight < 0:
            raise ValueError(f"moe[{tower!r}]: balance_weight must be >= 0, got {balance_weight}")
        return {"n_experts": n_experts, "top_k": top_k, "hidden_dim": hidden_dim, "balance_weight": balance_weight}

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def is_dense(self) -> bool:
        return all(len(set(self._tower_of[p].values())) == 1 for p in PARTS)

    def tower(self, part: str, modality: str) -> str:
        """Name of the parameter set that ``modality``'s tokens use for ``part``."""
        return self._tower_of[part][modality]

    def tower_names(self, part: str) -> list[str]:
        """Parameter sets of ``part``, in first-use order over the modalities."""
        return list(dict.fromkeys(self._tower_of[part].values()))

    def ffn_width(self, tower: str) -> int:
        """SwiGLU hidden width of FFN tower ``tower`` (of each expert, for an MoE tower)."""
        spec = self.moe.get(tower) if self.moe else None
        if spec is not None and spec["hidden_dim"] is not None:
            return spec["hidden_dim"]
        return (self.ffn_hidden_dims or {}).get(tower, self.ffn_hidden_dim)

    def dense(self) -> MoTConfig:
        """The dense twin: same dims, one shared set for every part.

        Per-tower widths and per-tower MoE have no single shared counterpart, so they are dropped (the
        twin uses ``ffn_hidden_dim``; FLOPs per token then match only the towers that use it). An MoE on
        the ``"shared"`` tower (already dense) is kept.
        """
        moe = {tower: spec for tower, spec in (self.moe or {}).items() if tower == SHARED}
        return replace(self, untie=(), ffn_hidden_dims=None, moe=moe or None)


class _Towers(NamedTuple):
    """The parameter sets one modality uses."""

    norm: str
    attention: str
    ffn: str


class SwiGLU(nn.Module):
    """Gated feed-forward network: ``W_out(silu(x W_gate) * x W_up)``, gate and up fused in one matmul."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(dim, 2 * hidden_dim, bias=False)
        self.w_out = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(F.silu(gate) * up)


@dataclass
class RouterStats:
    """Sums over the (present) tokens one MoE tower saw in one layer, merged across its runs.

    ``tokens``: number of tokens (0-d); ``assigned[e]``: routing assignments to expert ``e``, each token
    contributing ``1 / top_k`` per chosen expert (so the load sums to 1); ``probability[e]``: router
    probabilities of ``e`` summed over tokens.
    """

    tokens: torch.Tensor
    assigned: torch.Tensor
    probability: torch.Tensor

    def merge(self, other: RouterStats) -> RouterStats:
        return RouterStats(
            self.tokens + other.tokens, self.assigned + other.assigned, self.probability + other.probability
        )

    def load(self) -> torch.Tensor:
        """Fraction of routing assignments per expert ``[E]`` (zeros when the tower had no token)."""
        return self.assigned / self.tokens.clamp_min(1)

    def balance_loss(self) -> torch.Tensor:
        """Switch-style ``E * sum_e load_e * mean_prob_e``: 1 when balanced, up to E when collapsed.

        ``load`` comes from a hard top-k choice and carries no gradient; the gradient flows through the
        mean router probability, pushing probability away from overloaded experts.
        """
        mean_probability = self.probability / self.tokens.clamp_min(1)
        return self.assigned.numel() * (self.load().detach() * mean_probability).sum()


class _LastForward(dict):
    """Per-forward statistics kept on a module: they hold autograd graph pieces, which ``deepcopy``
    refuses (EMA/SWA copies of the model) and a checkpoint need not carry, so copies start empty."""

    def __deepcopy__(self, memo) -> _LastForward:
        return _LastForward()

    def __reduce__(self):
        return (_LastForward, ())


class MoESwiGLU(nn.Module):
    """Mixture of SwiGLU experts with a learned linear router (softmax, top-k, gates renormalised to 1).

    No token is dropped: every token gets its top-k experts. All experts are evaluated densely on the
    tower's tokens and combined with the (mostly zero) gates: two matmuls as wide as all experts
    together, static shapes, no gather/scatter and no host sync -- FLOPs traded for shapes that suit the
    fixed-layout fast path (measured FLOPs grow with ``n_experts``; the parameters a token *uses*, as
    :func:`~mot_neuro.model.accounting.count_parameters` reports, are the router and ``top_k`` experts).

    Expert ``e``'s weights ``w_in[e]`` (``[2 * hidden, dim]``) and ``w_out[e]`` (``[dim, hidden]``) are laid
    out like :class:`SwiGLU`'s, so a dense FFN copies into every expert (:meth:`load_from_dense`).

    With ``top_k=1`` the renormalised gate is exactly 1: the router then learns only from the balancing
    loss, not from the task loss (Switch leaves the top-1 gate unnormalised for that reason); ``top_k>=2``
    lets the task loss shape the routing.
    """

    def __init__(self, dim: int, hidden_dim: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"need 1 <= top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        self.dim, self.hidden_dim, self.n_experts, self.top_k = dim, hidden_dim, n_experts, top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(n_experts, 2 * hidden_dim, dim))
        self.w_out = nn.Parameter(torch.empty(n_experts, dim, hidden_dim))
        # earlier[e, j]: expert j comes before e, so it wins a tie (exactly top_k experts per token).
        self.register_buffer("earlier", torch.ones(n_experts, n_experts, dtype=torch.bool).tril(-1), persistent=False)

    def expert_parameters(self) -> int:
        """Parameters of one expert."""
        return 3 * self.dim * self.hidden_dim

    def activated_parameters(self) -> int:
        """Parameters one token uses: the router and its ``top_k`` experts."""
        return self.router.weight.numel() + self.top_k * self.expert_parameters()

    @torch.no_grad()
    def load_from_dense(self, ffn: SwiGLU) -> None:
        """Every expert becomes a copy of ``ffn``: with gates summing to 1 the output then equals ``ffn``'s."""
        if ffn.w_out.weight.shape != self.w_out.shape[1:]:
            raise ValueError(
                f"cannot copy a SwiGLU of width {ffn.w_out.weight.shape[1]} into experts of width {self.hidden_dim}"
            )
        self.w_in.copy_(ffn.w_in.weight.expand_as(self.w_in))
        self.w_out.copy_(ffn.w_out.weight.expand_as(self.w_out))

    def _chosen(self, logits: torch.Tensor) -> torch.Tensor:
        """Boolean ``[..., E]``: the top-k experts of each token, by rank (no topk indices, no scatter)."""
        if self.top_k == self.n_experts:
            return torch.ones_like(logits, dtype=torch.bool)
        row, col = logits.unsqueeze(-1), logits.unsqueeze(-2)  # [..., e, 1] vs [..., 1, j]
        ahead = (col > row) | ((col == row) & self.earlier)
        return ahead.sum(-1) < self.top_k

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, RouterStats]:
        """``x [..., dim]`` -> (output ``[..., dim]``, router statistics).

        ``weight [..., 1]`` (bool or 0/1) marks the tokens that count in the statistics (absent tokens are
        computed but do not count); ``None`` = all of them.
        """
        logits = self.router(x).float()  # routing decisions in fp32 also under autocast
        probs = logits.softmax(-1)
        chosen = self._chosen(logits)
        gates = probs * chosen
        gates = gates / gates.sum(-1, keepdim=True)
        gate, up = F.linear(x, self.w_in.flatten(0, 1)).unflatten(-1, (self.n_experts, 2, self.hidden_dim)).unbind(-2)
        mixed = F.silu(gate) * up * gates.unsqueeze(-1).to(up.dtype)  # [..., E, hidden]
        # sum_e gate_e * W_out[e] a_e is one matmul against the experts' output weights side by side.
        out = F.linear(mixed.flatten(-2), self.w_out.transpose(0, 1).flatten(1))

        probs, chosen = probs.reshape(-1, self.n_experts), chosen.reshape(-1, self.n_experts).to(probs.dtype)
        if weight is None:
            tokens = probs.new_full((), float(probs.shape[0]))
        else:
            w = weight.reshape(-1, 1).to(probs.dtype)
            probs, chosen, tokens = probs * w, chosen * w, w.sum()
        return out, RouterStats(tokens, chosen.sum(0) / self.top_k, probs.sum(0))


def _per_tower(make: Callable[[], nn.Module], names: Sequence[str]) -> nn.ModuleDict:
    return nn.ModuleDict({name: make() for name in names})


class _Run(NamedTuple):
    start: int
    length: int
    towers: _Towers


def _apply_runs(dim: int, runs: Sequence[_Run], fn, *inputs: torch.Tensor) -> torch.Tensor:
    """Apply ``fn(*pieces, towers)`` to each run along ``dim`` and join the results.

    Runs partition the token dimension in order (empty runs included), so ``split`` cuts them:
    views forward, and one ``cat`` backward instead of a zero-filled buffer per slice. A single run
    (the dense twin, or modalities sharing a tower) is one call and no copy.
    """
    if len(runs) == 1:
        return fn(*inputs, runs[0].towers)
    lengths = [run.length for run in runs]
    pieces = [torch.split(t, lengths, dim=dim) for t in inputs]
    outs = [fn(*(p[i] for p in pieces), run.towers) for i, run in enumerate(runs)]
    return torch.cat(outs, dim=dim)


class _Runs:
    """Which contiguous runs of tokens share a tower, per stage of a block.

    ``qkv`` groups tokens by (norm, attention) tower, ``block`` by (norm, attention, ffn), ``norm``
    by norm tower. ``dim`` is the token dimension the runs slice. Towers with no token get an empty
    run so that their parameters still take part in the graph (zero gradients, never ``None``: DDP
    then needs no ``find_unused_parameters``).
    """

    def __init__(self, dim: int, segments: Sequence[tuple[int, int, int]], towers: Sequence[_Towers]) -> None:
        self.dim = dim
        self.qkv = self._merge(segments, towers, lambda t: _Towers(t.norm, t.attention, SHARED))
        self.block = self._merge(segments, towers, lambda t: t)
        self.norm = self._merge(segments, towers, lambda t: _Towers(t.norm, SHARED, SHARED))

    @staticmethod
    def _merge(segments, towers_by_modality, key) -> list[_Run]:
        runs: list[_Run] = []
        for start, length, m in segments:
            if length == 0:
                continue
            towers = key(towers_by_modality[m])
            last = runs[-1] if runs else None
            if last is not None and last.towers == towers and last.start + last.length == start:
                runs[-1] = _Run(last.start, last.length + length, towers)
            else:
                runs.append(_Run(start, length, towers))
        used = {r.towers for r in runs}
        end = runs[-1].start + runs[-1].length if runs else 0
        for t in towers_by_modality:
            towers = key(t)
            if towers not in used:
                runs.append(_Run(end, 0, towers))
                used.add(towers)
        return runs


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class _Route:
    """Everything a block needs to know about this batch's tokens."""

    runs: _Runs
    attn_mask: torch.Tensor | None = None
    token_weight: torch.Tensor | None = None  # [B, S, 1] bool in stream order: tokens MoE statistics count
    is_causal: bool = False
    to_attention: Callable[[torch.Tensor], torch.Tensor] = _identity  # stream order -> [B, S, .]
    from_attention: Callable[[torch.Tensor], torch.Tensor] = _identity  # [B, S, .] -> stream order


def _attention_mask(valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean SDPA mask (True = may attend) from a ``[B, S]`` mask of real tokens.

    Absent keys are never attended. Rows of absent queries are kept finite (a fully masked row
    gives NaN, and NaN leaks into gradients even when the row is discarded); their outputs are
    thrown away, so what they see does not matter.
    """
    keys = valid[:, None, None, :]
    if not causal:
        return keys | ~valid.any(dim=-1)[:, None, None, None]
    seq = valid.shape[1]
    lower = torch.ones(seq, seq, dtype=torch.bool, device=valid.device).tril()
    diagonal = torch.eye(seq, dtype=torch.bool, device=valid.device)
    return (keys & lower) | diagonal


class MoTBlock(nn.Module):
    """One layer: per-token stage -> global attention -> per-token stage.

    Stage 1 (per tower): [norm] -> fused QKV projection [-> QK norm].
    Attention: one ``scaled_dot_product_attention`` over the whole sequence, all modalities.
    Stage 2: output projection [+ norm] per tower, residual; [norm] -> SwiGLU FFN [+ norm] per tower,
    residual (dropout and residuals over the whole sequence at once).
    """

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

    def _qkv(self, x: torch.Tensor, towers: _Towers) -> torch.Tensor:
        if self.cfg.norm_placement == "pre":
            x = self.attn_norm[towers.norm](x)
        qkv = self.qkv[towers.attention](x)
        if not self.cfg.qk_norm:
            return qkv
        q, k, v = qkv.unflatten(-1, (3, self.cfg.n_heads, self.cfg.head_dim)).unbind(-3)
        q = self.q_norm[towers.norm](q)
        k = self.k_norm[towers.norm](k)
        return torch.stack((q, k, v), dim=-3).flatten(-3)

    def _mix_and_ffn(
        self,
        x: torch.Tensor,
        attn: torch.Tensor,
        towers: _Towers,
        weight: torch.Tensor | None = None,
        stats: dict[str, RouterStats] | None = None,
    ) -> torch.Tensor:
        attn = self.attn_out[towers.attention](attn)
        if self.cfg.norm_placement == "pre":
            h = x + self.dropout(attn)
            return h + self.dropout(self._ffn(towers.ffn, self.ffn_norm[towers.norm](h), weight, stats))
        h = x + self.dropout(self.attn_norm[towers.norm](attn))
        return h + self.dropout(self.ffn_norm[towers.norm](self._ffn(towers.ffn, h, weight, stats)))

    def _project_attention(self, attn: torch.Tensor, towers: _Towers) -> torch.Tensor:
        out = self.attn_out[towers.attention](attn)
        return out if self.cfg.norm_placement == "pre" else self.attn_norm[towers.norm](out)

    def _feed_forward(self, h: torch.Tensor, towers: _Towers) -> torch.Tensor:
        if self.cfg.norm_placement == "pre":
            return self.ffn[towers.ffn](self.ffn_norm[towers.norm](h))
        return self.ffn_norm[towers.norm](self.ffn[towers.ffn](h))

    def _ffn(self, tower: str, h: torch.Tensor, weight, stats) -> torch.Tensor:
        ffn = self.ffn[tower]
        if not isinstance(ffn, MoESwiGLU):
            return ffn(h)
        out, run_stats = ffn(h, weight)
        # A tower can own several runs (e.g. two modalities sharing it, not adjacent): sum, then normalise.
        stats[tower] = run_stats if tower not in stats else stats[tower].merge(run_stats)
        return out

    def forward(self, x: torch.Tensor, route: _Route) -> torch.Tensor:
        qkv = route.to_attention(_apply_runs(route.runs.dim, route.runs.qkv, self._qkv, x))
        batch, seq, _ = qkv.shape
        q, k, v = qkv.view(batch, seq, 3, self.cfg.n_heads, self.cfg.head_dim).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=route.attn_mask,
            dropout_p=self.cfg.dropout if self.training else 0.0,
            is_causal=route.is_causal,
        )
        attn = route.from_attention(attn.transpose(1, 2).reshape(batch, seq, self.cfg.dim))
        if not self.has_moe:
            # Only the projections are per tower; dropout and residuals run once over the whole sequence
            # (with small towers, per-tower elementwise ops cost more than the matmuls).
            runs = route.runs
            h = x + self.dropout(_apply_runs(runs.dim, runs.qkv, self._project_attention, attn))
            return h + self.dropout(_apply_runs(runs.dim, runs.block, self._feed_forward, h))
        stats: dict[str, RouterStats] = {}

        def mix_and_ffn(x: torch.Tensor, attn: torch.Tensor, *weight_and_towers) -> torch.Tensor:
            *weight, towers = weight_and_towers
            return self._mix_and_ffn(x, attn, towers, weight[0] if weight else None, stats)

        # The presence weights are cut into runs with the tokens, so each MoE run sees its own slice.
        inputs = (x, attn) if route.token_weight is None else (x, attn, route.token_weight)
        out = _apply_runs(route.runs.dim, route.runs.block, mix_and_ffn, *inputs)
        self.router_stats = _LastForward(stats)
        return out


class MoTBackbone(nn.Module):
    """A stack of :class:`MoTBlock` over modality-tagged token embeddings ``[B, S, dim]``.

    ``forward(x, routing, present=None)`` where ``routing`` is

    * a :class:`ModalityLayout` (fast path: contiguous segments, same for every sample), or
    * a ``[B, S]`` (or ``[S]``) integer tensor of modality ids indexing ``cfg.modalities``,
      ``PAD_ID`` (-1) for padding, or
    * a list of boolean masks ``[B, S]`` (or ``[S]``), one per modality, as in the reference code.

    ``present`` (``[B, S]`` bool) marks real tokens; absent and padding tokens neither attend nor
    are attended, and come out equal to their input.

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
            _Towers(cfg.tower("norm", m), cfg.tower("attention", m), cfg.tower("ffn", m)) for m in cfg.modalities
        ]
        self._fixed_runs_cache: dict[ModalityLayout, _Runs] = {}
        self.has_moe = any(block.has_moe for block in self.blocks)
        self.init_weights()

    # ----------------------------------------------------------------------------- parameters
    def tower_modules(self):
        """``(part, tower, name, module)`` for every per-tower module, ``name`` its dotted path."""
        for i, block in enumerate(self.blocks):
            for part, tower, attr, module in block.tower_modules():
                yield part, tower, f"blocks.{i}.{attr}.{tower}", module
        if self.final_norm is not None:
            for tower, module in self.final_norm.items():
                yield "norm", tower, f"final_norm.{tower}", module

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, init_std) projections; the two projections that write into the residual
        stream (attention output, FFN output) scaled by 1/sqrt(2 * n_layers) so the stream's
        variance stays flat with depth; norms start at one. Every tower is drawn independently."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for _, _, name, module in self.tower_modules():
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

    @torch.no_grad()
    def load_towers_from(self, source: MoTBackbone) -> None:
        """Warm start: copy each of ``source``'s parameter sets into every tower that uses it.

        With a dense ``source`` every modality's set becomes a copy of the shared set, so at step 0
        this model computes exactly what the dense model computes. Works between any two tower
        groupings as long as each tower here maps to one tower of ``source``. An MoE tower warm
        started from a plain SwiGLU gets it in every expert (its router keeps its own init): gates sum
        to 1, so the output is still the dense FFN's at step 0. Widths must match.
        """
        if source.cfg.dim != self.cfg.dim or source.cfg.n_layers != self.cfg.n_layers:
            raise ValueError(
                f"cannot warm start: source has dim={source.cfg.dim}, n_layers={source.cfg.n_layers}; "
                f"this model dim={self.cfg.dim}, n_layers={self.cfg.n_layers}"
            )
        missing = [m for m in self.cfg.modalities if m not in source.cfg.modalities]
        if missing:
            raise ValueError(f"cannot warm start: source model has no modality {missing}")
        source_modules = {name: module for _, _, name, module in source.tower_modules()}
        plan: dict[str, str] = {}
        for part, tower, name, _ in self.tower_modules():
            prefix = name.rsplit(".", 1)[0]
            sources = {
                f"{prefix}.{source.cfg.tower(part, m)}" for m in self.cfg.modalities if self.cfg.tower(part, m) == tower
            }
            if len(sources) != 1:
                raise ValueError(
                    f"cannot warm start {name}: it would need one of several source sets {sorted(sources)}"
                )
            plan[name] = sources.pop()
        for _, _, name, module in self.tower_modules():
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
                    f"cannot warm start {name} ({type(module).__name__}) from {plan[name]} "
                    f"({type(source_module).__name__})"
                )
            try:
                module.load_state_dict(source_module.state_dict())
            except RuntimeError as error:  # shapes differ: other FFN width or number of experts
                raise ValueError(f"cannot warm start {name} from {plan[name]}: {error}") from error

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

    # ------------------------------------------------------------------------------- routing
    def _fixed_runs(self, layout: ModalityLayout) -> _Runs:
        runs = self._fixed_runs_cache.get(layout)
        if runs is None:
            unknown = [n for n in layout.names if n not in self.cfg.modalities]
            if unknown:
                raise ValueError(f"layout modalities {unknown} are not among the model's {list(self.cfg.modalities)}")
            segments = [
                (start, count, self.cfg.modalities.index(name))
                for name, count, start in zip(layout.names, layout.counts, layout.offsets, strict=False)
            ]
            runs = _Runs(1, segments, self._towers_by_modality)
            self._fixed_runs_cache[layout] = runs
        return runs

    # ------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, routing: Routing, present: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim:
            raise ValueError(f"expected token embeddings [batch, seq, {self.cfg.dim}], got {tuple(x.shape)}")
        batch, seq, _ = x.shape
        if present is not None:
            present = present.to(device=x.device, dtype=torch.bool)
            if tuple(present.shape) != (batch, seq):
                raise ValueError(f"present mask {tuple(present.shape)} does not match tokens [{batch}, {seq}]")
        for block in self.blocks:
            block.router_stats = _LastForward()  # a forward stopped early must leave no stale statistics
        if isinstance(routing, ModalityLayout):
            return self._forward_fixed(x, routing, present)
        ids = masks_to_ids(routing) if isinstance(routing, (list, tuple)) else routing
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"routing must be a ModalityLayout, an id tensor or a list of masks, got {type(routing)}")
        return self._forward_grouped(x, ids.to(x.device), present)

    def _forward_fixed(self, x: torch.Tensor, layout: ModalityLayout, present: torch.Tensor | None) -> torch.Tensor:
        """Fast path: runs are slices of ``[B, S, D]``; no indexing, no host sync, static shapes."""
        if layout.seq_len != x.shape[1]:
            raise ValueError(f"layout {layout.as_dict()} has {layout.seq_len} tokens, input has {x.shape[1]}")
        route = _Route(self._fixed_runs(layout))
        if present is None:
            route.is_causal = self.cfg.causal
        else:
            route.attn_mask = _attention_mask(present, self.cfg.causal)
            if self.has_moe:
                route.token_weight = present[..., None]
        h = self._run_blocks(x, route)
        return h if present is None else torch.where(present[..., None], h, x)

    def _forward_grouped(self, x: torch.Tensor, ids: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """General path: sort tokens by modality once; the stream is ``[N_real, D]`` in that order."""
        batch, seq, width = x.shape
        if ids.dim() == 1:
            ids = ids.expand(batch, seq)
        if tuple(ids.shape) != (batch, seq):
            raise ValueError(f"modality ids have shape {tuple(ids.shape)}, tokens are [{batch}, {seq}]")
        grouping = group_tokens(ids, len(self.cfg.modalities), present)
        starts = [sum(grouping.counts[:m]) for m in range(len(grouping.counts))]
        segments = [(start, count, m) for m, (start, count) in enumerate(zip(starts, grouping.counts, strict=True))]
        positions = grouping.positions

        def to_attention(qkv: torch.Tensor) -> torch.Tensor:
            full = qkv.new_zeros(batch * seq, qkv.shape[-1]).index_copy(0, positions, qkv)
            return full.view(batch, seq, -1)

        def from_attention(attn: torch.Tensor) -> torch.Tensor:
            return attn.reshape(batch * seq, width).index_select(0, positions)

        route = _Route(
            _Runs(0, segments, self._towers_by_modality), to_attention=to_attention, from_attention=from_attention
        )
        if grouping.has_padding:
            route.attn_mask = _attention_mask(grouping.valid, self.cfg.causal)
        else:
            route.is_causal = self.cfg.causal
        flat = x.reshape(batch * seq, width)
        h = self._run_blocks(flat.index_select(0, positions), route)
        return flat.index_copy(0, positions, h).view(batch, seq, width)

    def _run_blocks(self, h: torch.Tensor, route: _Route) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, route)
        if self.final_norm is None:
            return h
        return _apply_runs(route.runs.dim, route.runs.norm, lambda t, towers: self.final_norm[towers.norm](t), h)
