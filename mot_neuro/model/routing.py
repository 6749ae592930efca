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
from .tower_ops import assigned_weights, run_assignment, tower_linear


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
        self._assignments: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._bounds: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}

    @property
    def several(self) -> bool:
        """Does any stage have more than one run (some part untied, more than one tower)?"""
        return max(len(self.qkv), len(self.block), len(self.norm)) > 1

    def bounds(self, stage: Sequence[Run], rows_per_token: int) -> tuple[tuple[int, int], ...]:
        """``(start, stop)`` rows of each run of a stage in a 2-D stream of ``rows_per_token`` rows per token."""
        key = (id(stage), rows_per_token)
        if key not in self._bounds:
            self._bounds[key] = tuple(
                (run.start * rows_per_token, (run.start + run.length) * rows_per_token) for run in stage
            )
        return self._bounds[key]

    def assignment(self, stage: Sequence[Run], device: torch.device) -> torch.Tensor:
        """One-hot ``[tokens, runs]`` float matrix of a stage (``self.qkv``, ``.block`` or ``.norm``): which run
        each token belongs to. Made once per device (the fixed layout's runs live as long as the model)."""
        key = (id(stage), device)
        if key not in self._assignments:
            self._assignments[key] = run_assignment([run.length for run in stage], device)
        return self._assignments[key]

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
    back (tokens that were not processed keep their input); ``to_attention`` maps the stream to ``[B, S, .]``
    for global attention and ``from_attention`` its ``[B, heads, S, head_dim]`` output back.

    With ``tower_ops`` the stream is token-major (runs along dim 0: each run a contiguous block of rows) and
    blocks use :meth:`linear` and :meth:`norm_weight`, one call per projection or norm for all towers.
    """

    def __init__(self, runs: Runs, tower_ops: bool = False) -> None:
        self.runs = runs
        self.tower_ops = tower_ops
        self.rows_per_token = 1  # rows of the 2-D stream per token of a run (the batch, when token-major)
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
        batch, _, seq, _ = t.shape
        return t.transpose(1, 2).reshape(batch, seq, -1)

    def linear(
        self,
        x: torch.Tensor,
        stage: Sequence[Run],
        weights: Sequence[torch.Tensor],
        scales: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Each run of the token-major stream ``x`` ``[tokens, ..., in]`` through its tower's ``[out, in]``
        (inputs scaled by its ``scales`` first, if given: see :func:`~.tower_ops.tower_linear`)."""
        out = tower_linear(x.reshape(-1, x.shape[-1]), self.runs.bounds(stage, self.rows_per_token), weights, scales)
        return out.view(*x.shape[:-1], out.shape[-1])

    def norm_weight(self, stage: Sequence[Run], weights: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Each token's run's norm weight, shaped to broadcast against ``like`` ``[tokens, ..., width]``."""
        per_token = self._token_weights(stage, torch.stack(list(weights)))
        return per_token.view(per_token.shape[0], *[1] * (like.dim() - 2), per_token.shape[1])

    def _token_weights(self, stage: Sequence[Run], stacked: torch.Tensor) -> torch.Tensor:
        """``[tokens, width]``: row ``i`` of ``stacked`` for each token of run ``i`` (runs are contiguous: one
        broadcast view per run, joined; no index op on the stream)."""
        return torch.cat([row.expand(run.length, -1) for run, row in zip(stage, stacked, strict=True)])


class FixedRoute(Route):
    """Fixed layout: the stream is the sequence itself and the runs are its slices: ``[B, S, D]`` (runs along
    dim 1) with one run per stage (the dense twin: nothing to group), token-major ``[S, B, D]`` (runs along
    dim 0, ``runs.dim == 0``) with tower ops. Either way no gather and no host sync."""

    def __init__(self, runs: Runs, present: torch.Tensor | None, causal: bool, weigh_tokens: bool, batch: int) -> None:
        super().__init__(runs, tower_ops=runs.dim == 0)
        self.present = present
        if self.tower_ops:
            self.rows_per_token = batch
        if present is None:
            self.is_causal = causal
        else:
            self.attn_mask = attention_mask(present, causal)
            if weigh_tokens:
                self.token_weight = (present.t() if self.tower_ops else present)[..., None]

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1).contiguous() if self.tower_ops else x

    def leave(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.tower_ops:
            h = h.transpose(0, 1)
        if self.present is not None:
            h = torch.where(self.present[..., None], h, x)
        return h.contiguous()

    def to_attention(self, t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, 1).contiguous() if self.tower_ops else t

    def _token_weights(self, stage: Sequence[Run], stacked: torch.Tensor) -> torch.Tensor:
        return assigned_weights(self.runs.assignment(stage, stacked.device), stacked)

    def from_attention(self, t: torch.Tensor) -> torch.Tensor:
        if not self.tower_ops:
            return super().from_attention(t)
        batch, _, seq, _ = t.shape
        return t.permute(2, 0, 1, 3).reshape(seq, batch, -1)


class GroupedRoute(Route):
    """General routing: the stream is the real tokens ``[N_real, D]``, sorted by modality once."""

    def __init__(
        self, ids: torch.Tensor, present: torch.Tensor | None, towers: Sequence[Towers], causal: bool, tower_ops: bool
    ) -> None:
        grouping = group_tokens(ids, len(towers), present)
        starts = [sum(grouping.counts[:m]) for m in range(len(grouping.counts))]
        segments = [(start, count, m) for m, (start, count) in enumerate(zip(starts, grouping.counts, strict=True))]
        runs = Runs(0, segments, towers)
        super().__init__(runs, tower_ops=tower_ops and runs.several)
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
        t = super().from_attention(t)
        return t.reshape(self.batch * self.seq, t.shape[-1]).index_select(0, self.positions)
