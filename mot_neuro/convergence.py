"""Training efficiency of an ablation grid: steps to the reference variant's validation quality, with Kaplan-Meier.

This is the MoT paper's measure: how many training steps a variant needs to reach the dense model's validation
loss, as a fraction of the dense model's steps (the paper reports 0.35-0.56 at 7B). The paper takes the dense
model's final loss; ``target="best"``, which ``mot-neuro ablate`` passes, takes its best. A run that never gets there
is right-censored at the ratio of its last step, and the summary is a Kaplan-Meier median and a restricted mean
(the KM estimate of E[min(ratio, tau)], with one tau for all variants), so runs that fail are not silently left
out. With FLOPs per step it becomes a compute ratio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mot_neuro.ablation_results import CELL_KEYS, _higher_is_better, _require_columns

CURVE_COLUMNS = (*CELL_KEYS, "step", "value")
# (variant, ratio column) -> (time, reached) of the variant's cells that have a reference curve
_Survival = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]


def _kaplan_meier(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct event times and the Kaplan-Meier survival just after each (events before censorings at a tie)."""
    event_times = np.unique(time[event])
    at_risk = np.array([np.sum(time >= t) for t in event_times], dtype=float)
    events = np.array([np.sum((time == t) & event) for t in event_times], dtype=float)
    return event_times, np.cumprod(1.0 - events / at_risk)


def _km_horizon(time: np.ndarray, event: np.ndarray) -> float:
    """How far the Kaplan-Meier curve of these cells is known: the largest time followed (reached or censored),
    or inf when the curve reaches 0 (every cell still at risk reached the target: it stays 0 afterwards)."""
    _, survival = _kaplan_meier(time, event)
    return math.inf if survival.size and survival[-1] <= 1e-12 else float(time.max())


def _km_summary(time: np.ndarray, event: np.ndarray, tau: float | None = None) -> tuple[float, float, float]:
    """(KM median, restricted mean up to tau, tau); NaN without cells. ``tau`` defaults to the largest time and
    must not exceed :func:`_km_horizon` (the curve is not extrapolated).

    The median is the smallest event time t with S(t) <= 0.5, inf when the survival never gets there (fewer
    than half reached the target within the times followed). When S(t) is exactly 0.5 over an interval
    [t_i, t_(i+1)) this is its left end t_i; R's survival package reports the midpoint (t_i + t_(i+1)) / 2
    instead. The restricted mean is the Kaplan-Meier estimate of E[min(T, tau)], the area under the KM curve
    from 0 to tau: with censored cells a lower bound of the mean (it is the plain mean of min(time, tau) only
    when nothing is censored before tau).
    """
    if time.size == 0:
        return np.nan, np.nan, np.nan
    tau = float(time.max()) if tau is None else float(tau)
    event_times, survival = _kaplan_meier(time, event)
    halved = survival <= 0.5 + 1e-12
    median = float(event_times[np.argmax(halved)]) if halved.any() else math.inf
    edges = np.minimum(np.concatenate([[0.0], event_times, [tau]]), tau)
    levels = np.concatenate([[1.0], survival])
    return median, float(np.sum(levels * np.diff(edges))), tau


def steps_to_reference_quality(
    curves: pd.DataFrame,
    *,
    reference_variant: str = "dense",
    metric: str = "val/loss",
    flops_per_step: Mapping[str, float] | None = None,
    target: str = "final",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps each variant needs to reach the reference variant's quality, as a fraction of the reference's steps.

    ``target="final"`` (the paper's setting: long runs whose validation loss still falls) takes the
    reference's last value; ``target="best"`` takes its best value and the first step it got there, which is
    what a small cohort needs: once a model overfits, its final loss is worse than its early ones and every
    variant "reaches" it within an epoch (``mot-neuro ablate`` passes ``"best"``). ``reference_final_step`` is
    then the step of that best value.

    ``curves`` has columns ``variant, dropped, seed, fold, step, value`` (and optionally ``metric``, then only
    rows of ``metric`` are used): a validation curve per cell. Only ``dropped == "none"`` cells take part. For
    each (seed, fold) the target is the reference variant's value; a variant's ``step_reached`` is the first
    step whose value is at least as good as the target (``<=`` for a lower-is-better metric such as a loss,
    ``>=`` for higher-is-better), and ``ratio = step_reached / reference_final_step``. With ``flops_per_step``
    (variant -> training FLOPs per step) ``flops_ratio`` compares the compute spent instead.

    A curve that never reaches the target is *right-censored*: its ratio is only known to exceed
    ``censored_at_ratio = last step it ran / reference_final_step`` (``ratio`` stays NaN, ``reached`` False).
    Leaving such cells out would make a variant that mostly fails look fast.

    Returns ``(per_cell, per_variant)``. ``per_cell``: one row per (variant, seed, fold) with ``target,
    reference_final_step, step_reached, last_step, reached, ratio, censored_at_ratio`` (and ``flops_ratio,
    censored_at_flops_ratio``) and a note. ``per_variant``: ``n_cells``, ``n_compared`` (cells with a
    reference curve for their (seed, fold)), ``n_reached``, ``n_censored``; ``km_median_ratio``, the
    Kaplan-Meier median of the ratio (inf = not reached by half the cells within the ratios followed; where the
    KM curve is exactly 0.5 over an interval, its left end, whereas R's survival takes the midpoint);
    ``restricted_mean_ratio``, the Kaplan-Meier estimate of E[min(ratio, tau)], i.e. the area under the KM
    curve from 0 to tau = ``restricted_mean_ratio_tau`` (a lower bound of the mean while cells are censored);
    the same three for ``flops_ratio`` when given; and a note.

    tau is *common to all variants* (the same in every row): the smallest, over the variants, of how far each
    variant's KM curve is known, i.e. its largest ratio followed (reached or censored), a variant whose curve
    reaches 0 (its cells all reached the target) being known beyond it; when every curve reaches 0, the largest
    ratio of any variant. With each variant's own tau a variant whose runs all stop early would be measured over
    a shorter range and get the smallest restricted mean, looking fastest. The note says when tau cuts a
    variant's own follow-up short.
    """
    df = _full_model_curves(curves, metric, reference_variant)
    higher = _higher_is_better(metric)
    if flops_per_step is not None:
        unknown = sorted(set(df["variant"]) - set(flops_per_step))
        if unknown:
            raise ValueError(f"flops_per_step lacks variant(s) {unknown}")
    if target not in ("final", "best"):
        raise ValueError(f"target={target!r}: choose 'final' or 'best'")
    ref_points = _reference_points(df, reference_variant, target, higher)

    per_cell = pd.DataFrame(
        [
            _cell_row(cell, curve, ref_points, reference_variant, higher, flops_per_step)
            for cell, curve in df.groupby(["variant", "seed", "fold"], sort=True)
        ]
    )
    ratio_cols = ["ratio"] + (["flops_ratio"] if flops_per_step is not None else [])
    survival_data = _survival_data(per_cell, ratio_cols)
    common_tau = _common_tau(survival_data, ratio_cols)
    per_variant = pd.DataFrame(
        [
            _variant_row(variant, cells, survival_data, common_tau, ratio_cols, reference_variant)
            for variant, cells in per_cell.groupby("variant", sort=True)
        ]
    )
    return per_cell, per_variant


def _full_model_curves(curves: pd.DataFrame, metric: str, reference_variant: str) -> pd.DataFrame:
    """The curves of ``metric`` of the cells with nothing dropped, sorted by (variant, seed, fold, step), checked."""
    df = curves
    if "metric" in df.columns:
        df = df.loc[df["metric"].astype(str) == metric]
    _require_columns(df, CURVE_COLUMNS, "curves")
    df = df.loc[df["dropped"].astype(str) == "none", list(CURVE_COLUMNS)].copy()
    df["variant"] = df["variant"].astype(str)
    df = df.dropna(subset=["step", "value"]).sort_values(["variant", "seed", "fold", "step"], kind="mergesort")
    if df.empty:
        raise ValueError(f"curves have no rows with dropped='none' (metric {metric!r})")
    if reference_variant not in set(df["variant"]):
        raise ValueError(
            f"reference variant {reference_variant!r} has no curve with dropped='none'; "
            f"variants present: {sorted(set(df['variant']))}"
        )
    if df.duplicated(subset=["variant", "seed", "fold", "step"]).any():
        raise ValueError("curves have more than one value for the same (variant, seed, fold, step)")
    return df


def _reference_points(df: pd.DataFrame, reference_variant: str, target: str, higher: bool) -> pd.DataFrame:
    """The reference's point (``step``, ``value``) per (seed, fold): its last one (``target="final"``), or the first
    one with its best value (``target="best"``)."""
    reference = df.loc[df["variant"] == reference_variant]
    if target == "final":
        return reference.groupby(["seed", "fold"]).last()
    signed = reference["value"] * (-1.0 if higher else 1.0)  # lower is better after this
    first_best = signed.groupby([reference["seed"], reference["fold"]]).idxmin()  # first occurrence
    return reference.loc[first_best.to_numpy()].set_index(["seed", "fold"])


def _cell_row(
    cell: tuple,
    curve: pd.DataFrame,
    ref_points: pd.DataFrame,
    reference_variant: str,
    higher: bool,
    flops_per_step: Mapping[str, float] | None,
) -> dict:
    """The ``per_cell`` row of one (variant, seed, fold): where its curve first reaches the reference's point of
    the same (seed, fold), or the ratio at which it is censored."""
    variant, seed, fold = cell
    last_step = float(curve["step"].iloc[-1])
    row = {
        "variant": variant,
        "seed": seed,
        "fold": fold,
        "target": np.nan,
        "reference_final_step": np.nan,
        "step_reached": np.nan,
        "last_step": last_step,
        "reached": False,
        "ratio": np.nan,
        "censored_at_ratio": np.nan,
        "note": "",
    }
    if flops_per_step is not None:
        row["flops_ratio"] = np.nan
        row["censored_at_flops_ratio"] = np.nan
    if (seed, fold) not in ref_points.index:
        row["note"] = f"no {reference_variant!r} curve for this (seed, fold)"
        return row
    goal = float(ref_points.loc[(seed, fold), "value"])
    final_step = float(ref_points.loc[(seed, fold), "step"])
    if final_step <= 0:
        raise ValueError(f"reference curve for seed={seed!r}, fold={fold!r} ends at step {final_step:g}")
    row["target"], row["reference_final_step"] = goal, final_step
    flops = float(flops_per_step[variant]) / float(flops_per_step[reference_variant]) if flops_per_step else 1.0
    values = curve["value"].to_numpy(dtype=float)
    reached = values >= goal if higher else values <= goal
    if not reached.any():
        best = values.max() if higher else values.min()
        row["note"] = (
            f"never reached {goal:.6g} in {int(last_step)} steps (best {best:.6g}): censored at ratio "
            f"{last_step / final_step:.4g}"
        )
        row["censored_at_ratio"] = last_step / final_step
        if flops_per_step is not None:
            row["censored_at_flops_ratio"] = last_step / final_step * flops
    else:
        step = float(curve["step"].to_numpy()[np.argmax(reached)])
        row.update(step_reached=step, reached=True, ratio=step / final_step)
        if flops_per_step is not None:
            row["flops_ratio"] = step / final_step * flops
    return row


def _survival_data(per_cell: pd.DataFrame, ratio_cols: list[str]) -> _Survival:
    """(variant, ratio column) -> (time, reached) over the variant's cells with a reference curve; a censored
    cell's time is its censoring ratio."""
    survival_data: _Survival = {}
    for variant, cells in per_cell.groupby("variant", sort=True):
        compared = cells["reference_final_step"].notna()
        for col in ratio_cols:
            time = cells.loc[compared, col].fillna(cells.loc[compared, f"censored_at_{col}"]).to_numpy(dtype=float)
            survival_data[(variant, col)] = time, (cells["reached"].astype(bool) & compared)[compared].to_numpy()
    return survival_data


def _common_tau(survival_data: _Survival, ratio_cols: list[str]) -> dict[str, float]:
    """One tau per ratio column for every variant: the shortest follow-up of any variant, so that a variant whose
    runs stop early is not measured over a shorter range (and does not look fast for it)."""
    common_tau: dict[str, float] = {}
    for col in ratio_cols:
        followed = {v: d for (v, c), d in survival_data.items() if c == col and d[0].size}
        horizons = [_km_horizon(*d) for d in followed.values()]
        finite = [h for h in horizons if math.isfinite(h)]
        # every curve reaches 0: each area is complete once tau covers every time
        common_tau[col] = min(finite) if finite else max((float(d[0].max()) for d in followed.values()), default=np.nan)
    return common_tau


def _variant_row(
    variant: str,
    cells: pd.DataFrame,
    survival_data: _Survival,
    common_tau: dict[str, float],
    ratio_cols: list[str],
    reference_variant: str,
) -> dict:
    """The ``per_variant`` row of one variant: counts, the Kaplan-Meier summaries of each ratio and a note."""
    compared = cells["reference_final_step"].notna()
    reached = cells["reached"].astype(bool) & compared
    censored = compared & ~reached
    srow = {
        "variant": variant,
        "n_cells": int(len(cells)),
        "n_compared": int(compared.sum()),
        "n_reached": int(reached.sum()),
        "n_censored": int(censored.sum()),
    }
    for col in ratio_cols:
        time, event = survival_data[(variant, col)]
        median, restricted, tau = _km_summary(time, event, common_tau[col])
        srow[f"km_median_{col}"] = median
        srow[f"restricted_mean_{col}"] = restricted
        srow[f"restricted_mean_{col}_tau"] = tau
    notes = []
    if censored.any():
        notes.append(
            f"{int(censored.sum())} of {int(compared.sum())} cell(s) never reached the target: censored at the "
            "ratio of their last step (Kaplan-Meier)"
        )
        if math.isinf(srow["km_median_ratio"]):
            notes.append("km_median inf: not reached by half the cells within the ratios followed")
        notes.append(
            "restricted_mean is the Kaplan-Meier estimate of E[min(ratio, tau)] (the area under the KM curve "
            "up to tau): a lower bound of the mean"
        )
    time, _ = survival_data[(variant, "ratio")]
    if time.size and float(time.max()) > common_tau["ratio"]:
        notes.append(
            f"restricted_mean up to the common tau {common_tau['ratio']:.4g} (the shortest follow-up of any "
            f"variant), below this variant's largest ratio {float(time.max()):.4g}"
        )
    if (~compared).any():
        notes.append(f"{int((~compared).sum())} cell(s) without a {reference_variant!r} curve left out")
    srow["note"] = "; ".join(notes)
    return srow
