"""DeLong's test of two correlated AUROCs, and its use on the pooled out-of-fold predictions of two ablation cells.

:func:`delong_test` compares two scores of the same subjects; :func:`_delong_for` matches a cell's and the
reference's per-subject predictions (table columns :data:`PREDICTION_COLUMNS`), pools the test subjects of all
folds and runs it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from mot_neuro.ablation_results import CELL_KEYS, _plain, _require_columns

#: per-subject predictions for DeLong's test: ``row`` is the subject's position in the cohort, ``truth`` 0/1 and
#: ``score`` P(class 1)
PREDICTION_COLUMNS = (*CELL_KEYS, "target", "row", "truth", "score")
#: DeLong placements (multiples of 1 / (2 n)) that differ by less than this are equal
PLACEMENT_ATOL = 1e-12
# how the ``tests`` column of a summary names this test
DELONG = "DeLong on pooled out-of-fold AUROC"


def _placements(score: np.ndarray, pos: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUROC, V10, V01) of ``score``: each positive's placement among the negatives, each negative's among the
    positives (ties count one half), from midranks."""
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    x, y = score[pos], score[~pos]
    joint = stats.rankdata(np.concatenate([x, y]))  # midranks over everyone
    v10 = (joint[:n_pos] - stats.rankdata(x)) / n_neg  # negatives below each positive (+ half the ties)
    v01 = 1.0 - (joint[n_pos:] - stats.rankdata(y)) / n_pos  # positives above each negative (+ half)
    return float(v10.mean()), v10, v01


def delong_test(truth, score_a, score_b) -> dict:
    """DeLong's test of two correlated AUROCs measured on the same subjects, two-sided.

    ``truth`` holds 0/1 labels (1 = the positive class) and ``score_a``, ``score_b`` each model's score for the
    same subjects, larger = more likely positive. Subjects with a non-finite label or score are left out.
    Computed with the midrank ("fast DeLong", Sun and Xu 2014) form of DeLong, DeLong and Clarke-Pearson
    (1988): each positive's placement is the fraction of negatives scored below it (ties count one half), each
    negative's the fraction of positives scored above it; the AUROC is the mean placement, and the variance of
    ``auc_a - auc_b`` is ``var(V10_a - V10_b) / n_pos + var(V01_a - V01_b) / n_neg`` (variances with ddof=1).

    Returns a dict: ``auc_a, auc_b, diff`` (a - b), ``se`` (of diff), ``z``, ``p_value`` (two-sided, normal),
    ``n_pos, n_neg`` (the subjects used: finite label and both scores) and ``reason``, empty when the test ran.

    *Identical rankings*: when every placement of ``a`` equals that of ``b`` (within 1e-12; the two models rank
    the subjects identically: the same scores, a monotone transform of them, or a constant score in each model),
    ``diff`` and ``se`` are 0 and the comparison is an all-zero difference: ``p_value`` 1, ``z`` 0 and reason
    "identical rankings", as the fold-level tests give p = 1 to all-zero differences (so it stays in the FDR
    family). Otherwise ``se``, ``z`` and ``p_value`` (and, with one class only, the AUROCs) are NaN, with the
    reason: a single class, fewer than 2 subjects of a class (no variance), or a standard error of 0 with
    placements that differ (a non-zero difference with no spread: z would be infinite). Never a number for an
    undefined test.
    """
    truth = np.asarray(truth, dtype=float).ravel()
    a = np.asarray(score_a, dtype=float).ravel()
    b = np.asarray(score_b, dtype=float).ravel()
    if not truth.size == a.size == b.size:
        raise ValueError(f"truth, score_a and score_b differ in length: {truth.size}, {a.size}, {b.size}")
    keep = np.isfinite(truth) & np.isfinite(a) & np.isfinite(b)
    truth, a, b = truth[keep], a[keep], b[keep]
    labels = set(np.unique(truth).tolist())
    if not labels <= {0.0, 1.0}:
        raise ValueError(f"truth must be 0/1 for DeLong's test; it holds {sorted(labels)[:10]}")
    pos = truth == 1.0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    out = {
        "auc_a": np.nan,
        "auc_b": np.nan,
        "diff": np.nan,
        "se": np.nan,
        "z": np.nan,
        "p_value": np.nan,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "reason": "",
    }
    if n_pos == 0 or n_neg == 0:
        out["reason"] = f"one class only ({n_pos} positive, {n_neg} negative): AUROC undefined"
        return out

    auc_a, v10_a, v01_a = _placements(a, pos)
    auc_b, v10_b, v01_b = _placements(b, pos)
    out.update(auc_a=auc_a, auc_b=auc_b, diff=auc_a - auc_b)
    if n_pos < 2 or n_neg < 2:
        out["reason"] = f"{n_pos} positive, {n_neg} negative: the variance needs >= 2 of each class"
        return out
    d10, d01 = v10_a - v10_b, v01_a - v01_b
    if np.all(np.abs(d10) <= PLACEMENT_ATOL) and np.all(np.abs(d01) <= PLACEMENT_ATOL):
        # the same ranking of every positive against every negative: an all-zero difference, p = 1
        out.update(diff=0.0, se=0.0, z=0.0, p_value=1.0)
        out["reason"] = "identical rankings (every placement difference zero): p = 1"
        return out
    # variances of the differences: algebraically the usual S10/S01 covariance form, without its cancellation
    var = float(np.var(d10, ddof=1)) / n_pos + float(np.var(d01, ddof=1)) / n_neg
    se = math.sqrt(max(var, 0.0))
    out["se"] = se
    if se <= 1e-12:
        out["se"] = 0.0
        out["reason"] = f"standard error 0 with a non-zero difference ({out['diff']:.4g}; no spread): no test"
        return out
    z = out["diff"] / se
    out.update(z=z, p_value=float(2.0 * stats.norm.sf(abs(z))))
    return out


def _auroc_target(metric: str) -> tuple[str, str] | None:
    parts = metric.split("/")
    if len(parts) >= 3 and parts[-1] == "auroc":
        return parts[0], "/".join(parts[1:-1])
    return None


def _tidy_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    _require_columns(predictions, PREDICTION_COLUMNS, "predictions")
    extra = ["stage"] if "stage" in predictions.columns else []
    df = predictions.loc[:, [*PREDICTION_COLUMNS, *extra]].copy()
    for col in ("variant", "dropped", "target", *extra):
        df[col] = df[col].astype(str)
    for col in ("truth", "score"):
        df[col] = pd.to_numeric(df[col], errors="raise").astype(float)
    dup = df.duplicated(subset=[*CELL_KEYS, "target", "row", *extra])
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise ValueError(
            f"predictions repeat subject row={_plain(first['row'])!r} for variant={first['variant']!r}, "
            f"dropped={first['dropped']!r}, seed={_plain(first['seed'])!r}, fold={_plain(first['fold'])!r}, "
            f"target={first['target']!r}"
        )
    return df


def _check_subjects(side: pd.DataFrame, what: str) -> None:
    """Each subject of one side is tested in one fold and has one truth over its seeds."""
    folds = side.groupby("row")["fold"].nunique()
    if (folds > 1).any():
        row = _plain(folds.index[folds.to_numpy() > 1][0])
        raise ValueError(f"predictions of {what}: subject row={row!r} is in more than one test fold")
    truths = side.groupby("row")["truth"].nunique()
    if (truths > 1).any():
        row = _plain(truths.index[truths.to_numpy() > 1][0])
        raise ValueError(f"predictions of {what}: subject row={row!r} has different truths in different seeds")


def _delong_stages(preds: pd.DataFrame) -> set[str]:
    """Stages the predictions are of: their ``stage`` column, or ``test`` alone without one."""
    return set(preds["stage"]) if "stage" in preds.columns else {"test"}


def _delong_for(preds: pd.DataFrame, cell: tuple[str, str], ref: tuple[str, str], stage: str, target: str):
    """(result of delong_test or None, note) for the pooled out-of-fold scores of cell vs reference.

    The two sides are inner-joined on (fold, seed, row) after dropping non-finite scores and truths, so for every
    subject both sides average the same seeds; the note says how many predictions that left out."""
    sel = preds["target"] == target
    if "stage" in preds.columns:
        sel &= preds["stage"] == stage
    preds = preds.loc[sel & np.isfinite(preds["score"]) & np.isfinite(preds["truth"])]
    keys = ["fold", "seed", "row"]
    sides = {}
    for name, (variant, dropped) in (("cell", cell), ("reference", ref)):
        side = preds.loc[(preds["variant"] == variant) & (preds["dropped"] == dropped), [*keys, "truth", "score"]]
        if side.empty:
            return None, f"DeLong not run: no predictions of target {target!r} for the {name}"
        _check_subjects(side, f"{name} {cell if name == 'cell' else ref}")
        sides[name] = side
    labels = set(np.unique(pd.concat([sides["cell"]["truth"], sides["reference"]["truth"]])).tolist())
    if not labels <= {0.0, 1.0}:
        return None, f"DeLong not run: target {target!r} is not binary 0/1 (truth holds {sorted(labels)[:5]})"
    # (subject, seed) predictions present on both sides: both sides average the same seeds for every subject
    joined = sides["cell"].merge(sides["reference"], on=keys, suffixes=("_cell", "_ref"))
    differ = joined["truth_cell"] != joined["truth_ref"]
    if differ.any():
        row = _plain(joined.loc[differ, "row"].iloc[0])
        raise ValueError(
            f"predictions of target {target!r}: subject row={row!r} has different truths in {cell} and {ref}"
        )
    if joined.empty:
        return None, "DeLong not run: no (subject, seed) with a finite prediction on both sides"
    both = joined.groupby("row").agg(
        truth=("truth_cell", "first"), score_cell=("score_cell", "mean"), score_ref=("score_ref", "mean")
    )
    result = delong_test(both["truth"], both["score_cell"], both["score_ref"])
    notes = [f"DeLong: {result['reason']}" if result["reason"] else ""]
    unmatched = {name: len(side) - len(joined) for name, side in sides.items()}
    if any(unmatched.values()):
        notes.append(
            f"DeLong on {len(both)} subjects: {unmatched['cell']} of the cell's and {unmatched['reference']} of "
            "the reference's (subject, seed) predictions left out because the other side lacked them (each "
            "subject's score averages the same seeds on both sides)"
        )
    return result, "; ".join(filter(None, notes))
