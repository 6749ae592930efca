"""Is an attribution signal or noise: agreement across folds and seeds, and a permuted-target null (pandas, scipy).

Both work on ``explain``'s token table (one row per run and ``modality, token, target, method``; a run is one
checkpoint: ``run``, ``variant``, ``fold``, ``seed``, ``null``), on ``mean_abs`` (mean |attribution| over the
explained subjects: a token's importance).

* :func:`rank_stability` -- Spearman's rank correlation of token importances between every pair of runs of one
  variant (folds and seeds): over all tokens of all modalities, and within each modality. Near 1: the ranking
  does not hang on which subjects trained the model or on its initialisation.
* :func:`null_comparison` -- each token's importance against the same token's in models trained on permuted
  targets (``--data.permute_targets``). Importances of two models are not on one scale (a null model's outputs
  vary little), so a token is compared by its *share* of its modality's total importance and by its rank
  percentile within the modality. A token whose share clearly exceeds every null model's share of it carries
  signal the null does not explain; a token that ranks high under the null too is important for reasons other
  than the target (e.g. it simply varies most).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from mot_neuro.explain.attributions import ALL_TOKENS

RUN_KEYS = ["run", "variant", "fold", "seed"]
STABILITY_COLUMNS = [
    "variant",
    "target",
    "method",
    "modality",
    "run_a",
    "run_b",
    "fold_a",
    "fold_b",
    "seed_a",
    "seed_b",
    "spearman",
    "n_tokens",
]
ALL_MODALITIES = "all"


def token_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Whole-token rows of a summary table (no modality totals, no feature-level rows)."""
    keep = (table["token"] != ALL_TOKENS) & (table["feature"].fillna("") == "")
    return table[keep]


def rank_stability(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation of token ``mean_abs`` between each pair of non-null runs of a variant, per target
    and method, over all modalities together and per modality (columns :data:`STABILITY_COLUMNS`). Only tokens
    both runs scored count; a pair with fewer than 3 such tokens gets NaN."""
    tokens = token_rows(table[~table["null"].astype(bool)])
    rows = []
    for (variant, target, method), group in tokens.groupby(["variant", "target", "method"], sort=False):
        runs = group.drop_duplicates("run")[RUN_KEYS].to_dict("records")
        wide = group.pivot_table(index=["modality", "token"], columns="run", values="mean_abs", aggfunc="first")
        for a, b in itertools.combinations(runs, 2):
            pair = wide[[a["run"], b["run"]]].dropna()
            scopes = [(ALL_MODALITIES, pair)] + [(m, part) for m, part in pair.groupby(level="modality", sort=False)]
            for modality, part in scopes:
                rho = float(spearmanr(part.iloc[:, 0], part.iloc[:, 1]).statistic) if len(part) >= 3 else np.nan
                rows.append(
                    (variant, target, method, modality, a["run"], b["run"], a["fold"], b["fold"], a["seed"], b["seed"])
                    + (rho, len(part))
                )
    return pd.DataFrame(rows, columns=STABILITY_COLUMNS)


def _shares(tokens: pd.DataFrame) -> pd.DataFrame:
    """``share`` (of the modality's total mean_abs in that run) and ``percentile`` (rank within the modality in
    that run: 1 = the most important token) of each token row."""
    by = ["run", "target", "method", "modality"]
    total = tokens.groupby(by, sort=False)["mean_abs"].transform("sum")
    rank = tokens.groupby(by, sort=False)["mean_abs"].rank(pct=True, method="average")
    return tokens.assign(share=tokens["mean_abs"] / total.where(total > 0), percentile=rank)


def null_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Per non-null variant, target, method and token: mean share and percentile over the variant's real runs,
    and the same over all null runs (of any variant: the null is about the data and the target), with
    ``null_max_share`` and ``share_ratio`` (real share / mean null share). ``exceeds_null``: the real share is
    above the largest share any null run gave the token. Empty without null runs."""
    tokens = _shares(token_rows(table))
    null = tokens[tokens["null"].astype(bool)]
    real = tokens[~tokens["null"].astype(bool)]
    columns = [
        "variant",
        "target",
        "method",
        "modality",
        "token",
        "share",
        "percentile",
        "null_share",
        "null_max_share",
        "null_percentile",
        "share_ratio",
        "exceeds_null",
        "n_runs",
        "n_null_runs",
    ]
    if null.empty or real.empty:
        return pd.DataFrame(columns=columns)
    keys = ["target", "method", "modality", "token"]
    null_stats = null.groupby(keys, sort=False).agg(
        null_share=("share", "mean"),
        null_max_share=("share", "max"),
        null_percentile=("percentile", "mean"),
        n_null_runs=("run", "nunique"),
    )
    real_stats = real.groupby(["variant", *keys], sort=False).agg(
        share=("share", "mean"), percentile=("percentile", "mean"), n_runs=("run", "nunique")
    )
    out = real_stats.reset_index().merge(null_stats.reset_index(), on=keys, how="left")
    out["share_ratio"] = out["share"] / out["null_share"].where(out["null_share"] > 0)
    out["exceeds_null"] = out["share"] > out["null_max_share"]
    return out[columns]
