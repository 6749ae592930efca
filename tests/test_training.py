"""Training through the CLI on the demo cohort: every config, MLflow read-back, resume, bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import CONFIGS, DEBUG_TRAINER, EXPERIMENTS, run_cli, run_main
from lightning.pytorch.callbacks import Callback

DEMO_EXPERIMENTS = sorted(p for p in EXPERIMENTS.glob("*.yaml") if "template" not in p.name)
DEBUG = str(DEBUG_TRAINER)


def mlflow_runs(workdir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mot-neuro")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_configs_are_enumerated():
    names = {p.name for p in DEMO_EXPERIMENTS}
    assert {"demo.yaml", "demo_dense.yaml", "demo_pretrain.yaml"} <= names


@pytest.mark.parametrize("experiment", DEMO_EXPERIMENTS, ids=lambda p: p.stem)
@pytest.mark.slow  # four commands per experiment on the demo cohort
def test_every_demo_experiment_runs_every_subcommand(workdir, experiment):
    for command in ("fit", "validate", "test", "predict"):
        cli = run_cli(command, "--config", experiment, "--trainer", DEBUG)
        assert cli.trainer.state.finished, command
    assert (workdir / "outputs" / "demo_cohort" / "ground_truth.json").is_file()  # generated on first use
    assert (workdir / "outputs" / "demo_splits.json").is_file()


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_config_parses(workdir, experiment, capfd):
    """Each experiment file (the UKB template too) composes and parses through the CLI, nothing trained."""
    status, out, err = run_main(capfd, "fit", "--config", experiment, "--print_config")
    assert status == 0, err[-3000:]
    config = yaml.safe_load(out)
    assert {"seed_everything", "data", "model", "trainer"} <= set(config), out[-3000:]
    assert config["data"]["targets"] and config["trainer"]["max_epochs"] is not None


@pytest.mark.parametrize("trainer", sorted((CONFIGS / "trainer").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_trainer_config_parses(workdir, trainer, capsys):
    from mot_neuro.cli import main

    with pytest.raises(SystemExit) as done:
        main(
            ["fit", "--config", str(CONFIGS / "experiments" / "demo.yaml"), "--trainer", str(trainer), "--print_config"]
        )
    assert done.value.code == 0
    assert "trainer:" in capsys.readouterr().out


@pytest.mark.slow  # fits through the CLI
def test_template_experiment_runs_on_files_a_user_points_it_at(workdir):
    """The UK Biobank-style template, copied and pointed at files in its formats (written here)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 60
    eids = [str(1_000_000 + i) for i in range(n)]
    site = rng.choice(["11025", "11026", "11027"], n)
    pd.DataFrame(
        {
            "eid": eids,
            "age": rng.uniform(45, 80, n),
            "sex": rng.choice(["F", "M"], n),
            "site": site,
            "fluid_intelligence": rng.normal(6, 2, n),
        }
    ).to_csv("participants.csv", index=False)
    pd.DataFrame({"eid": eids, **{f"prs_{k}": rng.normal(size=n) for k in range(5)}}).to_parquet("prs.parquet")
    idps = {"eid": eids, "eTIV": rng.normal(1.5e6, 1e5, n)}
    for hemi in ("lh", "rh"):
        for region in ("superiorfrontal", "insula"):
            for measure in ("thickness", "area", "volume"):
                idps[f"{hemi}_{region}_{measure}"] = rng.normal(size=n)
    pd.DataFrame(idps).to_csv("idps.csv", index=False)
    Path("conn").mkdir()
    rows = []
    for eid in eids[:50]:  # 10 subjects without a scan
        np.save(f"conn/{eid}.npy", np.corrcoef(rng.normal(size=(6, 40))))
        rows.append((eid, f"conn/{eid}.npy"))
    pd.DataFrame(rows, columns=["eid", "path"]).to_csv("conn_manifest.csv", index=False)
    pd.DataFrame(
        {"eid": eids, "pairs_matching": rng.integers(0, 10, n), "reaction_time": rng.normal(500, 50, n)}
    ).to_csv("behaviour.csv", index=False)
    config = yaml.safe_load((CONFIGS / "data" / "ukb_template.yaml").read_text())
    config["participants"] = "participants.csv"
    config["modalities"]["genetics"]["path_or_df"] = "prs.parquet"
    config["modalities"]["structure"]["path_or_df"] = "idps.csv"
    config["modalities"]["connectivity"]["source"] = "conn_manifest.csv"
    config["modalities"]["behaviour"]["path_or_df"] = "behaviour.csv"
    config["num_workers"] = 0
    config["batch_size"] = 16
    Path("my_cohort.yaml").write_text(yaml.safe_dump(config))
    cli = run_cli(
        "fit", "--config", CONFIGS / "experiments" / "ukb_template.yaml", "--data", "my_cohort.yaml", "--trainer", DEBUG
    )
    assert cli.trainer.state.finished
    shapes = cli.datamodule.model_inputs.token_shapes()
    assert shapes["structure"] == (4, 3) and shapes["connectivity"][0] == 6


@pytest.mark.slow  # fits through the CLI
def test_mlflow_run_records_params_metrics_and_artifacts(workdir):
    run_cli("fit", "--config", CONFIGS / "experiments" / "demo.yaml", "--trainer.max_epochs", "2")
    client, runs = mlflow_runs(workdir)
    assert len(runs) == 1
    run = runs[0]
    params, metrics = run.data.params, run.data.metrics
    for key in (
        "encoder/dim",
        "encoder/n_layers",
        "encoder/untie",
        "optimizer/lr",
        "params_total",
        "params_backbone",
        "train_flops_per_token",
        "data_fingerprint",
        "splits_fingerprint",
        "fold",
        "tokens_per_modality",
    ):
        assert key in params, key
    assert params["tokens_per_modality"] == "gene=4,brain=20,behaviour=5"
    assert params["data_spec/modalities/1/n_tokens"] == "20"
    assert not [k for k in params if k.endswith("feature_mask") or k.startswith("_")]  # noise, left out
    for key in (
        "train/loss_epoch",
        "val/loss",
        "val/target/r2",
        "val/target/mae",
        "val/target/pearson",
        "test/loss",
        "test/target/r2",
    ):  # fit evaluates the best checkpoint on the test fold after
        assert key in metrics, key
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert len(history) == 2  # one value per epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    assert "demo_splits.json" not in artifacts  # subject IDs: only with log_subject_ids (test_reliability.py)
    assert "git_commit" in run.data.tags
    # no subject ID in any param or metric name or value
    splits = json.loads((workdir / "outputs" / "demo_splits.json").read_text())
    ids = {sid for fold in splits["folds"] for part in fold.values() for sid in part}
    text = json.dumps([params, list(metrics)])
    assert not any(sid in text for sid in ids)
    assert (workdir / "outputs" / "checkpoints" / "last.ckpt").is_file()


class StopAfterFirstEpoch(Callback):
    """Ends fit after epoch 0 as an interruption would (last.ckpt is written at the epoch's end)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


@pytest.mark.slow  # fits through the CLI
def test_resuming_from_last_checkpoint_gives_the_uninterrupted_metrics(workdir, monkeypatch):
    # compares the last epoch's validation metrics, so no test run after fit
    common = [
        "--config",
        CONFIGS / "experiments" / "demo.yaml",
        "--model.encoder.dropout",
        "0.0",
        "--test_after_fit",
        "false",
    ]
    for folder in ("full", "resumed"):  # each with its own outputs/checkpoints
        (workdir / folder).mkdir()
    monkeypatch.chdir(workdir / "full")
    full = run_cli("fit", *common, "--trainer.max_epochs", "3")
    full_metrics = {k: float(v) for k, v in full.trainer.callback_metrics.items()}
    monkeypatch.chdir(workdir / "resumed")
    # the same run, interrupted after its first epoch (same config, so the same LR schedule)
    stopped = run_cli(
        "fit", *common, "--trainer.max_epochs", "3", "--trainer.callbacks+=test_training.StopAfterFirstEpoch"
    )
    assert stopped.trainer.current_epoch == 1
    resumed = run_cli("fit", *common, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    resumed_metrics = {k: float(v) for k, v in resumed.trainer.callback_metrics.items()}
    assert resumed.trainer.current_epoch == full.trainer.current_epoch == 3
    assert resumed_metrics["val/loss"] == pytest.approx(full_metrics["val/loss"], rel=1e-5)
    assert resumed_metrics["val/target/r2"] == pytest.approx(full_metrics["val/target/r2"], rel=1e-4, abs=1e-6)


@pytest.mark.slow  # a short fit (conftest.py's demo_checkpoint, shared)
def test_checkpoint_from_another_layout_is_refused(demo_workdir, demo_checkpoint):
    # demo_checkpoint: the debug trainer without fast_dev_run, one epoch, ModelCheckpoint save_last (on the demo
    # cohort with every modality, as this test once fitted here)
    experiment = CONFIGS / "experiments" / "demo.yaml"
    with pytest.raises(ValueError, match=r"checkpoint .*layout.*brain"):
        run_cli(
            "validate",
            "--config",
            experiment,
            "--trainer",
            DEBUG,
            "--data.drop_modalities",
            "[brain]",
            "--ckpt_path",
            demo_checkpoint,
        )


def cli_subprocess(workdir, *args):
    env = {**os.environ, "MOT_NEURO_DEBUG": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "mot_neuro.cli", *map(str, args)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data.drop_modalities", "[imaging]"], "drop_modalities names unknown modality(ies) ['imaging']"),
        (["--data.targets", "[iq]"], "column 'iq': target column not in participants"),
        (["--model.dimm", "8"], "dimm"),
        (["--model.objective", "supervize"], "supervize"),
    ],
    ids=["unknown-modality", "missing-target", "typo-key", "typo-value"],
)
@pytest.mark.slow  # a process per case
def test_bad_configs_exit_with_a_clear_message(demo_workdir, extra, message):
    # the demo cohort is there already (as after any earlier run): the process does not generate it first
    done = cli_subprocess(
        demo_workdir, "fit", "--config", CONFIGS / "experiments" / "demo.yaml", "--trainer", DEBUG, *extra
    )
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


@pytest.mark.slow  # two DDP processes
def test_two_process_ddp_on_cpu_trains_and_logs_once(workdir):
    """configs/trainer/ddp.yaml with 2 CPU processes (gloo): one MLflow run, one summary, trained weights."""
    done = cli_subprocess(
        workdir,
        "fit",
        "--config",
        CONFIGS / "experiments" / "demo.yaml",
        "--trainer",
        CONFIGS / "trainer" / "ddp.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mot-neuro fit finished") == 1  # rank 0 only
    client, runs = mlflow_runs(workdir)
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "val/loss")
    assert len(history) == 2  # once per epoch, not once per rank
    assert (workdir / "outputs" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow  # fits through the CLI
def test_binary_and_multiclass_targets_with_bf16_and_modality_dropout(workdir):
    """Three target kinds at once: each gets its head, loss and metrics; bf16 autocast on CPU works."""
    import numpy as np
    import pandas as pd

    from data_adapters.demo import write_demo_cohort

    write_demo_cohort(workdir / "outputs" / "demo_cohort", n_subjects=120)
    participants = pd.read_csv("outputs/demo_cohort/participants.csv", dtype={"eid": str})
    participants["tertile"] = pd.qcut(participants["target"], 3, labels=False)  # classes 0, 1, 2
    participants.to_csv("participants3.csv", index=False)
    cli = run_cli(
        "fit",
        "--config",
        CONFIGS / "experiments" / "demo.yaml",
        "--trainer",
        DEBUG,
        "--data.participants",
        "participants3.csv",
        "--data.targets",
        "[target, diagnosis, tertile]",
        "--data.target_kinds",
        "{tertile: multiclass}",
        "--data.stratify",
        "null",
        "--data.batch_size",
        "64",
        "--data.splits_file",
        "outputs/splits3.json",
        "--model.modality_dropout",
        "0.3",
        "--trainer.precision",
        "bf16-mixed",
    )
    targets = cli.model.targets
    assert {k: v.kind for k, v in targets.items()} == {
        "target": "regression",
        "diagnosis": "binary",
        "tertile": "multiclass",
    }
    assert targets["tertile"].n_classes == 3 and cli.model.heads["tertile"].out_features == 3
    metrics = cli.trainer.callback_metrics  # fast_dev_run: the test run after fit
    for key in (
        "test/diagnosis/auroc",
        "test/diagnosis/auprc",
        "test/diagnosis/brier",
        "test/diagnosis/ece",
        "test/tertile/auroc",
        "test/tertile/accuracy",
        "test/target/r2",
    ):
        assert key in metrics and np.isfinite(float(metrics[key])), key


@pytest.mark.slow  # data loader worker processes
def test_worker_processes_read_the_same_batches(workdir):
    """Batches come from memory maps opened in each worker; with workers they equal the in-process ones."""
    import torch

    cli = run_cli(
        "fit",
        "--config",
        CONFIGS / "experiments" / "demo.yaml",
        "--trainer",
        DEBUG,
        "--test_after_fit",
        "false",
        "--data.batch_size",
        "16",
    )
    data = cli.datamodule
    serial = list(data.val_dataloader())
    data.hparams.num_workers = 2
    parallel = list(data.val_dataloader())
    assert len(serial) == len(parallel) > 1
    for a, b in zip(serial, parallel, strict=True):
        torch.testing.assert_close(a["row"], b["row"])
        for name in a["values"]:
            torch.testing.assert_close(a["values"][name], b["values"][name])
            assert torch.equal(a["present"][name], b["present"][name])
        assert not any(torch.isnan(v).any() for v in a["values"].values())  # imputed
