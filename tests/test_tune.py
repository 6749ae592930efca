"""`mot-neuro tune`: the search space's checks, the study's storage and resume, honest nesting, MLflow runs, best.yaml.

The slow tests run a tiny search on the demo cohort (2 trials of 2 short epochs); the rest never trains."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DEBUG_TRAINER, EXPERIMENT, NO_LOGGER, ROOT, assert_refused, run_main

# short trials: two epochs of two batches, one validation batch (the search still has a validation score per epoch)
SHORT = (
    *("--trainer", DEBUG_TRAINER, "--trainer.fast_dev_run", "false", "--trainer.max_epochs", "2"),
    *("--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2"),
    *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
    *("--model.optimizer.warmup_steps", "1", "--data.batch_size", "16"),
)
SPACE = "model.optimizer.lr: {float: [1.0e-4, 3.0e-3], log: true}\nmodel.encoder.dim: {categorical: [16, 32]}\n"


def write_space(folder: Path, text: str = SPACE, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def tune_args(space: Path, *args) -> list:
    return ["tune", "--config", EXPERIMENT, "--space", space, *args]


# ---------------------------------------------------------------------------------------------- bad inputs (fast)
@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("model.encoder.no_such_key: {int: [1, 4]}", "not a key of the experiment's config"),
        ("data.batch_sise: {int: [16, 64]}", "not a key"),
        ("model.optimizer.lr: {float: [0.01, 0.01]}", "empty range"),
        ("model.optimizer.lr: {float: [0.01, 0.001]}", "empty range"),
        ("model.optimizer.lr: {float: [0.0, 0.01], log: true}", "log scale needs low > 0"),
        ("model.encoder.dim: {categorical: []}", "non-empty list"),
        ("model.encoder.dim: {choice: [16, 32]}", "exactly one distribution"),
        ("model.encoder.dim: {int: [16, 32], scale: log}", "unknown option"),
        ("model.encoder.dim: {int: [16.5, 32]}", "whole numbers"),
        ("data.fold: {int: [0, 4]}", "changes which subjects are tested"),
        ("data.splits_file: {categorical: [a.json, b.json]}", "changes which subjects are tested"),
        ("seed_everything: {int: [0, 9]}", "selects noise"),
        ("data.batch_size: {float: [16.0, 64.5]}", "is not accepted"),  # a real key whose type refuses the value
    ],
)
def test_bad_search_space_is_one_line_naming_key_and_file(workdir, capfd, entry, expected):
    space = write_space(workdir, f"model.optimizer.lr: {{float: [1.0e-4, 1.0e-2], log: true}}\n{entry}\n")
    status, _, err = run_main(capfd, *tune_args(space, "--n-trials", "2"))
    key = entry.partition(":")[0]
    assert_refused(status, err, expected, key, "space.yaml")
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()  # refused before any trial


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--n-trials", "0"), "--n-trials must be at least 1"),
        (("--n-trials", "2", "--folds", "7"), "--folds [7]"),
        (("--n-trials", "2", "--metric", "test/loss"), "validation metrics only"),
        (("--n-trials", "2", "--trainer.no_such_option", "1"), "no_such_option"),
    ],
)
def test_bad_options_are_one_line(workdir, capfd, args, expected):
    status, _, err = run_main(capfd, *tune_args(write_space(workdir), *args))
    assert_refused(status, err, expected)


def test_missing_space_file_and_empty_space_are_one_line(workdir, capfd):
    status, _, err = run_main(capfd, *tune_args(workdir / "nowhere.yaml", "--n-trials", "2"))
    assert_refused(status, err, "nowhere.yaml", "no such file")
    status, _, err = run_main(capfd, *tune_args(write_space(workdir, "# nothing\n"), "--n-trials", "2"))
    assert_refused(status, err, "space.yaml", "expected a mapping")


def test_the_demo_space_parses_against_the_demo_experiment(workdir):
    from mot_neuro.tune import check_space_keys
    from mot_neuro.tune_space import load_space

    space_file = ROOT / "configs" / "tune" / "demo_space.yaml"
    space = load_space(space_file)
    assert {d.key for d in space} >= {"model.optimizer.lr", "model.encoder.dim", "data.batch_size"}
    check_space_keys(space, str(space_file), str(EXPERIMENT), [])  # raises on a key the experiment lacks


# ---------------------------------------------------------------------------------------------- inner folds (fast)
def _families_file(case) -> Path:
    """Relatives as a pairs table: every three consecutive subjects of the demo cohort are one family, so the
    splits (and inner folds) must keep about 130 families whole."""
    ids = case.participants["eid"].tolist()
    pairs = [(ids[i], ids[i + 1]) for i in range(0, len(ids) - 1) if i % 3 != 2]
    return case.write("families.txt", "ID1 ID2\n" + "".join(f"{a} {b}\n" for a, b in pairs))


def _datamodule(case, inner_fold=None, **settings):
    import yaml

    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    config = yaml.safe_load(case.data_config(**settings).read_text())
    datamodule = NeuroOmicsDataModule(**config, inner_fold=inner_fold)
    datamodule.setup("fit")
    return datamodule


def test_inner_folds_partition_the_outer_train_and_val_rows_and_keep_families_whole(case):
    """data.inner_fold: each inner fold's train and val rows split the outer fold's train + val rows, never hold an
    outer test row, and the val parts of the inner folds are disjoint and cover that pool; related subjects (the
    splits' groups) stay on one side; the outer test rows are -1 in the batches' split codes and have no loader."""
    import numpy as np

    families = {"relatedness": str(_families_file(case))}  # the demo config stratifies by its continuous target
    outer = _datamodule(case, **families)
    pool = np.union1d(outer.rows["train"], outer.rows["val"])
    outer_test = outer.rows["test"]
    vals = []
    for fold in range(3):
        inner = _datamodule(case, {"n_folds": 3, "fold": fold, "seed": 0}, **families)
        train, val = inner.rows["train"], inner.rows["val"]
        assert len(inner.rows["test"]) == 0 and len(val) > 0
        assert not np.intersect1d(train, val).size and np.array_equal(np.union1d(train, val), pool)
        assert not np.intersect1d(np.union1d(train, val), outer_test).size
        groups = inner.split_groups
        assert groups is not None
        ids = inner.cohort.subject_ids
        assert not set(groups[ids[train]]) & set(groups[ids[val]])
        assert set(inner.split_of_row[train]) == {0} and set(inner.split_of_row[val]) == {1}
        assert set(inner.split_of_row[outer_test]) == {-1}
        with pytest.raises(ValueError, match="an inner fold has no test part"):
            inner.test_dataloader()
        assert inner.state_dict()["inner_fold"] == {"n_folds": 3, "fold": fold, "seed": 0}
        vals.append(val)
    assert sum(len(v) for v in vals) == len(pool) and np.array_equal(np.sort(np.concatenate(vals)), pool)
    # another seed cuts other parts
    reseeded = _datamodule(case, {"n_folds": 3, "fold": 0, "seed": 1}, **families)
    assert not np.array_equal(reseeded.rows["val"], vals[0])
    assert "inner_fold" not in outer.state_dict()


@pytest.mark.parametrize(
    ("inner_fold", "expected"),
    [
        ({"n_folds": 1, "fold": 0}, "n_folds must be an integer >= 2"),
        ({"n_folds": 3, "fold": 3}, "fold must be an integer in 0..2"),
        ({"n_folds": 3, "fold": -1}, "fold must be an integer in 0..2"),
        ({"n_folds": 3.0, "fold": 0}, "n_folds must be an integer"),
        ({"n_folds": 3, "fold": 0, "seed": -2}, "seed must be an integer >= 0"),
        ({"n_folds": 3, "fold": 0, "folds": 2}, "unknown key(s) ['folds']"),
        ({"fold": 0}, "missing key(s) ['n_folds']"),
        ([3, 0], "must be a mapping"),
    ],
)
def test_bad_inner_fold_is_one_line_naming_the_option(inner_fold, expected):
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    with pytest.raises(ValueError) as refused:
        NeuroOmicsDataModule(cohort_dir="/nowhere", inner_fold=inner_fold)  # refused before anything is read
    message = str(refused.value)
    assert "data.inner_fold" in message and expected in message and "\n" not in message


def test_inner_fold_is_a_config_key_tune_sets_itself(workdir, capfd):
    """--data.inner_fold parses from the command line (as tune passes it) and is refused in a search space and in
    tune's overrides."""
    from mot_neuro.tune import inner_fold_args, parse_experiment

    parsed = parse_experiment(str(EXPERIMENT), inner_fold_args(n_folds=3, fold=1, seed=2))
    assert dict(parsed.config["data"]["inner_fold"]) == {"n_folds": 3, "fold": 1, "seed": 2}
    space = write_space(workdir, "data.inner_fold: {categorical: [null]}\n")
    status, _, err = run_main(capfd, *tune_args(space, "--n-trials", "1"))
    assert_refused(status, err, "data.inner_fold", "mot-neuro tune sets it")
    status, _, err = run_main(capfd, *tune_args(write_space(workdir), "--n-trials", "1", "--inner-folds", "0"))
    assert_refused(status, err, "--inner-folds must be at least 1")
    inner = ("--data.inner_fold", "{n_folds: 2, fold: 0}")
    status, _, err = run_main(capfd, *tune_args(write_space(workdir), "--n-trials", "1", *inner))
    assert_refused(status, err, "data.inner_fold", "--inner-folds")


# ---------------------------------------------------------------------------------------------- storage (fast)
def test_study_lives_beside_the_mlflow_store(tmp_path, monkeypatch):
    from mot_neuro.tune_study import absolute_storage, default_storage

    store = tmp_path / "runs" / "mlflow.db"
    assert default_storage(f"sqlite:///{store}") == f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    monkeypatch.chdir(tmp_path)
    assert default_storage("http://mlflow.example:5000") == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert default_storage(None) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert absolute_storage("sqlite:///here.db") == f"sqlite:///{tmp_path / 'here.db'}"


def test_trials_left_running_are_failed_and_a_second_process_is_refused(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from mot_neuro.tune_study import ABANDONED_ATTR, fail_abandoned_trials, open_study, study_lock

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = open_study(storage, "s-fold0", "minimize", "digest", "tpe", 0, prune=True)
    done = study.ask()
    study.tell(done, 1.0)
    study.ask()  # a trial whose process died: RUNNING forever
    with study_lock(url, "s", tmp_path):
        with pytest.raises(ValueError, match="being run by another mot-neuro tune"), study_lock(url, "s", tmp_path):
            pass
        assert fail_abandoned_trials(storage, "s-fold0") == [1]
    trials = optuna.load_study(study_name="s-fold0", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert ABANDONED_ATTR in trials[1].user_attrs
    with pytest.raises(ValueError, match="another search space"):
        open_study(storage, "s-fold0", "minimize", "other-digest", "tpe", 0, prune=True)
    with pytest.raises(ValueError, match="another search space"):
        open_study(storage, "s-fold0", "maximize", "digest", "tpe", 0, prune=True)


# ---------------------------------------------------------------------------------------------- searches (slow)
class _PruneSecondTrial:
    """A pruner that stops trial 1 at its first report (Optuna's median pruner waits for 5 finished trials)."""

    def prune(self, study, trial) -> bool:
        return trial.number == 1


@pytest.mark.slow
def test_search_never_serves_test_rows_then_refits_tests_and_writes_a_fittable_best_yaml(case, capfd, monkeypatch):
    """Two trials (the second pruned) on fold 0: every batch the trials' loaders served is a training or validation
    row, and no trial even asks for a test loader; the refit of the best trial is tested on the fold's test rows
    (so the recorder does see test rows when they are served). MLflow: a parent and a child per trial and refit.
    best.yaml is accepted by fit."""
    import optuna
    from mlflow.tracking import MlflowClient

    from mot_neuro import tune, tune_study
    from mot_neuro.data.batches import CohortBatches
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    phase = {"now": "setup"}
    served: dict[str, list] = {"trial": [], "refit": []}
    original_item = CohortBatches.__getitem__

    def recording_item(self, rows):
        batch = original_item(self, rows)
        if phase["now"] in served:
            served[phase["now"]].append((batch["row"].numpy().copy(), batch["split"].numpy().copy()))
        return batch

    original_test_loader = NeuroOmicsDataModule.test_dataloader

    def guarded_test_loader(self):
        if phase["now"] == "trial":
            raise AssertionError("a trial asked for the test loader")
        return original_test_loader(self)

    def in_phase(name, function):
        def run(*args, **kwargs):
            phase["now"] = name
            try:
                return function(*args, **kwargs)
            finally:
                phase["now"] = "between"

        return run

    monkeypatch.setattr(CohortBatches, "__getitem__", recording_item)
    monkeypatch.setattr(NeuroOmicsDataModule, "test_dataloader", guarded_test_loader)
    monkeypatch.setattr(tune, "run_trial_fit", in_phase("trial", tune.run_trial_fit))
    monkeypatch.setattr(tune, "fit_and_test_cli", in_phase("refit", tune.fit_and_test_cli))
    monkeypatch.setattr(tune_study, "make_pruner", lambda prune: _PruneSecondTrial())

    folder = case.folder
    space = write_space(folder)
    out = folder / "outputs" / "tune" / "t"
    data = ("--data", case.data_config())  # the session's demo cohort and its shared cache
    status, stdout, err = run_main(capfd, *tune_args(space, "--n-trials", "2", "--study-name", "t", *data, *SHORT))
    assert status == 0, err[-3000:]

    # honest nesting: trials served training and validation rows only, none of the rows the refit tested on
    trial_rows = {int(r) for rows, _ in served["trial"] for r in rows}
    trial_splits = {int(s) for _, splits in served["trial"] for s in splits}
    assert trial_splits == {0, 1}  # SPLIT_CODES: 0 train, 1 val
    tested_rows = {int(r) for rows, splits in served["refit"] for r, s in zip(rows, splits, strict=True) if s == 2}
    assert tested_rows, "the refit must be tested on the fold's test rows (the recorder sees them when served)"
    assert not trial_rows & tested_rows

    # the study: trial 0 complete, trial 1 pruned; both count towards --n-trials
    study = optuna.load_study(study_name="t-fold0", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]

    # report: inner (validation) score of the best trial beside the outer test score
    import pandas as pd

    report = pd.read_csv(out / "report.csv")
    assert list(report["fold"]) == [0] and report.loc[0, "best_trial"] == 0
    assert report.loc[0, "inner_value"] == pytest.approx(study.best_value)
    assert {"outer_test/loss", "outer_test/target/r2", "param_model.optimizer.lr"} <= set(report.columns)
    assert "inner val/loss" in stdout and "outer test/loss" in stdout

    # MLflow: one parent (space as artifact), a child per trial (params, state) and the refit
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mot-neuro")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mot_neuro.command") == "tune"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    assert "space.yaml" in {a.path for a in client.list_artifacts(parent)}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    roles = sorted((r.data.tags["mot_neuro.tune_role"], r.data.tags["mot_neuro.trial"]) for r in children)
    assert roles == [("refit", "0"), ("trial", "0"), ("trial", "1")]
    trials = {r.data.tags["mot_neuro.trial"]: r for r in children if r.data.tags["mot_neuro.tune_role"] == "trial"}
    assert trials["0"].data.tags["mot_neuro.trial_state"] == "COMPLETE" and trials["0"].info.status == "FINISHED"
    assert trials["1"].data.tags["mot_neuro.trial_state"] == "PRUNED" and trials["1"].info.status == "KILLED"
    assert float(trials["0"].data.params["trial/model.optimizer.lr"]) == pytest.approx(
        study.trials[0].params["model.optimizer.lr"]
    )

    # best.yaml is a whole experiment config that fit accepts
    best = out / "best.yaml"
    status, _, err = run_main(
        capfd,
        "fit",
        "--config",
        best,
        "--trainer.max_epochs",
        "1",
        *NO_LOGGER,
        "--test_after_fit",
        "false",
        "--checkpoint_dir",
        folder / "best_ckpt",
    )
    assert status == 0, err[-3000:]
    import yaml

    config = yaml.safe_load(best.read_text())
    assert config["model"]["encoder"]["dim"] == study.best_params["model.encoder.dim"]
    assert config["model"]["optimizer"]["lr"] == pytest.approx(study.best_params["model.optimizer.lr"])
    assert config["data"]["fold"] == 0


@pytest.mark.slow
def test_inner_folds_search_fits_each_inner_fold_as_a_child_run_and_never_serves_test_rows(case, capfd, monkeypatch):
    """--inner-folds 2: the one trial fits two inner folds (two child runs tagged with their inner fold, scored by
    the mean of their validation values) on the fold's train + val rows only; the refit alone is tested."""
    import optuna
    import pandas as pd
    import yaml
    from mlflow.tracking import MlflowClient

    from mot_neuro import tune
    from mot_neuro.data.batches import CohortBatches
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    phase = {"now": "setup"}
    served: dict[str, list] = {"trial": [], "refit": []}
    original_item = CohortBatches.__getitem__

    def recording_item(self, rows):
        batch = original_item(self, rows)
        if phase["now"] in served:
            served[phase["now"]].append((batch["row"].numpy().copy(), batch["split"].numpy().copy()))
        return batch

    def in_phase(name, function):
        def run(*args, **kwargs):
            phase["now"] = name
            try:
                return function(*args, **kwargs)
            finally:
                phase["now"] = "between"

        return run

    monkeypatch.setattr(CohortBatches, "__getitem__", recording_item)
    monkeypatch.setattr(tune, "run_trial_fit", in_phase("trial", tune.run_trial_fit))
    monkeypatch.setattr(tune, "fit_and_test_cli", in_phase("refit", tune.fit_and_test_cli))

    folder = case.folder
    space = write_space(folder, "model.optimizer.lr: {float: [1.0e-4, 3.0e-3], log: true}\n")
    data = ("--data", case.data_config(), "--model.encoder.dim", "16")
    args = ("--n-trials", "1", "--inner-folds", "2", "--no-prune", "--study-name", "n", *data, *SHORT)
    status, stdout, err = run_main(capfd, *tune_args(space, *args))
    assert status == 0, err[-3000:]
    assert "mean validation val/loss over 2 inner folds" in stdout

    outer = NeuroOmicsDataModule(**yaml.safe_load(case.data_config().read_text()))
    outer.setup("fit")
    pool = {int(r) for stage in ("train", "val") for r in outer.rows[stage]}
    trial_rows = {int(r) for rows, _ in served["trial"] for r in rows}
    assert trial_rows <= pool and {int(s) for _, splits in served["trial"] for s in splits} == {0, 1}
    tested_rows = {int(r) for rows, splits in served["refit"] for r, s in zip(rows, splits, strict=True) if s == 2}
    assert tested_rows and tested_rows <= {int(r) for r in outer.rows["test"]}  # two test batches: a part of them
    assert not trial_rows & {int(r) for r in outer.rows["test"]}

    study = optuna.load_study(study_name="n-fold0", storage=f"sqlite:///{folder / 'optuna.db'}")
    (trial,) = study.trials
    inner_scores = trial.user_attrs[tune.INNER_SCORES_ATTR]
    assert len(inner_scores) == 2 and trial.value == pytest.approx(sum(inner_scores) / 2)
    report = pd.read_csv(folder / "outputs" / "tune" / "n" / "report.csv")
    assert report.loc[0, "inner_folds"] == 2 and report.loc[0, "inner_value"] == pytest.approx(trial.value)

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mot-neuro").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("mot_neuro.command") == "tune"]
    assert parent.data.params["inner_folds"] == "2"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    roles = sorted((r.data.tags["mot_neuro.tune_role"], r.data.tags.get("mot_neuro.inner_fold", "-")) for r in children)
    assert roles == [("refit", "-"), ("trial", "0"), ("trial", "1")]
    assert all(r.info.status == "FINISHED" for r in children)


def _trial_states(database: Path) -> list[tuple[int, str]]:
    if not database.exists():
        return []
    try:
        with sqlite3.connect(database, timeout=1) as connection:
            return connection.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    except sqlite3.Error:  # the tables are being created
        return []


def _running_mlflow_trials(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(database, timeout=1) as connection:
            return connection.execute(
                "SELECT COUNT(*) FROM runs JOIN tags ON runs.run_uuid = tags.run_uuid"
                " WHERE runs.status = 'RUNNING' AND tags.key = 'mot_neuro.tune_role' AND tags.value = 'trial'"
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_total_without_counting_the_killed_trial(case, capfd):
    """SIGKILL in the middle of a trial (its Optuna trial and MLflow run RUNNING), then the same command again: the
    killed trial is marked FAIL, its run KILLED, and the study reaches --n-trials finished trials."""
    import optuna
    from mlflow.tracking import MlflowClient

    folder = case.folder
    space = write_space(folder)
    data = ("--data", case.data_config())
    args = [str(a) for a in tune_args(space, "--study-name", "k", "--no-prune", *data, *SHORT)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mot_neuro.cli", *args, "--n-trials", "5"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    optuna_db, mlflow_db = folder / "optuna.db", folder / "mlflow.db"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            running = [n for n, state in _trial_states(optuna_db) if state == "RUNNING"]
            if running and _running_mlflow_trials(mlflow_db):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the search ended before a trial could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    killed = [n for n, state in _trial_states(optuna_db) if state == "RUNNING"]
    assert len(killed) == 1

    status, stdout, err = run_main(capfd, *args, "--n-trials", "2")
    assert status == 0, err[-3000:]
    assert f"trial(s) {killed} left RUNNING by a killed process marked FAIL" in stdout
    study = optuna.load_study(study_name="k-fold0", storage=f"sqlite:///{optuna_db}")
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed[0]] == "FAIL"
    assert sum(state == "COMPLETE" for state in states.values()) == 2
    assert study.best_trial.number != killed[0]
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    experiment = client.get_experiment_by_name("mot-neuro")
    killed_runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mot_neuro.trial` = '{killed[0]}'"
    )
    assert [r.info.status for r in killed_runs if r.data.tags.get("mot_neuro.tune_role") == "trial"] == ["KILLED"]
    assert all(r.info.status != "RUNNING" for r in client.search_runs([experiment.experiment_id]))


def test_tune_refuses_a_launcher_config_without_a_launcher_and_slurm_without_sbatch(workdir, capfd, monkeypatch):
    """--launcher slurm where sbatch is not on PATH, and --launcher-config with the inline launcher: one line each,
    before any study or MLflow store is made."""
    space = ROOT / "configs" / "tune" / "demo_space.yaml"
    slurm = ROOT / "configs" / "launcher" / "slurm.yaml"
    monkeypatch.setenv("PATH", str(workdir))  # no sbatch here
    base = ("tune", "--config", EXPERIMENT, "--space", space, "--n-trials", "2")
    status, _, err = run_main(capfd, *base, "--launcher", "slurm", "--launcher-config", slurm)
    assert status == 2 and "sbatch is not on PATH" in err and len(err.strip().splitlines()) == 1
    status, _, err = run_main(capfd, *base, "--launcher-config", slurm)
    assert status == 2 and "--launcher local or slurm" in err
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()


@pytest.mark.slow  # one trial of a tiny model, as a submitit job in a subprocess
def test_tune_runs_as_one_local_launcher_job(demo_workdir, capfd):
    import pandas as pd

    space = demo_workdir / "space.yaml"
    space.write_text("model.optimizer.lr: {float: [1.0e-4, 1.0e-3], log: true}\n")
    status, out, err = run_main(
        capfd,
        "tune",
        "--config",
        EXPERIMENT,
        "--space",
        space,
        "--n-trials",
        "1",
        "--no-prune",
        "--output",
        demo_workdir / "tuned",
        "--launcher",
        "local",
        "--launcher-config",
        ROOT / "configs" / "launcher" / "local.yaml",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--model.encoder.dim",
        "16",
        *NO_LOGGER,
    )
    assert status == 0, err[-3000:]
    assert "finished in job" in out
    report = pd.read_csv(demo_workdir / "tuned" / "report.csv")
    assert len(report) == 1 and report["fold"].tolist() == [0]
    assert (demo_workdir / "tuned" / "best.yaml").is_file()
    assert list((demo_workdir / "tuned" / "jobs").glob("*_log.err"))
