"""mot-neuro against a real ``mlflow server`` (SQLite backend, artifacts proxied by the server, a free port): fit,
concurrent fits, an ablation through submitit's local launcher and a short tune arrive complete; a server that is
down or refuses the run is one line, at once, instead of MLflow's minutes of retries.

Runs are read back through ``MlflowClient`` against the server, never from its files, except to check that the
artifacts landed where the server keeps them (not in the run's working folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import EXPERIMENT, assert_refused, run_main
from mlflow_server import MlflowServer, answering, closed_port, silent_port

# one epoch of two batches on a small model: the runs only have to reach the server
SHORT_FIT = [
    *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"),
    *("--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"),
    *("--trainer.enable_progress_bar", "false", "--model.encoder.dim", "16"),
]
PROBE_BUDGET_S = 10  # the refusal of a server that is down, parsing and the data's setup included


def experiment_name(name: str) -> list[str]:
    return ["--trainer.logger.init_args.experiment_name", name]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    try:
        server.start()
    except RuntimeError as err:
        pytest.fail(str(err))
    yield server
    server.stop()


@pytest.fixture
def on_server(mlflow_server, demo_workdir, monkeypatch):
    """A work folder with the demo cohort whose runs log to the server (``$MLFLOW_TRACKING_URI``, as a user sets
    it): the client to read them back."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return MlflowClient(tracking_uri=mlflow_server.uri)


def runs_of(client, experiment: str, filter_string: str = ""):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} on the server"
    return client.search_runs([found.experiment_id], filter_string)


def assert_complete(client, run, *metrics: str) -> None:
    """FINISHED, with ``metrics`` and the provenance params that MLflowSaveConfig logs, and config.yaml."""
    assert run.info.status == "FINISHED", run.info
    for key in metrics:
        assert key in run.data.metrics, f"{key} not in {sorted(run.data.metrics)}"
    for key in ("data_fingerprint", "splits_fingerprint", "fold"):
        assert key in run.data.params, f"{key} not in {sorted(run.data.params)}"
    assert "config.yaml" in [item.path for item in client.list_artifacts(run.info.run_id)]


def run_config(client, run, folder: Path) -> dict:
    """The run's config.yaml, downloaded from the server."""
    folder.mkdir(parents=True, exist_ok=True)
    return yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(folder))).read_text())


def mot_neuro_command() -> list[str]:
    return [str(Path(sys.executable).with_name("mot-neuro"))]


# ---------------------------------------------------------------------------------------------- no server
def test_server_that_is_down_is_one_line_at_once(demo_workdir, capfd, monkeypatch):
    """The README's fit (its CPU trainer logs to MLflow) with $MLFLOW_TRACKING_URI on a port nobody listens on."""
    with closed_port() as port:
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        status, _, err = run_main(capfd, "fit", "--config", EXPERIMENT, *SHORT_FIT)
        elapsed = time.monotonic() - start
    assert_refused(status, err, f"MLflow tracking server {uri} is not reachable (Connection refused)")
    assert "unset MLFLOW_TRACKING_URI to log into ./mlflow.db" in err
    assert elapsed < PROBE_BUDGET_S, f"{elapsed:.1f} s"
    assert not (demo_workdir / "mlflow.db").exists()


def test_tracking_uri_given_to_the_logger_names_that_setting(demo_workdir, capfd):
    with closed_port() as port:
        uri = f"http://127.0.0.1:{port}"
        status, _, err = run_main(
            capfd, "fit", "--config", EXPERIMENT, *SHORT_FIT, "--trainer.logger.init_args.tracking_uri", uri
        )
    assert_refused(status, err, f"{uri} is not reachable", "drop the logger's tracking_uri")


@pytest.mark.parametrize("command", ["ablate", "tune"])
def test_grid_and_search_refuse_a_server_that_is_down(command, demo_workdir, capfd, monkeypatch):
    """ablate and tune talk to MLflow before any fit (their parent run): they refuse at once too. MLflow's retries
    are off here, so that a command that skips the check fails this test in seconds (with MLflow's traceback),
    not after minutes of backoff."""
    from mot_neuro.cli import COMMANDS

    if command not in COMMANDS:
        pytest.skip(f"mot-neuro {command} is not there yet")
    space = demo_workdir / "space.yaml"
    space.write_text(yaml.safe_dump({"model.optimizer.lr": {"float": [1e-4, 1e-2], "log": True}}))
    arguments = {
        "ablate": ["--variants", "mot", "--drop", "none", "--folds", "0"],
        "tune": ["--space", space, "--n-trials", "1"],
    }[command]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with closed_port() as port:
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        status, _, err = run_main(capfd, command, "--config", EXPERIMENT, *arguments)
        elapsed = time.monotonic() - start
    assert_refused(status, err, f"MLflow tracking server {uri} is not reachable (Connection refused)")
    assert elapsed < PROBE_BUDGET_S, f"{elapsed:.1f} s"


def test_server_that_never_answers_times_out_once():
    from mot_neuro.tracking import TrackingServerError, check_tracking_server

    with silent_port() as port:
        start = time.monotonic()
        with pytest.raises(TrackingServerError, match=r"is not reachable \(no answer within 1 s\)"):
            check_tracking_server(f"http://127.0.0.1:{port}", timeout=1)
    assert time.monotonic() - start < 5  # one try, not MLflow's backoff


def test_server_that_refuses_the_run_is_one_line():
    """/health is open on every mlflow server; the REST API is not: credentials (basic-auth app) or a host left out of
    --allowed-hosts (MLflow 3's check against DNS rebinding) give 401/403 on every request of the run."""
    from mot_neuro.tracking import TrackingServerError, check_tracking_server

    invalid_host = (403, "Invalid Host header - possible DNS rebinding attack detected")
    with answering({"/health": (200, "OK"), "/api/2.0/mlflow/experiments/search": invalid_host}) as uri:
        with pytest.raises(TrackingServerError, match="HTTP 403: Invalid Host header") as refused:
            check_tracking_server(uri)
    assert "--allowed-hosts" in str(refused.value) and "MLFLOW_TRACKING_USERNAME" in str(refused.value)


def test_server_that_is_not_mlflow_is_refused_and_a_proxy_without_health_is_not():
    from mot_neuro.tracking import TrackingServerError, check_tracking_server

    with answering({}) as uri:  # 404 everywhere: some other web server on that port
        with pytest.raises(TrackingServerError, match=r"HTTP 404 at /health, HTTP 404 at the REST API"):
            check_tracking_server(uri)
    with answering({"/api/2.0/mlflow/experiments/search": (200, '{"experiments": []}')}) as uri:
        check_tracking_server(uri)  # a proxy that forwards only the API: MLflow itself will do


@pytest.mark.parametrize(
    "uri",
    [
        "databricks",
        "databricks://profile",
        "databricks-uc",
        "sqlite:///mlflow.db",
        "file:///tmp/mlruns",
        "postgresql://db/m",
    ],
)
def test_only_http_servers_are_probed(uri, monkeypatch):
    import requests

    from mot_neuro.tracking import check_tracking_server

    def no_request(*args, **kwargs):
        raise AssertionError(f"{uri} was probed")

    monkeypatch.setattr(requests, "get", no_request)
    monkeypatch.setattr("mlflow.utils.rest_utils.http_request", no_request)
    check_tracking_server(uri)


# ---------------------------------------------------------------------------------------------- a real server
@pytest.mark.slow
def test_fit_arrives_on_the_server(on_server, mlflow_server, demo_workdir, capfd):
    client = on_server
    status, out, err = run_main(capfd, "fit", "--config", EXPERIMENT, *SHORT_FIT, *experiment_name("server-fit"))
    assert status == 0, err[-3000:]
    (run,) = runs_of(client, "server-fit")
    assert_complete(client, run, "val/loss")
    assert any(key.startswith("test/") for key in run.data.metrics), sorted(run.data.metrics)
    assert run.data.params["fold"] == "0"
    assert run.data.tags.get("git_commit")
    assert f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in out
    # the config went through the server into its artifact store, and reads back as the run's config
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    config = run_config(client, run, demo_workdir / "downloaded")
    assert config["trainer"]["max_epochs"] == 1 and config["data"]["fold"] == 0
    assert list(mlflow_server.artifacts.rglob("config.yaml"))
    assert not (demo_workdir / "mlflow.db").exists() and not (demo_workdir / "mlruns").exists()


@pytest.mark.slow
def test_concurrent_fits_both_arrive(on_server, demo_workdir):
    """Two processes started together (as a SLURM array's cells start): both runs FINISHED, with their metrics."""
    client = on_server
    fits = []
    for seed in (1, 2):
        command = [
            *mot_neuro_command(),
            *("fit", "--config", str(EXPERIMENT), *SHORT_FIT, *experiment_name("server-concurrent")),
            *("--seed_everything", str(seed), "--checkpoint_dir", f"checkpoints-{seed}", "--test_after_fit", "false"),
        ]
        log = open(demo_workdir / f"fit-{seed}.log", "wb")  # noqa: SIM115 - closed below, after the process
        # one thread each: two processes that each take every core are slower together than one after the other
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen(command, cwd=demo_workdir, env=environment, stdout=log, stderr=subprocess.STDOUT)
        fits.append((process, log))
    for process, log in fits:
        status = process.wait(timeout=300)
        log.close()
        assert status == 0, Path(log.name).read_text()[-3000:]
    runs = runs_of(client, "server-concurrent")
    assert len(runs) == 2
    for run in runs:
        assert_complete(client, run, "val/loss")
    seeds = {run_config(client, run, demo_workdir / run.info.run_id)["seed_everything"] for run in runs}
    assert seeds == {1, 2}  # each run holds its own process's config


def _ablate_launcher_option() -> bool:
    if not (Path(__file__).parents[1] / "mot_neuro" / "launch.py").exists():
        return False
    done = subprocess.run([*mot_neuro_command(), "ablate", "--help"], capture_output=True, text=True, timeout=120)
    return "--launcher" in done.stdout


@pytest.mark.slow
def test_ablation_through_the_local_launcher_arrives(on_server, demo_workdir, capfd):
    """Two cells as submitit jobs running at once on this machine, each a child run of the ablation's parent."""
    if not _ablate_launcher_option():
        pytest.skip("mot-neuro ablate has no --launcher yet (mot_neuro/launch.py)")
    client = on_server
    launcher = demo_workdir / "local.yaml"
    launcher.write_text(yaml.safe_dump({"local_array_parallelism": 2, "timeout_min": 30}))
    status, _, err = run_main(
        capfd,
        *("ablate", "--config", EXPERIMENT, "--name", "server-ablation", "--variants", "dense", "mot"),
        *("--drop", "none", "--folds", "0", "--seeds", "0", "--launcher", "local", "--launcher-config", launcher),
        *("--set", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"),
        *("trainer.limit_test_batches=1", "model.encoder.dim=16", "trainer.enable_progress_bar=false"),
        *experiment_name("server-ablation"),
    )
    assert status == 0, err[-3000:]
    (parent,) = runs_of(client, "server-ablation", "tags.`mot_neuro.ablation` = 'server-ablation'")
    children = runs_of(client, "server-ablation", f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(child.data.tags["mot_neuro.cell"] for child in children) == [
        "dense__drop-none__seed0__fold0",
        "mot__drop-none__seed0__fold0",
    ]
    for child in children:
        assert_complete(client, child, "val/loss")
        assert any(key.startswith("test/") for key in child.data.metrics)
    assert client.list_artifacts(parent.info.run_id), "the ablation's summary is not on its parent run"


@pytest.mark.slow
def test_tune_arrives(on_server, demo_workdir, capfd):
    """Two trials and the refit of the best, each a child run of the search's parent run."""
    from mot_neuro.cli import COMMANDS

    if "tune" not in COMMANDS:
        pytest.skip("mot-neuro tune is not there yet (mot_neuro/tune.py)")
    client = on_server
    space = demo_workdir / "space.yaml"
    space.write_text(yaml.safe_dump({"model.optimizer.lr": {"float": [1e-4, 1e-2], "log": True}}))
    status, _, err = run_main(
        capfd,
        *("tune", "--config", EXPERIMENT, "--space", space, "--n-trials", "2", "--no-prune"),
        *SHORT_FIT,
        *experiment_name("server-tune"),
    )
    assert status == 0, err[-3000:]
    (parent,) = runs_of(client, "server-tune", "tags.`mot_neuro.command` = 'tune'")
    children = runs_of(client, "server-tune", f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    roles = sorted(child.data.tags.get("mot_neuro.tune_role") for child in children)
    assert roles == ["refit", "trial", "trial"], roles
    for child in children:
        assert_complete(client, child, "val/loss")
    assert client.list_artifacts(parent.info.run_id), "the search's report is not on its parent run"
