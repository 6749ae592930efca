"""Statistics and plots of an ablation study: dense vs MoT partial untyings, leave-one-modality-out.

An ablation grid runs *cells*: a model ``variant`` (``dense``, ``mot_ffn``, ``mot_ffn_attention``, ``mot``, ...),
a ``dropped`` modality (``"none"`` or the name of the modality left out), a ``seed`` and a ``fold``. Each finished
cell yields final metrics; :func:`tidy_results` puts them in one long table, one row per
(variant, dropped, seed, fold, metric).

How cells are compared (:func:`summarize`)
------------------------------------------
Every (variant, dropped) is compared with one *reference* cell, by default the full model ``("mot", "none")``.
Cells are paired on (seed, fold): they saw the same training subjects and the same initialisation seed, so the
per-pair difference ``cell - reference`` removes the fold-to-fold spread that would otherwise swamp small effects.
Per comparison we report the number of pairs, the mean and standard deviation of the differences and a two-sided
Wilcoxon signed-rank test of "median difference = 0" (``scipy.stats.wilcoxon`` with its defaults: zero differences
are dropped, the test is exact for small samples without ties, a permutation test with ties). The test needs no
normality assumption, which five or ten fold-level differences cannot support anyway.

Undefined values: a metric that was undefined on a cell's evaluated set (AUROC on a test fold holding one class,
r2 of a constant target) is logged as NaN. It is never averaged or paired as a number: ``n_cells`` counts the
cells run, ``n`` the defined ones that ``mean`` and ``sd`` use (NaN when none, ``sd`` when fewer than 2), ``n_pairs``
the pairs defined on both sides, and the ``note`` says how many were left out.

Multiple comparisons: within each metric, all cells are tested against the same reference, so the p-values of one
metric form one family and are adjusted with Benjamini-Hochberg (``scipy.stats.false_discovery_control``): the
``q_value`` is the smallest false discovery rate at which that comparison would be called a discovery. Metrics are
adjusted separately because they are different questions (and usually strongly correlated).

A caveat that matters at the sizes ablations run at: the signed-rank test has a discrete null distribution. With
``n`` non-zero pairs the smallest attainable two-sided p is ``2 / 2**n``: 0.0625 for 5 pairs (5 folds x 1 seed),
0.03125 for 6. So nothing is "significant" at 0.05 with fewer than 6 pairs, whatever the effect size; run more
seeds (5 folds x 2 seeds = 10 pairs gives p >= 0.002). The ``note`` column says so for every comparison with fewer
than 6 pairs. Effect sizes (``mean_diff``, ``sd_diff``) are the primary result; p and q say how surprising they
would be under no effect.

Direction: ``worse`` says whether the cell is worse than the reference on average, using whether the metric is
higher-is-better (names ending in r2, pearson, auroc, auprc, accuracy) or lower-is-better (loss, mae, mse, brier,
ece); pass ``higher_is_better`` for other names. :func:`modality_contributions` turns the leave-one-out differences
into "how much the metric drops without this modality" (positive = the modality helps).

Training efficiency (:func:`steps_to_reference_quality`) is the MoT paper's measure: how many training steps a
variant needs to reach the dense model's final validation loss, as a fraction of the dense model's steps (the paper
reports 0.35-0.56 at 7B). With FLOPs per step it becomes a compute ratio.

This module uses pandas, numpy, scipy and (lazily, in the plot) matplotlib only: no torch, so it runs anywhere the
results tables are.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from data_adapters.core import atomic_write_bytes

__all__ = [
    "CELL_KEYS",
    "RESULT_COLUMNS",
    "modality_contributions",
    "plot_ablation",
    "steps_to_reference_quality",
    "summarize",
    "tidy_results",
    "write_report",
]

CELL_KEYS = ("variant", "dropped", "seed", "fold")
RESULT_COLUMNS = (*CELL_KEYS, "metric", "value")
CURVE_COLUMNS = (*CELL_KEYS, "step", "value")

#: the smallest number of non-zero pairs for which a two-sided signed-rank p can be below 0.05 (2 / 2**6 = 0.031)
MIN_PAIRS_FOR_SIGNIFICANCE = 6

_HIGHER_IS_BETTER_SUFFIXES = ("r2", "pearson", "auroc", "auprc", "accuracy")
# "mse" also covers "rmse"
_LOWER_IS_BETTER_SUFFIXES = ("loss", "mae", "mse", "brier", "ece")

_SUMMARY_COLUMNS = [
    "variant",
    "dropped",
    "metric",
    "n_cells",
    "n",
    "mean",
    "sd",
    "n_pairs",
    "mean_diff",
    "sd_diff",
    "p_value",
    "q_value",
    "worse",
    "higher_is_better",
    "is_reference",
    "note",
]


def _higher_is_better(metric: str, overrides: Mapping[str, bool] | None = None) -> bool:
    """Whether larger values of ``metric`` are better: ``overrides`` first, then the name's ending."""
    if overrides and metric in overrides:
        return bool(overrides[metric])
    name = metric.lower()
    if "recon" in name.split("/"):  # masked-token reconstruction losses: test/recon, test/recon/<modality>
        return False
    if name.endswith(_HIGHER_IS_BETTER_SUFFIXES):
        return True
    if name.endswith(_LOWER_IS_BETTER_SUFFIXES):
        return False
    raise ValueError(
        f"cannot tell whether metric {metric!r} is higher- or lower-is-better from its name; "
        f"pass higher_is_better={{{metric!r}: True or False}}"
    )


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def _cell_name(row: Mapping) -> str:
    # .item(): numpy scalars would print as np.int64(0) instead of 0
    plain = {k: row[k].item() if isinstance(row[k], np.generic) else row[k] for k in RESULT_COLUMNS[:-1]}
    return ", ".join(f"{k}={v!r}" for k, v in plain.items())


def tidy_results(records: Iterable[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, dropped, seed, fold, metric) with its ``value``, sorted.

    ``records`` are mappings with the keys ``variant, dropped, seed, fold, metric, value`` (extra keys are
    ignored), or a DataFrame with those columns. ``variant``, ``dropped`` and ``metric`` become strings and
    ``value`` a float; a repeated cell is an error naming it, because silently averaging or keeping one of two
    results for the same run would hide a bookkeeping mistake in the grid.
    """
    if isinstance(records, pd.DataFrame):
        df = records.copy()
    else:
        rows = []
        for i, rec in enumerate(records):
            missing = [k for k in RESULT_COLUMNS if k not in rec]
            if missing:
                raise ValueError(f"result record {i} lacks key(s) {missing}: {dict(rec)!r}")
            rows.append({k: rec[k] for k in RESULT_COLUMNS})
        df = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    _require_columns(df, RESULT_COLUMNS, "results")
    df = df.loc[:, list(RESULT_COLUMNS)]
    for col in ("variant", "dropped", "metric"):
        df[col] = df[col].astype(str)
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)

    key = list(RESULT_COLUMNS[:-1])
    dup = df.duplicated(subset=key, keep=False)
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise ValueError(
            f"duplicate result for cell {_cell_name(first)} ({int(dup.sum())} duplicated rows in all); "
            "each (variant, dropped, seed, fold, metric) must appear once"
        )
    return df.sort_values(key, kind="mergesort").reset_index(drop=True)


def _paired_test(diffs: np.ndarray) -> tuple[float, list[str]]:
    """Two-sided Wilcoxon signed-rank p of paired differences, and notes on why it is missing or limited."""
    notes: list[str] = []
    n = diffs.size
    nonzero = int(np.count_nonzero(diffs))
    if n < 2:
        return np.nan, [f"{n} pair(s): no test (needs >= 2)"]
    if nonzero == 0:
        return np.nan, ["all differences zero: no test"]
    p = float(stats.wilcoxon(diffs).pvalue)
    if nonzero < MIN_PAIRS_FOR_SIGNIFICANCE:
        # Zero differences are dropped by the test, so the bound depends on the non-zero ones.
        notes.append(
            f"{nonzero} non-zero pair(s): smallest attainable Wilcoxon p is {2.0 / 2**nonzero:.4g}; "
            f"p < 0.05 needs >= {MIN_PAIRS_FOR_SIGNIFICANCE} pairs"
        )
    return p, notes


def summarize(
    results: pd.DataFrame,
    *,
    reference: tuple[str, str] = ("mot", "none"),
    higher_is_better: Mapping[str, bool] | None = None,
) -> pd.DataFrame:
    """One row per (variant, dropped, metric): the cell's spread and its paired comparison with ``reference``.

    Columns: ``variant, dropped, metric, n_cells`` (cells with a value, NaN included), ``n, mean, sd`` (over the
    cells where the metric is defined, i.e. not NaN; ``sd`` with ddof=1), then, versus the
    reference cell matched on (seed, fold): ``n_pairs, mean_diff`` (cell - reference), ``sd_diff, p_value``
    (two-sided Wilcoxon signed-rank), ``q_value`` (Benjamini-Hochberg across the comparisons of the same metric),
    ``worse`` (the mean difference points the wrong way for that metric), ``higher_is_better``, ``is_reference``
    and a ``note`` saying why a test is missing or limited (fewer than 2 pairs, all differences zero, or fewer
    than 6 non-zero pairs, for which the smallest attainable p is 2 / 2**n >= 0.0625). The reference rows have
    ``n_pairs`` 0, NaN differences, p and q, and ``worse`` False.

    Pairs with a missing or undefined (NaN) value on either side are left out, and the note says how many.
    ``higher_is_better`` maps metric names to a
    direction; other names are recognised by their ending (see the module docstring) or rejected.
    """
    results = tidy_results(results)
    ref_variant, ref_dropped = (str(reference[0]), str(reference[1]))
    is_ref = (results["variant"] == ref_variant) & (results["dropped"] == ref_dropped)
    if not is_ref.any():
        cells = sorted(set(zip(results["variant"], results["dropped"], strict=True)))
        raise ValueError(
            f"reference cell (variant={ref_variant!r}, dropped={ref_dropped!r}) is not in the results; "
            f"cells present: {cells}"
        )
    ref_values = results.loc[is_ref].set_index(["metric", "seed", "fold"])["value"].rename("ref_value").dropna()

    rows = []
    for (variant, dropped, metric), cell in results.groupby(["variant", "dropped", "metric"], sort=True):
        values = cell["value"].dropna()
        undefined = int(cell["value"].isna().sum())
        row = {
            "variant": variant,
            "dropped": dropped,
            "metric": metric,
            "n_cells": int(len(cell)),
            "n": int(values.size),
            "mean": float(values.mean()) if values.size else np.nan,
            "sd": float(values.std(ddof=1)) if values.size > 1 else np.nan,
            "n_pairs": 0,
            "mean_diff": np.nan,
            "sd_diff": np.nan,
            "p_value": np.nan,
            "worse": False,
            "higher_is_better": _higher_is_better(metric, higher_is_better),
            "is_reference": variant == ref_variant and dropped == ref_dropped,
            "note": "",
        }
        undefined_note = (
            f"{undefined} of {len(cell)} cell(s) undefined (NaN), left out of mean, sd and pairs" if undefined else ""
        )
        if row["is_reference"]:
            row["note"] = "; ".join(filter(None, ["reference", undefined_note]))
            rows.append(row)
            continue
        paired = cell.set_index(["metric", "seed", "fold"])["value"].to_frame().join(ref_values, how="inner")
        paired = paired.dropna()
        diffs = (paired["value"] - paired["ref_value"]).to_numpy(dtype=float)
        row["n_pairs"] = int(diffs.size)
        notes: list[str] = [undefined_note] if undefined_note else []
        if diffs.size == 0:
            notes.append("no (seed, fold) shared with the reference")
        else:
            row["mean_diff"] = float(diffs.mean())
            row["sd_diff"] = float(diffs.std(ddof=1)) if diffs.size > 1 else np.nan
            row["worse"] = bool(row["mean_diff"] < 0 if row["higher_is_better"] else row["mean_diff"] > 0)
            row["p_value"], test_notes = _paired_test(diffs)
            notes += test_notes
        row["note"] = "; ".join(notes)
        rows.append(row)

    summary = pd.DataFrame(rows)
    # BH within each metric: every cell of a metric is tested against the same reference, one family of tests.
    summary["q_value"] = np.nan
    for _, idx in summary.groupby("metric").groups.items():
        p = summary.loc[idx, "p_value"]
        tested = p.notna()
        if tested.any():
            summary.loc[p.index[tested], "q_value"] = stats.false_discovery_control(p[tested].to_numpy())
    return summary.loc[:, _SUMMARY_COLUMNS]


def _reference_cell(summary: pd.DataFrame, metric: str) -> tuple[str, str]:
    ref = summary.loc[summary["is_reference"].astype(bool) & (summary["metric"] == metric)]
    if ref.empty:
        raise ValueError(f"summary has no reference row for metric {metric!r}")
    return str(ref["variant"].iloc[0]), str(ref["dropped"].iloc[0])


def modality_contributions(summary: pd.DataFrame, metric: str, *, variant: str = "mot") -> pd.DataFrame:
    """How much ``metric`` drops when each modality is left out of ``variant``; positive = the modality helps.

    The contribution is reference minus cell for a higher-is-better metric and cell minus reference otherwise,
    averaged over (seed, fold) pairs; ``sd`` is the sd of the paired differences, ``p_value``/``q_value`` the
    summary's. Rows are sorted by contribution, largest first. The summary must have been made with
    ``reference=(variant, "none")``, since a contribution is a difference to the same variant with everything in.
    """
    _require_columns(summary, _SUMMARY_COLUMNS, "summary")
    if metric not in set(summary["metric"]):
        raise ValueError(f"metric {metric!r} is not in the summary; it has {sorted(set(summary['metric']))}")
    ref = _reference_cell(summary, metric)
    if ref != (variant, "none"):
        raise ValueError(
            f"the summary compares with reference {ref}, not ({variant!r}, 'none'); "
            f"call summarize(results, reference=({variant!r}, 'none')) for the contributions of {variant!r}"
        )
    rows = summary.loc[(summary["metric"] == metric) & (summary["variant"] == variant) & (summary["dropped"] != "none")]
    sign = np.where(rows["higher_is_better"].astype(bool), -1.0, 1.0)
    out = pd.DataFrame(
        {
            "modality": rows["dropped"].to_numpy(),
            "contribution": sign * rows["mean_diff"].to_numpy(dtype=float),
            "sd": rows["sd_diff"].to_numpy(dtype=float),
            "n_pairs": rows["n_pairs"].to_numpy(),
            "p_value": rows["p_value"].to_numpy(dtype=float),
            "q_value": rows["q_value"].to_numpy(dtype=float),
            "note": rows["note"].fillna("").to_numpy(),
        }
    )
    return out.sort_values("contribution", ascending=False, na_position="last", kind="mergesort").reset_index(drop=True)


def steps_to_reference_quality(
    curves: pd.DataFrame,
    *,
    reference_variant: str = "dense",
    metric: str = "val/loss",
    flops_per_step: Mapping[str, float] | None = None,
    target: str = "final",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps each variant needs to reach the reference variant's final quality, as a fraction of its steps.

    ``target="final"`` (the paper's setting: long runs whose validation loss still falls) takes the
    reference's last value; ``target="best"`` takes its best value and the first step it got there, which is
    what a small cohort needs: once a model overfits, its final loss is worse than its early ones and every
    variant "reaches" it within an epoch. ``reference_final_step`` is then the step of that best value.

    ``curves`` has columns ``variant, dropped, seed, fold, step, value`` (and optionally ``metric``, then only
    rows of ``metric`` are used): a validation curve per cell. Only ``dropped == "none"`` cells take part. For
    each (seed, fold) the target is the reference variant's value at its last step; a variant's ``step_reached``
    is the first step whose value is at least as good as the target (``<=`` for a lower-is-better metric such
    as a loss, ``>=`` for higher-is-better), and ``ratio = step_reached / reference_final_step``. With
    ``flops_per_step`` (variant -> training FLOPs per step) ``flops_ratio`` compares the compute spent instead.
    A curve that never reaches the target gets NaN and a note.

    Returns ``(per_cell, per_variant)``: one row per (variant, seed, fold), and per variant the number of cells,
    how many reached the target, and the median and mean ratio over the cells that did (the note says how many
    did not: their ratio is only known to exceed the last step they ran).
    """
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
    higher = _higher_is_better(metric)
    if flops_per_step is not None:
        unknown = sorted(set(df["variant"]) - set(flops_per_step))
        if unknown:
            raise ValueError(f"flops_per_step lacks variant(s) {unknown}")

    if target not in ("final", "best"):
        raise ValueError(f"target={target!r}: choose 'final' or 'best'")
    # The reference's point per (seed, fold): its last one, or the first one with its best value.
    reference = df.loc[df["variant"] == reference_variant]
    if target == "final":
        ref_final = reference.groupby(["seed", "fold"]).last()
    else:
        signed = reference["value"] * (-1.0 if higher else 1.0)  # lower is better after this
        first_best = signed.groupby([reference["seed"], reference["fold"]]).idxmin()  # first occurrence
        ref_final = reference.loc[first_best.to_numpy()].set_index(["seed", "fold"])

    rows = []
    for (variant, seed, fold), curve in df.groupby(["variant", "seed", "fold"], sort=True):
        row = {
            "variant": variant,
            "seed": seed,
            "fold": fold,
            "target": np.nan,
            "reference_final_step": np.nan,
            "step_reached": np.nan,
            "ratio": np.nan,
            "note": "",
        }
        if flops_per_step is not None:
            row["flops_ratio"] = np.nan
        if (seed, fold) not in ref_final.index:
            row["note"] = f"no {reference_variant!r} curve for this (seed, fold)"
            rows.append(row)
            continue
        target = float(ref_final.loc[(seed, fold), "value"])
        final_step = float(ref_final.loc[(seed, fold), "step"])
        if final_step <= 0:
            raise ValueError(f"reference curve for seed={seed!r}, fold={fold!r} ends at step {final_step:g}")
        row["target"], row["reference_final_step"] = target, final_step
        values = curve["value"].to_numpy(dtype=float)
        reached = values >= target if higher else values <= target
        if not reached.any():
            best = values.max() if higher else values.min()
            row["note"] = f"never reached {target:.6g} in {int(curve['step'].iloc[-1])} steps (best {best:.6g})"
        else:
            step = float(curve["step"].to_numpy()[np.argmax(reached)])
            row["step_reached"] = step
            row["ratio"] = step / final_step
            if flops_per_step is not None:
                row["flops_ratio"] = (step * float(flops_per_step[variant])) / (
                    final_step * float(flops_per_step[reference_variant])
                )
        rows.append(row)
    per_cell = pd.DataFrame(rows)

    ratio_cols = ["ratio"] + (["flops_ratio"] if flops_per_step is not None else [])
    summary_rows = []
    for variant, cells in per_cell.groupby("variant", sort=True):
        ok = cells["ratio"].notna()
        srow = {"variant": variant, "n_cells": int(len(cells)), "n_reached": int(ok.sum())}
        for col in ratio_cols:
            srow[f"median_{col}"] = float(cells.loc[ok, col].median()) if ok.any() else np.nan
            srow[f"mean_{col}"] = float(cells.loc[ok, col].mean()) if ok.any() else np.nan
        missed = int((~ok).sum())
        srow["note"] = (
            f"{missed} of {len(cells)} cell(s) never reached the target: ratios summarise the others" if missed else ""
        )
        summary_rows.append(srow)
    return per_cell, pd.DataFrame(summary_rows)


def _variant_order(variants: Iterable[str], reference_variant: str) -> list[str]:
    # dense first and the full model last reads as "less untied -> more untied" for the usual grids.
    present = set(variants)
    first = [v for v in ("dense",) if v in present]
    last = [reference_variant] if reference_variant in present and reference_variant not in first else []
    return first + sorted(present - set(first) - set(last)) + last


def plot_ablation(summary: pd.DataFrame, metric: str, path: str | Path, *, title: str | None = None) -> Path:
    """One PNG, two panels, of ``metric`` in a :func:`summarize` table; written atomically; returns ``path``.

    Left: the contribution of each modality to the reference variant (bar per left-out modality, error bar =
    sd of the paired differences, a star where q < 0.05). Right: the metric of every variant with nothing
    left out (mean +- sd over seeds x folds): dense vs the MoT partial untyings vs the full model.
    """
    # Lazy and explicit Agg canvas: no display needed, and pyplot's global backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _require_columns(summary, _SUMMARY_COLUMNS, "summary")
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
        x = np.arange(len(contrib))
        undefined = contrib["contribution"].isna().to_numpy()
        heights = contrib["contribution"].fillna(0.0).to_numpy()  # no bar where undefined; "n/a" says so
        errs = contrib["sd"].fillna(0.0).to_numpy()
        colors = ["tab:blue" if h >= 0 else "tab:gray" for h in heights]
        left.bar(x, heights, yerr=errs, capsize=4, color=colors)
        left.axhline(0.0, color="black", linewidth=0.8)
        for xi in x[undefined]:
            left.annotate("n/a", (xi, 0.0), ha="center", va="bottom", fontsize=9, color="dimgray")
        for xi, h, e, q in zip(x, heights, errs, contrib["q_value"], strict=True):
            if np.isfinite(q) and q < 0.05:
                y = h + e if h >= 0 else h - e
                left.annotate("*", (xi, y), ha="center", va="bottom" if h >= 0 else "top", fontsize=14)
        left.set_xticks(x, contrib["modality"].tolist())
        left.margins(y=0.12)  # room for the stars above the error bars
    left.set_xlabel("modality left out")
    left.set_ylabel(f"drop in {metric} without it")
    left.set_title(f"modality contributions ({ref_variant}; * q < 0.05)")

    x = np.arange(len(full))
    right.bar(
        x,
        full["mean"].to_numpy(dtype=float),
        yerr=full["sd"].fillna(0.0).to_numpy(dtype=float),
        capsize=4,
        color=["tab:orange" if v == "dense" else "tab:blue" for v in full.index],
    )
    for xi in x[full["mean"].isna().to_numpy()]:
        right.annotate("n/a", (xi, 0.0), ha="center", va="bottom", fontsize=9, color="dimgray")
    right.set_xticks(x, list(full.index), rotation=20, ha="right")
    right.set_ylabel(f"{metric} (mean ± sd)")
    right.set_title(f"variants, nothing left out ({direction})")

    if title:
        fig.suptitle(title)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    return atomic_write_bytes(path, image.getvalue())


def write_report(
    results: pd.DataFrame | Iterable[Mapping], summary: pd.DataFrame, out_dir: str | Path, *, metric: str
) -> dict[str, Path]:
    """Write ``results.csv`` (tidy), ``summary.csv``, ``contributions.csv`` (of ``metric``, for the summary's
    reference variant) and ``ablation.png`` into ``out_dir``, each atomically.

    Returns ``{"results", "summary", "contributions", "ablation"}`` -> path.
    """
    out_dir = Path(out_dir)
    tidy = tidy_results(results)
    _require_columns(summary, _SUMMARY_COLUMNS, "summary")
    ref_variant, _ = _reference_cell(summary, metric)
    contrib = modality_contributions(summary, metric, variant=ref_variant)

    def csv(df: pd.DataFrame, name: str) -> Path:
        return atomic_write_bytes(out_dir / name, df.to_csv(index=False).encode())

    return {
        "results": csv(tidy, "results.csv"),
        "summary": csv(summary, "summary.csv"),
        "contributions": csv(contrib, "contributions.csv"),
        "ablation": plot_ablation(summary, metric, out_dir / "ablation.png"),
    }
