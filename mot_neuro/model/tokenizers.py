"""Per-modality input tokenizers and reconstruction decoders, in pure PyTorch.

A modality arrives as ``values [B, T, F]``: T tokens (genes, brain regions, behaviour measures), each with up to
F standardized features (slots a token does not have are ``False`` in the spec's ``feature_mask``), ``missing``
flags for values that were imputed, and ``present [B, T]`` for tokens the subject has at all (the backbone masks
absent tokens out of attention; the tokenizer does not need to know). Token ``t`` is embedded as::

    embedding[t] = content[t] + identity[t]

    content[t] = W_value[t] (values[t] * feature_mask[t]) + W_missing[t] (missing[t] * feature_mask[t])   numeric
               = E_t[category]    (row n_categories when the category is missing or unknown)             categorical
               = mask_embedding   (when ``masked[t]``: masked token modelling hides the content)

``projection="per_token"`` gives every token its own ``F -> D`` maps (all tokens in one einsum over a ``[T, F, D]``
weight); ``"shared"`` gives the modality one map for all its tokens. The ``W_missing`` term is the learned
embedding of missing values: an imputed value never looks like an observed one. The identity embedding says which
token this is -- genes and regions form a set, not a sequence, so there are no positions.

:class:`ModalityDecoder` is the matching reconstruction head: ``hidden [B, T, D] -> [B, T, F]`` standardized values
(and category logits), with the masked-modelling loss counted only on masked, real, observed slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layout import check_modality_names

PROJECTIONS = ("per_token", "shared")
"""How a modality's tokens map features to the model width: one map per token, or one for the modality."""

INIT_STD = 0.02


@dataclass(frozen=True)
class ModalitySpec:
    """Static description of one modality's tokens, JSON-friendly for checkpoint hyperparameters.

    name: modality name (an identifier: it becomes a parameter key).
    n_tokens: tokens per subject (0 = modality left out of an ablation; it keeps its place in the config).
    n_features: feature slots per token (tokens with fewer features pad; see ``feature_mask``).
    feature_mask: ``[n_tokens][n_features]`` bools, ``False`` for padding slots; ``None`` = every slot is real.
    categorical: token index -> number of categories. Such a token carries its category index (as a float) in
        feature 0; its other features are ignored.
    """

    name: str
    n_tokens: int
    n_features: int
    feature_mask: tuple[tuple[bool, ...], ...] | None = None
    categorical: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_modality_names([self.name])
        if int(self.n_tokens) != self.n_tokens or self.n_tokens < 0:
            raise ValueError(f"modality {self.name!r}: n_tokens must be an integer >= 0, got {self.n_tokens!r}")
        if int(self.n_features) != self.n_features or self.n_features < 1:
            raise ValueError(f"modality {self.name!r}: n_features must be an integer >= 1, got {self.n_features!r}")
        object.__setattr__(self, "n_tokens", int(self.n_tokens))
        object.__setattr__(self, "n_features", int(self.n_features))
        if self.feature_mask is not None:
            object.__setattr__(self, "feature_mask", self._checked_feature_mask(self.feature_mask))
        object.__setattr__(self, "categorical", self._checked_categorical(self.categorical))

    def __hash__(self) -> int:
        # The generated hash would fail on the categorical dict; specs are handy as cache keys.
        return hash((self.name, self.n_tokens, self.n_features, self.feature_mask, tuple(self.categorical.items())))

    def _checked_feature_mask(self, mask) -> tuple[tuple[bool, ...], ...]:
        if hasattr(mask, "tolist"):  # a tensor or array
            mask = mask.tolist()
        rows = tuple(tuple(bool(v) for v in row) for row in mask)
        shape_ok = len(rows) == self.n_tokens and all(len(row) == self.n_features for row in rows)
        if not shape_ok:
            got = f"{len(rows)} rows of lengths {sorted({len(row) for row in rows})}"
            raise ValueError(
                f"modality {self.name!r}: feature_mask must be [n_tokens={self.n_tokens}][n_features="
                f"{self.n_features}], got {got}"
            )
        return rows

    def _checked_categorical(self, categorical: Mapping) -> dict[int, int]:
        # Keys come back as strings from JSON.
        checked = {int(token): int(n) for token, n in dict(categorical).items()}
        for token, n in sorted(checked.items()):
            if not 0 <= token < self.n_tokens:
                raise ValueError(
                    f"modality {self.name!r}: categorical token {token} is outside [0, {self.n_tokens - 1}]"
                )
            if n < 1:
                raise ValueError(f"modality {self.name!r}: categorical token {token} needs >= 1 category, got {n}")
            if self.feature_mask is not None and not self.feature_mask[token][0]:
                raise ValueError(
                    f"modality {self.name!r}: categorical token {token} keeps its category in feature 0, "
                    "but feature_mask marks that slot as padding"
                )
        return dict(sorted(checked.items()))

    def feature_mask_tensor(self) -> torch.Tensor:
        """``[n_tokens, n_features]`` bool tensor of real feature slots."""
        if self.feature_mask is None:
            return torch.ones(self.n_tokens, self.n_features, dtype=torch.bool)
        return torch.tensor(self.feature_mask, dtype=torch.bool).reshape(self.n_tokens, self.n_features)

    def numeric_slots(self) -> torch.Tensor:
        """``[n_tokens, n_features]`` bool: real slots of numeric (non-categorical) tokens."""
        slots = self.feature_mask_tensor()
        if self.categorical:
            slots[list(self.categorical)] = False
        return slots

    def to_dict(self) -> dict:
        """Plain lists and string keys, so that ``json.loads(json.dumps(d)) == d``."""
        return {
            "name": self.name,
            "n_tokens": self.n_tokens,
            "n_features": self.n_features,
            "feature_mask": None if self.feature_mask is None else [list(row) for row in self.feature_mask],
            "categorical": {str(token): n for token, n in self.categorical.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ModalitySpec:
        unknown = sorted(set(d) - {"name", "n_tokens", "n_features", "feature_mask", "categorical"})
        if unknown:
            raise ValueError(f"unknown ModalitySpec field(s) {unknown}")
        d = dict(d)
        if d.get("feature_mask") is not None and len(d["feature_mask"]) == 0:
            d["feature_mask"] = None  # an empty mask (as checkpoints store it): every slot real
        return cls(**d)


def check_projection(projection: str) -> None:
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {list(PROJECTIONS)}, got {projection!r}")


def _check_modality_inputs(
    spec: ModalitySpec, values: torch.Tensor, missing: torch.Tensor, masked: torch.Tensor | None
) -> None:
    expected = (spec.n_tokens, spec.n_features)
    if values.dim() != 3 or tuple(values.shape[1:]) != expected:
        raise ValueError(
            f"modality {spec.name!r}: values must be [batch, {expected[0]}, {expected[1]}], got {tuple(values.shape)}"
        )
    if tuple(missing.shape) != tuple(values.shape):
        raise ValueError(
            f"modality {spec.name!r}: missing {tuple(missing.shape)} does not match values {tuple(values.shape)}"
        )
    if masked is not None and tuple(masked.shape) != tuple(values.shape[:2]):
        raise ValueError(
            f"modality {spec.name!r}: masked must be [batch, n_tokens] = {tuple(values.shape[:2])}, "
            f"got {tuple(masked.shape)}"
        )


def _category_index(
    values: torch.Tensor, missing: torch.Tensor, token: int, n_categories: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Category of ``token`` per subject, and whether it is known (observed and inside ``[0, n_categories)``).

    Decided elementwise (no host sync); unknown entries get index 0 and must be looked at through ``known``.
    """
    index = values[:, token, 0].round()
    known = (index >= 0) & (index < n_categories) & ~missing[:, token, 0].bool()
    return torch.where(known, index, 0).long(), known


def _init_normal(t: torch.Tensor, std: float) -> None:
    if t.numel():  # zero-size tensors (a 0-token modality) have nothing to draw
        nn.init.normal_(t, 0.0, std)


class ModalityTokenizer(nn.Module):
    """Embeds one modality's ``values [B, T, F]`` into tokens ``[B, T, dim]`` (see the module docstring)."""

    def __init__(self, spec: ModalitySpec, dim: int, projection: str = "per_token") -> None:
        super().__init__()
        check_projection(projection)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.spec, self.dim, self.projection = spec, dim, projection
        # Derived from the spec (not state): rebuilt at construction, moved with .to(device).
        self.register_buffer("numeric_slots", spec.numeric_slots(), persistent=False)
        self.register_buffer(
            "categorical_tokens", torch.tensor(list(spec.categorical), dtype=torch.long), persistent=False
        )
        shape = (spec.n_tokens, spec.n_features, dim) if projection == "per_token" else (spec.n_features, dim)
        self.value_weight = nn.Parameter(torch.empty(shape))
        self.missing_weight = nn.Parameter(torch.empty(shape))
        # One row per category plus a last row for "missing or unknown".
        self.categorical = nn.ModuleDict(
            {str(token): nn.Embedding(n + 1, dim) for token, n in spec.categorical.items()}
        )
        self.identity = nn.Parameter(torch.empty(spec.n_tokens, dim))
        self.mask_embedding = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = INIT_STD) -> None:
        for p in (self.value_weight, self.missing_weight, self.identity, self.mask_embedding):
            _init_normal(p, std)
        for embedding in self.categorical.values():
            _init_normal(embedding.weight, std)

    def _project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        equation = "btf,tfd->btd" if self.projection == "per_token" else "btf,fd->btd"
        return torch.einsum(equation, x, weight)

    def forward(self, values: torch.Tensor, missing: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """``values``/``missing`` ``[B, T, F]``, ``masked`` ``[B, T]`` bool -> embeddings ``[B, T, dim]``."""
        _check_modality_inputs(self.spec, values, missing, masked)
        slots = self.numeric_slots
        # where, not multiplication: whatever sits in a padding slot (even inf/NaN) cannot leak in.
        observed = torch.where(slots, values, 0)
        imputed = (missing.bool() & slots).to(observed.dtype)
        content = self._project(observed, self.value_weight) + self._project(imputed, self.missing_weight)
        if len(self.categorical):
            # Numeric content of a categorical token is exactly zero (no slots, no bias): overwrite it.
            embedded = torch.stack(
                [
                    embedding(self._lookup_index(values, missing, int(token), embedding.num_embeddings - 1))
                    for token, embedding in self.categorical.items()
                ],
                dim=1,
            )
            content = content.index_copy(1, self.categorical_tokens, embedded.to(content.dtype))
        if masked is None:
            # Keep the mask embedding in the graph anyway (zero gradient): DDP then needs no find_unused_parameters.
            masked = torch.zeros(values.shape[:2], dtype=torch.bool, device=values.device)
        content = torch.where(masked.bool()[..., None], self.mask_embedding.to(content.dtype), content)
        return content + self.identity

    @staticmethod
    def _lookup_index(values: torch.Tensor, missing: torch.Tensor, token: int, n_categories: int) -> torch.Tensor:
        index, known = _category_index(values, missing, token, n_categories)
        return torch.where(known, index, n_categories)


class ModalityDecoder(nn.Module):
    """Reconstruction head for masked token modelling: ``hidden [B, T, dim]`` -> standardized values ``[B, T, F]``.

    Numeric slots are predicted by a ``dim -> F`` map per token (``"per_token"``) or shared by the modality;
    each categorical token gets a linear head over its categories (:meth:`category_logits`).
    """

    def __init__(self, spec: ModalitySpec, dim: int, projection: str = "per_token") -> None:
        super().__init__()
        check_projection(projection)
        self.spec, self.dim, self.projection = spec, dim, projection
        self.register_buffer("numeric_slots", spec.numeric_slots(), persistent=False)
        self.register_buffer(
            "categorical_tokens", torch.tensor(list(spec.categorical), dtype=torch.long), persistent=False
        )
        per_token = projection == "per_token"
        self.weight = nn.Parameter(
            torch.empty((spec.n_tokens, dim, spec.n_features) if per_token else (dim, spec.n_features))
        )
        self.bias = nn.Parameter(torch.empty((spec.n_tokens, spec.n_features) if per_token else (spec.n_features,)))
        self.categorical = nn.ModuleDict({str(token): nn.Linear(dim, n) for token, n in spec.categorical.items()})
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = INIT_STD) -> None:
        _init_normal(self.weight, std)
        nn.init.zeros_(self.bias)
        for head in self.categorical.values():
            _init_normal(head.weight, std)
            nn.init.zeros_(head.bias)

    def _check_hidden(self, hidden: torch.Tensor) -> None:
        if hidden.dim() != 3 or tuple(hidden.shape[1:]) != (self.spec.n_tokens, self.dim):
            raise ValueError(
                f"modality {self.spec.name!r}: hidden must be [batch, {self.spec.n_tokens}, {self.dim}], "
                f"got {tuple(hidden.shape)}"
            )

    def numeric(self, hidden: torch.Tensor) -> torch.Tensor:
        """Predicted standardized values ``[B, T, F]`` (meaningful on numeric real slots only)."""
        self._check_hidden(hidden)
        equation = "btd,tdf->btf" if self.projection == "per_token" else "btd,df->btf"
        return torch.einsum(equation, hidden, self.weight) + self.bias

    def category_logits(self, hidden: torch.Tensor) -> dict[int, torch.Tensor]:
        """Token index -> logits ``[B, n_categories]`` for every categorical token."""
        self._check_hidden(hidden)
        return {int(token): head(hidden[:, int(token)]) for token, head in self.categorical.items()}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Predictions in the input convention: numeric slots as values, a categorical token's feature 0 as its
        most likely category index (other features of that token 0)."""
        predicted = self.numeric(hidden)
        if not len(self.categorical):
            return predicted
        logits = self.category_logits(hidden)
        categories = torch.stack([logits[int(token)].argmax(-1) for token in self.categorical], dim=1)
        categorical = F.pad(categories.to(predicted.dtype)[..., None], (0, self.spec.n_features - 1))
        return predicted.index_copy(1, self.categorical_tokens, categorical)

    def loss_sum(
        self, hidden: torch.Tensor, values: torch.Tensor, missing: torch.Tensor, masked: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed squared errors plus summed cross-entropies, and how many entries were counted.

        Counted: numeric slots of masked tokens that are real (feature_mask) and observed (not missing), and
        masked categorical tokens whose category is observed and known. Lets a caller pool several modalities
        into one mean.
        """
        _check_modality_inputs(self.spec, values, missing, masked)
        masked = masked.bool()
        counted = masked[..., None] & self.numeric_slots & ~missing.bool()
        # where before squaring: entries not counted (padding, imputed) never reach the loss or its gradient.
        error = torch.where(counted, self.numeric(hidden).float() - values.float(), 0)
        total = error.square().sum()
        count = counted.sum()
        for token, logits in self.category_logits(hidden).items():
            target, known = _category_index(values, missing, token, logits.shape[-1])
            counted_token = masked[:, token] & known
            cross_entropy = F.cross_entropy(logits.float(), target, reduction="none")
            total = total + torch.where(counted_token, cross_entropy, 0).sum()
            count = count + counted_token.sum()
        return total, count

    def loss(self, hidden: torch.Tensor, values: torch.Tensor, missing: torch.Tensor, masked: torch.Tensor):
        """Mean over counted entries (see :meth:`loss_sum`) of squared error / cross-entropy; each numeric slot and
        each categorical token is one entry. 0 (with a zero gradient path, never NaN) when nothing is counted."""
        total, count = self.loss_sum(hidden, values, missing, masked)
        return total / count.clamp_min(1)
