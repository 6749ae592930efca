"""mot_neuro.analysis against independent references: scipy, scikit-learn and textbook formulas written out here.

Each test computes what the module should report on its own (fold means by hand, the Nadeau-Bengio formula, the
O(n_pos * n_neg) structural components of DeLong, a step-up Benjamini-Hochberg, a product-limit Kaplan-Meier) and
compares; nothing is compared with numbers taken from the implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mot_neuro.analysis import (
    ablation_figure,
    delong_test,
    modality_contributions,
    steps_to_reference_quality,
    summarize,
    write_report,
)


def _row(summary: pd.DataFrame, variant: str, dropped: str, metric: str) -> pd.Series:
    row = summary.loc[(summary.variant == variant) & (summary.dropped == dropped) & (summary.metric == metric)]
    assert len(row) == 1, (variant, dropped, metric)
    return row.iloc[0]


def _rec(variant, dropped, seed, fold, metric, value) -> dict:
    return {"variant": variant, "dropped": dropped, "seed": seed, "fold": fold, "metric": metric, "value": value}


# ============================================================ A. seeds of one fold are not independent pairs
def test_fold_level_pairs_keep_the_type_one_error():
    """No true difference, but each fold has its own cell-vs-reference effect shared by that fold's seeds (the
    split happens to suit one variant). Pairing seeds x folds as independent rejects far too often; testing the
    seed-averaged fold differences keeps the nominal 5%."""
    rng = np.random.default_rng(20030101)
    n_grids, seeds, folds = 800, 3, 10
    records, old_pairs = [], []
    for g in range(n_grids):
        metric = f"grid{g:03d}/mae"  # one independent grid per metric: one summarize call does them all
        fold_level = rng.normal(0.0, 1.0, folds)  # shared by both variants: cancels in any pairing
        fold_effect = rng.normal(0.0, 1.0, folds)  # the variant x fold interaction, mean 0: no true difference
        diffs = np.empty((seeds, folds))
        for s in range(seeds):
            ref = fold_level + rng.normal(0.0, 0.7, folds)
            cand = fold_level + fold_effect + rng.normal(0.0, 0.7, folds)
            diffs[s] = cand - ref
            for f in range(folds):
                records.append(_rec("mot", "none", s, f, metric, ref[f]))
                records.append(_rec("cand", "none", s, f, metric, cand[f]))
        old_pairs.append(diffs.ravel())
    summary = summarize(pd.DataFrame(records), test_train_ratio=1 / (folds - 1))
    cand = summary.loc[summary.variant == "cand"]
    assert len(cand) == n_grids
    assert (cand.n_pairs == folds).all() and (cand.n_seeds == seeds).all()
    # the old procedure: every (seed, fold) a pair, Wilcoxon on all of them (one vectorised call)
    old_rate = float(np.mean(stats.wilcoxon(np.array(old_pairs), axis=1).pvalue < 0.05))
    new_rate = float((cand.p_value < 0.05).mean())
    corrected_t_rate = float((cand.p_corrected_t < 0.05).mean())
    rates = f"seeds x folds {old_rate:.3f}, fold means {new_rate:.3f}, corrected t {corrected_t_rate:.3f}"
    print(f"type-I error at 0.05 over {n_grids} grids: {rates}")
    # the binomial sd of a 5% rate over 800 grids is 0.0077: 0.075 is over 3 sd above 0.05
    assert new_rate <= 0.075 and corrected_t_rate <= 0.075, rates
    assert old_rate >= 0.12, rates  # the simulation does expose the old inflation
    assert old_rate - new_rate >= 0.06, rates


def test_fold_means_average_only_the_seeds_defined_on_both_sides():
    values = {  # (variant, seed, fold) -> r2; NaN = undefined on that cell's test set
        ("mot", 0, 0): 0.50, ("mot", 1, 0): 0.54, ("mot", 2, 0): 0.52,
        ("mot", 0, 1): 0.40, ("mot", 1, 1): math.nan, ("mot", 2, 1): 0.44,
        ("mot", 0, 2): 0.61, ("mot", 1, 2): 0.63, ("mot", 2, 2): 0.60,
        ("dense", 0, 0): 0.45, ("dense", 1, 0): 0.47, ("dense", 2, 0): math.nan,
        ("dense", 0, 1): 0.41, ("dense", 1, 1): 0.39, ("dense", 2, 1): 0.40,
        ("dense", 0, 2): 0.58, ("dense", 1, 2): 0.57,  # seed 2 of fold 2 never ran
    }  # fmt: skip
    records = [_rec(v, "none", s, f, "test/y/r2", x) for (v, s, f), x in values.items()]
    row = _row(summarize(records), "dense", "none", "test/y/r2")
    fold_diffs = []
    for f in range(3):
        both = [
            s
            for s in range(3)
            if not math.isnan(values.get(("dense", s, f), math.nan)) and not math.isnan(values[("mot", s, f)])
        ]
        fold_diffs.append(sum(values[("dense", s, f)] - values[("mot", s, f)] for s in both) / len(both))
    fold_diffs = np.array(fold_diffs)
    assert row.n_pairs == 3 and row.n_seeds == 2  # 2, 2 and 2 seeds on both sides
    assert row.mean_diff == pytest.approx(fold_diffs.mean())
    assert row.sd_diff == pytest.approx(fold_diffs.std(ddof=1))
    assert row.p_value == pytest.approx(stats.wilcoxon(fold_diffs).pvalue)
    assert row.n == 7 and row.n_cells == 8  # seed 2 of fold 2 never ran; seed 2 of fold 0 is NaN
    assert "1 of 8 cell(s) undefined" in row.note


# ======================================================================== B. Nadeau-Bengio corrected t
def _grid(effects: dict[str, float], folds=range(6), seeds=(0, 1), metric="test/y/r2", seed=0) -> list[dict]:
    rng = np.random.default_rng(seed)
    level = {(s, f): 0.4 + 0.05 * rng.standard_normal() for s in seeds for f in folds}
    return [
        _rec(v, "none", s, f, metric, level[s, f] + eff + 0.02 * rng.standard_normal())
        for v, eff in effects.items()
        for s in seeds
        for f in folds
    ]


def _fold_diffs(records, variant, metric, reference=("mot", "none")) -> dict:
    """fold -> the cell - reference difference averaged over seeds, written out with dicts."""
    ref = {
        (r["seed"], r["fold"]): r["value"]
        for r in records
        if (r["variant"], r["dropped"]) == reference and r["metric"] == metric
    }
    out: dict = {}
    for r in records:
        if r["variant"] == variant and r["dropped"] == "none" and r["metric"] == metric:
            out.setdefault(r["fold"], []).append(r["value"] - ref[r["seed"], r["fold"]])
    return {f: sum(v) / len(v) for f, v in sorted(out.items())}


def _nadeau_bengio_p(d: np.ndarray, ratio: float) -> float:
    j = d.size
    t = d.mean() / math.sqrt((1 / j + ratio) * d.var(ddof=1))
    return 2 * stats.t.sf(abs(t), df=j - 1)


def test_corrected_t_is_the_nadeau_bengio_formula():
    records = _grid({"mot": 0.0, "dense": -0.03, "mot_ffn": 0.005})
    summary = summarize(records, test_train_ratio=0.2)
    for variant in ("dense", "mot_ffn"):
        d = np.array(list(_fold_diffs(records, variant, "test/y/r2").values()))
        row = _row(summary, variant, "none", "test/y/r2")
        assert row.p_corrected_t == pytest.approx(_nadeau_bengio_p(d, 0.2), rel=1e-10)
        assert "Nadeau-Bengio corrected t on fold means (6 folds, n_test/n_train=0.2)" in row.tests
    # a ratio per fold: the mean over the folds paired (fold 5 is missing for dense here)
    ratios = {0: 0.20, 1: 0.25, 2: 0.20, 3: 0.25, 4: 0.20, 5: 0.30}
    partial = [r for r in records if not (r["variant"] == "dense" and r["fold"] == 5)]
    row = _row(summarize(partial, test_train_ratio=ratios), "dense", "none", "test/y/r2")
    diffs = _fold_diffs(partial, "dense", "test/y/r2")
    assert list(diffs) == [0, 1, 2, 3, 4]
    expected = _nadeau_bengio_p(np.array(list(diffs.values())), np.mean([ratios[f] for f in diffs]))
    assert row.p_corrected_t == pytest.approx(expected, rel=1e-10)
    # the correction only ever widens the interval: its p is above the plain paired t-test's
    assert row.p_corrected_t > stats.ttest_1samp(np.array(list(diffs.values())), 0.0).pvalue


def test_corrected_t_needs_the_split_sizes():
    records = _grid({"mot": 0.0, "dense": -0.03})
    row = _row(summarize(records), "dense", "none", "test/y/r2")
    assert np.isnan(row.p_corrected_t) and np.isnan(row.q_corrected_t)
    assert "corrected t not run: pass test_train_ratio" in row.note
    with pytest.raises(ValueError, match="no ratio for fold"):
        summarize(records, test_train_ratio={0: 0.25})
    with pytest.raises(ValueError, match="n_test / n_train > 0"):
        summarize(records, test_train_ratio=0.0)


# ================================================================================= C. DeLong's test
def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def _delong_structural(truth, a, b) -> tuple[float, float, float, float]:
    """DeLong, DeLong and Clarke-Pearson (1988) from the definition: placements by the Mann-Whitney kernel."""
    truth = np.asarray(truth)
    v10, v01, aucs = [], [], []
    for score in (np.asarray(a), np.asarray(b)):
        x, y = score[truth == 1], score[truth == 0]
        kernel = np.array([[_psi(xi, yj) for yj in y] for xi in x])  # m x n
        aucs.append(kernel.mean())
        v10.append(kernel.mean(axis=1))  # one per positive
        v01.append(kernel.mean(axis=0))  # one per negative
    m, n = len(v10[0]), len(v01[0])
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))  # 2 x 2, ddof=1
    contrast = np.array([1.0, -1.0])
    var = contrast @ (s10 / m + s01 / n) @ contrast
    z = (aucs[0] - aucs[1]) / math.sqrt(var)
    return aucs[0], aucs[1], math.sqrt(var), 2 * stats.norm.sf(abs(z))


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many tied scores, within and across classes
def test_delong_matches_the_structural_components_definition(decimals):
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 2, 80)
    a = truth * 0.8 + rng.normal(0, 1, 80)
    b = 0.5 * a + truth * 0.3 + rng.normal(0, 1, 80)  # correlated with a, as two models of one cohort are
    if decimals is not None:
        a, b = np.round(a, decimals), np.round(b, decimals)
    out = delong_test(truth, a, b)
    auc_a, auc_b, se, p = _delong_structural(truth, a, b)
    assert out["auc_a"] == pytest.approx(roc_auc_score(truth, a), rel=1e-12)
    assert out["auc_b"] == pytest.approx(roc_auc_score(truth, b), rel=1e-12)
    assert out["auc_a"] == pytest.approx(auc_a, rel=1e-12)
    assert out["diff"] == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert out["se"] == pytest.approx(se, rel=1e-9)
    assert out["z"] == pytest.approx((auc_a - auc_b) / se, rel=1e-9)
    assert out["p_value"] == pytest.approx(p, rel=1e-9)
    assert out["reason"] == "" and out["n_pos"] + out["n_neg"] == 80


def test_delong_undefined_is_nan_with_a_reason():
    one_class = delong_test([1, 1, 1], [0.2, 0.5, 0.9], [0.1, 0.3, 0.4])
    assert all(np.isnan(one_class[k]) for k in ("auc_a", "auc_b", "diff", "se", "z", "p_value"))
    assert "one class" in one_class["reason"]
    # AUROC 1 against a constant score (AUROC 0.5): every placement difference is 0.5, no spread, z infinite
    truth = [0, 1, 0, 1]
    assert roc_auc_score(truth, [0.1, 0.9, 0.2, 0.8]) - roc_auc_score(truth, [0.5] * 4) == 0.5
    spreadless = delong_test(truth, [0.1, 0.9, 0.2, 0.8], [0.5] * 4)
    assert spreadless["diff"] == 0.5 and spreadless["se"] == 0.0
    assert np.isnan(spreadless["p_value"]) and np.isnan(spreadless["z"])
    assert "standard error 0 with a non-zero difference" in spreadless["reason"]
    with pytest.raises(ValueError, match="0/1"):
        delong_test([0, 2, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


def _placements(truth, score) -> tuple[np.ndarray, np.ndarray]:
    """Each positive's and each negative's placement, from the Mann-Whitney kernel."""
    truth, score = np.asarray(truth), np.asarray(score, dtype=float)
    kernel = np.array([[_psi(x, y) for y in score[truth == 0]] for x in score[truth == 1]])
    return kernel.mean(axis=1), kernel.mean(axis=0)


@pytest.mark.parametrize(
    "transform",
    [
        lambda s: s,  # the same scores
        lambda s: 1 / (1 + np.exp(-s)),  # a monotone transform: the same ranking
        lambda s: np.round(3 * s) ** 3,  # monotone with ties created on both sides (a coarser ranking of its own)
        lambda s: np.full_like(s, 0.3),  # constant: compared with another constant below
    ],
)
def test_delong_identical_rankings_are_an_all_zero_difference_with_p_one(transform):
    """Two models that rank every positive against every negative alike differ by 0 at every placement: the
    comparison is an all-zero difference, p = 1 (as the fold-level tests do), not an untestable NaN."""
    rng = np.random.default_rng(21)
    truth = rng.integers(0, 2, 40)
    a = rng.normal(truth, 1.0)
    b = transform(a)
    if np.ptp(b) == 0:
        a = np.full_like(a, 0.5)  # two different constant scores
    v10_a, v01_a = _placements(truth, a)
    v10_b, v01_b = _placements(truth, b)
    identical = np.array_equal(v10_a, v10_b) and np.array_equal(v01_a, v01_b)
    out = delong_test(truth, a, b)
    if identical:
        assert out["p_value"] == 1.0 and out["diff"] == 0.0 and out["se"] == 0.0 and out["z"] == 0.0
        assert "identical rankings" in out["reason"]
        assert out["auc_a"] == pytest.approx(roc_auc_score(truth, a)) == pytest.approx(roc_auc_score(truth, b))
    else:  # the coarser ranking ties some pairs the other separates: an ordinary test
        assert out["reason"] == ""
        assert out["p_value"] == pytest.approx(_delong_structural(truth, a, b)[3], rel=1e-9)


def test_summarize_keeps_identical_rankings_in_the_delong_family():
    """The reviewer's example: a cell whose scores are a monotone transform of the reference's gets p = 1 and
    counts in the BH family, which is not shrunk to the other comparisons."""
    rng = np.random.default_rng(3)
    n = 60
    truth = rng.integers(0, 2, n)
    fold = np.arange(n) % 6
    s = rng.normal(truth, 1.0)
    scores = {"mot": s, "mono": 1 / (1 + np.exp(-s)), "other": rng.normal(truth, 1.0), "dense": rng.normal(truth, 1)}
    preds = pd.concat(
        pd.DataFrame(
            {
                "variant": v,
                "dropped": "none",
                "seed": 0,
                "fold": fold,
                "target": "y",
                "row": np.arange(n),
                "truth": truth,
                "score": x,
            }
        )
        for v, x in scores.items()
    )
    records = [_rec(v, "none", 0, f, "test/y/auroc", rng.uniform(0.5, 0.9)) for v in scores for f in range(6)]
    summary = summarize(records, predictions=preds)
    rows = summary.loc[~summary.is_reference].set_index("variant")
    assert rows.loc["mono", "p_delong"] == 1.0 and rows.loc["mono", "delong_diff"] == 0.0
    assert "identical rankings" in rows.loc["mono", "note"] and "untestable" not in rows.loc["mono", "note"]
    expected = {v: _delong_structural(truth, scores[v], s)[3] for v in ("other", "dense")}
    for v, p in expected.items():
        assert rows.loc[v, "p_delong"] == pytest.approx(p, rel=1e-9)
    ps = np.array([1.0, expected["other"], expected["dense"]])
    np.testing.assert_allclose(rows.loc[["mono", "other", "dense"], "q_delong"], _bh(ps))


def _prediction_grid():
    """60 subjects in 3 test folds, 2 seeds; mot, dense and mot-without-brain score a binary diagnosis."""
    rng = np.random.default_rng(11)
    truth = rng.integers(0, 2, 60)
    fold_of = np.arange(60) % 3
    strength = {("mot", "none"): 1.2, ("dense", "none"): 0.7, ("mot", "brain"): 0.5}
    base = rng.normal(0, 1, 60)  # shared by every model: the predictions are correlated
    preds, records = [], []
    for (variant, dropped), k in strength.items():
        for seed in (0, 1):
            logit = k * (2 * truth - 1) + base + rng.normal(0, 0.8, 60)
            score = 1 / (1 + np.exp(-logit))
            for fold in range(3):
                rows = np.flatnonzero(fold_of == fold)
                for r in rows:
                    preds.append(
                        {"variant": variant, "dropped": dropped, "seed": seed, "fold": fold, "target": "dx",
                         "row": int(r), "truth": int(truth[r]), "score": float(score[r])}
                    )  # fmt: skip
                cell = (variant, dropped, seed, fold)
                records.append(_rec(*cell, "test/dx/auroc", roc_auc_score(truth[rows], score[rows])))
                records.append(_rec(*cell, "test/dx/accuracy", float(np.mean((score[rows] > 0.5) == truth[rows]))))
    return pd.DataFrame(preds), records


def test_summarize_runs_delong_on_pooled_out_of_fold_scores():
    preds, records = _prediction_grid()
    summary = summarize(records, predictions=preds)
    ref = preds.loc[(preds.variant == "mot") & (preds.dropped == "none")]
    ref_pooled = ref.groupby("row").agg(truth=("truth", "first"), score=("score", "mean"))
    ps = []
    for variant, dropped in (("dense", "none"), ("mot", "brain")):
        cell = preds.loc[(preds.variant == variant) & (preds.dropped == dropped)]
        pooled = cell.groupby("row")["score"].mean().loc[ref_pooled.index]  # every subject in one fold
        auc_cell, auc_ref, _, p = _delong_structural(ref_pooled.truth, pooled, ref_pooled.score)
        row = _row(summary, variant, dropped, "test/dx/auroc")
        assert row.delong_diff == pytest.approx(
            roc_auc_score(ref_pooled.truth, pooled) - roc_auc_score(ref_pooled.truth, ref_pooled.score)
        )
        assert row.p_delong == pytest.approx(p, rel=1e-9)
        assert "DeLong on pooled out-of-fold AUROC (60 subjects)" in row.tests
        assert np.isnan(_row(summary, variant, dropped, "test/dx/accuracy").p_delong)  # auroc rows only
        ps.append(p)
    auroc = summary.loc[(summary.metric == "test/dx/auroc") & ~summary.is_reference].set_index("variant")
    np.testing.assert_allclose(
        summary.loc[(summary.metric == "test/dx/auroc") & ~summary.is_reference, "q_delong"],
        stats.false_discovery_control(np.array(ps)),
    )
    assert auroc.p_delong.notna().all()

    # identical pooled scores (so identical rankings): every difference zero, p = 1 in the family
    twin_preds = preds.loc[(preds.variant == "mot") & (preds.dropped == "none")].assign(variant="twin")
    twin_records = [{**r, "variant": "twin"} for r in records if (r["variant"], r["dropped"]) == ("mot", "none")]
    summary = summarize(records + twin_records, predictions=pd.concat([preds, twin_preds]))
    twin = _row(summary, "twin", "none", "test/dx/auroc")
    assert twin.p_delong == 1.0 and twin.delong_diff == 0.0 and "identical rankings" in twin.note
    family = summary.loc[(summary.metric == "test/dx/auroc") & ~summary.is_reference]
    np.testing.assert_allclose(family.q_delong, _bh(family.p_delong.to_numpy()))

    # a cell without predictions: NaN with a note, and it counts as untestable in the DeLong family
    fewer = preds.loc[~((preds.variant == "dense") & (preds.dropped == "none"))]
    summary = summarize(records, predictions=fewer)
    row = _row(summary, "dense", "none", "test/dx/auroc")
    assert np.isnan(row.p_delong) and "no predictions of target 'dx' for the cell" in row.note
    other = _row(summary, "mot", "brain", "test/dx/auroc")
    assert other.q_delong == pytest.approx(other.p_delong)  # a family of one tested comparison
    assert "1 of 2 DeLong comparison(s) of test/dx/auroc untestable" in other.note


def test_delong_refuses_a_subject_in_two_test_folds():
    preds, records = _prediction_grid()
    moved = preds.copy()
    moved.loc[(moved.row == 0) & (moved.seed == 1), "fold"] = 1
    with pytest.raises(ValueError, match="row=0 is in more than one test fold"):
        summarize(records, predictions=moved)


# ================================================================ D. the FDR family does not shrink
def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values, written out."""
    m = p.size
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):  # from the largest p down
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        adjusted[i] = running
    return adjusted


def test_bh_family_keeps_zero_differences_and_counts_the_untestable():
    effects = {"mot": 0.0, "dense": -0.05, "mot_ffn": -0.02, "mot_attn": 0.001, "mot_norm": 0.0}
    records = _grid(effects, folds=range(8))
    # a twin of the reference: every difference exactly zero
    records += [{**r, "variant": "twin"} for r in records if r["variant"] == "mot"]
    # a cell run on one fold only: untestable
    records += [{**r, "variant": "lonely"} for r in records if r["variant"] == "dense" and r["fold"] == 0]
    summary = summarize(records, test_train_ratio=1 / 7)
    rows = summary.loc[~summary.is_reference].set_index("variant")
    assert rows.loc["twin", "p_value"] == 1.0 and rows.loc["twin", "p_corrected_t"] == 1.0
    assert np.isnan(rows.loc["lonely", "p_value"]) and np.isnan(rows.loc["lonely", "q_value"])
    assert "1 fold pair(s): no test" in rows.loc["lonely", "note"]
    for p_col, q_col, name in (("p_value", "q_value", "Wilcoxon"), ("p_corrected_t", "q_corrected_t", "corrected t")):
        tested = rows.loc[rows[p_col].notna()]
        assert len(tested) == 5 and "twin" in tested.index  # the p = 1 comparison stays in the family
        np.testing.assert_allclose(tested[q_col], _bh(tested[p_col].to_numpy()))
        assert (
            f"1 of 6 {name} comparison(s) of test/y/r2 untestable (p NaN): BH over the other 5"
            in rows.loc["dense", "note"]
        )
    assert (rows.n_untestable == 1).all()
    # which test each p comes from
    assert rows.loc["dense", "tests"].startswith("Wilcoxon signed-rank on fold means (8 folds, 2 seed(s) each)")
    assert rows.loc["lonely", "tests"] == ""


# ============================================== F. leave-one-modality-out losses are sums over modalities
REF_TERMS = {"brain": 0.5, "gene": 0.6, "behaviour": 0.7}
LOO_TERMS = {"gene": 0.65, "behaviour": 0.75}  # every remaining term worse without brain


def _masked_records(folds=range(6), hidden_at_test=False) -> list[dict]:
    rng = np.random.default_rng(3)
    records = []
    cells = {("mot", "none"): REF_TERMS, ("mot", "brain"): LOO_TERMS}
    if hidden_at_test:  # the test-time-hidden modality logs its term as 0: nothing of it was reconstructed
        cells[("mot", "brain@test")] = {"brain": 0.0, **LOO_TERMS}
    for f in folds:
        noise = {m: 0.01 * rng.standard_normal() for m in REF_TERMS}
        for (variant, dropped), terms in cells.items():
            logged = {m: t + noise[m] + 0.002 * rng.standard_normal() if t else 0.0 for m, t in terms.items()}
            for m, t in logged.items():
                records.append(_rec(variant, dropped, 0, f, f"test/recon/{m}", t))
            records.append(_rec(variant, dropped, 0, f, "test/recon", sum(logged.values())))
            records.append(_rec(variant, dropped, 0, f, "test/loss", sum(logged.values()) + 0.3))
    return records


def test_reconstruction_is_compared_like_with_like():
    records = _masked_records(hidden_at_test=True)
    summary = summarize(records)
    value = {(r["dropped"], r["fold"], r["metric"]): r["value"] for r in records}
    for dropped in ("brain", "brain@test"):
        # the old comparison of totals says dropping brain helps
        totals = np.array([value[dropped, f, "test/recon"] - value["none", f, "test/recon"] for f in range(6)])
        assert totals.mean() < -0.3
        like = np.array(
            [
                sum(value[dropped, f, f"test/recon/{m}"] - value["none", f, f"test/recon/{m}"] for m in LOO_TERMS)
                for f in range(6)
            ]
        )
        row = _row(summary, "mot", dropped, "test/recon")
        assert row.mean_diff == pytest.approx(like.mean()) and row.mean_diff > 0.09
        assert row.sd_diff == pytest.approx(like.std(ddof=1))
        assert row.p_value == pytest.approx(stats.wilcoxon(like).pvalue)
        assert row.worse and row.comparable
        assert "compared like with like: sum over behaviour, gene" in row.note
        # the cell's own mean stays the logged total
        assert row["mean"] == pytest.approx(np.mean([value[dropped, f, "test/recon"] for f in range(6)]))

        loss = _row(summary, "mot", dropped, "test/loss")
        assert not loss.comparable and np.isnan(loss.mean_diff) and np.isnan(loss.p_value)
        assert "not comparable: a sum over modalities; compare test/recon or a supervised metric" in loss.note
    own = _row(summary, "mot", "brain@test", "test/recon/brain")
    assert not own.comparable and np.isnan(own.mean_diff) and "not comparable" in own.note
    gene = _row(summary, "mot", "brain", "test/recon/gene")
    assert gene.comparable and gene.mean_diff == pytest.approx(0.05, abs=0.01)


def test_contributions_refuse_a_loss_summed_over_modalities(tmp_path):
    records = _masked_records()
    summary = summarize(records)
    with pytest.raises(ValueError, match=r"'test/loss' is not comparable.*use test/recon"):
        modality_contributions(summary, "test/loss")
    with pytest.raises(ValueError, match="not comparable"):
        write_report(records, summary, tmp_path, metric="test/loss")
    contrib = modality_contributions(summary, "test/recon").set_index("modality")
    assert contrib.loc["brain", "contribution"] == pytest.approx(0.1, abs=0.01)  # positive: brain helps
    assert set(write_report(records, summary, tmp_path, metric="test/recon")) >= {"ablation"}
    # without masked modelling a loss is supervised only, and comparable
    supervised = [r for r in records if r["metric"] == "test/loss"]
    assert _row(summarize(supervised), "mot", "brain", "test/loss").comparable


# ============================================================== G. steps to dense quality, censored
def _km_textbook(times, reached, tau=None):
    """Product-limit estimator: survival after each distinct time at which a cell reached the target; the median
    (the first time the survival is <= 0.5) and the area under the curve up to tau (default: the largest time)."""
    pairs = sorted(zip(times, reached, strict=True))
    survival, curve = 1.0, []
    for t in sorted({t for t, e in pairs if e}):
        at_risk = sum(1 for u, _ in pairs if u >= t)
        events = sum(1 for u, e in pairs if u == t and e)
        survival *= 1 - events / at_risk
        curve.append((t, survival))
    median = next((t for t, s in curve if s <= 0.5), math.inf)
    tau = max(times) if tau is None else tau
    area, previous_t, previous_s = 0.0, 0.0, 1.0
    for t, s in curve:
        if t >= tau:
            break
        area += previous_s * (t - previous_t)
        previous_t, previous_s = t, s
    area += previous_s * (tau - previous_t)
    return median, area, tau


def _curves(cells: dict) -> pd.DataFrame:
    """cells: (variant, fold) -> {step: loss}."""
    return pd.DataFrame(
        [
            {"variant": v, "dropped": "none", "seed": 0, "fold": f, "step": step, "value": loss}
            for (v, f), curve in cells.items()
            for step, loss in curve.items()
        ]
    )


def test_steps_treat_never_reaching_as_censored():
    """The issue's example: 1 of 3 cells reaches dense's final loss at half its steps; the others never do."""
    dense = {20: 2.0, 60: 1.5, 100: 1.0}  # target 1.0 at step 100
    cells = {("dense", f): dense for f in range(3)}
    cells[("mot", 0)] = {20: 1.5, 50: 1.0, 100: 0.9}  # ratio 0.5
    cells[("mot", 1)] = {20: 1.6, 100: 1.1}  # never: censored at 100 / 100
    cells[("mot", 2)] = {20: 1.6, 120: 1.2}  # never: censored at 120 / 100
    per_cell, per_variant = steps_to_reference_quality(_curves(cells), flops_per_step={"dense": 1.0, "mot": 1.5})
    mot = per_variant.set_index("variant").loc["mot"]
    median, restricted, tau = _km_textbook([0.5, 1.0, 1.2], [True, False, False])
    assert median == math.inf and restricted == pytest.approx(0.5 + 0.7 * 2 / 3)  # the old report: median 0.5
    assert mot.n_reached == 1 and mot.n_censored == 2
    assert mot.km_median_ratio == median
    assert mot.restricted_mean_ratio == pytest.approx(restricted)
    assert mot.restricted_mean_ratio_tau == pytest.approx(tau)
    assert "not reached by half" in mot.note and "2 of 3 cell(s) never reached" in mot.note
    assert "mean_ratio" not in per_variant.columns and "median_ratio" not in per_variant.columns
    f_median, f_restricted, _ = _km_textbook([0.75, 1.5, 1.8], [True, False, False])
    assert mot.km_median_flops_ratio == f_median
    assert mot.restricted_mean_flops_ratio == pytest.approx(f_restricted)
    cell = per_cell.set_index(["variant", "fold"])
    assert cell.loc[("mot", 2), "censored_at_ratio"] == pytest.approx(1.2)
    assert np.isnan(cell.loc[("mot", 2), "ratio"]) and not cell.loc[("mot", 2), "reached"]


def test_km_median_and_restricted_mean_with_censoring_in_between():
    dense = {100: 1.0}
    cells = {("dense", f): dense for f in range(4)}
    cells[("mot", 0)] = {30: 1.0}  # 0.3
    cells[("mot", 1)] = {50: 1.4}  # censored at 0.5
    cells[("mot", 2)] = {10: 1.2, 60: 0.9}  # 0.6
    cells[("mot", 3)] = {40: 1.3, 80: 1.0}  # 0.8
    _, per_variant = steps_to_reference_quality(_curves(cells))
    mot = per_variant.set_index("variant").loc["mot"]
    median, restricted, tau = _km_textbook([0.3, 0.5, 0.6, 0.8], [True, False, True, True])
    assert median == pytest.approx(0.6) and mot.km_median_ratio == pytest.approx(median)
    assert mot.restricted_mean_ratio == pytest.approx(restricted)
    assert tau == 0.8
    # mot's curve reaches 0 at 0.8, so it is known beyond: the common tau is dense's 1.0 (whose curve also
    # reaches 0), and mot's area up to 1.0 is its area up to 0.8
    assert (per_variant.restricted_mean_ratio_tau == 1.0).all()
    assert mot.restricted_mean_ratio == pytest.approx(_km_textbook([0.3, 0.5, 0.6, 0.8], [1, 0, 1, 1], tau=1.0)[1])


# =============================================================== H. undefined values are not drawn as 0
def test_plot_draws_no_bar_or_error_bar_where_undefined():
    records = _grid({"mot": 0.0, "dense": -0.05}, folds=range(4), seeds=(0,))
    for f in range(4):
        records.append(_rec("mot", "gene", 0, f, "test/y/r2", math.nan))  # contribution undefined
        records.append(_rec("mot", "brain", 0, f, "test/y/r2", 0.2))
    records.append(_rec("mot", "behaviour", 0, 0, "test/y/r2", 0.35))  # one fold: no sd of the differences
    records.append(_rec("mot_ffn", "none", 0, 0, "test/y/r2", 0.38))  # one cell: no sd
    summary = summarize(records)
    contrib = modality_contributions(summary, "test/y/r2")
    fig = ablation_figure(summary, "test/y/r2")
    left, right = fig.axes

    def drawn(ax):
        bars = [c for c in ax.containers if type(c).__name__ == "BarContainer"]
        errs = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
        heights = {round(p.get_x() + p.get_width() / 2): p.get_height() for c in bars for p in c.patches}
        with_err = {round(seg[0][0]) for c in errs for seg in c.lines[2][0].get_segments()}
        na = {round(t.xy[0]) for t in ax.texts if t.get_text() == "n/a"}
        return heights, with_err, na

    heights, with_err, na = drawn(left)
    expected = dict(enumerate(contrib.contribution))
    assert {x for x, h in expected.items() if np.isfinite(h)} == set(heights)
    for x, h in heights.items():
        assert h == pytest.approx(expected[x])
    assert with_err == {x for x, s in enumerate(contrib.sd) if np.isfinite(s) and np.isfinite(expected[x])}
    assert na == {x for x, h in expected.items() if not np.isfinite(h)}
    assert list(contrib.modality) == ["brain", "behaviour", "gene"] and na == {2} and with_err == {0}

    heights, with_err, na = drawn(right)
    labels = [t.get_text() for t in right.get_xticklabels()]
    assert labels == ["dense", "mot_ffn", "mot"]
    assert set(heights) == {0, 1, 2} and with_err == {0, 2}  # mot_ffn has one cell: no error bar


# ====================================================== I. DeLong: stages and seeds matched per subject
def _subject_preds(variant, seed, rows, truth, score, fold_of, dropped="none") -> pd.DataFrame:
    return pd.DataFrame(
        {"variant": variant, "dropped": dropped, "seed": seed, "fold": fold_of[rows], "target": "y", "row": rows,
         "truth": truth[rows], "score": score[rows]}
    )  # fmt: skip


def test_delong_predictions_without_a_stage_are_test_stage_only():
    """A val/<target>/auroc row must not get the test predictions' DeLong result; with a stage column each
    stage's rows get their own predictions."""
    rng = np.random.default_rng(0)
    n = 40
    truth = rng.integers(0, 2, n)
    fold_of = np.arange(n) % 4
    rows = np.arange(n)
    test_scores = {v: rng.normal(truth, 1.0) for v in ("mot", "dense")}
    val_scores = {v: rng.normal(truth, 1.0) for v in ("mot", "dense")}
    preds = pd.concat([_subject_preds(v, 0, rows, truth, test_scores[v], fold_of) for v in ("mot", "dense")])
    records = [
        _rec(v, "none", 0, f, f"{stage}/y/auroc", rng.uniform(0.5, 0.9))
        for v in ("mot", "dense")
        for f in range(4)
        for stage in ("val", "test")
    ]
    expected_test = _delong_structural(truth, test_scores["dense"], test_scores["mot"])
    summary = summarize(records, predictions=preds)
    test = _row(summary, "dense", "none", "test/y/auroc")
    assert test.p_delong == pytest.approx(expected_test[3], rel=1e-9)
    assert test.delong_diff == pytest.approx(expected_test[0] - expected_test[1])
    val = _row(summary, "dense", "none", "val/y/auroc")
    assert np.isnan(val.delong_diff) and np.isnan(val.p_delong) and np.isnan(val.q_delong)
    assert "DeLong" not in val.tests and "untestable" not in val.note  # no DeLong hypothesis: no family

    staged = pd.concat(
        [preds.assign(stage="test")]
        + [_subject_preds(v, 0, rows, truth, val_scores[v], fold_of).assign(stage="val") for v in ("mot", "dense")]
    )
    summary = summarize(records, predictions=staged)
    expected_val = _delong_structural(truth, val_scores["dense"], val_scores["mot"])
    assert _row(summary, "dense", "none", "test/y/auroc").p_delong == pytest.approx(expected_test[3], rel=1e-9)
    assert _row(summary, "dense", "none", "val/y/auroc").p_delong == pytest.approx(expected_val[3], rel=1e-9)


def test_delong_matches_seeds_per_subject():
    """Identical models, but one side lacks seed 1 of some subjects (and has a NaN score for another): both sides
    must average the same seeds for every subject, so the pooled scores are identical (diff 0, p 1)."""
    rng = np.random.default_rng(0)
    n = 40
    truth = rng.integers(0, 2, n)
    fold_of = np.arange(n) % 4
    rows = np.arange(n)
    s0, s1 = rng.normal(truth, 1.0), rng.normal(truth, 1.0)
    lacking = rows[rows % 8 == 0]  # 5 subjects without seed 1 in dense
    s1_nan = s1.copy()
    s1_nan[3] = np.nan  # and subject 3's seed-1 score undefined
    preds = pd.concat(
        [
            _subject_preds("mot", 0, rows, truth, s0, fold_of),
            _subject_preds("mot", 1, rows, truth, s1, fold_of),
            _subject_preds("dense", 0, rows, truth, s0, fold_of),
            _subject_preds("dense", 1, np.setdiff1d(rows, lacking), truth, s1_nan, fold_of),
        ]
    )
    records = [_rec(v, "none", s, f, "test/y/auroc", 0.7) for v in ("mot", "dense") for s in (0, 1) for f in range(4)]
    row = _row(summarize(records, predictions=preds), "dense", "none", "test/y/auroc")
    assert row.delong_diff == 0.0 and row.p_delong == 1.0
    assert "DeLong on 40 subjects: 0 of the cell's and 6 of the reference's (subject, seed) predictions" in row.note
    assert "(40 subjects)" in row.tests

    # a different cell with the same gaps: pooled over the matched seeds, as written out here
    s2, s3 = rng.normal(truth, 1.2), rng.normal(truth, 1.2)
    other = pd.concat(
        [
            _subject_preds("mot", 0, rows, truth, s0, fold_of),
            _subject_preds("mot", 1, rows, truth, s1, fold_of),
            _subject_preds("dense", 0, rows, truth, s2, fold_of),
            _subject_preds("dense", 1, rows[rows % 8 != 0], truth, np.where(rows == 3, np.nan, s3), fold_of),
        ]
    )
    has_seed1 = (rows % 8 != 0) & (rows != 3)
    cell = np.where(has_seed1, (s2 + s3) / 2, s2)
    ref = np.where(has_seed1, (s0 + s1) / 2, s0)
    expected = _delong_structural(truth, cell, ref)
    row = _row(summarize(records, predictions=other), "dense", "none", "test/y/auroc")
    assert row.p_delong == pytest.approx(expected[3], rel=1e-9)
    assert row.delong_diff == pytest.approx(expected[0] - expected[1])


def test_delong_counts_the_subjects_it_used():
    """A subject whose score is not finite on one side is not one of the subjects compared."""
    preds, records = _prediction_grid()
    preds.loc[(preds.variant == "dense") & (preds.row.isin([0, 1])), "score"] = np.inf
    summary = summarize(records, predictions=preds)
    assert "DeLong on pooled out-of-fold AUROC (58 subjects)" in _row(summary, "dense", "none", "test/dx/auroc").tests
    assert "(60 subjects)" in _row(summary, "mot", "brain", "test/dx/auroc").tests


# ========================================================= J. corrected t with no fold-to-fold variance
def test_corrected_t_constant_difference_is_untestable_whether_or_not_it_rounds():
    """A constant shift of 0.1 leaves fold differences equal only up to rounding (ptp ~ 1e-17); an exact
    constant leaves none. Both have no fold-to-fold variance: NaN, noted, counted untestable; all-zero: p = 1."""
    ref = np.array([0.31, 0.47, 0.52, 0.18, 0.66, 0.29])
    exact_ref = np.array([0.5, 0.25, 0.75, 0.125, 0.375, 0.625])  # + 0.125: exact in binary
    cells = {"rounded": ref + 0.1, "exact": None, "twin": ref, "noisy": ref + np.array([0.1, 0, 0.05, 0.2, 0.1, 0.3])}
    records = [_rec("mot", "none", 0, f, "test/y/mae", v) for f, v in enumerate(ref)]
    records += [_rec("mot", "none", 0, f, "exact/y/mae", v) for f, v in enumerate(exact_ref)]
    records += [_rec("exact", "none", 0, f, "exact/y/mae", v + 0.125) for f, v in enumerate(exact_ref)]
    for name, values in cells.items():
        if values is not None:
            records += [_rec(name, "none", 0, f, "test/y/mae", v) for f, v in enumerate(values)]
    assert 0 < np.ptp((ref + 0.1) - ref) < 1e-15 and np.ptp((exact_ref + 0.125) - exact_ref) == 0
    summary = summarize(records, test_train_ratio=0.2)
    for variant, metric in (("rounded", "test/y/mae"), ("exact", "exact/y/mae")):
        row = _row(summary, variant, "none", metric)
        assert np.isnan(row.p_corrected_t) and np.isnan(row.q_corrected_t)
        assert "no fold-to-fold variance" in row.note and "the t-test is undefined" in row.note
        assert row.p_value == pytest.approx(stats.wilcoxon(np.full(6, 0.1)).pvalue)  # the rank test still runs
    rounded = _row(summary, "rounded", "none", "test/y/mae")
    assert "1 of 3 corrected t comparison(s) of test/y/mae untestable (p NaN): BH over the other 2" in rounded.note
    assert _row(summary, "twin", "none", "test/y/mae").p_corrected_t == 1.0
    noisy = _row(summary, "noisy", "none", "test/y/mae")
    d = cells["noisy"] - ref
    assert noisy.p_corrected_t == pytest.approx(_nadeau_bengio_p(d, 0.2), rel=1e-10)


def test_a_boolean_test_train_ratio_is_refused():
    records = _grid({"mot": 0.0, "dense": -0.03})
    for ratio in (True, {f: True for f in range(6)}, np.bool_(True)):
        with pytest.raises(ValueError, match="n_test / n_train > 0"):
            summarize(records, test_train_ratio=ratio)


# ============================================ K. like with like: undefined terms, contributions per row
def _recon_with_gaps() -> list[dict]:
    """The reviewer's grid: without brain, the clin term is undefined in folds 3-5; without gene no term is
    logged at all, only the total."""
    rng = np.random.default_rng(5)
    records = []
    for f in range(6):
        b, g, c = rng.uniform(0.5, 1.0, 3)
        for m, v in (("brain", b), ("gene", g), ("clin", c)):
            records.append(_rec("mot", "none", 0, f, f"test/recon/{m}", v))
        records.append(_rec("mot", "none", 0, f, "test/recon", b + g + c))
        clin = c + 0.05 if f < 3 else math.nan
        records.append(_rec("mot", "brain", 0, f, "test/recon/gene", g + 0.05 + 0.01 * f))
        records.append(_rec("mot", "brain", 0, f, "test/recon/clin", clin))
        records.append(_rec("mot", "brain", 0, f, "test/recon", g + 0.05 + (0.0 if f >= 3 else clin)))
        records.append(_rec("mot", "gene", 0, f, "test/recon", 1.0))
        for dropped, shift in (("none", 0.0), ("brain", 0.02), ("gene", 0.04)):
            records.append(_rec("mot", dropped, 0, f, "test/loss", 2.0 + shift))
    return records


def test_like_with_like_says_which_folds_an_undefined_term_left_out():
    records = _recon_with_gaps()
    value = {(r["dropped"], r["fold"], r["metric"]): r["value"] for r in records}
    row = _row(summarize(records), "mot", "brain", "test/recon")
    like = np.array(
        [
            sum(value["brain", f, f"test/recon/{m}"] - value["none", f, f"test/recon/{m}"] for m in ("clin", "gene"))
            for f in range(6)
        ]
    )
    kept = like[np.isfinite(like)]
    assert kept.size == 3 and row.n_pairs == 3
    assert row.mean_diff == pytest.approx(kept.mean())
    assert "3 (seed, fold) pair(s) left out where a term was undefined on either side (clin in 3)" in row.note
    assert "3 fold(s) left out entirely: 3, 4, 5" in row.note


def test_contributions_of_recon_keep_the_rows_that_can_be_compared():
    records = _recon_with_gaps()
    summary = summarize(records)
    contrib = modality_contributions(summary, "test/recon").set_index("modality")
    assert list(contrib.index) == ["brain", "gene"]
    brain = _row(summary, "mot", "brain", "test/recon")
    assert contrib.loc["brain", "contribution"] == pytest.approx(brain.mean_diff) and brain.mean_diff > 0
    assert np.isnan(contrib.loc["gene", "contribution"]) and np.isnan(contrib.loc["gene", "p_value"])
    assert "no test/recon/<modality> term is defined on both sides" in contrib.loc["gene", "note"]
    # the total loss is still refused, and its advice is another metric
    with pytest.raises(ValueError, match="'test/loss' is not comparable") as err:
        modality_contributions(summary, "test/loss")
    assert "use test/recon" in str(err.value) and "use test/loss" not in str(err.value)


# ====================================================== L. steps to reference quality: one tau for all
def test_restricted_mean_uses_one_tau_so_stopping_early_does_not_look_fast():
    """The reviewer's example: 'bad' stops at half the steps and never reaches the target. With each variant's
    own tau it had the smallest restricted mean (0.5, vs 0.9 and 1.0) and looked fastest."""
    steps = np.arange(1, 11) * 10
    reference = 1 / np.sqrt(steps)
    cells = {}
    for f in range(4):
        cells[("dense", f)] = dict(zip(steps.tolist(), reference, strict=True))
        cells[("mot", f)] = dict(zip(steps.tolist(), 0.9 * reference, strict=True))
        cells[("bad", f)] = dict(zip(steps[:5].tolist(), 1.2 * reference[:5], strict=True))
    _, per_variant = steps_to_reference_quality(_curves(cells))
    summ = per_variant.set_index("variant")
    assert (summ.restricted_mean_ratio_tau == 0.5).all()  # bad is followed to 0.5 and no further
    for variant, times, reached in (("dense", [1.0] * 4, [1] * 4), ("mot", [0.9] * 4, [1] * 4),
                                    ("bad", [0.5] * 4, [0] * 4)):  # fmt: skip
        assert summ.loc[variant, "restricted_mean_ratio"] == pytest.approx(_km_textbook(times, reached, tau=0.5)[1])
    assert summ.loc["bad", "restricted_mean_ratio"] >= summ[["restricted_mean_ratio"]].drop("bad").max().item()
    assert summ.loc["bad", "km_median_ratio"] == math.inf and summ.loc["mot", "km_median_ratio"] == 0.9
    assert "common tau 0.5" in summ.loc["mot", "note"]


def test_common_tau_cuts_every_curve_at_the_shortest_follow_up():
    """'short' reaches the target at 0.2 in one fold and is censored at 0.5 in the other: its curve is known to
    0.5 only, so every variant's restricted mean is the area up to 0.5 (mot's curve drops at 0.3 and 0.6)."""
    dense = {100: 1.0}
    cells = {("dense", f): dense for f in range(2)}
    cells[("mot", 0)] = {30: 1.0}  # 0.3
    cells[("mot", 1)] = {60: 1.0}  # 0.6
    cells[("short", 0)] = {20: 1.0}  # 0.2
    cells[("short", 1)] = {50: 1.5}  # censored at 0.5
    _, per_variant = steps_to_reference_quality(_curves(cells))
    summ = per_variant.set_index("variant")
    assert (summ.restricted_mean_ratio_tau == 0.5).all()
    assert summ.loc["mot", "restricted_mean_ratio"] == pytest.approx(_km_textbook([0.3, 0.6], [1, 1], tau=0.5)[1])
    assert summ.loc["mot", "restricted_mean_ratio"] == pytest.approx(0.3 + 0.2 * 0.5)
    assert summ.loc["short", "restricted_mean_ratio"] == pytest.approx(0.2 + 0.3 * 0.5)
    assert summ.loc["dense", "restricted_mean_ratio"] == pytest.approx(0.5)
    assert "Kaplan-Meier estimate of E[min(ratio, tau)]" in summ.loc["short", "note"]


def test_km_median_where_the_survival_is_one_half_over_an_interval():
    """Four cells reach the target at 0.2, 0.4, 0.6, 0.8: S = 0.5 on [0.4, 0.6). The median reported is the
    left end, 0.4, the smallest time with S <= 0.5 (R's survival package would report the midpoint, 0.5)."""
    dense = {100: 1.0}
    cells = {("dense", f): dense for f in range(4)}
    for f, step in enumerate((20, 40, 60, 80)):
        cells[("mot", f)] = {step: 1.0}
    _, per_variant = steps_to_reference_quality(_curves(cells))
    mot = per_variant.set_index("variant").loc["mot"]
    survival = {t: (4 - k) / 4 for k, t in enumerate((0.2, 0.4, 0.6, 0.8), start=1)}  # after each time
    assert survival[0.4] == 0.5
    assert mot.km_median_ratio == pytest.approx(min(t for t, s in survival.items() if s <= 0.5)) == 0.4
    # nothing censored: the area under the curve is the plain mean of the times
    assert mot.restricted_mean_ratio == pytest.approx(np.mean([0.2, 0.4, 0.6, 0.8]))
