"""Streaming summaries of attributions and attention over the subjects of a run (numpy and pandas only).

``explain`` visits a fold's subjects batch by batch; keeping every subject's value of every token would grow with
the cohort (100,000 subjects x thousands of tokens), so what is kept is, per key, the count, mean, sum of absolute
values and sum of squared deviations (Chan et al.'s pairwise update: exact, and stable for large counts). The
tables equal what :func:`mot_neuro.explain.attributions.aggregate_attributions` gives on the full per-subject
table (tested).

* :class:`AttributionSummary` -- per ``modality, token, feature, target, method``: ``value`` (mean over subjects),
  ``mean_abs`` (mean of absolute values: the importance), ``sd`` and ``sd_abs`` (their spread over subjects, ddof
  1), ``n``. ``feature`` is ``""`` for a whole token and names a slot (a variant) for
  feature-level Integrated Gradients.
* :class:`AttentionSummary` -- modality x modality attention shares per layer and head, and of the rollout,
  weighted by the present query tokens of each batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

WHOLE_TOKEN = ""
"""``feature`` of a row that is about a whole token (or a modality total)."""
SUMMARY_COLUMNS = ["modality", "token", "feature", "target", "method", "value", "mean_abs", "sd", "sd_abs", "n"]
ATTENTION_COLUMNS = ["layer", "head", "query", "key", "share"]
ROLLOUT = "rollout"
UNIFORM = "uniform"
"""``layer`` of the rollout of attention spread evenly over the present keys in every layer: what the rollout's
shares would be with no preference at all (they then follow the token counts), the reference to read it against."""
MEAN_OF_HEADS = "mean"


class _Moments:
    """Count, mean and sum of squared deviations of K keys, of the values and of their absolute values, updated a
    batch at a time."""

    def __init__(self, k: int) -> None:
        self.n = np.zeros(k, dtype=np.int64)
        self.mean = np.zeros((2, k), dtype=np.float64)  # [0]: of x, [1]: of |x|
        self.m2 = np.zeros((2, k), dtype=np.float64)

    def add(self, values: np.ndarray, keep: np.ndarray) -> None:
        """values, keep: ``[B, K]``; only kept, finite entries count."""
        values = np.asarray(values, dtype=np.float64)
        keep = np.asarray(keep, dtype=bool) & np.isfinite(values)
        x = np.where(keep, values, 0.0)
        x = np.stack([x, np.abs(x)])  # [2, B, K]
        n_b = keep.sum(0)
        if not n_b.any():
            return
        mean_b = x.sum(1) / np.maximum(n_b, 1)
        m2_b = (np.where(keep, x - mean_b[:, None], 0.0) ** 2).sum(1)
        n = self.n + n_b
        delta = mean_b - self.mean
        safe = np.maximum(n, 1)
        self.m2 += m2_b + delta**2 * self.n * n_b / safe
        self.mean += delta * n_b / safe
        self.n = n

    def table(self) -> dict[str, np.ndarray]:
        sd = np.full((2, len(self.n)), np.nan)
        more = self.n > 1
        sd[:, more] = np.sqrt(self.m2[:, more] / (self.n[more] - 1))
        mean = np.where(self.n > 0, self.mean, np.nan)
        return {"value": mean[0], "mean_abs": mean[1], "sd": sd[0], "sd_abs": sd[1], "n": self.n.copy()}


class AttributionSummary:
    """Per-key moments of attributions, one block of keys per ``(modality, target, method, level)``."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, str, str, str], tuple[list[str], list[str], _Moments]] = {}

    def add(
        self,
        modality: str,
        target: str,
        method: str,
        tokens: Sequence[str],
        values: np.ndarray,
        keep: np.ndarray,
        *,
        features: Sequence[str] | None = None,
        level: str = "token",
    ) -> None:
        """values, keep: ``[B, K]`` for K keys named by ``tokens`` (and ``features``, one per key, for feature-level
        rows). The first call of a block fixes its keys; later calls must give the same number."""
        values = np.asarray(values)
        key = (modality, target, method, level)
        if key not in self._blocks:
            names = [str(t) for t in tokens]
            feats = [WHOLE_TOKEN] * len(names) if features is None else [str(f) for f in features]
            if len(feats) != len(names):
                raise ValueError(f"{modality}: {len(feats)} feature names for {len(names)} keys")
            self._blocks[key] = (names, feats, _Moments(len(names)))
        names, _, moments = self._blocks[key]
        if values.ndim != 2 or values.shape[1] != len(names):
            raise ValueError(f"{modality} ({method}, {level}): values {values.shape} for {len(names)} keys")
        moments.add(values, keep)

    def table(self) -> pd.DataFrame:
        """One row per key that some subject had, in the order blocks and keys were first seen (columns
        :data:`SUMMARY_COLUMNS`); a key never scored (IG on a categorical token) has no row."""
        frames = []
        for (modality, target, method, _), (names, feats, moments) in self._blocks.items():
            frames.append(
                pd.DataFrame(
                    {
                        "modality": modality,
                        "token": names,
                        "feature": feats,
                        "target": target,
                        "method": method,
                        **moments.table(),
                    }
                )
            )
        if not frames:
            return pd.DataFrame(columns=SUMMARY_COLUMNS)
        table = pd.concat(frames, ignore_index=True)[SUMMARY_COLUMNS]
        return table[table["n"] > 0].reset_index(drop=True)


class AttentionSummary:
    """Modality x modality attention shares, averaged over every present query token of every batch added.

    Each batch brings its per-layer-and-head shares ``[L, H, M, M]`` (rows: query groups) and the number of
    present query tokens of each group ``[M]``; the running total weights each batch's shares by those counts, so
    the result is the share over all query tokens of the run, whatever the batch sizes."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] | None = None
        self._total: np.ndarray | None = None  # [L, H, M, M]
        self._rollout: np.ndarray | None = None  # [M, M]
        self._count: np.ndarray | None = None  # [M]
        self._uniform: np.ndarray | None = None  # [M, M], once a batch brings the no-preference reference

    def add(
        self,
        shares: np.ndarray,
        rollout: np.ndarray,
        counts: np.ndarray,
        names: Sequence[str],
        uniform: np.ndarray | None = None,
    ) -> None:
        names = tuple(names)
        if self.names is None:
            self.names = names
            self._total = np.zeros(shares.shape, dtype=np.float64)
            self._rollout = np.zeros(rollout.shape, dtype=np.float64)
            self._count = np.zeros(len(names), dtype=np.float64)
        elif names != self.names or shares.shape != self._total.shape:
            raise ValueError(f"attention groups {names} {shares.shape} differ from the run's {self.names}")
        counts = np.asarray(counts, dtype=np.float64)
        weight = counts[:, None]
        # a group with no present query in this batch has NaN rows: it adds nothing
        self._total += np.nan_to_num(np.asarray(shares, dtype=np.float64)) * weight
        self._rollout += np.nan_to_num(np.asarray(rollout, dtype=np.float64)) * weight
        if uniform is not None:
            if self._uniform is None:
                self._uniform = np.zeros(rollout.shape, dtype=np.float64)
            self._uniform += np.nan_to_num(np.asarray(uniform, dtype=np.float64)) * weight
        self._count += counts

    def table(self) -> pd.DataFrame:
        """Long table (:data:`ATTENTION_COLUMNS`): ``layer`` (0-based, as text) and ``head`` (or ``"mean"`` over
        heads) per query and key group; the rollout's rows have ``layer == "rollout"``."""
        if self.names is None:
            return pd.DataFrame(columns=ATTENTION_COLUMNS)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = self._total / self._count[:, None]
            rollout = self._rollout / self._count[:, None]
            uniform = None if self._uniform is None else self._uniform / self._count[:, None]
        # groups with no query token in the run (a modality left out by drop_modalities) have no rows or columns
        seen = np.flatnonzero(self._count > 0)
        names = [self.names[i] for i in seen]
        shares, rollout = shares[..., seen[:, None], seen], rollout[seen[:, None], seen]
        uniform = None if uniform is None else uniform[seen[:, None], seen]
        rows = []
        n_layers, n_heads = shares.shape[:2]
        for layer in range(n_layers):
            heads = [(str(h), shares[layer, h]) for h in range(n_heads)]
            heads.append((MEAN_OF_HEADS, shares[layer].mean(0)))
            for head, matrix in heads:
                rows += _matrix_rows(str(layer), head, matrix, names)
        rows += _matrix_rows(ROLLOUT, MEAN_OF_HEADS, rollout, names)
        if uniform is not None:
            rows += _matrix_rows(UNIFORM, MEAN_OF_HEADS, uniform, names)
        return pd.DataFrame(rows, columns=ATTENTION_COLUMNS)


def _matrix_rows(layer: str, head: str, matrix: np.ndarray, names: Sequence[str]) -> list[tuple]:
    return [(layer, head, q, k, float(matrix[i, j])) for i, q in enumerate(names) for j, k in enumerate(names)]


def attention_matrix(table: pd.DataFrame, layer: str = ROLLOUT, head: str = MEAN_OF_HEADS) -> pd.DataFrame:
    """The query x key share matrix of one layer (``"rollout"``, or a layer number as text) and head from
    :meth:`AttentionSummary.table`."""
    rows = table[(table["layer"] == str(layer)) & (table["head"] == str(head))]
    if rows.empty:
        raise ValueError(f"no attention rows for layer {layer!r}, head {head!r}")
    order = list(dict.fromkeys(rows["query"]))
    return rows.pivot(index="query", columns="key", values="share").loc[order, order]
