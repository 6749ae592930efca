"""benchmarks/steps_to_dense.py: the steps-to-dense ratio on hand-made curves, its aggregate, the planted cohort, and
the script end to end on a tiny cohort."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "steps_to_dense.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("steps_to_dense_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DENSE = [(10, 1.0), (20, 0.8), (30, 0.7), (40, 0.75), (50, 0.7)]  # best 0.7, first at step 30


def test_ratio_is_first_step_at_or_below_dense_best_over_its_step(bench):
    out = bench.steps_to_dense([(10, 0.9), (20, 0.7), (30, 0.6)], DENSE)
    assert out["target"] == 0.7 and out["dense_best_step"] == 30  # the first of two equal bests
    assert out["step_reached"] == 20  # equal counts as reached
    assert out["ratio"] == pytest.approx(2 / 3)
    assert out["censored_at"] is None and out["note"] == ""
    # order of the points does not matter; a later step is slower
    out = bench.steps_to_dense([(50, 0.65), (40, 0.71), (10, 0.95)], list(reversed(DENSE)))
    assert out["step_reached"] == 50 and out["ratio"] == pytest.approx(50 / 30)


def test_never_reached_is_not_a_finite_number(bench):
    out = bench.steps_to_dense([(10, 0.9), (20, 0.75), (30, float("nan")), (40, 0.71)], DENSE)
    assert out["step_reached"] is None
    assert not math.isfinite(out["ratio"])
    assert out["censored_at"] == pytest.approx(40 / 30)
    assert "never reached" in out["note"]
    # in the JSON it is null, never a number
    assert json.loads(json.dumps(bench._json_safe(out), allow_nan=False))["ratio"] is None


def test_ratio_refuses_a_dense_best_at_step_zero(bench):
    with pytest.raises(ValueError, match="step 0"):
        bench.steps_to_dense([(0, 0.5)], [(0, 0.5), (10, 0.6)])


def _row(ratio, mot_best=1.0, dense_best=1.1, censored_at=None):
    return {"ratio": ratio, "mot_best": mot_best, "dense_best": dense_best, "censored_at": censored_at}


def test_summary_geometric_mean_and_t_interval_on_log_ratios(bench):
    from scipy import stats

    out = bench.summarize([_row(0.25, 1.0, 1.1), _row(0.5, 1.0, 1.2), _row(1.0, 1.0, 1.0)])
    assert out["n_reached"] == 3
    assert out["geometric_mean_ratio"] == pytest.approx(0.5)
    half = stats.t.ppf(0.975, 2) * math.log(2) / math.sqrt(3)  # sd of log(0.25), log(0.5), log(1) is log 2
    assert out["ci"] == pytest.approx([0.5 * math.exp(-half), 0.5 * math.exp(half)])
    assert out["median_ratio"] == 0.5 and out["mean_ratio"] == pytest.approx(1.75 / 3)
    assert out["best_loss_difference"]["mean"] == pytest.approx(-0.1)


def test_summary_with_a_censored_seed_gives_no_ratio(bench):
    out = bench.summarize([_row(0.5), _row(math.inf, censored_at=1.2), _row(0.4)])
    assert out["n_reached"] == 2
    assert out["geometric_mean_ratio"] is None and out["ci"] is None
    assert "1 of 3" in out["note"]
    assert out["median_ratio_lower_bound"] == 0.5


def test_planted_cohort_is_deterministic_and_non_linear(bench):
    args = bench.parse_args([])
    shapes = bench.cohort_layouts(args)
    participants, arrays = bench.planted_block(0, 6000, 0, shapes)
    again, _ = bench.planted_block(0, 6000, 0, shapes)
    assert participants.equals(again)
    gene, gene_present = arrays["gene"]
    assert set(np.unique(gene[gene_present])) <= {0.0, 1.0, 2.0}  # dosages
    assert (
        gene.shape[1:] == (24, 1)
        and arrays["brain"][0].shape[1:] == (16, 4)
        and arrays["behaviour"][0].shape[1:] == (12, 1)
    )
    # on subjects with every value present: a linear model of the raw values explains far less of the target than
    # the planted (non-linear) terms do
    complete = gene_present.all(1) & arrays["brain"][1].all(1) & arrays["behaviour"][1].all(1)
    complete &= ~np.isnan(arrays["brain"][0]).any(axis=(1, 2))
    y = participants["target"].to_numpy()[complete]
    raw = np.concatenate([np.nan_to_num(v.reshape(len(participants), -1)) for v, _ in arrays.values()], axis=1)
    s = bench.structure(0, 24, 16, 12, 2)
    values = {"gene": gene[..., 0], "brain": arrays["brain"][0], "behaviour": arrays["behaviour"][0][..., 0]}
    terms = bench._target_terms(values, s)
    planted = np.stack([(terms[k] - s["term_mean"][k]) / s["term_sd"][k] for k in terms], axis=1)

    def held_out_r2(x):
        x = np.c_[x[complete], np.ones(complete.sum())]
        n = len(y) * 2 // 3
        coef = np.linalg.lstsq(x[:n], y[:n], rcond=None)[0]
        return 1 - np.var(y[n:] - x[n:] @ coef) / np.var(y[n:])

    linear, nonlinear = held_out_r2(raw), held_out_r2(planted)
    assert nonlinear > 0.7 and linear < nonlinear - 0.3


@pytest.mark.slow
def test_script_end_to_end_on_a_tiny_cohort(tmp_path):
    command = [sys.executable, str(SCRIPT), "--subjects", "300", "--seeds", "0", "--steps", "4", "--val-every", "2"]
    done = subprocess.run(command + ["--dir", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(summary["steps_to_dense_ratio"]) == {"supervised", "masked"} == set(summary["ci"])
    assert summary["equal_flops_per_token"] is True
    flops = summary["flops_per_token"]
    assert flops["mot"]["backbone_params"] > flops["dense"]["backbone_params"]
    assert len(summary["results"]) == 2
    for row in summary["results"]:
        assert row["ratio"] is None or row["ratio"] > 0
        assert (row["ratio"] is None) == (row["censored_at"] is not None)
    for curves in summary["curves"].values():
        assert [step for step, _ in curves["mot"]] == [2, 4] == [step for step, _ in curves["dense"]]
    assert not list(tmp_path.iterdir())  # the data folder is removed
