"""Figures of an ablation summary: the modality contributions beside the variants, as a Figure or a PNG file.

matplotlib is imported lazily, on an Agg canvas: no display needed, and pyplot's global state is left alone.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from data_adapters.io import atomic_write_bytes
from mot_neuro.ablation_contributions import _CORE_SUMMARY_COLUMNS, _reference_cell, modality_contributions
from mot_neuro.ablation_results import _require_columns


def _variant_order(variants: Iterable[str], reference_variant: str) -> list[str]:
    # dense first and the full model last reads as "less untied -> more untied" for the usual grids.
    present = set(variants)
    first = [v for v in ("dense",) if v in present]
    last = [reference_variant] if reference_variant in present and reference_variant not in first else []
    return first + sorted(present - set(first) - set(last)) + last


def _bars(ax, heights: np.ndarray, errs: np.ndarray, colors: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Bars where the height is defined, error bars where the sd is too, "n/a" where the height is not.

    Returns the x positions and the error-bar top (height +- sd, or the height without an sd) of every bar."""
    x = np.arange(heights.size)
    defined = np.isfinite(heights)
    with_err = defined & np.isfinite(errs)
    ax.bar(x[defined], heights[defined], color=[c for c, d in zip(colors, defined, strict=True) if d])
    if with_err.any():
        ax.errorbar(x[with_err], heights[with_err], yerr=errs[with_err], fmt="none", ecolor="black", capsize=4)
    for xi in x[~defined]:
        ax.annotate("n/a", (xi, 0.0), ha="center", va="bottom", fontsize=9, color="dimgray")
    reach = np.where(np.isfinite(errs), np.abs(heights) + errs, np.abs(heights)) * np.sign(heights)
    return x, reach


def ablation_figure(summary: pd.DataFrame, metric: str, *, title: str | None = None):
    """The two-panel matplotlib Figure that :func:`plot_ablation` writes (Agg canvas, no pyplot state).

    Left: the contribution of each modality to the reference variant (bar per left-out modality, error bar =
    sd of the fold-level differences, a star where q < 0.05). Right: the metric of every variant with nothing
    left out (mean +- sd over seeds x folds). An undefined contribution or mean gets no bar, and "n/a"; an
    undefined sd (fewer than 2 folds or cells) gets no error bar: neither is drawn as 0.
    """
    # Lazy and explicit Agg canvas: no display needed, and pyplot's global backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _require_columns(summary, _CORE_SUMMARY_COLUMNS, "summary")
    ref_variant, _ = _reference_cell(summary, metric)
    contrib = modality_contributions(summary, metric, variant=ref_variant)
    full = summary.loc[(summary["metric"] == metric) & (summary["dropped"] == "none")].set_index("variant")
    order = _variant_order(full.index, ref_variant)
    full = full.loc[order]
    direction = "higher is better" if bool(full["higher_is_better"].iloc[0]) else "lower is better"

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)

    if contrib.empty:
        left.text(0.5, 0.5, "no leave-one-modality-out cells", ha="center", va="center", transform=left.transAxes)
    else:
        heights = contrib["contribution"].to_numpy(dtype=float)
        colors = ["tab:gray" if h < 0 else "tab:blue" for h in heights]
        x, reach = _bars(left, heights, contrib["sd"].to_numpy(dtype=float), colors)
        left.axhline(0.0, color="black", linewidth=0.8)
        for xi, h, y, q in zip(x, heights, reach, contrib["q_value"], strict=True):
            if np.isfinite(h) and np.isfinite(q) and q < 0.05:
                left.annotate("*", (xi, y), ha="center", va="bottom" if h >= 0 else "top", fontsize=14)
        left.set_xticks(x, contrib["modality"].tolist())
        left.margins(y=0.12)  # room for the stars above the error bars
    left.set_xlabel("modality left out")
    left.set_ylabel(f"drop in {metric} without it")
    left.set_title(f"modality contributions ({ref_variant}; * q < 0.05)")

    colors = ["tab:orange" if v == "dense" else "tab:blue" for v in full.index]
    x, _ = _bars(right, full["mean"].to_numpy(dtype=float), full["sd"].to_numpy(dtype=float), colors)
    right.set_xticks(x, list(full.index), rotation=20, ha="right")
    right.set_ylabel(f"{metric} (mean ± sd)")
    right.set_title(f"variants, nothing left out ({direction})")

    if title:
        fig.suptitle(title)
    return fig


def plot_ablation(summary: pd.DataFrame, metric: str, path: str | Path, *, title: str | None = None) -> Path:
    """One PNG, two panels, of ``metric`` in a :func:`summarize` table (see :func:`ablation_figure`); written
    atomically; returns ``path``. Refuses a metric that is not comparable across modality sets (see
    :func:`modality_contributions`)."""
    fig = ablation_figure(summary, metric, title=title)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    return atomic_write_bytes(path, image.getvalue())
