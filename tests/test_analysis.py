"""Ablation statistics and plots (mot_neuro.analysis) on synthetic results with a planted structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mot_neuro.analysis import (
    modality_contributions,
    plot_ablation,
    steps_to_reference_quality,
    summarize,
    tidy_results,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1)
# Tests run on fold-level differences (seeds averaged within a fold): with 5 folds a Wilcoxon p cannot go below
# 0.0625, so the planted grid has 8 folds for its strong effects to reach q < 0.05.
FOLDS = range(8)
VARIANTS = {"dense": -0.03, "mot_ffn": -0.01, "mot": 0.0}  # r2 offset from the full model
DROPS = {"none": 0.0, "gene": -0.05, "brain": -0.2, "behaviour": 0.0}  # r2 lost without the modality
N_CELLS = len(VARIANTS) * len(DROPS)


def planted_records(seeds=SEEDS, folds=FOLDS) -> list[dict]:
    """r2 (and mae = 1 - r2) per cell: a shared (seed, fold) level + variant and drop effects + small noise."""
    rng = np.random.default_rng(0)
    level = {(s, f): 0.45 + 0.05 * rng.standard_normal() for s in seeds for f in folds}
    records = []
    for variant, v_eff in VARIANTS.items():
        for dropped, d_eff in DROPS.items():
            for s in seeds:
                for f in folds:
                    # behaviour is pure noise around zero, larger than the others' noise
                    noise = rng.normal(0, 0.01 if dropped == "behaviour" else 0.003)
                    r2 = level[s, f] + v_eff + d_eff + noise
                    cell = {"variant": variant, "dropped": dropped, "seed": s, "fold": f}
                    records.append({**cell, "metric": "r2", "value": r2})
                    records.append({**cell, "metric": "mae", "value": 1.0 - r2})
    return records


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return planted_records()


@pytest.fixture(scope="module")
def results(records) -> pd.DataFrame:
    return tidy_results(records)


@pytest.fixture(scope="module")
def summary(results) -> pd.DataFrame:
    return summarize(results)


def _row(summary: pd.DataFrame, variant: str, dropped: str, metric: str) -> pd.Series:
    row = summary.loc[(summary.variant == variant) & (summary.dropped == dropped) & (summary.metric == metric)]
    assert len(row) == 1
    return row.iloc[0]


def test_tidy_results_columns_sorted(records):
    df = tidy_results(reversed(records))
    assert list(df.columns) == ["variant", "dropped", "seed", "fold", "metric", "value"]
    assert len(df) == len(records)
    key = ["variant", "dropped", "seed", "fold", "metric"]
    assert df.equals(df.sort_values(key).reset_index(drop=True))


def test_tidy_results_refuses_duplicate_cell(records):
    dup = {**records[7]}
    with pytest.raises(ValueError, match="duplicate") as err:
        tidy_results([*records, dup])
    for key in ("variant", "dropped", "seed", "fold", "metric"):
        assert f"{key}={dup[key]!r}" in str(err.value)


def test_tidy_results_names_missing_key():
    with pytest.raises(ValueError, match="lacks key"):
        tidy_results([{"variant": "mot", "dropped": "none", "seed": 0, "fold": 0, "metric": "r2"}])


def test_summary_rows_and_means(summary, results):
    assert len(summary) == N_CELLS * 2  # two metrics
    assert set(summary.metric) == {"r2", "mae"}
    for (variant, dropped, metric), cell in results.groupby(["variant", "dropped", "metric"]):
        row = _row(summary, variant, dropped, metric)
        assert row.n == len(SEEDS) * len(FOLDS)
        assert row["mean"] == pytest.approx(cell.value.mean())
        assert row.sd == pytest.approx(cell.value.std(ddof=1))
    # the planted effects, seen in the means
    full = _row(summary, "mot", "none", "r2")["mean"]
    assert _row(summary, "dense", "none", "r2")["mean"] == pytest.approx(full - 0.03, abs=0.005)
    assert _row(summary, "mot", "brain", "r2")["mean"] == pytest.approx(full - 0.2, abs=0.005)


def test_reference_rows_have_no_diffs(summary):
    ref = summary.loc[summary.is_reference]
    assert set(zip(ref.variant, ref.dropped, strict=True)) == {("mot", "none")}
    assert ref[["mean_diff", "sd_diff", "p_value", "q_value"]].isna().all().all()
    assert not ref.worse.any()
    assert (ref.note == "reference").all()


def test_paired_diffs_match_hand_computation(summary, records):
    ref = {
        (r["seed"], r["fold"]): r["value"]
        for r in records
        if (r["variant"], r["dropped"], r["metric"]) == ("mot", "none", "r2")
    }
    cell = {
        (r["seed"], r["fold"]): r["value"]
        for r in records
        if (r["variant"], r["dropped"], r["metric"]) == ("mot_ffn", "gene", "r2")
    }
    # seeds are averaged within each fold first: one difference per fold
    diffs = np.array([np.mean([cell[s, f] - ref[s, f] for s in SEEDS]) for f in FOLDS])
    row = _row(summary, "mot_ffn", "gene", "r2")
    assert row.n_pairs == len(FOLDS) and row.n_seeds == len(SEEDS)
    assert row.mean_diff == pytest.approx(diffs.mean())
    assert row.sd_diff == pytest.approx(diffs.std(ddof=1))
    assert row.p_value == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert row.worse


def test_q_values_are_bh_within_metric(summary):
    for _, group in summary.groupby("metric"):
        tested = group.loc[group.p_value.notna()]
        assert len(tested) == N_CELLS - 1
        np.testing.assert_allclose(tested.q_value, stats.false_discovery_control(tested.p_value.to_numpy()))


def test_worse_follows_direction(summary):
    # both metrics say the same thing: leaving brain out is worse (r2 down, mae up)
    for metric in ("r2", "mae"):
        row = _row(summary, "mot", "brain", metric)
        assert row.worse
        assert row.q_value < 0.05
    assert _row(summary, "mot", "brain", "r2").mean_diff < 0 < _row(summary, "mot", "brain", "mae").mean_diff
    assert bool(_row(summary, "mot", "none", "r2").higher_is_better)
    assert not bool(_row(summary, "mot", "none", "mae").higher_is_better)


def test_unknown_metric_direction_needs_override(results):
    odd = results.assign(metric=results.metric.replace({"mae": "spread"}))
    with pytest.raises(ValueError, match="higher_is_better"):
        summarize(odd)
    s = summarize(odd, higher_is_better={"spread": False})
    assert _row(s, "mot", "brain", "spread").worse


def test_few_pairs_and_zero_diffs_are_noted():
    recs = planted_records(seeds=(0,), folds=range(5))  # 5 folds x 1 seed: the smallest p is 2 / 2**5
    s = summarize(recs)
    row = _row(s, "mot", "brain", "r2")
    assert row.n_pairs == 5
    assert row.p_value == pytest.approx(0.0625)
    assert "0.0625" in row.note and ">= 6 pairs" in row.note

    same = [
        {**r, "variant": v} for r in recs if r["variant"] == "mot" and r["dropped"] == "none" for v in ("mot", "twin")
    ]
    # all-zero differences stay in the FDR family with p = 1 (they used to get NaN and drop out of it)
    row = _row(summarize(same), "twin", "none", "r2")
    assert row.p_value == 1.0 and row.q_value == 1.0
    assert row.mean_diff == 0 and "all fold differences zero" in row.note

    one = [r for r in recs if r["fold"] == 0]
    row = _row(summarize(one), "mot", "brain", "r2")
    assert row.n_pairs == 1 and np.isnan(row.p_value) and "no test" in row.note


def test_missing_reference_is_an_error(results):
    with pytest.raises(ValueError, match="reference cell"):
        summarize(results, reference=("mot_attention", "none"))


def test_modality_contributions_rank_and_sign(summary):
    for metric in ("r2", "mae"):  # higher- and lower-is-better give the same positive contributions
        c = modality_contributions(summary, metric)
        assert list(c.modality) == ["brain", "gene", "behaviour"]
        assert c.contribution.iloc[0] == pytest.approx(0.2, abs=0.005)
        assert c.contribution.iloc[1] == pytest.approx(0.05, abs=0.005)
        assert abs(c.contribution.iloc[2]) < 0.01
        assert c.q_value.iloc[0] < 0.05
        assert c.contribution.is_monotonic_decreasing
    r2 = modality_contributions(summary, "r2").set_index("modality")
    mae = modality_contributions(summary, "mae").set_index("modality")
    np.testing.assert_allclose(r2.contribution, mae.loc[r2.index].contribution)  # mae = 1 - r2 exactly


def test_modality_contributions_need_matching_reference(summary, results):
    with pytest.raises(ValueError, match="reference=\\('dense', 'none'\\)"):
        modality_contributions(summary, "r2", variant="dense")
    dense = modality_contributions(summarize(results, reference=("dense", "none")), "r2", variant="dense")
    assert dense.modality.iloc[0] == "brain"
    with pytest.raises(ValueError, match="not in the summary"):
        modality_contributions(summary, "auroc")


def _curves() -> pd.DataFrame:
    steps = [10 * i for i in range(1, 11)]  # 10 .. 100
    dense = [2.0, 1.8, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.05, 1.0]  # final loss 1.0 at step 100
    mot = [1.6, 1.3, 1.1, 1.0, 0.95, 0.9, 0.85, 0.8, 0.78, 0.75]  # reaches 1.0 at step 40
    mot_ffn = [1.8, 1.5, 1.3, 1.2, 1.1, 0.99, 0.95, 0.9, 0.9, 0.85]  # reaches it at step 60
    slow = [2.5, 2.3, 2.1, 1.9, 1.7, 1.5, 1.4, 1.3, 1.25, 1.2]  # never does
    rows = []
    for fold in (0, 1):
        for variant, values in {"dense": dense, "mot": mot, "mot_ffn": mot_ffn, "slow": slow}.items():
            for step, value in zip(steps, values, strict=True):
                rows.append(
                    {"variant": variant, "dropped": "none", "seed": 0, "fold": fold, "step": step, "value": value}
                )
                # a leave-one-out curve that would reach everything at once: it must be ignored
                rows.append(
                    {"variant": variant, "dropped": "brain", "seed": 0, "fold": fold, "step": step, "value": 0.0}
                )
    return pd.DataFrame(rows)


def test_steps_to_reference_quality_exact_ratios():
    per_cell, per_variant = steps_to_reference_quality(_curves())
    assert len(per_cell) == 4 * 2
    ratio = per_cell.set_index(["variant", "fold"]).ratio
    for fold in (0, 1):
        assert ratio["mot", fold] == 0.4
        assert ratio["mot_ffn", fold] == 0.6
        assert ratio["dense", fold] == 1.0
        assert np.isnan(ratio["slow", fold])
    slow = per_cell.loc[per_cell.variant == "slow"]
    assert slow.note.str.contains("never reached").all()
    assert slow.step_reached.isna().all()
    summ = per_variant.set_index("variant")
    assert summ.loc["mot", "km_median_ratio"] == 0.4
    assert summ.loc["mot", "restricted_mean_ratio"] == pytest.approx(0.4)
    assert summ.loc["mot", "n_reached"] == 2 and summ.loc["mot", "note"] == ""
    # never reached: censored at its last step (100 / 100), so the Kaplan-Meier median is inf, not NaN
    assert summ.loc["slow", "km_median_ratio"] == np.inf and summ.loc["slow", "n_reached"] == 0
    assert summ.loc["slow", "restricted_mean_ratio"] == pytest.approx(1.0)
    assert "never reached" in summ.loc["slow", "note"]


def test_steps_to_reference_quality_flops_and_metric_column():
    curves = _curves().assign(metric="val/loss")
    other = curves.assign(metric="val/target/r2", value=0.0)  # another metric in the same table: ignored
    flops = {"dense": 1e12, "mot": 1.1e12, "mot_ffn": 1e12, "slow": 1e12}
    per_cell, per_variant = steps_to_reference_quality(pd.concat([curves, other]), flops_per_step=flops)
    cell = per_cell.set_index(["variant", "fold"])
    assert cell.loc[("mot", 0), "ratio"] == 0.4
    assert cell.loc[("mot", 0), "flops_ratio"] == pytest.approx(0.44)
    assert per_variant.set_index("variant").loc["mot", "km_median_flops_ratio"] == pytest.approx(0.44)
    with pytest.raises(ValueError, match="flops_per_step lacks"):
        steps_to_reference_quality(curves, flops_per_step={"dense": 1.0})
    with pytest.raises(ValueError, match="reference variant"):
        steps_to_reference_quality(curves, reference_variant="mot_attention")


def test_steps_to_reference_quality_missing_reference_cell():
    curves = _curves()
    curves = curves.loc[~((curves.variant == "dense") & (curves.fold == 1))]
    per_cell, _ = steps_to_reference_quality(curves)
    row = per_cell.set_index(["variant", "fold"]).loc[("mot", 1)]
    assert np.isnan(row.ratio) and "no 'dense' curve" in row.note


def test_plot_ablation_writes_png_atomically(summary, tmp_path):
    out = plot_ablation(summary, "r2", tmp_path / "plots" / "ablation.png", title="planted")
    assert out == tmp_path / "plots" / "ablation.png"
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["ablation.png"]  # no temp file left behind
    plot_ablation(summary, "mae", out)  # overwrite in place
    assert [p.name for p in out.parent.iterdir()] == ["ablation.png"]


def test_write_report_writes_four_files(results, summary, tmp_path):
    paths = write_report(results, summary, tmp_path / "report", metric="r2")
    assert set(paths) == {"results", "summary", "contributions", "ablation"}
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert names == ["ablation.png", "contributions.csv", "results.csv", "summary.csv"]
    pd.testing.assert_frame_equal(pd.read_csv(paths["results"]), results)
    back = pd.read_csv(paths["summary"])
    assert len(back) == len(summary) and list(back.columns) == list(summary.columns)
    assert list(pd.read_csv(paths["contributions"]).modality) == ["brain", "gene", "behaviour"]
    assert paths["ablation"].read_bytes().startswith(PNG_SIGNATURE)


def test_steps_to_the_reference_best_value_when_curves_overfit():
    """Overfitting curves: dense is best (0.5) at step 30 and ends at 0.9; mot gets to 0.5 at step 15."""
    rows = []
    dense = {10: 0.8, 20: 0.6, 30: 0.5, 40: 0.7, 50: 0.9}
    mot = {10: 0.7, 15: 0.5, 20: 0.45, 30: 0.6, 50: 1.0}
    for variant, curve in (("dense", dense), ("mot", mot)):
        for step, value in curve.items():
            rows.append({"variant": variant, "dropped": "none", "seed": 0, "fold": 0, "step": step, "value": value})
    curves = pd.DataFrame(rows)
    per_cell, _ = steps_to_reference_quality(curves, target="best")
    mot_row = per_cell.set_index("variant").loc["mot"]
    assert mot_row["target"] == 0.5 and mot_row["reference_final_step"] == 30 and mot_row["ratio"] == 0.5
    final, _ = steps_to_reference_quality(curves)  # the final value 0.9 is reached at once: degenerate here
    assert final.set_index("variant").loc["mot", "ratio"] == 10 / 50
    with pytest.raises(ValueError, match="target='last'"):
        steps_to_reference_quality(curves, target="last")


def test_reconstruction_losses_are_lower_is_better():
    """Masked pretraining logs test/recon and test/recon/<modality>: an ablation of it must summarize."""
    from mot_neuro.analysis import _higher_is_better

    assert _higher_is_better("test/recon") is False
    assert _higher_is_better("test/recon/brain") is False
    assert _higher_is_better("test/target/r2") is True
    with pytest.raises(ValueError, match="cannot tell"):
        _higher_is_better("test/brain")
