"""Neuro-omics encoder: per-modality tokenizers -> MoT backbone (or its dense twin) -> pooled subject embeddings.

The sequence is a fixed layout: ``[summary tokens | modality 1 | modality 2 | ...]``, every subject the same
blocks, so the backbone runs its fast path (per-modality slices, no indexing). The summary tokens are learned
[CLS]-style tokens forming their own modality (and MoT tower); they are always present, so every subject has at
least one token to attend to. Absent tokens are masked out of attention by the backbone and left out of every
pooled mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import torch
from torch import nn

from .layout import ModalityLayout, check_modality_names
from .mot import PARTS, SHARED, MoTBackbone, MoTConfig
from .tokenizers import INIT_STD, ModalitySpec, ModalityTokenizer, check_projection

SUMMARY = "summary"
"""Modality (and default tower) name of the summary tokens; reserved."""

POOLINGS = ("summary", "mean")


@dataclass
class EncoderConfig:
    """Architecture of a :class:`NeuroOmicsEncoder`; ``untie=()`` gives the dense twin with the same code.

    modalities: the data modalities in layout order (:class:`ModalitySpec` or their dicts).
    untie, towers, norm_placement, qk_norm, dropout: as in :class:`MoTConfig`. ``towers`` maps the data
        modalities (and optionally ``"summary"``; by default the summary tokens get their own tower).
    projection: ``"per_token"`` or ``"shared"`` feature projection in the tokenizers.
    n_summary_tokens: learned [CLS]-style tokens placed first; 0 = none.
    pooling: ``"summary"`` = mean of the summary tokens' outputs; ``"mean"`` = mean over the present data tokens
        of all modalities (summary tokens not included).
    ffn_hidden_dim: SwiGLU width, default as in :class:`MoTConfig`.
    ffn_hidden_dims, moe: per-tower FFN widths and mixture-of-experts towers, as in :class:`MoTConfig` (keys are
        backbone tower names: the data modalities' towers, and ``"summary"``, which needs neither).
    """

    modalities: list[ModalitySpec]
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    untie: Sequence[str] = PARTS
    towers: Mapping[str, str] | None = None
    norm_placement: str = "pre"
    qk_norm: bool = False
    dropout: float = 0.0
    projection: str = "per_token"
    n_summary_tokens: int = 1
    pooling: str = "summary"
    ffn_hidden_dim: int | None = None
    ffn_hidden_dims: Mapping[str, int] | None = None
    moe: Mapping[str, Mapping] | None = None

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
            raise ValueError('pooling="summary" needs n_summary_tokens >= 1; use pooling="mean" without them')
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
        names = self.layout().names
        towers = None
        if self.towers is not None:
            towers = {name: tower for name, tower in self.towers.items() if name != SUMMARY}
            if self.n_summary_tokens:
                towers[SUMMARY] = self.towers.get(SUMMARY, SUMMARY)
        return MoTConfig(
            modalities=names,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            ffn_hidden_dim=self.ffn_hidden_dim,
            ffn_hidden_dims=self.ffn_hidden_dims,
            moe=self.moe,
            untie=self.untie,
            towers=towers,
            norm_placement=self.norm_placement,
            qk_norm=self.qk_norm,
            dropout=self.dropout,
            init_std=INIT_STD,
        )

    def to_dict(self) -> dict:
        """JSON-able (plain lists, dicts, numbers, strings), for checkpoint hyperparameters."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["modalities"] = [m.to_dict() for m in self.modalities]
        d["untie"] = list(self.untie)
        d["towers"] = None if self.towers is None else dict(self.towers)
        d["ffn_hidden_dims"] = None if self.ffn_hidden_dims is None else dict(self.ffn_hidden_dims)
        d["moe"] = None if self.moe is None else {tower: dict(spec) for tower, spec in self.moe.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
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
        block = self._block_index(layer)
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
        hidden = self.backbone(x, self.layout, present) if block is None else self._block_output(x, present, block)

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

    def _block_index(self, layer: int | None) -> int | None:
        """Index of the block to stop after, or ``None`` for the backbone's full output (final norm included)."""
        if layer is None:
            return None
        n = len(self.backbone.blocks)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise ValueError(f"layer must be an integer in [{-n}, {n - 1}] ({n} blocks), got {layer!r}")
        index = layer % n
        return None if index == n - 1 else index

    def _block_output(self, x: torch.Tensor, present: torch.Tensor, index: int) -> torch.Tensor:
        """Hidden states after block ``index``: a forward hook catches them and stops the backbone there.

        A hook keeps the backbone's routing (private to ``routing.py``) in one place; raising from it skips the blocks
        above, which would be wasted work.
        """

        def stop(module: nn.Module, args, output: torch.Tensor) -> None:
            raise _BlockReached(output)

        handle = self.backbone.blocks[index].register_forward_hook(stop)
        try:
            self.backbone(x, self.layout, present)
        except _BlockReached as reached:
            hidden = reached.output
        else:
            raise RuntimeError(f"backbone block {index} did not run")
        finally:
            handle.remove()
        # as the backbone does for its output: absent tokens come out equal to their input
        return torch.where(present[..., None], hidden, x)


class _BlockReached(Exception):
    """Carries a block's output out of the backbone (see ``NeuroOmicsEncoder._block_output``)."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("block output reached")
        self.output = output
