"""Neuro-omics encoder: per-modality tokenizers -> MoT backbone (or its dense twin) -> pooled subject embeddings.

The sequence is a fixed layout: ``[summary tokens | modality 1 | modality 2 | ...]``, every subject the same
blocks, so the backbone runs its fast path (per-modality slices, no indexing). The summary tokens are learned
[CLS]-style tokens forming their own modality (and MoT tower); they are always present, so every subject has at
least one token to attend to. Absent tokens are masked out of attention by the backbone and left out of every
pooled mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Literal, NamedTuple

import torch
from torch import nn

from .config import MoTOptions, option_fields
from .layout import ModalityLayout, check_modality_names
from .mot import SHARED, MoTBackbone, MoTConfig
from .tokenizers import INIT_STD, ModalitySpec, ModalityTokenizer, check_projection

SUMMARY = "summary"
"""Modality (and default tower) name of the summary tokens; reserved."""

POOLINGS = ("summary", "mean")


@dataclass(kw_only=True)
class EncoderOptions(MoTOptions):
    """The encoder's options: the backbone's (:class:`MoTOptions`) and the tokenizers' and pooling's below.

    This is ``model.encoder`` of the CLI and the config files. ``towers`` maps the data modalities (and
    optionally ``"summary"``; by default the summary tokens get their own tower). ``ffn_hidden_dims`` and ``moe``
    are keyed by backbone tower names: the data modalities' towers, and ``"summary"``, which needs neither.

    projection: ``"per_token"`` or ``"shared"`` feature projection in the tokenizers.
    n_summary_tokens: learned [CLS]-style tokens placed first; 0 = none.
    pooling: ``"summary"`` = mean of the summary tokens' outputs; ``"mean"`` = mean over the present data tokens
        of all modalities (summary tokens not included).
    """

    dropout: float = 0.2  # the backbone's default is 0; an encoder trained on a few hundred subjects needs it
    projection: Literal["per_token", "shared"] = "per_token"
    n_summary_tokens: int = 1
    pooling: Literal["summary", "mean"] = "summary"

    def options(self) -> dict:
        """The options as plain JSON-able values (lists, dicts, numbers, strings), for checkpoints and logs."""
        out = {name: getattr(self, name) for name in option_fields(EncoderOptions)}
        out["untie"] = list(out["untie"])
        for name in ("towers", "ffn_hidden_dims"):
            out[name] = None if out[name] is None else dict(out[name])
        out["moe"] = None if out["moe"] is None else {tower: dict(spec) for tower, spec in out["moe"].items()}
        return out


@dataclass
class EncoderConfig(EncoderOptions):
    """Architecture of a :class:`NeuroOmicsEncoder`: :class:`EncoderOptions` over ``modalities``, the data
    modalities in layout order (:class:`ModalitySpec` or their dicts). ``untie=()`` gives the dense twin."""

    modalities: list[ModalitySpec]

    def __post_init__(self) -> None:
        self.modalities = [m if isinstance(m, ModalitySpec) else ModalitySpec.from_dict(m) for m in self.modalities]
        names = [m.name for m in self.modalities]
        check_modality_names(names)
        if SUMMARY in names:
            raise ValueError(f"modality name {SUMMARY!r} is reserved for the summary tokens; rename that modality")
        check_projection(self.projection)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        if int(self.n_summary_tokens) != self.n_summary_tokens or self.n_summary_tokens < 0:
            raise ValueError(f"n_summary_tokens must be an integer >= 0, got {self.n_summary_tokens!r}")
        self.n_summary_tokens = int(self.n_summary_tokens)
        if self.pooling == "summary" and self.n_summary_tokens == 0:
            raise ValueError('n_summary_tokens=0 with pooling="summary": use >= 1, or pooling "mean" without them')
        if self.towers is not None:
            self.towers = dict(self.towers)
        if self.ffn_hidden_dims is not None:
            self.ffn_hidden_dims = dict(self.ffn_hidden_dims)
        if self.moe is not None:
            self.moe = {tower: dict(spec) for tower, spec in self.moe.items()}
        # Building the backbone config checks dims, parts and towers now, with MoTConfig's messages.
        self.untie = tuple(self.backbone_config().untie)

    @property
    def modality_names(self) -> tuple[str, ...]:
        """Names of the data modalities (summary excluded), in layout order."""
        return tuple(m.name for m in self.modalities)

    def layout(self) -> ModalityLayout:
        """``summary`` (when it has tokens) first, then the data modalities."""
        counts = {SUMMARY: self.n_summary_tokens} if self.n_summary_tokens else {}
        counts.update({m.name: m.n_tokens for m in self.modalities})
        return ModalityLayout.from_counts(counts)

    def backbone_config(self) -> MoTConfig:
        """The backbone's config: every :class:`MoTOptions` field as given, over the layout's modalities."""
        options = {name: getattr(self, name) for name in option_fields(MoTOptions)}
        if self.towers is not None:
            towers = {name: tower for name, tower in self.towers.items() if name != SUMMARY}
            if self.n_summary_tokens:
                towers[SUMMARY] = self.towers.get(SUMMARY, SUMMARY)
            options["towers"] = towers
        return MoTConfig(modalities=self.layout().names, init_std=INIT_STD, **options)

    def to_dict(self) -> dict:
        """JSON-able (plain lists, dicts, numbers, strings), for checkpoint hyperparameters."""
        return {"modalities": [m.to_dict() for m in self.modalities], **self.options()}

    @classmethod
    def from_dict(cls, d: Mapping) -> EncoderConfig:
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown EncoderConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


def dense_twin_config(cfg: EncoderConfig) -> EncoderConfig:
    """Same encoder with one shared parameter set for every part: same FLOPs per token, fewer parameters.

    Per-tower FFN widths and per-tower MoE have no shared counterpart and are dropped, as in
    :meth:`MoTConfig.dense`; an MoE on the ``"shared"`` tower is kept."""
    moe = {tower: spec for tower, spec in (cfg.moe or {}).items() if tower == SHARED}
    return replace(cfg, untie=(), ffn_hidden_dims=None, moe=moe or None)


class EncoderOutput(NamedTuple):
    hidden: torch.Tensor  # [B, S, D] backbone output over the whole layout (summary tokens first)
    pooled: torch.Tensor  # [B, D] subject embedding (cfg.pooling)
    per_modality: dict[str, torch.Tensor]  # modality -> [B, D] mean over its present tokens; zeros if none
    tokens: dict[str, torch.Tensor]  # modality -> [B, T, D] slice of hidden (data modalities only)
    present: torch.Tensor  # [B, S] bool, summary tokens always True


def masked_mean(hidden: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [B, T, D]`` over tokens with ``present [B, T]``; zeros for a row with none (not NaN)."""
    weight = present.to(hidden.dtype)[..., None]
    return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1)


class NeuroOmicsEncoder(nn.Module):
    """Tokenizers + MoT backbone over the fixed layout of :class:`EncoderConfig`.

    ``forward(batch, masked=None, layer=None)`` with ``batch = {"values": {mod: [B, T, F]}, "missing":
    {mod: [B, T, F]}, "present": {mod: [B, T]}}``; ``missing`` and ``present`` may leave a modality out (nothing
    missing, all present). ``masked`` (``{mod: [B, T] bool}``) hides those tokens' content behind the mask embedding.
    A modality with ``n_tokens=0`` needs no data and ignores any it is given; keys not in the config are ignored.
    ``layer`` picks the hidden states every output is computed from: ``None`` (or the last block) = the backbone's
    output; ``k`` = the output of block ``k`` (0-based, negative counts from the end), without the final norm.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layout = cfg.layout()
        self.backbone = MoTBackbone(cfg.backbone_config())
        self.tokenizers = nn.ModuleDict(
            {spec.name: ModalityTokenizer(spec, cfg.dim, cfg.projection) for spec in cfg.modalities}
        )
        self.summary_tokens = nn.Parameter(torch.empty(cfg.n_summary_tokens, cfg.dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Tokenizers and summary tokens; the backbone initialises itself (``MoTBackbone.init_weights``)."""
        if self.summary_tokens.numel():
            nn.init.normal_(self.summary_tokens, 0.0, INIT_STD)
        for tokenizer in self.tokenizers.values():
            tokenizer.reset_parameters()

    def _batch_size(self, batch: Mapping[str, Mapping[str, torch.Tensor]]) -> int:
        for key in ("values", "present", "missing"):
            for tensor in batch.get(key, {}).values():
                return tensor.shape[0]
        raise ValueError("cannot tell the batch size: the batch holds no tensor")

    def _embed(
        self, spec: ModalitySpec, batch: Mapping, masked: Mapping, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = self.tokenizers[spec.name]
        device = self.summary_tokens.device
        if spec.n_tokens == 0:
            # Still run the (empty) tokenizer so its parameters stay in the graph for DDP.
            values = torch.zeros(batch_size, 0, spec.n_features, device=device)
            empty = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
            return tokenizer(values, values.bool(), empty), empty
        if spec.name not in batch["values"]:
            raise ValueError(
                f"batch has no values for modality {spec.name!r} (it has {sorted(batch['values'])}); "
                "to leave a modality out, build the encoder with n_tokens=0 for it"
            )
        values = batch["values"][spec.name]
        if values.shape[0] != batch_size:
            raise ValueError(f"modality {spec.name!r} has batch size {values.shape[0]}, expected {batch_size}")
        missing = batch.get("missing", {}).get(spec.name)
        if missing is None:
            missing = torch.zeros_like(values, dtype=torch.bool)
        present = batch.get("present", {}).get(spec.name)
        if present is None:
            present = torch.ones(values.shape[:2], dtype=torch.bool, device=values.device)
        elif tuple(present.shape) != tuple(values.shape[:2]):
            raise ValueError(
                f"modality {spec.name!r}: present must be [batch, n_tokens] = {tuple(values.shape[:2])}, "
                f"got {tuple(present.shape)}"
            )
        return tokenizer(values, missing, masked.get(spec.name)), present.bool()

    def forward(
        self,
        batch: Mapping[str, Mapping[str, torch.Tensor]],
        masked: Mapping[str, torch.Tensor] | None = None,
        layer: int | None = None,
    ) -> EncoderOutput:
        n_blocks = self._blocks_to_run(layer)
        if "values" not in batch:
            raise ValueError(f"batch needs a 'values' dict (modality -> [B, T, F]); got keys {sorted(batch)}")
        masked = masked or {}
        unknown = sorted(set(masked) - set(self.cfg.modality_names))
        if unknown:
            raise ValueError(f"masked names modalities {unknown} that are not among {list(self.cfg.modality_names)}")
        batch_size = self._batch_size(batch)
        n_summary = self.cfg.n_summary_tokens
        device = self.summary_tokens.device
        embeddings = [self.summary_tokens.expand(batch_size, -1, -1)]
        presence = [torch.ones(batch_size, n_summary, dtype=torch.bool, device=device)]
        for spec in self.cfg.modalities:
            embedded, present = self._embed(spec, batch, masked, batch_size)
            embeddings.append(embedded)
            presence.append(present)
        x = torch.cat(embeddings, dim=1)
        present = torch.cat(presence, dim=1)
        hidden = self.backbone(x, self.layout, present, n_blocks=n_blocks)

        data_hidden, data_present = hidden[:, n_summary:], present[:, n_summary:]
        counts = [spec.n_tokens for spec in self.cfg.modalities]
        tokens = dict(zip(self.cfg.modality_names, torch.split(data_hidden, counts, dim=1), strict=True))
        presents = dict(zip(self.cfg.modality_names, torch.split(data_present, counts, dim=1), strict=True))
        per_modality = {name: masked_mean(tokens[name], presents[name]) for name in tokens}
        if self.cfg.pooling == "summary":
            pooled = hidden[:, :n_summary].mean(dim=1)
        else:
            pooled = masked_mean(data_hidden, data_present)
        return EncoderOutput(hidden=hidden, pooled=pooled, per_modality=per_modality, tokens=tokens, present=present)

    def _blocks_to_run(self, layer: int | None) -> int | None:
        """How many backbone blocks give ``layer``'s output; ``None`` for the full output (final norm included)."""
        if layer is None:
            return None
        n = len(self.backbone.blocks)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise ValueError(f"layer must be an integer in [{-n}, {n - 1}] ({n} blocks), got {layer!r}")
        index = layer % n
        return None if index == n - 1 else index + 1
