"""The experiment as every command builds it: Lightning's CLI with mot-neuro's model and data, and the overrides.

* :func:`lightning_cli`: ``fit | validate | test | predict`` run through it; the tools (``ablate``, ``embed``,
  ``probe``) build it with ``run=False`` for the experiment's DataModule, model and trainer.
* :func:`experiment_overrides`, :func:`set_overrides`, :data:`EXPERIMENT_HELP`: the ``--data``/``--model``/
  ``--trainer`` and ``--set KEY=VALUE`` options the tools pass through, with the meaning they have in ``fit``.
* :func:`checkpoint_model_settings`: a checkpoint's model settings, to build the model it was trained as.
* :func:`write_test_predictions`: ``--predictions_file`` of ``fit`` (after its test) and ``test``.

This module imports none of the commands (``mot_neuro.cli``, ``.ablate``, ``.embed``, ``.probe``), so each of
them can import it; torch and Lightning are imported only when a function here is called.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def lightning_cli(args: list[str] | None, run: bool = True, model_checkpoint: str | None = None):
    """Lightning's CLI with mot-neuro's model, data, MLflow config saving and data -> model links.

    ``model_checkpoint`` (with ``run=False``): the model's settings come from that checkpoint's hyper_parameters,
    as Lightning does for ``test --ckpt_path``; the data, trainer and seed still come from ``args``."""
    from lightning.pytorch.cli import LightningCLI

    from mot_neuro.data.datamodule import NeuroOmicsDataModule
    from mot_neuro.lit_module import NeuroOmicsModule
    from mot_neuro.tracking import MLflowSaveConfig

    class MotNeuroCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # sizes from the data reach the model at instantiation, never copied by hand
            parser.link_arguments("data.model_inputs", "model.data_spec", apply_on="instantiate")
            # every command (and the tools' run=False parse) accepts what an experiment file for fit may hold:
            # one experiment file serves fit, test, embed, probe and ablate; only fit acts on these
            parser.add_argument(
                "--test_after_fit",
                type=bool,
                default=True,
                help="fit: after fit, evaluate the best checkpoint (else the last weights) on the test set",
            )
            parser.add_argument(
                "--checkpoint_dir",
                type=str | None,
                default=None,
                help="fit: folder for this run's checkpoints instead of the trainer config's (one per ablation cell)",
            )
            parser.add_argument(
                "--predictions_file",
                type=str | None,
                default=None,
                help="fit (after its test) and test: write the test set's predictions to this parquet file (columns"
                " row: the subject's position in the cohort, target, kind, truth, score, score_<k> for multiclass)",
            )
            parser.add_argument(
                "--checkpoint_every_n_steps",
                type=int,
                default=0,
                help="fit: also save last-step.ckpt every N training steps (0: off), so that a run killed mid-epoch"
                " resumes from there with --ckpt_path last instead of from the last epoch's end",
            )

        def _parse_ckpt_path(self) -> None:
            if model_checkpoint is None:
                super()._parse_ckpt_path()  # fit/test/...: Lightning reads --ckpt_path's hyper_parameters
                return
            # a tool (embed) has no subcommand, so Lightning would build the config's model and then fail to load
            # another variant's weights: take the model's settings from the checkpoint, as test --ckpt_path does
            hparams = checkpoint_model_settings(model_checkpoint)
            if not hparams:
                return
            configured = self.config.get("model")
            differ = [
                key
                for key, value in hparams.items()
                if key not in _TRAINING_ONLY_SETTINGS and configured is not None and configured.get(key) != value
            ]
            if differ:
                print(
                    f"note: the model is built from the checkpoint's settings ({', '.join(sorted(differ))} differ"
                    " from the config's)",
                    file=sys.stderr,
                )
            self.config = self.parser.parse_object({"model": hparams}, self.config)

        def _add_subcommands(self, parser, **kwargs) -> None:
            super()._add_subcommands(parser, **kwargs)
            for name in LIGHTNING_COMMANDS:
                # checkpoints hold tensors and plain data only: load them without running pickled code
                parser._subcommands_action._name_parser_map[name].set_defaults(weights_only=True)
            test = parser._subcommands_action._name_parser_map["test"]
            test.add_argument(
                "--mask_at_test",
                type=list[str],
                default=[],
                help="modalities whose tokens are hidden at test time (a cheap complement to leave-one-out)",
            )

        def _instantiate_trainer(self, config, callbacks):
            from lightning.pytorch.callbacks import ProgressBar

            if config.get("enable_progress_bar") is False and config.get("callbacks"):
                # the trainer configs list a RichProgressBar; turning bars off (batch jobs) should just work
                listed = config["callbacks"] if isinstance(config["callbacks"], list) else [config["callbacks"]]
                config["callbacks"] = [c for c in listed if not isinstance(c, ProgressBar)]
            from mot_neuro.checkpoint_io import with_atomic_checkpoint_io

            # every checkpoint written to a temporary file in its own folder, fsynced and renamed
            config["plugins"] = with_atomic_checkpoint_io(config.get("plugins"))
            return super()._instantiate_trainer(config, callbacks)

        def _require_checkpoint(self) -> None:
            # without --ckpt_path Lightning evaluates the freshly initialised model, logged as an ordinary run;
            # a fast_dev_run is a smoke test whose numbers mean nothing anyway, and a warm start brings weights
            config = self.config[self.subcommand]
            if config.get("ckpt_path") is None and not self.trainer.fast_dev_run:
                if not getattr(self.model.hparams, "warm_start_from", None):
                    raise ValueError(
                        f"{self.subcommand} needs --ckpt_path (a checkpoint written by mot-neuro fit, or last/best):"
                        " without one it would evaluate an untrained model"
                    )

        def before_validate(self) -> None:
            self._require_checkpoint()

        def before_predict(self) -> None:
            self._require_checkpoint()

        def before_test(self) -> None:
            self._require_checkpoint()
            self.model.mask_at_test = self.config[self.subcommand].get("mask_at_test") or ()
            self._collect_predictions()

        def after_test(self) -> None:
            self._write_predictions()

        def _collect_predictions(self) -> None:
            self.model.collect_test_predictions = bool(self.config[self.subcommand].get("predictions_file"))

        def _write_predictions(self) -> None:
            path = self.config[self.subcommand].get("predictions_file")
            if path and self.trainer.global_rank == 0 and not self.trainer.interrupted:
                write_test_predictions(self.model, path)

        def before_fit(self) -> None:
            from lightning.pytorch.callbacks import ModelCheckpoint

            from mot_neuro.resume import SaveOnSigterm

            config = self.config[self.subcommand]
            self._collect_predictions()
            if config.get("predictions_file") and not config.get("test_after_fit", True):
                raise ValueError(
                    "--predictions_file holds the predictions of the test after fit, and --test_after_fit is false:"
                    " drop one of them (or write them later with mot-neuro test --ckpt_path ... --predictions_file)"
                )
            folder = config.get("checkpoint_dir")
            checkpoint = self.trainer.checkpoint_callback
            if folder and checkpoint is not None:
                checkpoint.dirpath = folder
            if checkpoint is not None:
                self.trainer.callbacks.append(SaveOnSigterm(checkpoint))
            every = config.get("checkpoint_every_n_steps") or 0
            if every < 0:
                raise ValueError(f"--checkpoint_every_n_steps must be >= 0, got {every}")
            if every:
                if checkpoint is None:
                    raise ValueError("--checkpoint_every_n_steps needs a ModelCheckpoint callback (it saves beside it)")
                # a file name of its own (matched by --ckpt_path last, which takes the newest last*.ckpt), so
                # the epoch-end last.ckpt and this one never version each other into last-v1.ckpt
                steps = ModelCheckpoint(
                    dirpath=checkpoint.dirpath, every_n_train_steps=every, save_top_k=0, save_last=True
                )
                steps.CHECKPOINT_NAME_LAST = "last-step"
                self.trainer.callbacks.append(steps)

        def after_fit(self) -> None:
            if not self.config[self.subcommand].get("test_after_fit", True) or self.trainer.interrupted:
                return
            if self.trainer.fast_dev_run:
                self.trainer.test(self.model, datamodule=self.datamodule)
            else:
                checkpoint = self.trainer.checkpoint_callback
                best = checkpoint.best_model_path if checkpoint is not None else ""
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
            self._write_predictions()

    with warnings.catch_warnings():
        # our tools (ablate, embed, probe) pass their own args while sys.argv holds the tool's: intended
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return MotNeuroCLI(
            NeuroOmicsModule,
            NeuroOmicsDataModule,
            save_config_callback=MLflowSaveConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            # parse errors raise (main prints one line) instead of printing the whole usage and exiting
            parser_kwargs={"prog": "mot-neuro", "exit_on_error": False},
        )


PREDICTION_COLUMNS = ("row", "target", "kind", "truth", "score")
"""Columns of ``--predictions_file`` (then ``score_0`` .. ``score_{K-1}`` when a target is multiclass)."""


def write_test_predictions(model, path: str | os.PathLike) -> Path | None:
    """Write the module's last test predictions (:meth:`NeuroOmicsModule.test_predictions_table`) to ``path`` as
    parquet, atomically (a temporary file beside it, then renamed): readers see the previous file or the whole new
    one. One row per (subject, target) with an observed target: ``row`` (the subject's position in the cohort,
    never its ID), ``target``, ``kind``, ``truth`` (binary 0/1, multiclass class index, regression in the target's
    units), ``score`` (binary: P(class 1); regression: the prediction in the target's units; multiclass: NaN) and
    ``score_<k>`` (multiclass class probabilities). Returns the path, or None when there was nothing to write."""
    import io

    from data_adapters.core import AdapterError, atomic_write_bytes, storage_problem

    table = model.test_predictions_table()
    if table is None:
        print(f"note: no test predictions to write to {path} (the model has no supervised target)", file=sys.stderr)
        return None
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        folder = Path(path).parent
        fix = "point --predictions_file at a writable folder with space"
        raise AdapterError(storage_problem(err, folder, f"writing {Path(path).name}", fix), file=folder) from err
    print(f"test predictions ({table['row'].nunique()} subjects, {len(table)} rows) written to {path}")
    return Path(path)


def set_overrides(items: list[str]) -> list[str]:
    """``["trainer.max_epochs=5"]`` -> ``["--trainer.max_epochs", "5"]`` (the ``--set`` option of the tools)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE (e.g. trainer.max_epochs=10), got {item!r}")
        out += [f"--{key.strip().lstrip('-')}", value]
    return out


EXPERIMENT_OPTIONS = ("data", "model", "trainer", "seed_everything")
"""Option groups the tools (embed, probe) pass to the experiment's parser, with the meaning they have in fit."""
EXPERIMENT_HELP = (
    "Experiment overrides, as in mot-neuro fit: --data FILE, --model FILE, --trainer FILE (a config of that part)"
    " or --data.KEY VALUE, --model.KEY VALUE, --trainer.KEY VALUE, --seed_everything N; and --set KEY=VALUE."
)


def experiment_overrides(command: str, unparsed: list[str]) -> list[str]:
    """What ``parse_known_args`` left of a tool's arguments, checked to be experiment overrides (in their order).

    Passed through unchanged, they mean in ``embed`` and ``probe`` what they mean in ``fit``: the same parser
    reads them. Anything else is refused naming the option, instead of being silently ignored."""
    for position, token in enumerate(unparsed):
        if token.startswith("--"):
            root = token[2:].partition("=")[0].split(".")[0]
            if root not in EXPERIMENT_OPTIONS:
                raise ValueError(
                    f"unrecognized option {token.partition('=')[0]!r}; mot-neuro {command} --help lists its own"
                    f" options, and it takes experiment overrides --data, --model, --trainer (a file, or"
                    f" --data.KEY VALUE), --seed_everything, --set KEY=VALUE"
                )
        elif position == 0:
            raise ValueError(f"unexpected argument {token!r} (mot-neuro {command} takes options only; see --help)")
    return list(unparsed)


# settings that only act when a model is built for training: the checkpoint's weights replace what they do, and
# a warm start would reload a source checkpoint that may no longer exist
_TRAINING_ONLY_SETTINGS = {"warm_start_from": None, "freeze_towers": [], "reinit_towers": [], "compile": False}


def checkpoint_model_settings(path: str) -> dict:
    """The model's constructor settings saved in a checkpoint (``hyper_parameters``), for building that model.

    Empty when the checkpoint has none (then the config's model is built and must match). Only keys the model
    accepts are kept, so a checkpoint of an older version with a removed setting still loads."""
    import inspect

    import torch

    from mot_neuro.lit_module import NeuroOmicsModule

    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    hparams = dict(saved.get("hyper_parameters") or {}) if isinstance(saved, dict) else {}
    accepted = set(inspect.signature(NeuroOmicsModule.__init__).parameters) - {"self", "data_spec"}
    settings = {key: value for key, value in hparams.items() if key in accepted}  # data_spec: linked from the data
    if settings:
        settings.update(_TRAINING_ONLY_SETTINGS)
    return settings
