"""``mot-neuro tune``: hyperparameter search with Optuna, with honest test estimates.

    mot-neuro tune --config configs/experiments/demo.yaml --space configs/tune/demo_space.yaml --n-trials 20 \\
        [--folds 0 1 2 3 4] [--sampler tpe|random] [--seed 0] [--metric val/loss] [--direction min|max] \\
        [--inner-folds K] [--storage URL] [--study-name NAME] [--output outputs/tune/NAME] [--no-prune] \\
        [--data/--model/--trainer ...]

The search space is a YAML file of dotted config keys -> distributions (:mod:`mot_neuro.tune_space`)::

    model.optimizer.lr: {float: [1.0e-4, 1.0e-2], log: true}
    model.encoder.dim: {categorical: [16, 32]}
    data.batch_size: {int: [16, 64], step: 16}

Every key is checked with the experiment's own parser, at both ends of its range and with every choice, before any
trial runs; keys that would change which subjects are tested (the splits) are refused.

Nesting (what keeps the estimate honest). Each outer fold (``--folds``, default the config's ``data.fold``) has a
study of its own. With ``--inner-folds 1`` (the default) a trial is one ``fit`` of the experiment with the trial's
values on that fold of the saved splits: trained on the fold's training part, scored by the best value of
``--metric`` on its validation part (pruned on it too, epoch by epoch), with no test after fit: only the training
and validation loaders are ever built. With ``--inner-folds K`` (K >= 2) the fold's training and validation rows
are pooled and cut into K inner folds (``data.inner_fold``: seeded by the outer fold's number, groups kept whole,
stratified as the splits are); a trial fits K models, one per inner fold, and its score is the mean of their K
best validation values (K times the cost, a less noisy choice); pruning then compares the running mean after each
inner fold, not epochs. Either way the selection uses each fold's train + validation subjects and nothing else.
Then the best trial of each fold is fitted again on the fold's training part (its validation part choosing the
checkpoint, as ``fit`` does) and tested on that fold's test part, which no trial saw. The report (``report.csv``,
printed) puts the two side by side per fold: the inner score that chose the configuration, and the outer test
score that estimates how the whole procedure generalises. Read the mean of the test column across folds; an inner
score is optimistic by construction.

``--n-trials`` is the number of finished trials (complete or pruned) each fold's study should reach, not a number to
add: re-running the same command after a kill, or after it ended, continues the study up to that total (raise it to
search longer). Trials that failed (a non-finite loss: returned as a failure, the search goes on) do not count.

Storage: an Optuna RDB storage, by default ``optuna.db`` beside the MLflow store (``sqlite:///<folder of
mlflow.db>/optuna.db``; ``./optuna.db`` when MLflow is not a local SQLite store), studies named
``<NAME>-fold<k>``; ``NAME`` defaults to the experiment file's name and a digest of the space, overrides, metric,
direction and ``--inner-folds`` when above 1 (another space is another study; the same name with another space is
refused). One process per study at a time (a lock file beside the storage); so on start every trial still RUNNING
was left by a killed process: it is marked FAIL (user attribute ``mot_neuro.abandoned``) and not counted, and its
MLflow run marked KILLED.

MLflow (when the experiment logs with ``mot_neuro.tracking.MLflowLogger``): one parent run per search (tags
``mot_neuro.command=tune``, ``mot_neuro.study``; the space file, report and best config as artifacts); every trial's
fit and every refit is a child run (``mlflow.parentRunId``; tags ``mot_neuro.trial``, ``mot_neuro.fold``,
``mot_neuro.tune_role`` = trial or refit, ``mot_neuro.trial_state``; params ``trial/<key>``). A pruned trial's run
ends KILLED. With ``--inner-folds K`` a trial has K child runs, one per inner fit, tagged ``mot_neuro.inner_fold``
(``mot_neuro.trial_state`` is that fit's own; PRUNED on the fit after which the trial was pruned).

Output folder (default ``outputs/tune/NAME``): ``report.csv``, ``best.yaml`` (the whole experiment config with the
best values merged in, for ``mot-neuro fit --config best.yaml``: the best trial of the fold with the best inner
score), and per fold ``fold<k>/best.yaml``, ``fold<k>/trials.csv``, ``fold<k>/refit.json`` and the refit's
checkpoints. A refit whose best trial has not changed is not run again.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from mot_neuro.experiment import experiment_overrides, lightning_cli, set_overrides
from mot_neuro.experiment_cli import MotNeuroCLI
from mot_neuro.tune_space import Dimension, as_overrides, load_space, space_digest

COMMAND_TAG, STUDY_TAG, PARENT_TAG = "mot_neuro.command", "mot_neuro.study", "mlflow.parentRunId"
TRIAL_TAG, FOLD_TAG, ROLE_TAG, STATE_TAG, INNER_TAG = (
    "mot_neuro.trial",
    "mot_neuro.fold",
    "mot_neuro.tune_role",
    "mot_neuro.trial_state",
    "mot_neuro.inner_fold",
)
INNER_SCORES_ATTR = "mot_neuro.inner_scores"
LOWER_IS_BETTER = ("loss", "mae", "brier", "ece", "recon", "objective", "moe_balance")


# ---------------------------------------------------------------------------------------------- the experiment
class _ParsedExperiment(MotNeuroCLI):
    """The experiment's parser and parsed config, nothing built: no data read, no MLflow run, no seed set."""

    def _set_seed(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_experiment(config: str, extra: list[str]) -> _ParsedExperiment:
    """The experiment as ``fit`` would parse it (same parser options as :func:`mot_neuro.experiment.lightning_cli`),
    for checking keys and writing configs; a bad key or value raises jsonargparse's ``ArgumentError``."""
    from mot_neuro.data.datamodule import NeuroOmicsDataModule
    from mot_neuro.lit_module import NeuroOmicsModule

    if not Path(config).is_file():
        raise FileNotFoundError(f"experiment config {config}: no such file")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return _ParsedExperiment(
            NeuroOmicsModule,
            NeuroOmicsDataModule,
            args=["--config", config, *extra],
            run=False,
            parser_kwargs={"prog": "mot-neuro", "exit_on_error": False},
            auto_configure_optimizers=False,  # as fit: no --optimizer/--lr_scheduler keys
        )


def inner_fold_args(n_folds: int, fold: int, seed: int) -> list[str]:
    """The override that makes a fit one inner fold of its outer fold (``data.inner_fold``)."""
    return ["--data.inner_fold", json.dumps({"n_folds": n_folds, "fold": fold, "seed": seed})]


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:3])[:300] or type(err).__name__


def check_space_keys(space: list[Dimension], space_path: str, config: str, extra: list[str]) -> None:
    """Every key of ``space`` is a key of the experiment's config that takes every value the search may give it
    (both ends of a range, every choice), else one ValueError naming the key and the space file. Parses only."""
    rounds = max(len(d.samples()) for d in space)
    for round_ in range(rounds):
        values = {d.key: d.samples()[round_ % len(d.samples())] for d in space}
        try:
            parse_experiment(config, [*extra, *as_overrides(values)])
            continue
        except argparse.ArgumentError as combined:
            failure = combined
        for key, value in values.items():  # which key: each alone
            try:
                parse_experiment(config, [*extra, *as_overrides({key: value})])
            except argparse.ArgumentError as err:
                where = f"search space {space_path}: {key}"
                if "unrecognized arguments" in str(err):
                    raise ValueError(
                        f"{where}: not a key of the experiment's config (mot-neuro fit --config {config}"
                        " --print_config lists them)"
                    ) from err
                raise ValueError(f"{where}: the value {value!r} is not accepted: {_first_line(err)}") from err
        raise ValueError(f"search space {space_path}: values {values} together: {_first_line(failure)}") from failure


def _tracking_settings(config) -> dict | None:
    """The MLflow store and experiment of the experiment's ``mot_neuro.tracking.MLflowLogger``, else None."""
    from mot_neuro.tracking import resolve_tracking_uri

    logger = config.get("trainer", {}).get("logger")
    for entry in logger if isinstance(logger, list) else [logger]:
        if hasattr(entry, "get") and str(entry.get("class_path", "")) == "mot_neuro.tracking.MLflowLogger":
            init = entry.get("init_args") or {}
            return {
                "uri": resolve_tracking_uri(init.get("tracking_uri")),
                "experiment": init.get("experiment_name") or "mot-neuro",
                "artifact_location": init.get("artifact_location"),
            }
    return None


def _n_available_folds(config) -> int:
    data = config.get("data")
    return int(data.get("n_folds")) if data.get("scheme", "kfold") == "kfold" else 1


# ---------------------------------------------------------------------------------------------- trials
class BestValidationScore(Callback):
    """The best value of ``monitor`` over fit's validations (sanity checks and NaN epochs left out)."""

    def __init__(self, monitor: str, maximize: bool) -> None:
        super().__init__()
        self.monitor, self.maximize = monitor, maximize
        self.best: float | None = None
        self.logged: set[str] = set()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.logged |= {k for k in trainer.callback_metrics if k.startswith("val/")}
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value


class Tracking:
    """The MLflow parent run of a search and the tags of its children."""

    def __init__(self, settings: dict):
        from mlflow.tracking import MlflowClient

        from mot_neuro.tracking import check_tracking_server

        self.uri = settings["uri"]
        check_tracking_server(self.uri)  # a server that is down: one line now, not MLflow's minutes of retries
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(settings["experiment"])
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                settings["experiment"], artifact_location=settings["artifact_location"]
            )
        else:
            self.experiment_id = experiment.experiment_id

    def parent_run(self, name: str, config: str, settings: dict) -> str:
        """The search's parent run: the one of an earlier command on this study (resumed), else a new one."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{COMMAND_TAG}` = 'tune' and tags.`{STUDY_TAG}` = '{name}'",
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {COMMAND_TAG: "tune", STUDY_TAG: name, "mot_neuro.config": config}
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            for key, value in settings.items():
                self.client.log_param(run_id, key, value)
        return run_id

    def close_abandoned_children(self, parent_id: str) -> int:
        """Children left RUNNING by a killed process: KILLED (their trials are marked FAIL in the study)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'"
        )
        for run in runs:
            self.client.set_tag(run.info.run_id, STATE_TAG, "FAIL")
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(runs)

    @staticmethod
    def child_args(parent_id: str, run_name: str, tags: dict) -> list[str]:
        tags = {PARENT_TAG: parent_id, **{k: str(v) for k, v in tags.items()}}
        return ["--trainer.logger.init_args.tags", json.dumps(tags), "--trainer.logger.init_args.run_name", run_name]


def _run_id(cli) -> str | None:
    from mot_neuro.tracking import mlflow_loggers

    loggers = mlflow_loggers(cli.trainer) if cli is not None else []
    return loggers[0].run_id if loggers else None


@dataclass
class Search:
    """One ``mot-neuro tune`` command: the experiment, the space, and where things go."""

    config: str
    extra: list[str]
    space: list[Dimension]
    metric: str
    maximize: bool
    prune: bool
    out_dir: Path
    tracking: Tracking | None
    parent_id: str | None
    inner_folds: int = 1

    def trial_args(
        self, fold: int, params: dict, run_name: str, tags: dict, inner_fold: int | None = None
    ) -> list[str]:
        args = ["--config", self.config, *self.extra, *as_overrides(params), "--data.fold", str(fold)]
        if inner_fold is not None:  # seeded by the outer fold: every trial of a study fits the same inner folds
            args += inner_fold_args(self.inner_folds, inner_fold, seed=fold)
        if self.tracking is not None:
            args += Tracking.child_args(self.parent_id, run_name, tags)
        return args

    def objective(self, study_name: str, fold: int, trial) -> float:
        """One trial: ``fit`` on the fold's training part with the trial's values, scored on its validation part;
        with inner folds, one fit per inner fold, scored by the mean."""
        from optuna import TrialPruned

        params = {d.key: d.suggest(trial) for d in self.space}
        tags = {STUDY_TAG: study_name, TRIAL_TAG: trial.number, FOLD_TAG: fold, ROLE_TAG: "trial"}
        run_name = f"{study_name}-trial{trial.number}"
        if self.inner_folds == 1:
            return self._scored_fit(trial, self.trial_args(fold, params, run_name, tags), params, self.prune)[0]
        scores = []
        for inner in range(self.inner_folds):
            args = self.trial_args(
                fold, params, f"{run_name}-inner{inner}", {**tags, INNER_TAG: inner}, inner_fold=inner
            )
            # pruned on the running mean between inner fits: epochs of different inner folds do not compare
            score, run_id = self._scored_fit(trial, args, params, prune_epochs=False)
            if math.isnan(score):
                return score  # a failed inner fit fails the trial
            scores.append(score)
            trial.set_user_attr(INNER_SCORES_ATTR, scores)
            mean = sum(scores) / len(scores)
            trial.report(mean, step=inner)
            if inner < self.inner_folds - 1 and trial.should_prune():
                if run_id is not None:
                    self.tracking.client.set_tag(run_id, STATE_TAG, "PRUNED")
                raise TrialPruned(f"mean {self.metric} {mean:.6g} over {len(scores)} inner fold(s)")
        return mean

    def _scored_fit(self, trial, args: list[str], params: dict, prune_epochs: bool) -> tuple[float, str | None]:
        """One fit of a trial: the best validation value of ``--metric`` (NaN for a failed fit) and its MLflow run."""
        from lightning.pytorch.callbacks import ModelCheckpoint
        from optuna import TrialPruned
        from optuna_integration import PyTorchLightningPruningCallback

        from mot_neuro.epoch_metrics import NonFiniteLossError

        cli = fit_trial_cli(args)
        score = BestValidationScore(self.metric, self.maximize)
        trainer = cli.trainer
        # a trial is scored by its validation metric and never reloaded: no checkpoint files; the score comes first
        # so that a pruned epoch still counts
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)] + [score]
        if prune_epochs:
            trainer.callbacks.append(PyTorchLightningPruningCallback(trial, monitor=self.metric))
        state, run_id = "COMPLETE", None
        try:
            run_trial_fit(cli)
        except TrialPruned:
            state = "PRUNED"
            raise
        except NonFiniteLossError as err:  # a diverging configuration is a result of the search, not an error
            state = "FAIL"
            trial.set_user_attr("failure", str(err)[:500])
        except BaseException:
            state = "FAIL"
            raise
        finally:
            run_id = self._record_trial(cli, params, state)
        if state == "FAIL":
            return float("nan"), run_id
        if score.best is None:
            if self.metric not in score.logged:
                raise ValueError(
                    f"--metric {self.metric} is not logged in validation; the run logs {sorted(score.logged)}"
                )
            return float("nan"), run_id  # undefined on every epoch (e.g. r2 of a constant prediction): a failed trial
        return score.best, run_id

    def _record_trial(self, cli, params: dict, state: str | None) -> str | None:
        """The trial's values and state on its MLflow run; the run's ID (None without MLflow)."""
        run_id = _run_id(cli) if self.tracking is not None else None
        if run_id is None:
            return None
        client = self.tracking.client
        for key, value in params.items():
            client.log_param(run_id, f"trial/{key}", value)
        if state is None:
            return run_id
        client.set_tag(run_id, STATE_TAG, state)
        if state == "PRUNED":  # Lightning ended it FAILED on the exception that stops a pruned fit
            client.set_terminated(run_id, "KILLED")
        return run_id

    def refit(self, study_name: str, fold: int, best) -> dict:
        """The best trial's configuration fitted again on the fold and tested on its test part: the fold's report
        row. Reused from ``fold<k>/refit.json`` when the best trial has not changed."""
        folder = self.out_dir / f"fold{fold}"
        record_path = folder / "refit.json"
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if record.get("best_trial") == best.number and record.get("params") == best.params:
                print(f"fold {fold}: best trial {best.number} was refitted and tested before ({record_path})")
                return record
        checkpoints = folder / "checkpoints"
        shutil.rmtree(checkpoints, ignore_errors=True)  # an earlier best's files: not this configuration's
        tags = {STUDY_TAG: study_name, TRIAL_TAG: best.number, FOLD_TAG: fold, ROLE_TAG: "refit"}
        args = self.trial_args(fold, best.params, f"{study_name}-refit-trial{best.number}", tags)
        print(f"fold {fold}: fitting best trial {best.number} again and testing it", flush=True)
        cli = fit_and_test_cli(["fit", *args, "--test_after_fit", "true", "--checkpoint_dir", str(checkpoints)])
        self._record_trial(cli, best.params, None)
        test = {
            k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/") and v.numel() == 1
        }
        record = {
            "fold": fold,
            "study": study_name,
            "best_trial": best.number,
            "params": best.params,
            "inner_metric": self.metric,
            "inner_value": best.value,
            "inner_folds": self.inner_folds,
            "test": test,
            "mlflow_run": _run_id(cli),
        }
        folder.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2))
        return record


def fit_trial_cli(args: list[str]):
    """The experiment built for one trial (data, model, trainer; nothing run)."""
    return lightning_cli(args, run=False)


def run_trial_fit(cli) -> None:
    """A trial's fit: training and validation only (the fold's test part is never loaded)."""
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def fit_and_test_cli(args: list[str]):
    """``mot-neuro fit`` with its test after fit: the refit of a best configuration (the only step that tests)."""
    return lightning_cli(args)


# ---------------------------------------------------------------------------------------------- command
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mot-neuro tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="the experiment config every trial fits")
    p.add_argument("--space", required=True, help="the search space (YAML: dotted config key -> distribution)")
    p.add_argument("--n-trials", type=int, required=True, help="finished trials each fold's study should reach")
    p.add_argument("--folds", nargs="+", type=int, default=None, help="outer folds (default: the config's data.fold)")
    p.add_argument(
        "--inner-folds",
        type=int,
        default=1,
        help="1 (default): a trial is scored on the fold's validation part; K >= 2: a trial fits K inner folds of"
        " the fold's train + val rows and is scored by the mean",
    )
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    p.add_argument("--metric", default="val/loss", help="validation metric to optimise (default val/loss)")
    p.add_argument(
        "--direction",
        choices=["min", "max"],
        default=None,
        help="default: min for losses and errors (loss, mae, brier, ece, recon), max for the rest (r2, auroc, ...)",
    )
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: optuna.db beside mlflow.db)")
    p.add_argument("--study-name", default=None, help="default: the config's file name and a digest of the space")
    p.add_argument("--output", default=None, help="output folder (default: outputs/tune/<study name>)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=True, help="median pruning (default on)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every trial")
    p.add_argument(
        "--launcher",
        choices=["inline", "local", "slurm"],
        default="inline",
        help="inline: here (default); local/slurm: the whole search as one submitit job (mot_neuro.launch)",
    )
    p.add_argument("--launcher-config", default=None, help="the job's resources (configs/launcher/slurm.yaml)")
    args, unparsed = p.parse_known_args(argv)
    args.extra = [*experiment_overrides("tune", unparsed), *set_overrides(args.set)]
    return args


def main(argv: list[str]) -> int:
    import optuna

    from mot_neuro.tune_study import absolute_storage, default_storage, study_lock

    args = parse_args(argv)
    if args.launcher_config is not None and args.launcher == "inline":
        raise ValueError("--launcher-config goes with --launcher local or slurm")
    if args.n_trials < 1:
        raise ValueError(
            f"--n-trials must be at least 1 (the finished trials each study should reach), got {args.n_trials}"
        )
    if args.inner_folds < 1:
        raise ValueError(f"--inner-folds must be at least 1 (1: no inner folds), got {args.inner_folds}")
    if not args.metric.startswith("val/"):
        raise ValueError(f"--metric {args.metric}: trials are scored on validation metrics only (val/...)")
    space = load_space(args.space)
    experiment = parse_experiment(args.config, args.extra)
    if experiment.config["data"].get("inner_fold") is not None:
        raise ValueError("data.inner_fold is set by mot-neuro tune itself (--inner-folds K); leave it out")
    check_space_keys(space, args.space, args.config, args.extra)
    n_folds = _n_available_folds(experiment.config)
    folds = args.folds if args.folds is not None else [int(experiment.config["data"]["fold"])]
    wrong = [f for f in folds if not 0 <= f < n_folds]
    if wrong or len(set(folds)) != len(folds):
        raise ValueError(f"--folds {folds}: give each fold once, from 0..{n_folds - 1} (the splits have {n_folds})")
    maximize = args.direction == "max" if args.direction else not any(w in args.metric for w in LOWER_IS_BETTER)
    direction = "maximize" if maximize else "minimize"
    # inner folds change what a trial's score means; 1 is left out so that studies made before the option resume
    inner = [f"inner_folds={args.inner_folds}"] if args.inner_folds > 1 else []
    digest = space_digest(space, args.extra, args.metric, direction, *inner)
    name = args.study_name or f"{Path(args.config).stem}-{digest}"
    out_dir = Path(args.output or Path("outputs") / "tune" / name)
    settings = _tracking_settings(experiment.config)
    storage_url = absolute_storage(args.storage) if args.storage else default_storage(settings and settings["uri"])

    if args.launcher != "inline":
        return _submit(argv, args, name, out_dir)

    optuna.logging.set_verbosity(optuna.logging.INFO)
    storage = optuna.storages.RDBStorage(storage_url)
    with study_lock(storage_url, name, out_dir):
        tracking = Tracking(settings) if settings is not None else None
        parent = None
        if tracking is not None:
            parent = tracking.parent_run(
                name,
                args.config,
                {
                    "space_digest": digest,
                    "metric": args.metric,
                    "direction": direction,
                    "inner_folds": args.inner_folds,
                },
            )
            tracking.client.set_tag(parent, "mot_neuro.n_trials", str(args.n_trials))
            tracking.client.log_artifact(parent, args.space)
            closed = tracking.close_abandoned_children(parent)
            if closed:
                print(f"{closed} MLflow run(s) left RUNNING by a killed tune marked KILLED")
        search = Search(
            args.config,
            args.extra,
            space,
            args.metric,
            maximize,
            args.prune,
            out_dir,
            tracking,
            parent,
            args.inner_folds,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        inner_note = f", {args.inner_folds} inner folds per trial" if args.inner_folds > 1 else ""
        print(
            f"tune {name!r}: {len(space)} key(s), {args.n_trials} trial(s) per fold{inner_note}, folds {folds};"
            f" {storage_url}"
        )
        records, ok = [], True
        try:
            for fold in folds:
                record, reached = _search_fold(search, storage, f"{name}-fold{fold}", fold, args, direction, digest)
                records.append(record)
                ok = ok and reached
        except BaseException:
            if tracking is not None:
                tracking.client.set_terminated(parent, "FAILED")
            raise
        paths = write_report(records, search, experiment_args=(args.config, args.extra), maximize=maximize)
        if tracking is not None:
            for path in paths:  # fold<k>/best.yaml under fold<k>/: the names repeat
                folder = path.parent.relative_to(out_dir).as_posix()
                tracking.client.log_artifact(parent, str(path), None if folder == "." else folder)
            tracking.client.set_terminated(parent, "FINISHED")
    print_report(records, args.metric, paths, parent, tracking, args.inner_folds)
    return 0 if ok else 1


@dataclass(frozen=True)
class TuneJob:
    """The whole search as one launcher job (plain data, picklable): ``mot-neuro tune`` with the same arguments,
    run inline in the job. After a preemption or time-out the job runs it again, which resumes the studies (the
    interrupted trial is marked failed and run anew)."""

    argv: tuple[str, ...]

    def __call__(self) -> int:
        status = main(list(self.argv))
        if status != 0:
            raise RuntimeError(f"mot-neuro tune ended with exit status {status}; see the job's log")
        return status

    def resumed(self) -> TuneJob:
        return self


def _without_launcher(argv: list[str]) -> list[str]:
    """``argv`` less ``--launcher X`` and ``--launcher-config Y`` (also written ``--option=value``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--launcher", "--launcher-config"):
            skip = True
        elif not arg.startswith(("--launcher=", "--launcher-config=")):
            out.append(arg)
    return out


def _submit(argv: list[str], args, name: str, out_dir: Path) -> int:
    """``--launcher local|slurm``: the search runs as one submitit job; this process waits and reports."""
    from mot_neuro.launch import launch, read_launcher_config

    config = read_launcher_config(args.launcher, args.launcher_config)
    job = TuneJob(tuple(_without_launcher(argv)))
    (outcome,) = launch([(f"tune-{name}", job)], config, out_dir / "jobs")
    if not outcome.ok:
        print(f"tune {name!r} failed in job {outcome.job_id}: {outcome.error} (log {outcome.stderr})", file=sys.stderr)
        return 1
    print(f"tune {name!r} finished in job {outcome.job_id}; report in {out_dir} (log {outcome.stderr})")
    return 0


def _search_fold(search: Search, storage, study_name: str, fold: int, args, direction: str, digest: str):
    """One outer fold: its study resumed up to ``--n-trials`` finished trials, then its best trial refitted and
    tested. Returns the fold's report record and whether the study reached ``--n-trials``."""
    from mot_neuro.tune_study import fail_abandoned_trials, open_study

    study = open_study(storage, study_name, direction, digest, args.sampler, args.seed, args.prune)
    abandoned = fail_abandoned_trials(storage, study_name)
    if abandoned:
        print(f"study {study_name}: trial(s) {abandoned} left RUNNING by a killed process marked FAIL")
    finished = _count(study, "COMPLETE", "PRUNED")
    remaining = args.n_trials - finished
    print(f"study {study_name}: {finished} finished trial(s), {max(remaining, 0)} to run", flush=True)
    if remaining > 0:
        study.optimize(lambda trial: search.objective(study_name, fold, trial), n_trials=remaining, gc_after_trial=True)
    folder = search.out_dir / f"fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
    reached = _count(study, "COMPLETE", "PRUNED") >= args.n_trials
    if not reached:
        print(
            f"study {study_name}: some trials failed (see {folder / 'trials.csv'}); re-run the same command to reach"
            " --n-trials",
            file=sys.stderr,
        )
    if _count(study, "COMPLETE") == 0:
        raise ValueError(
            f"study {study_name}: no trial completed (all pruned or failed); nothing to refit. Re-run with more"
            " --n-trials, --no-prune, or a narrower space"
        )
    record = search.refit(study_name, fold, study.best_trial)
    record.update(
        n_complete=_count(study, "COMPLETE"), n_pruned=_count(study, "PRUNED"), n_failed=_count(study, "FAIL")
    )
    return record, reached


def _count(study, *states: str) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in states)))


# ---------------------------------------------------------------------------------------------- report
def best_config_text(config: str, extra: list[str], record: dict) -> str:
    """The whole experiment config with the best values (and the fold) merged in, as ``fit --config`` reads it."""
    overrides = [*extra, *as_overrides(record["params"]), "--data.fold", str(record["fold"])]
    parsed = parse_experiment(config, overrides)
    header = (
        f"# mot-neuro tune: best configuration of study {record['study']} (trial {record['best_trial']},"
        f" {record['inner_metric']} {record['inner_value']:.6g} {_inner_where(record)}),\n"
        f"# from {config} with {json.dumps(record['params'])}.\n"
        "# Its test estimate is in report.csv. Run: mot-neuro fit --config best.yaml\n"
    )
    return header + parsed.parser.dump(parsed.config)


def _inner_where(record: dict) -> str:
    """Where a record's inner score was measured."""
    k = record.get("inner_folds", 1)
    if k > 1:
        return f"mean over {k} inner folds of fold {record['fold']}'s train + val rows"
    return f"on fold {record['fold']}'s validation part"


def write_report(records: list[dict], search: Search, experiment_args, maximize: bool) -> list[Path]:
    """``report.csv`` (a row per fold: inner score of the best trial, outer test scores, best values), per fold
    ``fold<k>/best.yaml``, and ``best.yaml``: the fold's whose inner score is best (no test score chooses it)."""
    import pandas as pd

    config, extra = experiment_args
    rows = []
    for record in records:
        row = {
            "fold": record["fold"],
            "study": record["study"],
            "best_trial": record["best_trial"],
            "n_complete": record.get("n_complete"),
            "n_pruned": record.get("n_pruned"),
            "n_failed": record.get("n_failed"),
            "inner_metric": record["inner_metric"],
            "inner_value": record["inner_value"],
            "inner_folds": record.get("inner_folds", 1),
        }
        row.update({f"outer_{k}": v for k, v in sorted(record["test"].items())})
        row.update({f"param_{k}": v for k, v in record["params"].items()})
        rows.append(row)
    report = search.out_dir / "report.csv"
    pd.DataFrame(rows).to_csv(report, index=False)
    paths = [report]
    for record in records:
        path = search.out_dir / f"fold{record['fold']}" / "best.yaml"
        path.write_text(best_config_text(config, extra, record))
        paths.append(path)
    chosen = (max if maximize else min)(records, key=lambda r: r["inner_value"])
    best = search.out_dir / "best.yaml"
    shutil.copyfile(search.out_dir / f"fold{chosen['fold']}" / "best.yaml", best)
    return [*paths, best]


def _shown_test_metrics(records: list[dict], metric: str) -> list[str]:
    """The test twin of the searched metric and the first target's r2 or AUROC, when logged."""
    names = sorted({k for r in records for k in r["test"]})
    shown = [n for n in ["test/" + metric[len("val/") :]] if n in names]
    for suffix in ("/r2", "/auroc", "/accuracy"):
        found = [n for n in names if n.endswith(suffix)]
        if found:
            shown.append(found[0])
            break
    return list(dict.fromkeys(shown))


def print_report(
    records: list[dict], metric: str, paths: list[Path], parent: str | None, tracking, inner_folds: int = 1
) -> None:
    from mot_neuro.tracking import format_number

    tests = _shown_test_metrics(records, metric)
    where = (
        f"inner score: mean validation {metric} over {inner_folds} inner folds of the fold's train + val rows"
        if inner_folds > 1
        else f"inner score: {metric} on the fold's validation part"
    )
    print(
        f"\ntune: per outer fold, the inner score that chose the configuration (best trial; {where}) and the outer"
        " test score of that configuration refitted (the honest estimate)"
    )
    header = f"{'fold':>4}  {'best trial':>10}  {'inner ' + metric:>20}" + "".join(
        f"  {'outer ' + t:>24}" for t in tests
    )
    print(header + "  values")
    for r in records:
        outer = "".join(f"  {format_number(r['test'].get(t, math.nan)):>24}" for t in tests)
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['fold']:>4}  {r['best_trial']:>10}  {format_number(r['inner_value']):>20}{outer}  {values}")
    for t in tests:
        values = [r["test"][t] for r in records if t in r["test"]]
        if len(values) > 1:
            print(f"  outer {t}: mean {format_number(sum(values) / len(values))} over {len(values)} folds")
    if parent is not None:
        print(f"\nMLflow parent run {parent} in {tracking.uri}")
    for path in paths:
        print(f"  {path}")
