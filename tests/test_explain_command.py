"""``mot-neuro explain`` end to end: the planted signal of the demo cohort is found, and a null model does not find
it; tables, figures and MLflow artifacts; bad inputs get one line and leave the previous output alone."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import EXPERIMENT, NO_LOGGER, Case, assert_refused, run_main

pytestmark = pytest.mark.slow  # every test here trains a model or explains one through the CLI


def _best(folder: Path) -> Path:
    (best,) = sorted(folder.glob("best-*.ckpt"))
    return best


def _fit(capfd, data: Path, folder: Path, *extra: str) -> Path:
    status, _, err = run_main(
        capfd,
        "fit",
        "--config",
        EXPERIMENT,
        "--data",
        data,
        "--checkpoint_dir",
        folder,
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    )
    assert status == 0, err[-3000:]
    return _best(folder)


def _ranks(table: pd.DataFrame, run: str, modality: str, method: str, level: str) -> pd.Series:
    """Rank (1 = most important) of each token (level "token") or variant (level "feature") by mean |attribution|."""
    rows = table[(table["run"] == run) & (table["modality"] == modality) & (table["method"] == method)]
    rows = rows[rows["token"] != "*"]
    rows = rows[rows["feature"] != ""] if level == "feature" else rows[rows["feature"] == ""]
    key = "feature" if level == "feature" else "token"
    return rows.set_index(key)["mean_abs"].rank(ascending=False)


# ----------------------------------------------------------------------------------------- the planted signal
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 1,000-subject demo cohort (300 are too few for variant-level signal), a MoT model trained 5 epochs and a
    null model trained on permuted targets, explained together with MLflow tracking on."""
    from data_adapters.demo import write_demo_cohort

    folder = tmp_path_factory.mktemp("planted")
    cohort = write_demo_cohort(folder / "demo_cohort", n_subjects=1000, seed=0)["participants"].parent
    case = Case(cohort, folder, None)
    data = case.data_config()
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        yield {"folder": folder, "cohort": cohort, "data": data}
    finally:
        monkeypatch.undo()


def test_explain_ranks_the_planted_regions_and_variants_high_and_a_null_model_does_not(planted, capfd):
    folder, data = planted["folder"], planted["data"]
    real = _fit(capfd, data, folder / "real", "--trainer.max_epochs", "5", *NO_LOGGER)
    null = _fit(capfd, data, folder / "null", "--trainer.max_epochs", "3", "--data.permute_targets", "1", *NO_LOGGER)
    output = folder / "explain"
    status, out, err = run_main(
        capfd,
        "explain",
        "--config",
        EXPERIMENT,
        "--data",
        data,
        "--ckpt_path",
        real,
        "--null_ckpt_path",
        null,
        "--output",
        output,
        "--max_subjects",
        "150",
    )
    assert status == 0, err[-3000:]
    assert "explained 150 subjects per run over 2 run(s)" in out
    truth = json.loads((planted["cohort"] / "ground_truth.json").read_text())
    regions = truth["genes_to_brain"]["brain_regions"]
    variants = truth["gene_only_to_target"]["snps"]
    table = pd.read_parquet(output / "attributions.parquet")
    assert set(table["run"]) == {"mot-fold0-seed0", "mot-fold0-seed0-null"}
    for method in ("integrated_gradients", "occlusion"):
        brain = _ranks(table, "mot-fold0-seed0", "brain", method, "token")
        assert len(brain) == 20 and (brain[regions] <= 5).all(), (method, brain.sort_values())
        brain_null = _ranks(table, "mot-fold0-seed0-null", "brain", method, "token")
        assert not (brain_null[regions] <= 5).all(), (method, brain_null.sort_values())
    # the 10 variants that act on the target only through the genotypes, among all 400 variants (feature-level IG)
    genes = _ranks(table, "mot-fold0-seed0", "gene", "integrated_gradients", "feature")
    genes_null = _ranks(table, "mot-fold0-seed0-null", "gene", "integrated_gradients", "feature")
    assert len(genes) == 400 and len(genes_null) == 400
    assert genes[variants].median() <= 40, genes[variants].sort_values()  # top 10%
    assert genes_null[variants].median() > 40, genes_null[variants].sort_values()

    summary = json.loads((output / "summary.json").read_text())
    assert all(run["ig_max_gap"] < 1 and run["n_subjects"] == 150 for run in summary["runs"])
    comparison = pd.read_csv(output / "null_comparison.csv")
    planted_rows = comparison[(comparison["modality"] == "brain") & comparison["token"].isin(regions)]
    assert len(planted_rows) == 2 * len(regions) and planted_rows["exceeds_null"].all()

    # the brain map holds each region's importance on its atlas voxels
    painted = nib.load(output / "figures" / "map_brain_mot_target_integrated_gradients.nii.gz").get_fdata()
    atlas = np.asarray(nib.load(planted["cohort"] / "atlas.nii.gz").dataobj)
    importance = table[
        (table["run"] == "mot-fold0-seed0")
        & (table["method"] == "integrated_gradients")
        & (table["modality"] == "brain")
        & (table["feature"] == "")
    ].set_index("token")["mean_abs"]
    for name, label in zip(regions, truth["genes_to_brain"]["brain_region_ids"], strict=True):
        np.testing.assert_allclose(painted[atlas == label], importance[name], rtol=1e-6)
    assert (painted[atlas == 0] == 0).all()
    figures = set(summary["figures"])
    for name in (
        "figures/map_brain_mot_target_integrated_gradients_glass_brain.png",
        "figures/map_brain_mot_target_integrated_gradients_stat_map.png",
        "figures/genome_gene_mot_target_integrated_gradients.png",
        "figures/attention_rollout.png",
        "figures/bars_mot_target_occlusion.png",
    ):
        assert name in figures and (output / name).stat().st_size > 1000

    attention = pd.read_parquet(output / "attention.parquet")
    rollout = attention[(attention["layer"] == "rollout") & (attention["run"] == "mot-fold0-seed0")]
    sums = rollout.groupby("query")["share"].sum()
    np.testing.assert_allclose(sums, 1.0, rtol=1e-5)

    # the folder reached MLflow as one run's artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    runs = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs([experiment.experiment_id])
        if run.data.tags.get("mot_neuro.command") == "explain"
    ]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "explain")}
    assert {"explain/attributions.parquet", "explain/null_comparison.csv", "explain/summary.json"} <= artifacts
    assert runs[0].data.metrics["explain/subjects_per_run"] == 150


# ------------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def small(tmp_path_factory, demo_cohort):
    """The demo cohort with an atlas of its own (so that it can go missing), a model trained for one short
    epoch, and the same for a null model."""
    import shutil

    folder = tmp_path_factory.mktemp("explain-bad")
    atlas = folder / "atlas.nii.gz"
    shutil.copy(demo_cohort / "atlas.nii.gz", atlas)
    case = Case(demo_cohort, folder, None)
    data = case.data_config()
    config = data.read_text().replace(str(demo_cohort / "atlas.nii.gz"), str(atlas))
    data.write_text(config)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    short = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", *NO_LOGGER)
    try:
        yield {"folder": folder, "data": data, "atlas": atlas, "short": short}
    finally:
        monkeypatch.undo()


def _explain(capfd, small, *args) -> tuple[int, str, str]:
    return run_main(capfd, "explain", "--config", EXPERIMENT, "--data", small["data"], *NO_LOGGER, *args)


def test_explain_streams_what_the_per_subject_table_holds_and_compares_seeds(small, capfd):
    """The streamed summary equals the per-subject table's aggregates; two seeds give a stability table."""
    real = _fit(capfd, small["data"], small["folder"] / "real", *small["short"])
    small["real"] = real
    other = _fit(capfd, small["data"], small["folder"] / "seed7", *small["short"], "--seed_everything", "7")
    output = small["folder"] / "out"
    status, _, err = _explain(
        capfd,
        small,
        "--ckpt_path",
        real,
        other,
        "--output",
        output,
        "--max_subjects",
        "9",
        "--per_subject",
        "--no_figures",
    )
    assert status == 0, err[-3000:]
    subjects = pd.read_parquet(output / "subjects.parquet")
    assert subjects.groupby("run")["subject"].nunique().to_dict() == {"mot-fold0-seed0": 9, "mot-fold0-seed7": 9}
    summary = pd.read_parquet(output / "attributions.parquet")
    keys = ["run", "modality", "token", "target", "method"]
    tokens = summary[summary["feature"] == ""]
    direct = subjects.groupby(keys).agg(value=("value", "mean"), sd=("value", "std"), n=("value", "size"))
    merged = tokens.set_index(keys).join(direct, rsuffix="_direct", how="inner")
    assert len(merged) == len(tokens) == len(direct)
    np.testing.assert_allclose(merged["value"], merged["value_direct"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged["sd"], merged["sd_direct"], rtol=1e-9, atol=1e-12, equal_nan=True)
    assert (merged["n"] == merged["n_direct"]).all()

    stability = pd.read_csv(output / "stability.csv")
    overall = stability[stability["modality"] == "all"]
    assert set(overall["method"]) == {"integrated_gradients", "occlusion"}
    assert (overall[["seed_a", "seed_b"]].to_numpy() == [0, 7]).all()
    assert overall["spearman"].between(-1, 1).all() and (overall["n_tokens"] >= 25).all()
    # the correlation is Spearman's over the two runs' token importances
    from scipy.stats import spearmanr

    ig = tokens[(tokens["method"] == "integrated_gradients") & (tokens["token"] != "*")]
    wide = ig.pivot_table(index=["modality", "token"], columns="run", values="mean_abs")
    expected = spearmanr(wide["mot-fold0-seed0"], wide["mot-fold0-seed7"]).statistic
    row = overall[overall["method"] == "integrated_gradients"]
    np.testing.assert_allclose(row["spearman"], expected, rtol=1e-9)


def test_explain_refuses_bad_inputs_in_one_line_and_keeps_the_previous_output(small, capfd):
    folder = small["folder"]
    real = small.get("real") or _fit(capfd, small["data"], folder / "real", *small["short"])
    null = _fit(capfd, small["data"], folder / "null", *small["short"], "--data.permute_targets", "5")
    output = folder / "kept"
    output.mkdir()
    (output / "marker.txt").write_text("previous run")
    subjects = folder / "subjects.txt"
    subjects.write_text("eid\nnobody-1\nnobody-2\n")
    cases = [
        (["--ckpt_path", folder / "missing.ckpt"], ["checkpoint not found", "missing.ckpt"]),
        (["--ckpt_path", real, "--null_ckpt_path", real], ["not a null model"]),
        (["--ckpt_path", null], ["permuted targets", "--null_ckpt_path"]),
        (["--ckpt_path", real, "--genome_plots", "brain"], ["'brain'", "no variant positions"]),
        (["--ckpt_path", real, "--brain_maps", "gene"], ["'gene'", "NIfTI atlas"]),
        (["--ckpt_path", real, "--brain_maps", "auto", "none"], ["--brain_maps"]),
        (["--ckpt_path", real, "--targets", "nope"], ["nope", "heads"]),
        (["--ckpt_path", real, "--subjects", subjects], ["no subject", "subjects.txt"]),
        (["--ckpt_path", real, "--n_steps", "1"], ["--n_steps"]),
    ]
    for args, expected in cases:
        status, _, err = _explain(capfd, small, *args, "--output", output, "--max_subjects", "4")
        assert_refused(status, err, *expected)
        assert (output / "marker.txt").read_text() == "previous run"
        assert not list(folder.glob("kept.tmp-*")), args
    # refused after its MLflow run began: the run is marked failed, not left running or finished without artifacts
    from mlflow.tracking import MlflowClient

    status, _, err = run_main(
        capfd, "explain", "--config", EXPERIMENT, "--data", small["data"], "--ckpt_path", real, "--subjects", subjects
    )
    assert_refused(status, err, "no subject")
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [r.info.status for r in runs] == ["FAILED"]
    # the atlas the cohort was built from is gone: the map cannot be made
    small["atlas"].rename(folder / "atlas-moved.nii.gz")
    try:
        status, _, err = _explain(capfd, small, "--ckpt_path", real, "--output", output, "--max_subjects", "4")
    finally:
        (folder / "atlas-moved.nii.gz").rename(small["atlas"])
    assert_refused(status, err, "atlas.nii.gz")
    assert (output / "marker.txt").read_text() == "previous run"
