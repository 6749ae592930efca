"""Per-tower projections and norms over the whole residual stream in one call each, for small towers.

With MoT's towers at the sizes of this field (a few tokens per modality, dim 32), a layer's cost is the number
of ops, not their FLOPs: one ``nn.Linear`` per tower is a split, a handful of view/transpose/matmul ops and
their autograd nodes, and a cat, per projection and per tower. Here the stream is a 2-D ``[rows, dim]`` matrix
in which each run of tokens that shares a tower is a contiguous block of rows (the token-major fixed layout,
or the grouped general path), so that:

* :func:`tower_linear` is one autograd node: one matrix product per run written straight into its rows of a
  preallocated output (and two per run backward), with no split, cat or copy;
* a norm before a projection (``"pre"`` placement) is an RMS normalisation of every row at once, its per-tower
  weight folded into the projection's (``W (g * x) = (W diag(g)) x``): no per-token weight at all;
* :func:`tower_rms_norm` (other norms) normalises every row at once and multiplies by per-token weights: the
  stacked tower weights picked per token (:func:`assigned_weights` on the fixed layout; on the general path,
  whose runs have new lengths every batch, one broadcast view per run).

The FLOPs are those of the per-tower modules; only the overhead goes (``benchmarks/train_step.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer would run in here: autocast's where it is on (bf16 on CPU, ...), else ``x``'s."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _TowerLinear(torch.autograd.Function):
    """``out[a:b] = x[a:b] @ (weights[i] * scales[i]).T`` for the row blocks ``bounds[i] = (a, b)`` of the 2-D
    ``x``; ``scales`` (``[in]`` per run, optional) are the preceding norm's weights, folded in."""

    @staticmethod
    def forward(ctx, x, bounds: tuple[tuple[int, int], ...], dtype: torch.dtype, n_runs: int, *params):
        weights, scales = params[:n_runs], params[n_runs:]
        x_in = (x if x.dtype == dtype else x.to(dtype)).contiguous()
        folded = [w * s for w, s in zip(weights, scales, strict=True)] if scales else weights
        if any(w.dtype != dtype for w in folded):
            folded = [w.to(dtype) for w in folded]
        out = x_in.new_empty(x_in.shape[0], folded[0].shape[0])
        for (start, stop), w in zip(bounds, folded, strict=True):
            if stop > start:
                torch.mm(x_in[start:stop], w.t(), out=out[start:stop])
        ctx.save_for_backward(x_in, *folded, *weights, *scales)
        ctx.bounds, ctx.n_runs, ctx.x_dtype = bounds, n_runs, x.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_in, *saved = ctx.saved_tensors
        n = ctx.n_runs
        folded, weights, scales = saved[:n], saved[n : 2 * n], saved[2 * n :]
        grad = (grad if grad.dtype == x_in.dtype else grad.to(x_in.dtype)).contiguous()
        grad_x = torch.empty_like(x_in) if ctx.needs_input_grad[0] else None
        grad_folded = []
        for (start, stop), w in zip(ctx.bounds, folded, strict=True):
            g = grad[start:stop]
            if grad_x is not None and stop > start:
                torch.mm(g, w, out=grad_x[start:stop])
            # an empty run still gets a (zero) gradient: every parameter takes part, as DDP expects
            grad_folded.append(g.t().mm(x_in[start:stop]))
        if grad_x is not None and grad_x.dtype != ctx.x_dtype:
            grad_x = grad_x.to(ctx.x_dtype)
        if scales:
            grad_w = [g * s for g, s in zip(grad_folded, scales, strict=True)]
            grad_s = [(g * w).sum(0) for g, w in zip(grad_folded, weights, strict=True)]
        else:
            grad_w, grad_s = grad_folded, []
        if any(g.dtype != w.dtype for g, w in zip(grad_w, weights, strict=True)):
            grad_w = [g.to(w.dtype) for g, w in zip(grad_w, weights, strict=True)]
            grad_s = [g.to(s.dtype) for g, s in zip(grad_s, scales, strict=True)]
        return (grad_x, None, None, None, *grad_w, *grad_s)


def tower_linear(
    x: torch.Tensor,
    bounds: tuple[tuple[int, int], ...],
    weights: Sequence[torch.Tensor],
    scales: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Bias-free linear layers, ``weights[i]`` (``[out, in]``, one ``out`` for all) on the rows
    ``bounds[i] = (start, stop)`` of the 2-D ``x`` (consecutive blocks; :meth:`~.routing.Runs.bounds` makes them);
    with ``scales``, run ``i``'s input is first multiplied by ``scales[i]`` (``[in]``: an RMSNorm's weight, folded
    into the projection: ``W (s * x) = (W diag(s)) x``). Honours autocast like ``F.linear``."""
    return _TowerLinear.apply(x, tuple(bounds), _compute_dtype(x), len(weights), *weights, *(scales or ()))


def run_assignment(lengths: Sequence[int], device: torch.device) -> torch.Tensor:
    """``[sum(lengths), len(lengths)]`` one-hot float32 matrix: token ``t`` belongs to run ``i``. Filled by
    slices (no indexing op: the fixed layout's forward has none)."""
    assignment = torch.zeros(sum(lengths), len(lengths), device=device)
    start = 0
    for i, n in enumerate(lengths):
        assignment[start : start + n, i] = 1.0
        start += n
    return assignment


def assigned_weights(assignment: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """``[tokens, width]``: each token's run's row of ``stacked`` ``[runs, width]``, from a one-hot assignment by a
    broadcast product and sum: exact (one weight plus zeros), no indexing op, and elementwise, so that FLOP
    counts stay those of the model's matmuls."""
    return (assignment.to(stacked.dtype).unsqueeze(-1) * stacked).sum(1)


def tower_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of every row, scaled by ``weight`` (broadcast against ``x``)."""
    return F.rms_norm(x, (x.shape[-1],), None, eps) * weight
