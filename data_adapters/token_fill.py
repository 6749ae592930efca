"""Token columns filled into ``[N, T, F]`` arrays: each token's source columns read in blocks, padded with 0 and
masked in ``feature_mask``, ``present`` where a token holds any value. Shared by the gene readers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Values read at once: bounds the temporary copy (~64 MB of float32) whatever the cohort size. Read when
# fill_tokens runs: a test shrinks it through data_adapters.gene (a facade that forwards the set here).
_BLOCK_VALUES = 1 << 24


def fill_tokens(
    n_subjects: int,
    groups: Sequence[np.ndarray],
    read_columns: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values [N, T, F] (pads 0), feature_mask [T, F], present [N, T] from per-token source-column indices.

    ``read_columns(sorted unique column indices)`` returns float32 [N, k] with NaN for missing; it is called
    once per block of columns (about ``_BLOCK_VALUES`` values), in increasing column order, so a file is read
    in one forward pass.
    """
    n_tokens = len(groups)
    width = max(len(g) for g in groups)
    gather = np.full((n_tokens, width), -1, dtype=np.int64)
    for t, group in enumerate(groups):
        gather[t, : len(group)] = group
    feature_mask = gather >= 0
    slots = np.flatnonzero(feature_mask)  # flat (token, feature) positions that hold a real value
    sources = gather.ravel()[slots]
    by_source = np.argsort(sources, kind="stable")
    slots, sources = slots[by_source], sources[by_source]
    needed = np.unique(sources)

    values = np.zeros((n_subjects, n_tokens, width), dtype=np.float32)
    flat = values.reshape(n_subjects, n_tokens * width)
    block = max(1, _BLOCK_VALUES // max(n_subjects, 1))
    for begin in range(0, len(needed), block):
        columns = needed[begin : begin + block]
        lo = np.searchsorted(sources, columns[0], side="left")
        hi = np.searchsorted(sources, columns[-1], side="right")
        data = read_columns(columns)
        _scatter(flat, slots[lo:hi], data, np.searchsorted(columns, sources[lo:hi]))

    present = np.empty((n_subjects, n_tokens), dtype=bool)
    rows = max(1, _BLOCK_VALUES // max(n_tokens * width, 1))
    for begin in range(0, n_subjects, rows):
        chunk = values[begin : begin + rows]
        present[begin : begin + rows] = (~np.isnan(chunk) & feature_mask).any(axis=2)
    return values, feature_mask, present


def column_index(cols: np.ndarray) -> slice | np.ndarray:
    """A slice when the sorted columns are consecutive: views and sequential reads instead of gathers."""
    return slice(int(cols[0]), int(cols[-1]) + 1) if cols[-1] - cols[0] + 1 == len(cols) else cols


def _scatter(flat: np.ndarray, slots: np.ndarray, data: np.ndarray, data_columns: np.ndarray) -> None:
    """flat[:, slots] = data[:, data_columns], as slice copies where both run consecutively (the usual case:
    variants sorted by position fill token after token), else with one fancy-indexed copy."""
    breaks = np.flatnonzero((np.diff(slots) != 1) | (np.diff(data_columns) != 1)) + 1
    if len(breaks) + 1 > max(1, len(slots) // 16):
        flat[:, slots] = data[:, data_columns]
        return
    for begin, end in zip(np.r_[0, breaks], np.r_[breaks, len(slots)], strict=True):
        s, d, k = slots[begin], data_columns[begin], end - begin
        flat[:, s : s + k] = data[:, d : d + k]
