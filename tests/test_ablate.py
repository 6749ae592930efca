"""`mot-neuro ablate` on the demo cohort: planted structure recovered, resume, cluster-style commands."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import EXPERIMENTS
from scipy import stats

DEMO = str(EXPERIMENTS / "demo.yaml")
pytestmark = pytest.mark.slow  # every test trains a grid of cells


def ablate(*args: str) -> int:
    from mot_neuro.cli import main

    return main(["ablate", "--config", DEMO, *args])


def child_runs(workdir: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mot-neuro")
    return [r for r in client.search_runs([experiment.experiment_id]) if "mot_neuro.cell" in r.data.tags]


def test_leaving_out_the_brain_hurts_most(workdir):
    """The demo target is driven mostly by brain regions (ground_truth.json): dropping them costs most."""
    code = ablate(
        "--variants",
        "mot",
        "--drop",
        "none",
        "brain",
        "gene",
        "behaviour",
        "--folds",
        "0",
        "1",
        "--set",
        "trainer.max_epochs=15",
        "--name",
        "planted",
    )
    assert code == 0
    out = workdir / "outputs" / "ablation" / "planted"
    contributions = pd.read_csv(out / "contributions.csv")
    assert contributions.iloc[0]["modality"] == "brain"  # sorted, largest contribution first
    brain = contributions.set_index("modality").loc["brain"]
    assert brain["contribution"] > 0.1  # test R2 lost without the brain tokens
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = pd.read_csv(out / "results.csv")
    assert set(results["dropped"]) == {"none", "brain", "gene", "behaviour"} and set(results["fold"]) == {0, 1}


def test_rerun_skips_finished_cells_and_redoes_interrupted_ones(workdir, capsys):
    from mlflow.tracking import MlflowClient

    grid = ["--variants", "dense", "mot", "--drop", "none", "--folds", "0", "--set", "trainer.max_epochs=1"]
    assert ablate(*grid, "--name", "resume") == 0
    runs = child_runs(workdir)
    assert sorted(r.data.tags["mot_neuro.cell"] for r in runs) == [
        "dense__drop-none__seed0__fold0",
        "mot__drop-none__seed0__fold0",
    ]
    # an interrupted cell: its run never finished
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    interrupted = next(r for r in runs if r.data.tags["mot_neuro.cell"].startswith("dense"))
    client.set_terminated(interrupted.info.run_id, "FAILED")
    capsys.readouterr()
    assert ablate(*grid, "--name", "resume") == 0
    assert "2 cells, 1 already finished, 1 to run" in capsys.readouterr().out
    finished = {}
    for run in child_runs(workdir):
        if run.info.status == "FINISHED":
            finished.setdefault(run.data.tags["mot_neuro.cell"], []).append(run)
    assert {cell: len(r) for cell, r in finished.items()} == {
        "dense__drop-none__seed0__fold0": 1,
        "mot__drop-none__seed0__fold0": 1,
    }  # no duplicate cells
    assert client.get_run(interrupted.info.run_id).info.status == "KILLED"
    # the same name with other settings would mix results: refused
    assert ablate(*grid[:-1], "trainer.max_epochs=2", "--name", "resume") == 2


def test_printed_cell_commands_then_summarize(workdir, capsys):
    from mot_neuro.cli import lightning_cli

    grid = ["--variants", "dense", "mot", "--drop", "none", "--folds", "0", "--set", "trainer.max_epochs=2"]
    assert ablate(*grid, "--name", "cluster", "--print-commands") == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mot-neuro fit")]
    assert len(commands) == 2
    for command in commands:  # as a SLURM array task would run them
        lightning_cli(shlex.split(command)[1:])
    assert ablate(*grid, "--name", "cluster", "--summarize") == 0
    out = workdir / "outputs" / "ablation" / "cluster"
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["variant"]) == {"dense", "mot"}
    steps = pd.read_csv(out / "steps_to_dense_summary.csv")
    assert "mot" in set(steps["variant"])


def test_tower_pairs_and_test_time_masking_beside_leave_one_out(workdir):
    code = ablate(
        "--variants",
        "mot",
        "--drop",
        "none",
        "brain",
        "--folds",
        "0",
        "--towers",
        "pairs",
        "--eval-masking",
        "--set",
        "trainer.max_epochs=1",  # plumbing only: which cells ran, their settings, the summary's rows
        "--name",
        "towers",
    )
    assert code == 0
    cells = {r.data.tags["mot_neuro.cell"]: r for r in child_runs(workdir)}
    merged = "mot_merge_brain+behaviour__drop-none__seed0__fold0"
    assert merged in cells
    for pair in ("gene+brain", "gene+behaviour"):
        assert f"mot_merge_{pair}__drop-none__seed0__fold0" in cells
    params = cells[merged].data.params  # MLflow flattens the encoder's towers mapping
    towers = {m: params[f"encoder/towers/{m}"] for m in ("brain", "behaviour", "gene")}
    assert towers["brain"] == towers["behaviour"] == "brain_behaviour" != towers["gene"]
    masked = cells["mot__drop-brain@test__seed0__fold0"]
    assert "test/target/r2" in masked.data.metrics and "train/loss_epoch" not in masked.data.metrics  # tested only
    summary = pd.read_csv(workdir / "outputs" / "ablation" / "towers" / "summary.csv")
    rows = set(zip(summary["variant"], summary["dropped"], strict=True))
    assert {("mot", "brain"), ("mot", "brain@test"), ("mot_merge_brain+behaviour", "none")} <= rows


def test_binary_grid_reports_corrected_t_and_delong_from_each_cells_test_predictions(workdir):
    """A binary target: every cell writes its test predictions (cohort rows, no IDs), the summary pairs them for
    DeLong's test and takes n_test / n_train from the cells' logged split sizes for the corrected t-test."""
    from mot_neuro.analysis import delong_test

    grid = ["--variants", "mot", "--drop", "none", "brain", "--folds", "0", "1", "--set", "trainer.max_epochs=1"]
    binary = ["--data.targets", "[diagnosis]", "--data.stratify", "diagnosis"]
    assert ablate(*grid, *binary, "--name", "binary") == 0
    out = workdir / "outputs" / "ablation" / "binary"
    summary = pd.read_csv(out / "summary.csv").set_index(["variant", "dropped", "metric"])
    row = summary.loc[("mot", "brain", "test/diagnosis/auroc")]
    assert row["n_pairs"] == 2 and 0.0 <= row["p_corrected_t"] <= 1.0 and 0.0 <= row["p_delong"] <= 1.0
    # DeLong recomputed here from the cells' files: the out-of-fold scores of both folds pooled per subject
    pooled = {}
    for dropped in ("none", "brain"):
        frames = [
            pd.read_parquet(out / "cells" / f"mot__drop-{dropped}__seed0__fold{f}" / "test_predictions.parquet")
            for f in (0, 1)
        ]
        pooled[dropped] = pd.concat(frames).set_index("row").sort_index()
    assert not pooled["none"].index.duplicated().any()  # each subject tested in one fold only
    assert "eid" not in pooled["none"].columns
    truth = pooled["none"]["truth"].to_numpy()
    expected = delong_test(truth, pooled["brain"]["score"].to_numpy(), pooled["none"]["score"].to_numpy())
    assert row["p_delong"] == pytest.approx(expected["p_value"])
    # a corrected t from the fold differences and the logged split sizes (k-fold: n_test / n_train ~ 1/4)
    results = pd.read_csv(out / "results.csv")
    auroc = results[results["metric"] == "test/diagnosis/auroc"].pivot(index="fold", columns="dropped", values="value")
    diffs = (auroc["brain"] - auroc["none"]).to_numpy()
    assert row["mean_diff"] == pytest.approx(diffs.mean())
    sizes = {}
    for run in child_runs(workdir):
        params = run.data.params
        sizes[int(params["fold"])] = int(params["split/n_test"]) / int(params["split/n_train"])
    ratio = np.mean([sizes[f] for f in (0, 1)])
    t = diffs.mean() / np.sqrt((1 / len(diffs) + ratio) * diffs.var(ddof=1))  # Nadeau and Bengio (2003)
    assert row["p_corrected_t"] == pytest.approx(2 * stats.t.sf(abs(t), df=len(diffs) - 1))


def test_masked_only_grid_compares_reconstruction_over_the_modalities_both_cells_have(workdir):
    """Leaving a modality out of masked modelling removes its reconstruction term: the default metric compares the
    remaining modalities' terms, and the total loss is refused as a contribution."""
    pretrain = str(EXPERIMENTS / "demo_pretrain.yaml")
    from mot_neuro.cli import main

    grid = ["--variants", "mot", "--drop", "none", "gene", "--folds", "0", "--set", "trainer.max_epochs=1"]
    assert main(["ablate", "--config", pretrain, *grid, "--name", "masked"]) == 0
    out = workdir / "outputs" / "ablation" / "masked"
    contributions = pd.read_csv(out / "contributions.csv")
    results = pd.read_csv(out / "results.csv").set_index(["dropped", "metric"])["value"]
    like_with_like = sum(
        results[("gene", f"test/recon/{m}")] - results[("none", f"test/recon/{m}")] for m in ("brain", "behaviour")
    )
    gene = contributions.set_index("modality").loc["gene"]
    # lower is better: contribution = cell - reference (positive: the other modalities reconstruct worse without it)
    assert gene["contribution"] == pytest.approx(like_with_like)
    assert ("gene", "test/recon/gene") not in results.index or np.isnan(results[("gene", "test/recon/gene")])
    summary = pd.read_csv(out / "summary.csv").set_index(["variant", "dropped", "metric"])
    assert not summary.loc[("mot", "gene", "test/loss"), "comparable"]
    assert np.isnan(summary.loc[("mot", "gene", "test/loss"), "mean_diff"])
    assert (
        main(["ablate", "--config", pretrain, *grid, "--name", "masked", "--summarize", "--metric", "test/loss"]) == 2
    )
