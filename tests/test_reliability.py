"""Determinism, safe checkpoint loading, and subject IDs kept out of logs and the tracking store."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import EXPERIMENT, run_cli

DEMO = str(EXPERIMENT)
QUICK = ["--trainer.max_epochs", "2", "--trainer.enable_model_summary", "false"]


def metrics_of(cli) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


# ------------------------------------------------------------------------------------------------ determinism
SEEDED_RUNS = {  # name -> extra arguments of ``fit --config demo QUICK``: each run in a folder of its own
    "first": [],
    "again": [],
    "workers": ["--data.num_workers", "2"],  # batches loaded in two worker processes
    "seed1": ["--seed_everything", "1"],
}


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory):
    """``seeded_runs(name)``: the run of SEEDED_RUNS[name], fitted on first use and kept for the module (the
    determinism tests share "first"): the best checkpoint's test metrics after fit ("test") and the MLflow curves
    of train/loss_step, train/loss_epoch, val/loss and val/target/r2 as (step, value) lists."""
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.mktemp("seeded")
    runs: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in runs:
            folder = base / name
            folder.mkdir()
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(folder)
                mp.delenv("MLFLOW_TRACKING_URI", raising=False)
                mp.delenv("MOT_NEURO_DEBUG", raising=False)
                cli = run_cli("fit", "--config", DEMO, *QUICK, *SEEDED_RUNS[name])
                client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
                run_id = cli.trainer.logger.run_id
                curves = {
                    key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
                    for key in ("train/loss_step", "train/loss_epoch", "val/loss", "val/target/r2")
                }
            runs[name] = {"test": metrics_of(cli), **curves}  # after fit: the best checkpoint's test metrics
        return runs[name]

    return get


@pytest.mark.slow  # fits the demo experiment more than once
def test_same_seed_and_config_give_identical_metrics(seeded_runs):
    """Bit-identical, not approximately equal: train, validation and test metrics of two runs, and of a third
    that loads batches in two worker processes (batches and randomness must not depend on who makes them)."""
    first = seeded_runs("first")
    assert "test/target/r2" in first["test"] and len(first["val/loss"]) == 2
    assert seeded_runs("again") == first
    assert seeded_runs("workers") == first


@pytest.mark.slow  # fits the demo experiment more than once
def test_a_different_seed_gives_different_metrics(seeded_runs):
    """The determinism test above would pass for a model that ignores its seed: check that it does not."""
    first, other = seeded_runs("first")["val/loss"], seeded_runs("seed1")["val/loss"]
    assert len(first) == len(other) == 2
    assert first[-1][1] != other[-1][1]  # the last epoch's val/loss (what fit leaves in callback_metrics)


# ------------------------------------------------------------------------------------------------ safe loading
class RunsCodeWhenUnpickled:
    """What a malicious checkpoint carries: unpickling it calls ``Path.touch`` on a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def poisoned_checkpoint(demo_workdir, fitted_demo):
    """The checkpoint of ``fit --config demo --trainer.max_epochs 1 --test_after_fit false`` (conftest.py's
    ``fitted_demo``, shared) with pickled code added, in this test's folder, which holds the demo cohort and the
    fit's splits file as after that fit."""
    workdir = demo_workdir
    shutil.copy(fitted_demo.folder / "outputs" / "demo_splits.json", workdir / "outputs" / "demo_splits.json")
    checkpoint = torch.load(fitted_demo.checkpoint, weights_only=True)
    marker = workdir / "code-ran"
    checkpoint["hyper_parameters"]["note"] = RunsCodeWhenUnpickled(marker)
    path = workdir / "poisoned.ckpt"
    torch.save(checkpoint, path)
    return path, marker


@pytest.mark.parametrize(
    "command",
    [
        ["test", "--config", DEMO],
        ["predict", "--config", DEMO],
        ["fit", "--config", DEMO, "--trainer.max_epochs", "2"],
        ["embed", "--config", DEMO, "--output", "emb.parquet"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.slow  # a fit of the demo experiment (the poisoned checkpoint)
def test_a_checkpoint_with_pickled_code_is_refused_and_the_code_never_runs(poisoned_checkpoint, capfd, command):
    from mot_neuro.cli import main

    path, marker = poisoned_checkpoint
    capfd.readouterr()
    code = main([*command, "--ckpt_path", str(path)])
    err = capfd.readouterr().err
    assert code == 2
    assert not marker.exists()
    assert "Python objects" in err and "Traceback" not in err


@pytest.mark.slow  # a fit of the demo experiment (the poisoned checkpoint)
def test_warm_start_from_a_poisoned_checkpoint_is_refused(poisoned_checkpoint, capfd):
    from mot_neuro.cli import main

    path, marker = poisoned_checkpoint
    code = main(["fit", "--config", DEMO, "--trainer.max_epochs", "1", "--model.warm_start_from", str(path)])
    assert code == 2 and not marker.exists()
    assert "Traceback" not in capfd.readouterr().err


def test_user_arrays_are_never_unpickled(tmp_path):
    """An object array in an .npy (what np.save writes for Python objects) is refused, not loaded."""
    import numpy as np

    from data_adapters.core import AdapterError, load_npy

    path = tmp_path / "ids.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(AdapterError, match="pickled"):
        load_npy(path, "subject IDs")


# ------------------------------------------------------------------------------------------------ subject IDs
def subject_ids(workdir: Path) -> set[str]:
    import pandas as pd

    return set(pd.read_csv(workdir / "outputs" / "demo_cohort" / "participants.csv", dtype=str)["eid"])


def mentions(text: str, ids: set[str]) -> list[str]:
    # an ID as a whole token, not digits inside a longer number (metric values print many digits)
    return sorted(i for i in ids if re.search(rf"(?<![\w.]){re.escape(i)}(?![\w])", text))


@pytest.mark.slow  # fit in a process of its own
def test_no_subject_id_in_logs_params_metrics_tags_or_artifacts(workdir):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MOT_NEURO_DEBUG")}
    done = subprocess.run(
        [sys.executable, "-m", "mot_neuro.cli", "fit", "--config", DEMO, *QUICK],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ids = subject_ids(workdir)
    assert len(ids) == 300
    assert mentions(done.stdout + done.stderr, ids) == []

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mot-neuro").experiment_id])
    recorded = repr([run.data.params, run.data.metrics, run.data.tags])
    assert mentions(recorded, ids) == []
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert artifacts and "demo_splits.json" not in artifacts
    for name in artifacts:
        text = Path(client.download_artifacts(run.info.run_id, name, str(workdir / "downloaded"))).read_text()
        assert mentions(text, ids) == [], name
    # the check can fail: the splits file does hold the IDs
    assert mentions((workdir / "outputs" / "demo_splits.json").read_text(), ids)


@pytest.mark.slow  # fits the demo experiment
def test_splits_file_is_logged_only_when_asked(workdir):
    from mlflow.tracking import MlflowClient

    run_cli("fit", "--config", DEMO, *QUICK, "--trainer.logger.init_args.log_subject_ids", "true")
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mot-neuro").experiment_id])
    assert "demo_splits.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
