"""Fixtures shared by the test files: a work folder, the demo cohort (written once per session), a case folder of
the bad-input corpus, a short checkpoint on the demo cohort. Plain helpers and repository paths: ``helpers.py``.

Under pytest-xdist each worker has its own session, so its own demo cohort. Session-scoped files are shared by
the tests of a worker: tests read them and write into their own folders (``workdir``, ``case.folder``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # helpers imports Lightning: not in pytest-xdist's controller, which runs no test
    from helpers import Case


def pytest_configure(config):
    # Lightning's CLI, run in this process, warns that it does not parse pytest's own argv: in every test
    config.addinivalue_line("filterwarnings", "ignore:LightningCLI's args parameter")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Each test runs in its own folder: outputs/ (the demo cohort, checkpoints) and mlflow.db land there; no
    tracking URI or debug setting from the environment leaks in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MOT_NEURO_DEBUG", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def demo_cohort_files(tmp_path_factory) -> dict[str, Path]:
    """The demo cohort as the demo data config generates it (default size and seed), written once per session:
    name -> path (``data_adapters.demo.write_demo_cohort``). Read it, never write into it."""
    from data_adapters.demo import write_demo_cohort

    return write_demo_cohort(tmp_path_factory.mktemp("demo") / "demo_cohort")


@pytest.fixture(scope="session")
def demo_cohort(demo_cohort_files) -> Path:
    """The folder of the session's demo cohort (its parent also holds the shared ``cache`` of ``Case``)."""
    return demo_cohort_files["participants"].parent


@pytest.fixture
def demo_workdir(workdir, demo_cohort) -> Path:
    """A work folder holding its own copy of the demo cohort where the demo data config looks for it
    (outputs/demo_cohort), so that a run does not generate it first and may change or remove it."""
    shutil.copytree(demo_cohort, workdir / "outputs" / "demo_cohort")
    return workdir


@pytest.fixture
def case(demo_cohort, workdir, capfd) -> Case:
    """One case of the bad-input corpus: its own folder (the working directory), data configs on the shared demo
    files, ``mot-neuro`` run in this process with its stderr captured."""
    from helpers import Case

    return Case(demo_cohort, workdir, capfd)


@pytest.fixture(scope="session")
def demo_checkpoint(demo_cohort, tmp_path_factory) -> Path:
    """A checkpoint of one short epoch on the demo cohort (gene, brain, behaviour); read it, never change it."""
    from helpers import DEBUG_TRAINER, EXPERIMENT, NO_LOGGER, Case, run_cli

    folder = tmp_path_factory.mktemp("checkpoint")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        data = Case(demo_cohort, folder, capfd=None).data_config()
        run_cli(
            *("fit", "--config", EXPERIMENT, "--trainer", DEBUG_TRAINER, "--data", data),
            *("--trainer.fast_dev_run", "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"),
            *("--trainer.limit_val_batches", "1", *NO_LOGGER, "--test_after_fit", "false"),
            *("--trainer.callbacks", "lightning.pytorch.callbacks.ModelCheckpoint"),
            *("--trainer.callbacks.dirpath", folder / "ckpt", "--trainer.callbacks.save_last", "true"),
        )
    return folder / "ckpt" / "last.ckpt"


@pytest.fixture(scope="session")
def fitted_demo(demo_cohort, tmp_path_factory):
    """The demo experiment as the README runs it (its CPU trainer config, MLflow in the folder), fitted for one
    epoch without the test run after fit, once per session in a folder of its own holding a copy of the demo
    cohort: ``.cli`` (the CLI object: model and datamodule in memory), ``.folder``, ``.checkpoint``
    (outputs/checkpoints/last.ckpt) and ``.batch_size`` (the datamodule's own).

    Shared by the tests of a worker (test_embed.py, test_probe.py, test_reliability.py, test_faults.py): run from
    ``.folder`` (paths in the datamodule are relative to it); never change the checkpoint or the cohort; put back
    any datamodule setting a test changes. Its MLflow store is the fit's own: record nothing there."""
    from types import SimpleNamespace

    from helpers import EXPERIMENT, run_cli

    folder = tmp_path_factory.mktemp("fitted_demo")
    shutil.copytree(demo_cohort, folder / "outputs" / "demo_cohort")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MOT_NEURO_DEBUG", raising=False)
        cli = run_cli("fit", "--config", EXPERIMENT, "--trainer.max_epochs", "1", "--test_after_fit", "false")
    checkpoint = folder / "outputs" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    return SimpleNamespace(cli=cli, folder=folder, checkpoint=checkpoint, batch_size=cli.datamodule.hparams.batch_size)
