"""MLflow for mot-neuro runs: an embedded SQLite store by default, the resolved config as an artifact.

* :class:`MLflowLogger`: Lightning's ``MLFlowLogger`` whose tracking URI defaults to ``$MLFLOW_TRACKING_URI``,
  else ``sqlite:///mlflow.db`` in the working directory (MLflow 3.13+ refuses the old ``./mlruns`` file
  store, which is still Lightning's default).
* :func:`check_tracking_server`: an ``http(s)://`` tracking server is checked when the logger is built, without
  retries and with a short timeout, so that a server that is down gives one line instead of MLflow's minutes of
  retries. Once the run has started, MLflow's own retries stay (a server restarting mid-training costs a pause,
  not the run); MLflow reads ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR`` and ``..._TIMEOUT`` at
  every request, so a user's setting bounds them.
* :class:`MLflowSaveConfig`: LightningCLI's ``SaveConfigCallback`` writes ``config.yaml`` into the logger's
  log dir, which MLflow on SQLite does not have (Lightning issue #19441), and with a file store it collides
  between runs (#20184). This one logs the resolved config as a run artifact instead, together with what
  makes a run reproducible and comparable: parameter counts, training FLOPs per token, the data
  fingerprint, the splits fingerprint and the git commit.

Subject IDs stay out of the tracking store: never in params, metrics or tags, and the splits file (IDs per
fold) is logged as an artifact only with ``log_subject_ids: true`` on the logger. A tracking server is often
shared more widely than the cohort's data agreement allows; the splits file itself stays beside the data.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

from data_adapters.errors import AdapterError

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


# MLflow's set_tracking_uri also exports $MLFLOW_TRACKING_URI, so after one run in a process the variable
# names that run's store; a second run from another folder (a notebook, a test) would log into it.
# A value that we caused is therefore not taken as the user's choice.
_URIS_WE_SET: set[str] = set()


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI`` (when the user set it), else ``sqlite:///mlflow.db``; a relative
    SQLite path made absolute (MLflow caches stores by URI text, so a relative one would keep pointing at the
    first working directory)."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env in _URIS_WE_SET:
        from_env = None
    uri = uri or from_env or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        uri = prefix + str(Path(uri[len(prefix) :]).absolute())
    return uri


def sqlite_store_path(uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` tracking URI (resolved), else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or ":memory:" in uri:
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


def _local_artifact_folder(location: str | None) -> Path | None:
    """The local folder of an artifact location (a path or ``file:`` URI); None for remote stores."""
    if not location:
        return None
    if location.startswith("file://"):
        return Path(location[len("file://") :])
    if location.startswith("file:"):
        return Path(location[len("file:") :])
    return None if "://" in location or location.startswith("mlflow-artifacts:") else Path(location)


def _check_artifact_folder(folder: Path) -> None:
    """The artifact folder, or the nearest folder above it that exists (MLflow creates the rest), must take files."""
    from mot_neuro.checkpoint_io import check_writable_folder

    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    check_writable_folder(
        existing,
        f"writing MLflow artifacts under {folder}",
        "make it writable or free space, run from another folder, or give the logger an artifact_location",
    )


@contextmanager
def _store_lock(database: Path):
    """An exclusive lock beside the SQLite store (``mlflow.db.lock``): MLflow's first-time schema migration
    races when two runs create the same new store at once, and the loser fails (the lock file stays: removing
    it would race too)."""
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_store_folders(uri: str, artifact_location: str | None) -> None:
    """Before MLflow touches a local SQLite store: its folder, an existing database and the artifact root must
    be writable (else MLflow retries for ~100 s, then fails with a message naming none of them). Writes and
    removes one small probe file; opens no database."""
    from data_adapters.io import storage_problem
    from mot_neuro.checkpoint_io import StorageError, check_writable_folder

    database = sqlite_store_path(uri)
    if database is None:
        return
    fix = "make it writable or free space, run from another folder, or set --trainer.logger.init_args.tracking_uri"
    check_writable_folder(database.parent, f"writing the MLflow store {database.name}", fix)
    if database.exists():
        try:
            with open(database, "r+b"):
                pass
        except OSError as err:
            problem = storage_problem(err, database.parent, "opening the MLflow store", fix)
            raise StorageError(problem, file=database) from err
    if artifact_location is not None and _local_artifact_folder(artifact_location) is not None:
        _check_artifact_folder(_local_artifact_folder(artifact_location))
    elif not database.exists():
        _check_artifact_folder(Path("mlruns"))  # MLflow's default artifact root for a new store: ./mlruns


def _locked_experiment_id(client, database: Path, experiment_name: str, artifact_location: str | None) -> str:
    """The experiment's ID, the store and the experiment created if new, under the store's file lock (two runs
    creating the same new store or experiment at once would otherwise race; the loser failed)."""
    with _store_lock(database):
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise ValueError(
                f"{database}: MLflow experiment {experiment_name!r} was deleted; restore it"
                f" (mlflow experiments restore) or choose another --trainer.logger.init_args.experiment_name"
            )
        if experiment is None:
            experiment_id = client.create_experiment(experiment_name, artifact_location=artifact_location)
            experiment = client.get_experiment(experiment_id)
    artifacts = _local_artifact_folder(experiment.artifact_location)
    if artifacts is not None:
        _check_artifact_folder(artifacts)
    return experiment.experiment_id


class TrackingServerError(AdapterError):
    """An MLflow tracking server that does not answer or refuses the run (a ``ValueError``; an ``AdapterError`` so
    that the CLI finds it inside jsonargparse's error about the logger, as it finds a :class:`StorageError`)."""


SERVER_PROBE_TIMEOUT_S = 5.0
"""How long :func:`check_tracking_server` waits for a tracking server to answer (connect, then read)."""


def check_tracking_server(
    uri: str, timeout: float = SERVER_PROBE_TIMEOUT_S, setting: str = "unset MLFLOW_TRACKING_URI"
) -> None:
    """Raise :class:`TrackingServerError` (one line) unless the ``http(s)://`` tracking server ``uri`` answers;
    other schemes (a local store, ``databricks``, plugins) are left to MLflow. ``setting``: how to drop the URI.

    Two requests without retries: ``GET /health`` (which ``mlflow server`` serves without credentials or host
    checks), then one experiments search through MLflow's REST client with the user's credentials and TLS
    settings. Unprobed, a server that is down costs minutes: MLflow's client retries a failed connection 7
    times with exponential backoff. A server that answers ``/health`` but refuses the search (401/403: wrong
    credentials, or a host missing from the server's ``--allowed-hosts``) is refused too, since every request
    of the run would be; any other answer to the search is left to MLflow (a proxy may route it differently).
    """
    if not uri.lower().startswith(("http://", "https://")):
        return
    import requests
    from mlflow.utils.credentials import get_default_host_creds

    creds = get_default_host_creds(uri)

    def unreachable(reason: str) -> str:
        return (
            f"MLflow tracking server {uri} is not reachable ({reason}); start it, or {setting} to log into ./mlflow.db"
        )

    try:
        health = requests.get(
            uri.rstrip("/") + "/health", timeout=timeout, verify=creds.verify, cert=creds.client_cert_path
        )
    except requests.RequestException as err:
        raise TrackingServerError(unreachable(_connection_problem(err, timeout))) from err
    status, body = _rest_read(creds, timeout)
    if status in (401, 403) and health.status_code in (200, 401, 403):
        raise TrackingServerError(
            f"MLflow tracking server {uri} refused mot-neuro's request (HTTP {status}: {body}); set"
            " MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), and check that the"
            " server's --allowed-hosts names the host of the tracking URI"
        )
    if health.status_code != 200 and status != 200:  # a server or proxy without /health passes on the search
        search = f"HTTP {status}" if status else body
        raise TrackingServerError(unreachable(f"HTTP {health.status_code} at /health, {search} at the REST API"))


def _rest_read(creds, timeout: float) -> tuple[int | None, str]:
    """(HTTP status, first line of the body) of one experiments search through MLflow's REST client; (None,
    what failed) when no answer came."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            creds,
            "/api/2.0/mlflow/experiments/search",
            "GET",
            params={"max_results": 1},
            max_retries=0,
            backoff_factor=0,
            timeout=timeout,
            raise_on_status=False,
        )
    except MlflowException as err:
        return None, _connection_problem(err, timeout)
    return response.status_code, (response.text.strip().splitlines() or [""])[0][:200]


def _connection_problem(err: Exception, timeout: float) -> str:
    """A few words on why a request got no answer: requests' messages nest urllib3's over several lines."""
    import requests

    if isinstance(err, requests.Timeout) or "timed out" in str(err).lower():
        return f"no answer within {timeout:g} s"
    text = str(err)
    for pattern in (r"\[Errno -?\d+\] ([^'\")]+)", r"(\[SSL[^\]]*\][^'\")]*)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    return f"{type(err).__name__}: {text[:200]}"


class MLflowLogger(MLFlowLogger):
    """``MLFlowLogger`` with mot-neuro's defaults (SQLite store, experiment ``mot-neuro``)."""

    def __init__(
        self,
        experiment_name: str = "mot-neuro",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict | None = None,
        log_model: bool = False,
        artifact_location: str | None = None,
        log_subject_ids: bool = False,
    ) -> None:
        """``log_subject_ids``: also log the splits file (subject IDs of each fold) as a run artifact."""
        self.log_subject_ids = log_subject_ids
        resolved = resolve_tracking_uri(tracking_uri)
        if os.environ.get("MLFLOW_TRACKING_URI") != resolved:
            _URIS_WE_SET.add(resolved)
        _check_store_folders(resolved, artifact_location)
        # given here, or taken from $MLFLOW_TRACKING_URI: the one-line refusal says which to drop
        setting = "unset MLFLOW_TRACKING_URI" if tracking_uri is None else "drop the logger's tracking_uri"
        check_tracking_server(resolved, setting=setting)
        database = sqlite_store_path(resolved)
        # Lightning's constructor builds an MlflowClient, which creates (migrates) a new store right away
        with _store_lock(database) if database is not None else nullcontext():
            super().__init__(
                experiment_name=experiment_name,
                run_name=run_name,
                tracking_uri=resolved,
                tags=tags,
                log_model=log_model,
                artifact_location=artifact_location,
            )

    @property
    @rank_zero_experiment
    def experiment(self):
        """Lightning's, with the store and experiment created under a file lock beside a local SQLite store."""
        database = sqlite_store_path(self._tracking_uri)
        if not self._initialized and self._experiment_id is None and self._run_id is None and database is not None:
            self._experiment_id = _locked_experiment_id(
                self._mlflow_client, database, self._experiment_name, self._artifact_location
            )
        return MLFlowLogger.experiment.fget(self)

    def log_hyperparams(self, params) -> None:
        """Lightning's flattening, less what reads as noise in the MLflow UI: per-feature masks (long lists,
        cut at 250 characters; the data fingerprint and ``tokens_per_modality`` identify the data) and
        jsonargparse's private keys; and with every list that could hold subject IDs summarised
        (:func:`without_value_lists`), whatever option it comes from."""
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        flat = _flatten_dict(without_value_lists(_convert_params(params)))
        super().log_hyperparams(
            {k: v for k, v in flat.items() if not k.endswith("feature_mask") and not k.startswith("_")}
        )


def git_commit() -> str | None:
    """The commit of the mot-neuro code that runs (not of the working directory), ``-dirty`` if edited."""
    code = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=code, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=code,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # an installed copy without its repository
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def mlflow_loggers(trainer) -> list[MLFlowLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]


class MLflowSaveConfig(SaveConfigCallback):
    """Log the resolved config and the run's provenance to MLflow (rank 0, once per run)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # A checkpoint reaches MLflow with log_model and is shared as a model: the data's settings saved in it get
        # the summaries params get (nothing reads them back: the DataModule is built from the data config)
        key = "datamodule_hyper_parameters"
        if key in checkpoint:
            checkpoint[key] = without_value_lists(dict(checkpoint[key]))

    def save_config(self, trainer, pl_module, stage: str) -> None:
        loggers = mlflow_loggers(trainer)
        if not loggers or trainer.global_rank != 0:
            return
        for other in loggers:
            if not isinstance(other, MLflowLogger):
                # Lightning's own MLFlowLogger, configured by hand: the trainer logs the data's hparams through it
                # right after this setup hook, so its params get the same summaries as ours
                other.log_hyperparams = _params_without_value_lists(other.log_hyperparams)
        logger = loggers[0]
        client, run_id = logger.experiment, logger.run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
            path.write_text(config_without_value_lists(path.read_text()))
            client.log_artifact(run_id, str(path))
        datamodule = trainer.datamodule
        params = {"stage": stage}
        if hasattr(pl_module, "describe"):
            params.update(pl_module.describe())
        data = getattr(datamodule, "model_inputs", None)
        if data is not None:
            params["data_fingerprint"] = data.fingerprint
            splits = getattr(datamodule, "splits", None)
            if splits is not None:
                params["splits_fingerprint"] = splits.fingerprint()
                params["fold"] = datamodule.hparams.fold
                # part sizes (counts): the corrected resampled t-test of an ablation needs n_test / n_train
                for part, rows in (getattr(datamodule, "rows", None) or {}).items():
                    params[f"split/n_{part}"] = len(rows)
                # how relatedness grouped the cohort (counts only), so a reader sees that families stayed together
                for key, count in ((splits.settings or {}).get("related_groups") or {}).items():
                    params[f"split/{key}"] = count
                if getattr(logger, "log_subject_ids", False):
                    client.log_artifact(run_id, str(datamodule.hparams.splits_file))
            params["tokens_per_modality"] = ",".join(f"{m.name}={m.n_tokens}" for m in data.modalities)
            # ComBat's complete cases per harmonised modality (counts): a fit on few subjects shows here
            preprocessor = getattr(datamodule, "preprocessor", None)
            for name, fitted in ((preprocessor.state_dict().get("harmonize") if preprocessor else None) or {}).items():
                params[f"harmonize/{name}/n_train"] = fitted["n_train"]
                params[f"harmonize/{name}/n_fit"] = fitted["n_fit"]
            cohort = getattr(datamodule, "cohort", None)
            # how each modality matched the participants (counts, never IDs): a modality that matched few shows here
            for key, count in (getattr(cohort, "match_counts", None) or {}).items():
                params[f"cohort/{key}"] = count
        flops = _flops_per_token(pl_module)
        if flops is not None:
            params["train_flops_per_token"] = flops
        logger.log_hyperparams(params)
        commit = git_commit()
        if commit:
            client.set_tag(run_id, "git_commit", commit)


def config_without_value_lists(text: str) -> str:
    """A resolved config (YAML) with its ``data`` section passed through :func:`without_value_lists`."""
    import yaml

    config = yaml.safe_load(text)
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        return text
    config["data"] = without_value_lists(config["data"])
    return yaml.safe_dump(config, sort_keys=False)


NAME_LISTS = frozenset({"targets", "confounds", "drop_modalities", "untie", "freeze_towers", "reinit_towers"})
"""Options whose lists hold column, modality or model-part names: the only lists that reach MLflow whole."""


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, os.PathLike))


def _summary(value) -> str:
    """Says what a value was, not what it held (no hash either: a short list of IDs would be easy to guess)."""
    kind = "mapping" if isinstance(value, Mapping) else type(value).__name__
    try:
        size = f" of {len(value)} values"
    except TypeError:
        size = ""
    return f"<{kind}{size}: not logged, may hold subject IDs>"


def without_value_lists(tree, key: str | None = None):
    """``tree`` (a config or hyperparameters) as it may go to MLflow: subject IDs can only hide in lists.

    The guarantee is structural, not a list of option names that the next adapter would break: every list,
    tuple, set, array or table of values is replaced by :func:`_summary`, except under the keys of
    :data:`NAME_LISTS` (a list of records, such as the model's per-modality specs, is walked record by record);
    the options of a modality's adapter (``modalities: {name: {adapter: ..., option: value}}``) keep only
    scalar values (paths, numbers, names), since a mapping there may be keyed by subject (mappings elsewhere
    are keyed by target, modality or setting names, and are walked through). Strings stay: a path is fine.
    """
    if isinstance(tree, argparse.Namespace):
        tree = vars(tree)
    if isinstance(tree, Mapping):
        out = {}
        for name, value in tree.items():
            if name == "modalities" and isinstance(value, Mapping):
                out[name] = {modality: _adapter_options(spec) for modality, spec in value.items()}
            else:
                out[name] = without_value_lists(value, str(name))
        return out
    if _is_scalar(tree):
        return tree
    if isinstance(tree, (list, tuple)) and tree and all(isinstance(v, (Mapping, argparse.Namespace)) for v in tree):
        return [without_value_lists(v) for v in tree]  # records (e.g. one per modality) are walked like mappings
    if key in NAME_LISTS and isinstance(tree, (list, tuple)) and all(_is_scalar(v) for v in tree):
        return list(tree)
    return _summary(tree)


def _adapter_options(spec):
    if isinstance(spec, argparse.Namespace):
        spec = vars(spec)
    if not isinstance(spec, Mapping):
        return spec if _is_scalar(spec) else _summary(spec)
    return {option: value if _is_scalar(value) else _summary(value) for option, value in spec.items()}


def _params_without_value_lists(log_hyperparams):
    def log(params, *args, **kwargs):
        from lightning.fabric.utilities.logger import _convert_params

        return log_hyperparams(without_value_lists(_convert_params(params)), *args, **kwargs)

    return log


def _flops_per_token(pl_module) -> float | None:
    """Training FLOPs per token of the backbone, measured with torch's FlopCounterMode."""
    encoder = getattr(pl_module, "encoder", None)
    if encoder is None:
        return None
    from mot_neuro.model import training_flops

    try:
        return float(training_flops(encoder.backbone, encoder.layout, batch_size=1)["training_per_token"])
    except Exception as err:  # noqa: BLE001 - accounting must never stop a run
        log.warning("could not count FLOPs: %s", err)
        return None


def format_number(value: float) -> str:
    """Four decimals for the usual range; significant digits for the rest, so that an mae of 3e-14 (a target in
    small units) does not print as 0.0000 and one of 2e25 not as 26 digits."""
    if value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4f}"
    return f"{value:.4g}"


class RunSummary(Callback):
    """A short end-of-run summary: where the run, its checkpoints and metrics are.

    After fit it shows the validation metrics of the best checkpoint's epoch (not of the last epoch), and says
    which epoch that was. An undefined metric prints ``nan`` with its reason (the module's ``metric_notes``).
    Warns (one line) when the best checkpoint is the first epoch of several: the model had barely trained.
    """

    def __init__(self) -> None:
        super().__init__()
        self._printed = set()
        # fit's validations in this process: (epoch, val metrics, notes of those metrics)
        self._validations: list[tuple[int, dict[str, float], dict[str, str]]] = []
        self._best: tuple[int, dict[str, float], dict[str, str]] | None = None  # the best checkpoint's validation
        self._best_seen: tuple[str, str] | None = None  # (path, score) of the best checkpoint last attributed

    @staticmethod
    def _scalars(trainer, prefixes: tuple[str, ...]) -> dict[str, float]:
        return {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(prefixes) and not k.endswith("_step") and v.numel() == 1
        }

    @staticmethod
    def _best_state(trainer) -> tuple[str, str] | None:
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or not checkpoint.best_model_path:
            return None
        score = checkpoint.best_model_score
        return checkpoint.best_model_path, repr(None if score is None else float(score))

    def _attribute_best(self, trainer) -> None:
        """A best checkpoint that changed since the last look was saved from the latest validation (ModelCheckpoint
        runs after this callback in the same hook, so the change shows at the next one)."""
        state = self._best_state(trainer)
        if state is not None and state != self._best_seen and self._validations:
            self._best = self._validations[-1]
        self._best_seen = state

    def on_train_start(self, trainer, pl_module) -> None:
        # a resumed run restores its best checkpoint before this: that one was chosen by an earlier process
        self._best_seen = self._best_state(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._print(trainer, pl_module, "validate")
            return
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._attribute_best(trainer)
        notes = {k: v for k, v in getattr(pl_module, "metric_notes", {}).items() if k.startswith("val/")}
        self._validations.append((trainer.current_epoch, self._scalars(trainer, ("val/",)), notes))

    def _print(self, trainer, pl_module, stage: str) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking or stage in self._printed:
            return
        self._printed.add(stage)
        lines = [f"mot-neuro {stage} finished"]
        for logger in mlflow_loggers(trainer):
            uri = logger._tracking_uri
            lines.append(f"  MLflow run      {logger.run_id} (experiment {logger._experiment_name!r}) in {uri}")
            if uri.startswith("sqlite:///"):
                lines.append(f"  browse it with  mlflow ui --backend-store-uri {uri}")
            elif uri.lower().startswith(("http://", "https://")):
                experiment_id = logger.experiment_id
                lines.append(f"  open it at      {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{logger.run_id}")
        notes = dict(getattr(pl_module, "metric_notes", {}))
        checkpoint = trainer.checkpoint_callback
        shown: dict[str, float] | None = None
        if stage == "fit":
            self._attribute_best(trainer)
            header = None
            if checkpoint is not None and checkpoint.best_model_path:
                path, score = checkpoint.best_model_path, checkpoint.best_model_score
                score_text = "" if score is None else f"; {checkpoint.monitor or 'score'} {format_number(float(score))}"
                if self._best is not None:
                    epoch, shown, notes = self._best
                    lines.append(f"  best checkpoint {path} (epoch {epoch}{score_text})")
                    header = f"  validation metrics of the best checkpoint (epoch {epoch}):"
                else:  # resumed: the best was saved by an earlier process, whose metrics are in its MLflow run
                    lines.append(f"  best checkpoint {path} (saved before this process{score_text})")
                    header = "  its other validation metrics: in the MLflow history of the run that saved it"
                    shown = {}
            if checkpoint is not None and checkpoint.last_model_path:
                lines.append(f"  last checkpoint {checkpoint.last_model_path}")
            if shown is None and self._validations:
                epoch, shown, notes = self._validations[-1]
                header = f"  validation metrics of the last epoch (epoch {epoch}):"
            if header:
                lines.append(header)
            self._warn_if_best_is_first(trainer, pl_module)
        if shown is None:
            shown = self._scalars(trainer, ("val/", "test/") if stage != "fit" else ("val/",))
        for key in sorted(shown)[:24]:
            value, note = shown[key], notes.get(key)
            lines.append(f"  {key:<28} {format_number(value)}" + (f"  ({note})" if note else ""))
        print("\n".join(lines))

    def _warn_if_best_is_first(self, trainer, pl_module) -> None:
        epochs = sorted({epoch for epoch, _, _ in self._validations})
        if self._best is None or len(epochs) < 2 or self._best[0] != epochs[0] or epochs[0] != 0:
            return
        warmup = (getattr(pl_module, "hparams", {}).get("optimizer") or {}).get("warmup_steps")
        log.warning(
            "the best checkpoint is from the first epoch (epoch 0 of %d validated), %d training step(s) in: the model"
            " had barely trained (model.optimizer.warmup_steps=%s); check model.optimizer.lr,"
            " model.optimizer.warmup_steps and the cohort size",
            len(epochs),
            trainer.num_training_batches,
            warmup,
        )

    def on_fit_end(self, trainer, pl_module) -> None:
        self._print(trainer, pl_module, "fit")

    def on_test_end(self, trainer, pl_module) -> None:
        self._print(trainer, pl_module, "test")
