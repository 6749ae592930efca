"""Per-slot statistics of one modality from a fold's training rows, read in blocks of rows: the confound
regression coefficients (weighted least squares on the observed values), then the centre and scale of what
standardization sees, and whether a transformed training value would leave float32's range.

A *slot* is a token's feature that ``feature_mask`` keeps, of a numeric token (see
:mod:`mot_neuro.data.preprocess` for the order of the steps).
"""

from __future__ import annotations

import logging

import numpy as np

from data_adapters.core import FLOAT32_MAX, AdapterError
from data_adapters.io import release_pages

from .scaling import usable_sd

RIDGE = 1e-8

log = logging.getLogger(__name__)


def blocks(n: int, size: int):
    """Slices of ``size`` rows (the last one shorter) covering ``0..n``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def slot_error(modality, slot: int, subject: str | None, problem: str) -> AdapterError:
    """An error naming the modality, the token and feature of a flat slot, and (when known) one subject."""
    token = modality.token_names[slot // modality.n_features]
    feature = slot % modality.n_features
    names = getattr(modality, "feature_names", None)
    feature_text = f"feature {names[feature]!r}" if names and len(names) > feature else f"feature {feature}"
    return AdapterError(
        f"modality {modality.name!r}, token {token!r} ({feature_text}): {problem}; check the modality's input"
        " (preprocessing must not give the model a non-finite number)",
        subject=subject,
    )


def numeric_slots(modality) -> tuple[np.ndarray, np.ndarray]:
    """Flat [T*F] positions of numeric masked-in slots, and the token of each."""
    numeric = np.array(modality.feature_mask, dtype=bool)
    for t, token in enumerate(modality.token_names):
        if token in modality.categories:
            numeric[t] = False
    slots = np.flatnonzero(numeric.ravel())
    return slots, slots // modality.n_features


def _read(modality, rows: np.ndarray, slots: np.ndarray, tokens: np.ndarray):
    """Slot values (float64, 0 where unobserved) and the observed mask of ``rows``, read in one fancy index."""
    raw = np.asarray(modality.values[rows]).reshape(len(rows), -1)[:, slots].astype(np.float64)
    observed = np.asarray(modality.present[rows])[:, tokens] & ~np.isnan(raw)
    release_pages(modality.values, modality.present)  # see mot_neuro.data.preprocess: flat memory
    infinite = observed & np.isinf(raw)
    if infinite.any():
        row, slot = (int(i[0]) for i in np.nonzero(infinite))
        raise slot_error(modality, int(slots[slot]), str(modality.subject_ids[rows[row]]), "the value is infinite")
    return np.where(observed, raw, 0.0), observed


def fit_modality(
    modality, rows: np.ndarray, design: np.ndarray | None, *, block_rows: int, standardize: bool
) -> tuple[dict, bool]:
    """The fitted statistics of a modality (JSON-able) and whether some training value would leave float32's
    range once transformed (the caller then finds and names it)."""
    slots, tokens = numeric_slots(modality)
    n_cols = 1 if design is None else design.shape[1]
    regress = design is not None and n_cols > 1
    count, mean, beta = _regression(modality, rows, slots, tokens, design if regress else None, block_rows)
    # second pass: moments of what standardization sees (residuals, or raw values around their mean)
    offset = np.zeros(len(slots)) if regress else mean
    first, second, low, high = _deviations(modality, rows, slots, tokens, design, beta, mean, block_rows)
    safe = np.maximum(count, 1)
    shift = np.where(count > 0, first / safe, 0.0)
    center = offset + shift
    sd = np.sqrt(np.maximum(second / safe - shift * shift, 0.0))
    scale = np.where((count > 0) & usable_sd(sd, center), sd, 1.0)
    _check_finite(modality, slots, [center, scale] + ([] if beta is None else [beta]))
    if standardize:
        bounds = np.maximum(np.abs(low - shift), np.abs(high - shift)) / scale
    else:
        bounds = np.maximum(np.abs(low + offset), np.abs(high + offset))
    too_large = bool((~np.isfinite(bounds) | (bounds > FLOAT32_MAX)).any())
    unobserved = int((count == 0).sum())
    if unobserved:
        log.warning(
            "modality %r: %d of %d slot(s) have no observed training value; they are imputed as 0",
            modality.name,
            unobserved,
            len(slots),
        )
    stats = {
        "token_names": list(modality.token_names),
        "n_features": int(modality.n_features),
        "slots": slots.tolist(),
        "count": count.astype(np.int64).tolist(),
        "mean": mean.tolist(),
        "beta": None if beta is None else beta.tolist(),
        "center": center.tolist(),
        "scale": scale.tolist(),
    }
    return stats, too_large


def _regression(modality, rows, slots, tokens, design: np.ndarray | None, block_rows: int):
    """First pass: per slot, the count and mean of the observed training values and (with a ``design`` to
    regress on) the least-squares coefficients, from ``X^T W X`` and ``X^T W y`` accumulated block by block. A
    slot observed in fewer rows than there are design columns keeps only its mean (intercept)."""
    n_slots = len(slots)
    n_cols = 1 if design is None else design.shape[1]
    count = np.zeros(n_slots)
    total = np.zeros(n_slots)
    upper = np.triu_indices(n_cols)
    xtwx = np.zeros((n_slots, len(upper[0])))
    xtwy = np.zeros((n_slots, n_cols))
    for block in blocks(len(rows), block_rows):
        y, observed = _read(modality, rows[block], slots, tokens)
        weight = observed.astype(np.float64)
        count += weight.sum(axis=0)
        total += y.sum(axis=0)
        if design is not None:
            x = design[block]
            # only the upper triangle of the per-slot X^T W X: a single matmul over the block
            xtwx += weight.T @ (x[:, upper[0]] * x[:, upper[1]])
            xtwy += y.T @ x
    mean = np.divide(total, count, out=np.zeros(n_slots), where=count > 0)
    if design is None:
        return count, mean, None
    beta = np.zeros((n_slots, n_cols))
    beta[:, 0] = mean
    solvable = count >= n_cols
    if solvable.any():
        gram = np.zeros((int(solvable.sum()), n_cols, n_cols))
        gram[:, upper[0], upper[1]] = xtwx[solvable]
        gram[:, upper[1], upper[0]] = xtwx[solvable]
        ridge = RIDGE * np.trace(gram, axis1=1, axis2=2)
        gram += ridge[:, None, None] * np.eye(n_cols)
        beta[solvable] = np.linalg.solve(gram, xtwy[solvable][..., None])[..., 0]
    return count, mean, beta


def _deviations(modality, rows, slots, tokens, design, beta, mean, block_rows: int):
    """Second pass: sum and sum of squares of each slot's deviations from the regression prediction (or from
    its mean), and the extreme deviations, which bound what transform gives the training rows."""
    n_slots = len(slots)
    first = np.zeros(n_slots)
    second = np.zeros(n_slots)
    low = np.zeros(n_slots)
    high = np.zeros(n_slots)
    for block in blocks(len(rows), block_rows):
        y, observed = _read(modality, rows[block], slots, tokens)
        base = design[block] @ beta.T if beta is not None else mean
        deviation = np.where(observed, y - base, 0.0)
        first += deviation.sum(axis=0)
        second += (deviation * deviation).sum(axis=0)
        if len(deviation):
            low = np.minimum(low, deviation.min(axis=0))
            high = np.maximum(high, deviation.max(axis=0))
    return first, second, low, high


def _check_finite(modality, slots: np.ndarray, fitted: list[np.ndarray]) -> None:
    """Refuse a fitted statistic that is not finite, naming the first slot that has one."""
    for statistic in fitted:
        bad = ~np.isfinite(statistic.reshape(len(slots), -1)).all(axis=1)
        if bad.any():
            slot = int(slots[np.flatnonzero(bad)[0]])
            raise slot_error(modality, slot, None, "a fitted mean, SD or confound coefficient is not finite")
