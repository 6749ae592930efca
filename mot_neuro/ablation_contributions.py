"""Per-modality contributions from a summary table: how much a metric drops when each modality is left out.

Reads the table :func:`mot_neuro.analysis.summarize` writes (also one saved before its later columns existed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mot_neuro.ablation_pairing import _not_comparable_reason, _recon_stages
from mot_neuro.ablation_results import _require_columns

# what modality_contributions, the plot and write_report need (summaries written before the other columns existed
# still work)
_CORE_SUMMARY_COLUMNS = [
    "variant", "dropped", "metric", "n_cells", "n", "mean", "sd", "n_pairs", "mean_diff", "sd_diff",
    "p_value", "q_value", "worse", "higher_is_better", "is_reference", "note",
]  # fmt: skip


def _reference_cell(summary: pd.DataFrame, metric: str) -> tuple[str, str]:
    ref = summary.loc[summary["is_reference"].astype(bool) & (summary["metric"] == metric)]
    if ref.empty:
        raise ValueError(f"summary has no reference row for metric {metric!r}")
    return str(ref["variant"].iloc[0]), str(ref["dropped"].iloc[0])


def _comparable(summary: pd.DataFrame) -> pd.Series:
    """The summary's ``comparable`` column; for a summary written before it existed, the same rule by name."""
    if "comparable" in summary.columns:
        return summary["comparable"].astype(bool)
    recon_stages = _recon_stages(set(summary["metric"].astype(str)))
    ref = summary.loc[summary["is_reference"].astype(bool)]
    ref_dropped = str(ref["dropped"].iloc[0]) if len(ref) else "none"
    return pd.Series(
        [
            not _not_comparable_reason(str(m), str(d), ref_dropped, recon_stages)
            for m, d in zip(summary["metric"], summary["dropped"], strict=True)
        ],
        index=summary.index,
    )


def modality_contributions(summary: pd.DataFrame, metric: str, *, variant: str = "mot") -> pd.DataFrame:
    """How much ``metric`` drops when each modality is left out of ``variant``; positive = the modality helps.

    The contribution is reference minus cell for a higher-is-better metric and cell minus reference otherwise,
    the mean over folds of the fold-level differences (seeds averaged within a fold); ``sd`` is the sd of those
    differences, ``n_pairs`` their number and ``p_value``/``q_value`` the summary's Wilcoxon p and q. Rows are
    sorted by contribution, largest first. The summary must have been made with ``reference=(variant, "none")``,
    since a contribution is a difference to the same variant with everything in.

    A metric that is not comparable across modality sets is refused with a ValueError: a masked-modelling
    ``<stage>/loss`` sums one term per modality, so it falls when one is left out whatever the modality does;
    use ``<stage>/recon`` (compared like with like) or a supervised metric. Reconstruction metrics are never
    refused as a whole: for a per-modality term ``<stage>/recon/<m>`` the row of ``m`` itself, and for
    ``<stage>/recon`` a row with no ``<stage>/recon/<modality>`` term defined on both sides, has no contribution
    (NaN, with the summary's note); the other rows keep theirs.
    """
    _require_columns(summary, _CORE_SUMMARY_COLUMNS, "summary")
    if metric not in set(summary["metric"]):
        raise ValueError(f"metric {metric!r} is not in the summary; it has {sorted(set(summary['metric']))}")
    ref = _reference_cell(summary, metric)
    if ref != (variant, "none"):
        raise ValueError(
            f"the summary compares with reference {ref}, not ({variant!r}, 'none'); "
            f"call summarize(results, reference=({variant!r}, 'none')) for the contributions of {variant!r}"
        )
    select = (summary["metric"] == metric) & (summary["variant"] == variant) & (summary["dropped"] != "none")
    rows = summary.loc[select]
    parts = metric.split("/")
    # reconstruction metrics (<stage>/recon, <stage>/recon/<m>): a row that cannot be compared (its own term,
    # or a total with no term shared with the reference) gets NaN and its note; the others stand
    reconstruction = len(parts) in (2, 3) and parts[1] == "recon"
    if not reconstruction and not _comparable(summary).loc[rows.index].all():
        # never a reconstruction metric here, so the advice never names the metric refused
        stage = parts[0]
        raise ValueError(
            f"{metric!r} is not comparable between cells with different modalities: it is a sum over modalities "
            f"and falls when one is left out, whatever that modality contributes; use {stage}/recon (compared "
            "like with like over the modalities both cells have) or a supervised metric"
        )
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
