"""Where each modality's tokens sit in a sequence.

Two ways to say it, one per routing path of the backbone:

* :class:`ModalityLayout` -- the fixed layout of neuro-omics data: every subject has the same
  contiguous block of tokens per modality (e.g. 128 gene tokens, then 192 brain regions, then 64
  behaviour measures). Per-modality work then runs on plain slices.
* a per-token modality-id tensor ``[B, S]`` (``PAD_ID`` for padding), or the reference
  implementation's list of boolean masks, for arbitrary interleaving. :func:`group_tokens` sorts
  the tokens by modality once per forward so that the layers again work on contiguous runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..names import MAX_NAME_LENGTH, MAX_TOWER_NAME_LENGTH, MODULEDICT_ATTRIBUTES, check_names

PAD_ID = -1
"""Modality id of a padding token (general routing path)."""

_TAKEN = frozenset(dir(nn.ModuleDict()))  # attribute names a ModuleDict refuses as keys ("training", "values", ...)


def check_modality_names(names: Sequence[str], what: str = "modality") -> None:
    """Names become parameter keys (``blocks.0.ffn.gene``), so they follow the one rule of :mod:`mot_neuro.names`
    (identifiers, at most 64 characters; 129 for a tower, which may join two), checked here against the
    installed torch's ModuleDict attributes too."""
    max_length = MAX_TOWER_NAME_LENGTH if what == "tower" else MAX_NAME_LENGTH
    check_names(names, what, reserved=MODULEDICT_ATTRIBUTES | _TAKEN, max_length=max_length)


@dataclass(frozen=True)
class ModalityLayout:
    """Ordered modalities with their token counts: contiguous segments of one sequence.

    A count of 0 is allowed (a modality dropped for an ablation keeps its place in the config).
    """

    names: tuple[str, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))
        check_modality_names(self.names)
        if len(self.names) != len(self.counts):
            raise ValueError(f"{len(self.names)} modality names but {len(self.counts)} token counts")
        bad = [f"{n}={c}" for n, c in zip(self.names, self.counts, strict=True) if c < 0]
        if bad:
            raise ValueError(f"token counts must be >= 0, got {', '.join(bad)}")
        if sum(self.counts) == 0:
            raise ValueError("the layout has no tokens at all")

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> ModalityLayout:
        """``ModalityLayout.from_counts({"gene": 128, "brain": 192, "behaviour": 64})``"""
        return cls(tuple(counts), tuple(counts.values()))

    @property
    def seq_len(self) -> int:
        return sum(self.counts)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start index of every segment, plus the sequence length at the end."""
        out = [0]
        for c in self.counts:
            out.append(out[-1] + c)
        return tuple(out)

    def segment(self, name: str) -> slice:
        """The slice of the sequence that holds ``name``'s tokens."""
        if name not in self.names:
            raise KeyError(f"modality {name!r} is not in the layout {list(self.names)}")
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i + 1])

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.names, self.counts, strict=True))

    def modality_ids(self, modalities: Sequence[str] | None = None, device=None) -> torch.Tensor:
        """Per-token modality ids ``[S]`` for the general path.

        ``modalities`` is the model's modality order (ids index into it); by default the layout's own.
        """
        order = list(modalities) if modalities is not None else list(self.names)
        missing = [n for n in self.names if n not in order]
        if missing:
            raise ValueError(f"layout modalities {missing} are not among the model's {order}")
        ids = [order.index(n) for n, c in zip(self.names, self.counts, strict=True) for _ in range(c)]
        return torch.tensor(ids, dtype=torch.long, device=device)


def masks_to_ids(masks: Iterable[torch.Tensor]) -> torch.Tensor:
    """Turn the reference implementation's boolean modality masks into one id tensor.

    ``masks[i]`` marks the tokens of modality ``i``; a token marked by none is padding. A token
    marked twice is an error (the reference silently lets the last mask win).
    """
    masks = [torch.as_tensor(m, dtype=torch.bool) for m in masks]
    if not masks:
        raise ValueError("no modality masks given")
    shapes = {tuple(m.shape) for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"modality masks have different shapes: {sorted(shapes)}")
    stacked = torch.stack(masks)
    if bool((stacked.sum(0) > 1).any()):
        raise ValueError("a token is marked by more than one modality mask")
    ids = torch.full(masks[0].shape, PAD_ID, dtype=torch.long, device=masks[0].device)
    for i, m in enumerate(masks):
        ids = torch.where(m, i, ids)
    return ids


@dataclass(frozen=True)
class TokenGrouping:
    """Tokens of a ``[B, S]`` batch sorted by modality, computed once per forward.

    ``positions`` are flat indices (``b * S + s``) of the real tokens, grouped by modality in the
    model's modality order; ``counts[i]`` tokens of modality ``i`` follow each other. Padding and
    absent tokens are left out: they are never computed, and keep their input as output.
    """

    positions: torch.Tensor
    counts: tuple[int, ...]
    valid: torch.Tensor  # [B, S] bool: real (non-padding, present) tokens
    has_padding: bool


def group_tokens(ids: torch.Tensor, n_modalities: int, present: torch.Tensor | None = None) -> TokenGrouping:
    """Sort the tokens of a ``[B, S]`` modality-id tensor by modality (one host sync for the counts)."""
    if ids.dim() != 2:
        raise ValueError(f"modality ids must be [batch, seq], got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"modality ids must be an integer tensor, got {ids.dtype}")
    ids = ids.long()
    # Padding goes to the end of the sort as id n_modalities.
    key = torch.where(ids == PAD_ID, n_modalities, ids)
    if present is not None:
        if present.shape != ids.shape:
            raise ValueError(f"present mask {tuple(present.shape)} does not match ids {tuple(ids.shape)}")
        key = torch.where(present.bool(), key, n_modalities)
    lo, hi = torch.aminmax(key)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi > n_modalities:
        raise ValueError(
            f"modality ids must lie in [0, {n_modalities - 1}] or be PAD_ID={PAD_ID}; found values in [{lo}, {hi}]"
        )
    flat = key.reshape(-1)
    counts = torch.bincount(flat, minlength=n_modalities + 1).tolist()
    order = torch.argsort(flat, stable=True)
    n_real = sum(counts[:n_modalities])
    return TokenGrouping(
        positions=order[:n_real],
        counts=tuple(counts[:n_modalities]),
        valid=key != n_modalities,
        has_padding=counts[n_modalities] > 0,
    )
