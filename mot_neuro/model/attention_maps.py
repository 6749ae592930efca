"""Cross-modal attention: the attention probabilities of every layer and head, and where they go by modality.

MoT's claim is about what the modalities share, and global self-attention is where they meet. This module reads
it out of a trained backbone (MoT or its dense twin), in pure torch:

* :func:`record_attention` -- a context manager under which each :class:`~mot_neuro.model.mot.MoTBlock`
  also computes ``softmax(q k^T / sqrt(head_dim) + mask)`` from the very ``q``, ``k`` and mask its
  ``scaled_dot_product_attention`` call got (absent/padding keys masked, causal if set, after QK-norm if used),
  ``[B, heads, S, S]`` per layer in sequence order. Outside it the block runs exactly its normal ops: the hook
  is one ``None`` check (:attr:`MoTBlock.attention_probe`).
* :func:`modality_attention` -- per layer and head, the share of attention mass each modality's queries give
  each modality's keys (rows sum to 1 over key modalities), averaged over the present query tokens of all
  subjects. With the encoder's layout the summary tokens are a group of their own (``"summary"``).
* :func:`attention_rollout` -- attention rollout (Abnar & Zuidema, ACL 2020): per layer the head-averaged
  attention plus the identity for the residual, rows renormalised, multiplied over layers; aggregate it with
  :func:`modality_attention` like a single head.

Attention dropout is not applied to the recorded probabilities (record in ``eval()`` mode to see what the
model computes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from .layout import PAD_ID, ModalityLayout
from .mot import MoTBlock

__all__ = [
    "AttentionRecord",
    "ModalityAttention",
    "attention_probabilities",
    "attention_rollout",
    "modality_attention",
    "record_attention",
]


def attention_probabilities(
    q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(head_dim) + mask)`` in float32, ``[..., S_q, S_k]``: the probabilities
    ``scaled_dot_product_attention(q, k, v, attn_mask, is_causal=is_causal)`` weighs ``v`` with (without
    dropout). A boolean mask marks the keys that may be attended (True), a float mask is added to the scores."""
    q, k = q.float(), k.float()
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if is_causal:
        s_q, s_k = scores.shape[-2:]
        allowed = torch.ones(s_q, s_k, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    return scores.softmax(dim=-1)


@dataclass
class AttentionRecord:
    """What :func:`record_attention` collected, one entry per block call in call order (one forward of an
    ``n_layers`` backbone: ``n_layers`` entries, layer 0 first).

    probs: ``[B, heads, S, S]`` float32 attention probabilities, queries by keys, in sequence order (the
        order of the backbone's input, whichever routing path ran). Keys that are absent or padding get 0;
        rows of absent queries are whatever the block computed for them (their output is discarded; pass
        ``present`` to the aggregations).
    layers: index of the block of each entry.
    values, outputs: with ``keep_values=True``, the ``v`` (``[B, heads, S, head_dim]``) the block attended and
        its attention output (same shape), as the block computed them.
    """

    probs: list[torch.Tensor] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    keep_values: bool = False
    detach: bool = True

    def _capture(self, layer: int, q, k, v, attn_mask, is_causal, out) -> None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach):
            probs = attention_probabilities(q, k, attn_mask, is_causal)
        self.probs.append(probs)
        self.layers.append(layer)
        if self.keep_values:
            self.values.append(v.detach() if self.detach else v)
            self.outputs.append(out.detach() if self.detach else out)


def _blocks(model: nn.Module) -> list[MoTBlock]:
    blocks = [m for m in model.modules() if isinstance(m, MoTBlock)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no MoTBlock: pass a MoTBackbone or a module that holds one")
    return blocks


@contextmanager
def record_attention(model: nn.Module, *, keep_values: bool = False, detach: bool = True) -> Iterator[AttentionRecord]:
    """Record the attention probabilities of every block of ``model`` (a :class:`MoTBackbone`, an encoder, or
    anything holding :class:`MoTBlock`\\ s, numbered in module order) for the forwards run inside::

        with record_attention(backbone) as rec:
            backbone(x, layout, present)
        rec.probs  # n_layers x [B, heads, S, S]

    The forward's own computation is untouched (same ops, same result); the probabilities cost one extra
    ``[B, heads, S, S]`` matrix per layer. ``detach=False`` keeps them in the autograd graph.
    """
    blocks = _blocks(model)
    busy = [i for i, block in enumerate(blocks) if block.attention_probe is not None]
    if busy:
        raise RuntimeError(f"blocks {busy} are already being recorded: record_attention calls cannot nest")
    record = AttentionRecord(keep_values=keep_values, detach=detach)
    try:
        for i, block in enumerate(blocks):
            block.attention_probe = partial(record._capture, i)
        yield record
    finally:
        for block in blocks:
            block.__dict__.pop("attention_probe", None)  # back to the class default, None


class ModalityAttention(NamedTuple):
    """``values[..., i, j]``: share of the attention of group ``names[i]``'s queries that goes to group
    ``names[j]``'s keys (rows sum to 1; NaN rows for a group with no present query token)."""

    values: torch.Tensor
    names: tuple[str, ...]


def _groups(
    layout_or_ids: ModalityLayout | torch.Tensor,
    modality_names: Sequence[str] | None,
    batch: int,
    seq: int,
    device: torch.device,
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """One-hot ``[B, S, M]`` float group membership of every token (padding: no group) and the group names."""
    if isinstance(layout_or_ids, ModalityLayout):
        if layout_or_ids.seq_len != seq:
            raise ValueError(f"layout {layout_or_ids.as_dict()} has {layout_or_ids.seq_len} tokens, probs have {seq}")
        names = tuple(modality_names) if modality_names is not None else layout_or_ids.names
        ids = layout_or_ids.modality_ids(names, device=device).expand(batch, seq)
    else:
        if modality_names is None:
            raise ValueError("modality ids need modality_names (the model's modality order the ids index into)")
        names = tuple(modality_names)
        ids = layout_or_ids.to(device=device, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.expand(batch, seq)
        if tuple(ids.shape) != (batch, seq):
            raise ValueError(f"modality ids have shape {tuple(ids.shape)}, probs are over [{batch}, {seq}] tokens")
        if bool(((ids < PAD_ID) | (ids >= len(names))).any()):
            raise ValueError(f"modality ids must lie in [0, {len(names) - 1}] or be PAD_ID={PAD_ID}")
    groups = torch.stack([ids == m for m in range(len(names))], dim=-1)
    return groups.float(), names


def modality_attention(
    probs: torch.Tensor | Sequence[torch.Tensor],
    layout_or_ids: ModalityLayout | torch.Tensor,
    present: torch.Tensor | None = None,
    modality_names: Sequence[str] | None = None,
) -> ModalityAttention:
    """Modality x modality attention: per query token the attention mass on each group's keys, averaged over
    the present query tokens of each group (pooled over subjects: every present token counts once).

    probs: ``[B, heads, S, S]`` (one layer: ``values`` ``[heads, M, M]``), a sequence of them (layers:
        ``[layers, heads, M, M]``), or ``[B, S, S]`` (e.g. :func:`attention_rollout`: ``[M, M]``).
    layout_or_ids: the :class:`ModalityLayout` of the sequence (groups in its order, unless ``modality_names``
        reorders them), or ``[B, S]``/``[S]`` modality ids indexing ``modality_names`` (``PAD_ID``: no group).
    present: ``[B, S]`` bool, tokens that were present; absent queries are left out of the average.
    """
    if isinstance(probs, torch.Tensor):
        if probs.dim() == 3:
            values, names = _aggregate(probs[:, None], layout_or_ids, present, modality_names)
            return ModalityAttention(values[0], names)
        if probs.dim() != 4:
            raise ValueError(f"probs must be [B, heads, S, S], [B, S, S] or a list of layers, got {tuple(probs.shape)}")
        return ModalityAttention(*_aggregate(probs, layout_or_ids, present, modality_names))
    layers = [_aggregate(p, layout_or_ids, present, modality_names) for p in probs]
    if not layers:
        raise ValueError("no attention probabilities given")
    return ModalityAttention(torch.stack([values for values, _ in layers]), layers[0][1])


def _aggregate(
    probs: torch.Tensor,
    layout_or_ids: ModalityLayout | torch.Tensor,
    present: torch.Tensor | None,
    modality_names: Sequence[str] | None,
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """``[heads, M, M]`` from one layer's ``[B, heads, S, S]``."""
    if probs.dim() != 4 or probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"probs must be [B, heads, S, S], got {tuple(probs.shape)}")
    batch, _, seq, _ = probs.shape
    probs = probs.float()
    groups, names = _groups(layout_or_ids, modality_names, batch, seq, probs.device)
    queries = groups
    if present is not None:
        present = present.to(device=probs.device, dtype=torch.bool)
        if tuple(present.shape) != (batch, seq):
            raise ValueError(f"present mask {tuple(present.shape)} does not match probs' [{batch}, {seq}] tokens")
        queries = groups * present[..., None]
    mass = probs @ groups[:, None]  # [B, heads, S, M]: each query's attention on each key group
    total = torch.einsum("bsm,bhsn->hmn", queries, mass)
    count = queries.sum(dim=(0, 1))  # present query tokens per group
    return total / count[:, None], names


def attention_rollout(
    probs_per_layer: Sequence[torch.Tensor], residual: bool = True, present: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) ``[B, S, S]``: how much of each output token (rows) comes from
    each input token (columns) through the whole stack.

    Per layer (first to last) the attention averaged over heads; with ``residual`` the identity added for the
    residual connection and the rows renormalised (``(A + I) / 2``); the product ``A_L ... A_2 A_1``. With
    ``present``, absent query tokens get identity rows (the backbone passes them through unchanged); present
    tokens never attend absent ones, so their rows do not depend on this.
    """
    if len(probs_per_layer) == 0:
        raise ValueError("no attention probabilities given")
    rollout = None
    for probs in probs_per_layer:
        if probs.dim() != 4 or probs.shape[-1] != probs.shape[-2]:
            raise ValueError(f"probs must be [B, heads, S, S] per layer, got {tuple(probs.shape)}")
        a = probs.float().mean(dim=1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        if present is not None:
            keep = present.to(device=a.device, dtype=torch.bool)[..., None]
            a = torch.where(keep, a, eye)
        if residual:
            a = a + eye
            a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout
