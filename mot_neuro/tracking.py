"""MLflow for mot-neuro runs: an embedded SQLite store by default, the resolved config as an artifact.

* :class:`MLflowLogger`: Lightning's ``MLFlowLogger`` whose tracking URI defaults to ``$MLFLOW_TRACKING_URI``,
  else ``sqlite:///mlflow.db`` in the working directory (MLflow 3.13+ refuses the old ``./mlruns`` file
  store, which is still Lightning's default).
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

import logging
import os
import subprocess
import tempfile
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

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
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=resolved,
            tags=tags,
            log_model=log_model,
            artifact_location=artifact_location,
        )

    def log_hyperparams(self, params) -> None:
        """Lightning's flattening, less what reads as noise in the MLflow UI: per-feature masks (long lists,
        cut at 250 characters; the data fingerprint and ``tokens_per_modality`` identify the data) and
        jsonargparse's private keys."""
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        flat = _flatten_dict(_convert_params(params))
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

    def save_config(self, trainer, pl_module, stage: str) -> None:
        loggers = mlflow_loggers(trainer)
        if not loggers or trainer.global_rank != 0:
            return
        logger = loggers[0]
        client, run_id = logger.experiment, logger.run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
            client.log_artifact(run_id, str(path))
        datamodule = trainer.datamodule
        params = {"stage": stage}
        if hasattr(pl_module, "describe"):
            params.update(pl_module.describe())
        data = getattr(datamodule, "model_inputs", None)
        if data is not None:
            params["data_fingerprint"] = data.get("fingerprint")
            splits = getattr(datamodule, "splits", None)
            if splits is not None:
                params["splits_fingerprint"] = splits.fingerprint()
                params["fold"] = datamodule.hparams.fold
                if getattr(logger, "log_subject_ids", False):
                    client.log_artifact(run_id, str(datamodule.hparams.splits_file))
            params["tokens_per_modality"] = ",".join(f"{m['name']}={m['n_tokens']}" for m in data["modalities"])
        flops = _flops_per_token(pl_module)
        if flops is not None:
            params["train_flops_per_token"] = flops
        logger.log_hyperparams(params)
        commit = git_commit()
        if commit:
            client.set_tag(run_id, "git_commit", commit)


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


class RunSummary(Callback):
    """A short end-of-run summary: where the run, its checkpoints and metrics are."""

    def __init__(self) -> None:
        super().__init__()
        self._printed = set()

    def _print(self, trainer, stage: str) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking or stage in self._printed:
            return
        self._printed.add(stage)
        lines = [f"mot-neuro {stage} finished"]
        for logger in mlflow_loggers(trainer):
            uri = logger._tracking_uri
            lines.append(f"  MLflow run      {logger.run_id} (experiment {logger._experiment_name!r}) in {uri}")
            if uri.startswith("sqlite:///"):
                lines.append(f"  browse it with  mlflow ui --backend-store-uri {uri}")
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and stage == "fit":
            if checkpoint.best_model_path:
                lines.append(f"  best checkpoint {checkpoint.best_model_path}")
            if checkpoint.last_model_path:
                lines.append(f"  last checkpoint {checkpoint.last_model_path}")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k and v.numel() == 1}
        shown = sorted(k for k in metrics if k.startswith(("val/", "test/")) and not k.endswith("_step"))
        for key in shown[:16]:
            lines.append(f"  {key:<28} {metrics[key]:.4f}")
        print("\n".join(lines))

    def on_fit_end(self, trainer, pl_module) -> None:
        self._print(trainer, "fit")

    def on_test_end(self, trainer, pl_module) -> None:
        self._print(trainer, "test")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._print(trainer, "validate")
