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
    flat = delong_test([0, 1, 0, 1], [0.5] * 4, [0.3] * 4)
    assert flat["auc_a"] == flat["auc_b"] == 0.5 and flat["se"] == 0.0
    assert np.isnan(flat["p_value"]) and np.isnan(flat["z"]) and "standard error 0" in flat["reason"]
    scores = [0.1, 0.7, 0.4, 0.8, 0.3]
    same = delong_test([0, 1, 0, 1, 0], scores, scores)
    assert np.isnan(same["p_value"]) and "identical scores" in same["reason"]
    with pytest.raises(ValueError, match="0/1"):
        delong_test([0, 2, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


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

    # identical pooled scores: every difference zero, p = 1 in the family (like the other tests)
    twin_preds = preds.loc[(preds.variant == "mot") & (preds.dropped == "none")].assign(variant="twin")
    twin_records = [{**r, "variant": "twin"} for r in records if (r["variant"], r["dropped"]) == ("mot", "none")]
    summary = summarize(records + twin_records, predictions=pd.concat([preds, twin_preds]))
    twin = _row(summary, "twin", "none", "test/dx/auroc")
    assert twin.p_delong == 1.0 and twin.delong_diff == 0.0 and "identical pooled scores" in twin.note
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
def _km_textbook(times, reached):
    """Product-limit estimator: survival after each distinct time at which a cell reached the target."""
    pairs = sorted(zip(times, reached, strict=True))
    survival, curve = 1.0, []
    for t in sorted({t for t, e in pairs if e}):
        at_risk = sum(1 for u, _ in pairs if u >= t)
        events = sum(1 for u, e in pairs if u == t and e)
        survival *= 1 - events / at_risk
        curve.append((t, survival))
    median = next((t for t, s in curve if s <= 0.5), math.inf)
    tau = max(times)
    area, previous_t, previous_s = 0.0, 0.0, 1.0
    for t, s in curve:
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
    assert mot.restricted_mean_ratio_tau == pytest.approx(tau) == 0.8


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
