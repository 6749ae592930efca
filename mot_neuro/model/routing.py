"""How tokens reach their towers: contiguous runs of tokens, one call per run, never a boolean mask.

A :class:`Route` is built once per forward and tells every stage of every block which contiguous runs
of the residual stream share a tower (:class:`Runs`), and how the stream maps to the ``[B, S]``
sequence that global attention sees:

* :class:`FixedRoute` (a :class:`~mot_neuro.model.layout.ModalityLayout`, the same for every sample):
  the runs are slices of the ``[B, S, D]`` sequence; no gather, no host sync, static shapes;
* :class:`GroupedRoute` (general ids/masks): tokens are sorted by modality once
  (:func:`~mot_neuro.model.layout.group_tokens`); the stream lives as ``[N_real, D]`` in that order, and
  only attention goes back to ``[B, S]``.

:func:`apply_runs` applies a per-tower function to each run and joins the results. What it computes
is the boolean-mask routing of :mod:`mot_neuro.model.reference` (``tests/test_mot_spec.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from .config import SHARED
from .layout import group_tokens


class Towers(NamedTuple):
    """The parameter sets one modality (or one run of tokens) uses."""

    norm: str
    attention: str
    ffn: str


class Run(NamedTuple):
    start: int
    length: int
    towers: Towers


def apply_runs(dim: int, runs: Sequence[Run], fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """Apply ``fn(towers, *pieces)`` to each run along ``dim`` and join the results.

    Runs partition the token dimension in order (empty runs included), so ``split`` cuts them:
    views forward, and one ``cat`` backward instead of a zero-filled buffer per slice. A single run
    (the dense twin, or modalities sharing a tower) is one call and no copy.
    """
    if len(runs) == 1:
        return fn(runs[0].towers, *inputs)
    lengths = [run.length for run in runs]
    pieces = [torch.split(t, lengths, dim=dim) for t in inputs]
    outs = [fn(run.towers, *(p[i] for p in pieces)) for i, run in enumerate(runs)]
    return torch.cat(outs, dim=dim)


class Runs:
    """Which contiguous runs of tokens share a tower, per stage of a block.

    ``qkv`` groups tokens by (norm, attention) tower (the attention sub-layer), ``block`` by (norm,
    attention, ffn) (the FFN sub-layer), ``norm`` by norm tower (the final norm). ``dim`` is the token
    dimension the runs slice. Towers with no token get an empty run so that their parameters still take
    part in the graph (zero gradients, never ``None``: DDP then needs no ``find_unused_parameters``).

    ``segments`` are ``(start, length, modality index)`` in stream order.
    """

    def __init__(self, dim: int, segments: Sequence[tuple[int, int, int]], towers: Sequence[Towers]) -> None:
        self.dim = dim
        self.qkv = self._merge(segments, towers, lambda t: Towers(t.norm, t.attention, SHARED))
        self.block = self._merge(segments, towers, lambda t: t)
        self.norm = self._merge(segments, towers, lambda t: Towers(t.norm, SHARED, SHARED))

    @staticmethod
    def _merge(segments, towers_by_modality, key) -> list[Run]:
        runs: list[Run] = []
        for start, length, m in segments:
            if length == 0:
                continue
            towers = key(towers_by_modality[m])
            last = runs[-1] if runs else None
            if last is not None and last.towers == towers and last.start + last.length == start:
                runs[-1] = Run(last.start, last.length + length, towers)
            else:
                runs.append(Run(start, length, towers))
        used = {r.towers for r in runs}
        end = runs[-1].start + runs[-1].length if runs else 0
        for t in towers_by_modality:
            towers = key(t)
            if towers not in used:
                runs.append(Run(end, 0, towers))
                used.add(towers)
        return runs


def attention_mask(valid: torch.Tensor, causal: bool) -> torch.Tensor:
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


class Route:
    """Everything a block needs to know about this batch's tokens.

    ``enter(x)`` turns ``[B, S, D]`` tokens into the residual stream, ``leave(x, h)`` puts the stream
    back (tokens that were not processed keep their input); ``to_attention`` / ``from_attention`` map
    the stream to ``[B, S, .]`` and back around global attention.
    """

    def __init__(self, runs: Runs) -> None:
        self.runs = runs
        self.attn_mask: torch.Tensor | None = None
        self.is_causal = False
        self.token_weight: torch.Tensor | None = None  # [..., 1] bool in stream order: tokens MoE statistics count

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def leave(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h

    def to_attention(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def from_attention(self, t: torch.Tensor) -> torch.Tensor:
        return t


class FixedRoute(Route):
    """Fixed layout: the stream is the ``[B, S, D]`` sequence itself and the runs are its slices."""

    def __init__(self, runs: Runs, present: torch.Tensor | None, causal: bool, weigh_tokens: bool) -> None:
        super().__init__(runs)
        self.present = present
        if present is None:
            self.is_causal = causal
        else:
            self.attn_mask = attention_mask(present, causal)
            if weigh_tokens:
                self.token_weight = present[..., None]

    def leave(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h if self.present is None else torch.where(self.present[..., None], h, x)


class GroupedRoute(Route):
    """General routing: the stream is the real tokens ``[N_real, D]``, sorted by modality once."""

    def __init__(self, ids: torch.Tensor, present: torch.Tensor | None, towers: Sequence[Towers], causal: bool) -> None:
        grouping = group_tokens(ids, len(towers), present)
        starts = [sum(grouping.counts[:m]) for m in range(len(grouping.counts))]
        segments = [(start, count, m) for m, (start, count) in enumerate(zip(starts, grouping.counts, strict=True))]
        super().__init__(Runs(0, segments, towers))
        self.batch, self.seq = ids.shape
        self.positions = grouping.positions
        if grouping.has_padding:
            self.attn_mask = attention_mask(grouping.valid, causal)
        else:
            self.is_causal = causal

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.batch * self.seq, x.shape[-1]).index_select(0, self.positions)

    def leave(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(self.batch * self.seq, x.shape[-1])
        return flat.index_copy(0, self.positions, h).view_as(x)

    def to_attention(self, t: torch.Tensor) -> torch.Tensor:
        full = t.new_zeros(self.batch * self.seq, t.shape[-1]).index_copy(0, self.positions, t)
        return full.view(self.batch, self.seq, -1)

    def from_attention(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.batch * self.seq, t.shape[-1]).index_select(0, self.positions)
