"""What a MoT backbone is: :class:`MoTConfig`, its validation, and which tower each modality uses per part.

MoT (Liang et al., TMLR 2025, arXiv 2411.04996) unties every non-embedding parameter of a layer by
modality. Here the untying is chosen per *part* (``PARTS``) and modalities may share a *tower* (one
parameter set); ``untie=()`` is the dense twin, with one ``"shared"`` tower for everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from .layout import check_modality_names

PARTS = ("attention", "ffn", "norm")
"""Parts of a layer that can be untied (given one parameter set per tower)."""

SHARED = "shared"
"""Tower name of a tied part."""


@dataclass(kw_only=True)
class MoTOptions:
    """The backbone's architecture options, declared once.

    :class:`MoTConfig` adds the modalities; the encoder's options (``model.encoder`` in the CLI and configs)
    extend these, so an option added here reaches the CLI, the config files and checkpoints by itself. The
    defaults are the small model that suits cohorts of hundreds to thousands of subjects (the demo's).

    dim, n_layers, n_heads: width, depth and attention heads (``dim`` divisible by ``n_heads``).
    untie: parts that get one parameter set per tower: any subset of ``PARTS``. Empty = dense.
    towers: modality -> tower name. Default: every modality its own tower (plain MoT). Modalities
        mapped to one tower share its parameters (the paper's modality-separation analysis).
    norm_placement: ``"pre"``: ``h = x + Attn(Norm(x)); out = h + FFN(Norm(h))`` with a final norm;
        ``"output"`` (the MoT paper/reference): ``h = x + Norm(Attn(x)); out = h + Norm(FFN(h))``.
    qk_norm: RMS-normalise queries and keys per head (weights follow the ``norm`` part).
    dropout: on each sub-layer's output (residual dropout), in training.
    attention_dropout: on the attention probabilities, in training. Off by default, as in current transformer
        libraries: a mask drawn over the whole ``[batch, heads, seq, seq]`` attention matrix forces
        ``scaled_dot_product_attention`` off its fused kernels onto the math path, which materialises that matrix
        (at 600 tokens most of a step's time and memory). ``None`` = ``dropout`` (what checkpoints made before this
        option existed were trained with).
    ffn_hidden_dim: SwiGLU hidden width; default 8/3 * dim rounded up to a multiple of 64.
    ffn_hidden_dims: FFN tower name -> its own SwiGLU width (towers not listed use ``ffn_hidden_dim``).
        Needs ``"ffn"`` in ``untie``; attention keeps one width (it is global over all modalities).
    moe: FFN tower name -> mixture-of-experts spec, e.g. ``{"brain": {"n_experts": 4, "top_k": 2}}``.
        Keys: ``n_experts`` (required), ``top_k`` (default ``min(2, n_experts)``), ``hidden_dim`` (expert
        width, default the tower's FFN width), ``balance_weight`` (weight of the load-balancing loss, default
        0.01). With a tied FFN the only tower is ``"shared"`` (a dense MoE transformer). See :class:`MoESwiGLU`.
    """

    dim: int = 32
    n_layers: int = 2
    n_heads: int = 4
    untie: Sequence[Literal["attention", "ffn", "norm"]] = PARTS
    towers: Mapping[str, str] | None = None
    norm_placement: Literal["pre", "output"] = "pre"
    qk_norm: bool = False
    dropout: float = 0.0
    attention_dropout: float | None = 0.0
    ffn_hidden_dim: int | None = None
    ffn_hidden_dims: Mapping[str, int] | None = None
    moe: Mapping[str, Mapping] | None = None


def option_fields(options_class: type) -> list[str]:
    """Names of the options a dataclass declares (its ``init`` fields), in declaration order."""
    return [f.name for f in fields(options_class) if f.init]


@dataclass
class MoTConfig(MoTOptions):
    """Architecture of a MoT backbone (or, with ``untie=()``, of its dense twin): :class:`MoTOptions` over
    ``modalities``, the model's modality order (general-path ids index into it).

    causal, norm_eps, init_std: backbone internals the encoder does not expose (causal attention mask, norm
    epsilon, the standard deviation of the initial weights).
    """

    modalities: Sequence[str]
    causal: bool = False
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
        for name in ("dim", "n_layers", "n_heads", "ffn_hidden_dim"):
            value = getattr(self, name)
            if value is None and name == "ffn_hidden_dim":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
                raise ValueError(f"{name}={value!r}: expected a whole number >= 1")
            setattr(self, name, int(value))
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.norm_placement not in ("pre", "output"):
            raise ValueError(f"norm_placement must be 'pre' or 'output', got {self.norm_placement!r}")
        if self.attention_dropout is None:
            self.attention_dropout = self.dropout
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name}={value!r}: expected a number in [0, 1)")
            setattr(self, name, float(value))
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
