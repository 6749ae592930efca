"""Faults with real signals on real ``mot-neuro`` processes: kill and resume, SIGTERM, crashes.

Each test starts the command a user would run (``python -m mot_neuro.cli ...``) in its own folder, waits
until the process reaches a known point (``faults_support.HoldForSignal``), sends a real signal and checks
what is left behind: checkpoints that resume to the uninterrupted result, MLflow runs marked FAILED,
no half-written outputs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import EXPERIMENT, ROOT

DEMO = str(EXPERIMENT)
HOLD = "--trainer.callbacks+=faults_support.HoldForSignal"
QUICK = ["--trainer.enable_model_summary", "false"]

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    # each test's work folder holds its own copy of the session's demo cohort (its own outputs/, mlflow.db)
    pytest.mark.usefixtures("demo_workdir"),
    pytest.mark.slow,  # real processes, trained and killed
]


def environment(workdir: Path, hold_at: str | None = None, **extra: str) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MOT_NEURO_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MOT_NEURO_TEST_HOLD_FILE"] = str(workdir / "held")
    if hold_at:
        env["MOT_NEURO_TEST_HOLD_AT"] = hold_at
    env.update(extra)
    return env


def _default_sigint() -> None:
    # A shell starting a job in the background (nohup ... &, some CI runners) ignores SIGINT, the child
    # inherits that, and Python then never raises KeyboardInterrupt: give the process a user's terminal default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(workdir: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mot_neuro.cli", *map(str, args)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def run(workdir: Path, *args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    process = start(workdir, *args, env=env)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def wait_for_hold(process: subprocess.Popen, workdir: Path, timeout: float = 240) -> None:
    marker = workdir / "held"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process ended before the hold point (exit {process.returncode}):\n{err[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the process never reached the hold point")
        time.sleep(0.05)
    marker.unlink()


def signal_and_wait(process: subprocess.Popen, signum: int, timeout: float = 120) -> tuple[int, str, str]:
    process.send_signal(signum)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def mlflow_client(workdir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def fit_runs(workdir: Path) -> list:
    client = mlflow_client(workdir)
    experiment = client.get_experiment_by_name("mot-neuro")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def history(workdir: Path, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in mlflow_client(workdir).get_metric_history(run_id, key)}


# ------------------------------------------------------------------------------------------------ fit
FIT_3_EPOCHS = ["fit", "--config", DEMO, "--trainer.max_epochs", "3", "--test_after_fit", "false", *QUICK]
EVERY_2_STEPS = ["--checkpoint_every_n_steps", "2"]


@pytest.fixture(scope="module")
def uninterrupted(demo_cohort, tmp_path_factory) -> Path:
    """The folder of an uninterrupted run of FIT_3_EPOCHS with a checkpoint every 2 steps (a process of its own,
    in a folder holding a copy of the demo cohort): the reference of the kill and SIGTERM tests, made once."""
    reference = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(demo_cohort, reference / "outputs" / "demo_cohort")
    done = run(reference, *FIT_3_EPOCHS, *EVERY_2_STEPS, env=environment(reference))
    assert done.returncode == 0, done.stderr[-3000:]
    return reference


def test_fit_killed_mid_epoch_resumes_to_the_uninterrupted_metrics(workdir, uninterrupted):
    """SIGKILL (no chance to clean up) in epoch 1, then ``--ckpt_path last``: the same final metrics.

    The demo trains 7 batches per epoch; with a checkpoint every 2 steps the resume starts at step 10,
    batch 3 of epoch 1, so it needs both the resumable loader and per-batch seeding (dropout 0.2 is on).
    """
    common = [*FIT_3_EPOCHS, *EVERY_2_STEPS]
    reference = uninterrupted  # the uninterrupted run, in a folder holding a copy of the same cohort

    process = start(workdir, *common, HOLD, env=environment(workdir, hold_at="fit:11"))
    wait_for_hold(process, workdir)
    code, _, _ = signal_and_wait(process, signal.SIGKILL)
    assert code == -signal.SIGKILL
    checkpoints = workdir / "outputs" / "checkpoints"
    assert (checkpoints / "last-step.ckpt").is_file()  # step 10, mid-epoch 1

    resumed = run(workdir, *common, "--ckpt_path", "last", env=environment(workdir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning when a loader restarts the epoch

    (full,) = fit_runs(reference)
    killed, after = fit_runs(workdir)
    full_val = history(reference, full.info.run_id, "val/loss")
    resumed_val = history(workdir, after.info.run_id, "val/loss")
    assert sorted(resumed_val) == sorted(full_val)[1:]  # epochs 1 and 2 (epoch 0 was before the kill)
    for step, value in resumed_val.items():
        assert value == pytest.approx(full_val[step], rel=1e-6), step
    for key in ("val/target/r2", "train/loss_epoch"):
        assert history(workdir, after.info.run_id, key)[max(resumed_val)] == pytest.approx(
            history(reference, full.info.run_id, key)[max(full_val)], rel=1e-6, abs=1e-9
        ), key
    # SIGKILL leaves no chance to close the MLflow run: it stays RUNNING (see the README's guarantees)
    assert killed.info.status == "RUNNING"


def test_sigterm_stops_at_the_epoch_end_marks_the_run_failed_and_resumes(workdir, uninterrupted):
    """The signal a scheduler sends: stop at the next batch, save, mark the run FAILED; resume exactly."""
    common = FIT_3_EPOCHS
    process = start(workdir, *common, HOLD, env=environment(workdir, hold_at="fit:4"))
    wait_for_hold(process, workdir)
    code, out, err = signal_and_wait(process, signal.SIGTERM)
    assert code == 128 + 15, err[-3000:]
    assert "stopped by SIGTERM" in err and "--ckpt_path last" in err
    assert "Traceback" not in err
    (run_info,) = fit_runs(workdir)
    assert run_info.info.status == "FAILED"
    assert (workdir / "outputs" / "checkpoints" / "last-sigterm.ckpt").is_file()

    resumed = run(workdir, *common, "--ckpt_path", "last", env=environment(workdir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    latest = fit_runs(workdir)[-1]
    assert latest.info.status == "FINISHED"
    resumed_val = history(workdir, latest.info.run_id, "val/loss")
    # the same numbers as a run never stopped (the shared one: its extra step checkpoints change no number)
    reference = uninterrupted
    (full,) = fit_runs(reference)
    full_val = history(reference, full.info.run_id, "val/loss")
    assert set(resumed_val) <= set(full_val) and max(resumed_val) == max(full_val)
    for step, value in resumed_val.items():
        assert value == pytest.approx(full_val[step], rel=1e-6), step


@pytest.mark.parametrize("how", ["sigint", "crash"])
def test_interrupted_or_crashed_fit_marks_its_mlflow_run_failed(workdir, how):
    common = ["fit", "--config", DEMO, "--trainer.max_epochs", "3", "--test_after_fit", "false", *QUICK]
    if how == "crash":
        result = run(workdir, *common, "--trainer.callbacks+=faults_support.CrashAtStep", env=environment(workdir))
        assert result.returncode != 0
        assert "injected crash" in result.stderr
    else:
        process = start(workdir, *common, HOLD, env=environment(workdir, hold_at="fit:4"))
        wait_for_hold(process, workdir)
        code, _, _ = signal_and_wait(process, signal.SIGINT)
        assert code != 0
    (run_info,) = fit_runs(workdir)
    assert run_info.info.status == "FAILED"


# ------------------------------------------------------------------------------------------------ ablate
def test_ablation_killed_mid_grid_finishes_on_rerun_without_duplicate_cells(workdir):
    grid = ["ablate", "--config", DEMO, "--variants", "dense", "mot", "--drop", "none", "--folds", "0"]
    # the hold callback is inert without MOT_NEURO_TEST_HOLD_AT; the rerun must name the same cell settings
    grid += ["--set", "trainer.max_epochs=2", "trainer.callbacks+=faults_support.HoldForSignal"]
    grid += ["--name", "killed"]
    env = environment(workdir, hold_at="fit:3", MOT_NEURO_TEST_HOLD_ON_FIT="2")  # the second cell's fit
    process = start(workdir, *grid, env=env)
    wait_for_hold(process, workdir)
    code, _, _ = signal_and_wait(process, signal.SIGKILL)
    assert code == -signal.SIGKILL
    first = cells(workdir)
    assert sorted(r.info.status for r in first) == ["FINISHED", "RUNNING"]

    rerun = run(workdir, *grid, env=environment(workdir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = cells(workdir)
    finished = [r for r in after if r.info.status == "FINISHED"]
    keys = [r.data.tags["mot_neuro.cell"] for r in finished]
    assert len(keys) == len(set(keys)) == 2  # every cell once
    (killed,) = [r for r in after if r.info.status != "FINISHED"]
    assert killed.info.status == "KILLED"  # the interrupted attempt is closed, not left RUNNING
    # the finished first cell was not fitted again
    assert {r.info.run_id for r in first if r.info.status == "FINISHED"} <= {r.info.run_id for r in finished}
    import pandas as pd

    results = pd.read_csv(workdir / "outputs" / "ablation" / "killed" / "results.csv")
    cell_columns = ["variant", "dropped", "seed", "fold"]
    assert len(results.drop_duplicates(cell_columns)) == 2
    assert not results.duplicated([*cell_columns, "metric"]).any()  # one value per cell and metric


def cells(workdir: Path) -> list:
    client = mlflow_client(workdir)
    experiment = client.get_experiment_by_name("mot-neuro")
    return [r for r in client.search_runs([experiment.experiment_id]) if "mot_neuro.cell" in r.data.tags]


# ------------------------------------------------------------------------------------------------ embed
def test_killed_embedding_extraction_leaves_no_partial_output(workdir, fitted_demo):
    # the checkpoint of "fit --config demo --trainer.max_epochs 1 --test_after_fit false" (conftest.py, shared),
    # with its splits file, as if that fit had run in this folder
    shutil.copy(fitted_demo.folder / "outputs" / "demo_splits.json", workdir / "outputs" / "demo_splits.json")
    checkpoint = workdir / "outputs" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    shutil.copy(fitted_demo.checkpoint, checkpoint)
    output = workdir / "outputs" / "embeddings.parquet"
    embed = ["embed", "--config", DEMO, "--ckpt_path", checkpoint, "--output", output]
    # a previous complete extraction must survive a killed one untouched
    first = run(workdir, *embed, env=environment(workdir))
    assert first.returncode == 0, first.stderr[-3000:]
    before = output.read_bytes()

    process = start(workdir, *embed, "--set", HOLD.lstrip("-"), env=environment(workdir, hold_at="predict:3"))
    wait_for_hold(process, workdir)
    code, _, _ = signal_and_wait(process, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert output.read_bytes() == before
    leftovers = [p.name for p in output.parent.iterdir() if p.name != output.name and "embeddings" in p.name]
    assert leftovers  # the killed run's part file is there (a .tmp, never read as output) ...

    again = run(workdir, *embed, env=environment(workdir))
    assert again.returncode == 0, again.stderr[-3000:]
    import pandas as pd

    frame = pd.read_parquet(output)
    assert len(frame) == 300 and frame["eid"].is_unique
    # ... and the next run replaces and removes it
    assert [p.name for p in output.parent.iterdir() if "embeddings" in p.name] == [output.name]
