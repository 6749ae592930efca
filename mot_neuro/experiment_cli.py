"""Lightning's CLI as every mot-neuro command builds it (:class:`MotNeuroCLI`, through
:func:`mot_neuro.experiment.lightning_cli`), and the model settings a checkpoint holds
(:func:`checkpoint_model_settings`), with which ``test``, ``embed`` and a resumed ``fit`` build the model it was
trained as."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from mot_neuro.data.datamodule import NeuroOmicsDataModule
from mot_neuro.lit_module import NeuroOmicsModule
from mot_neuro.predictions_file import write_test_predictions
from mot_neuro.tracking import MLflowSaveConfig

# settings that only act when a model is built for training: the checkpoint's weights replace what they do, and
# a warm start would reload a source checkpoint that may no longer exist
_TRAINING_ONLY_SETTINGS = {"warm_start_from": None, "freeze_towers": [], "reinit_towers": [], "compile": False}


def _plain(value):
    """A parsed config section (jsonargparse Namespace) as plain dicts, for comparing with a checkpoint's."""
    if value is None:
        return None
    return value.as_dict() if hasattr(value, "as_dict") else dict(value)


def _differing_keys(saved: dict, configured: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings whose values differ (``encoder.untie``), going into nested groups."""
    differ = []
    for key, value in saved.items():
        other = configured.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            differ += _differing_keys(value, other, f"{prefix}{key}.")
        elif other != value:
            differ.append(prefix + key)
    return differ


def checkpoint_model_settings(path: str, training: bool = False) -> dict:
    """The model's constructor settings saved in a checkpoint (``hyper_parameters``), for building that model.

    Empty when the checkpoint has none (then the config's model is built and must match). Settings of older
    versions are read in today's form (:func:`mot_neuro.lit_module.checkpoint_settings`), and only those the model
    accepts are kept, so a checkpoint with a removed setting still loads. Unless ``training`` (fit resuming from
    the checkpoint), the settings that only act when training starts are reset."""
    import inspect

    import torch

    from mot_neuro.module_settings import checkpoint_settings

    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    hparams = checkpoint_settings(saved.get("hyper_parameters") or {}) if isinstance(saved, dict) else {}
    accepted = set(inspect.signature(NeuroOmicsModule.__init__).parameters) - {"self", "data_spec"}
    settings = {key: value for key, value in hparams.items() if key in accepted}  # data_spec: linked from the data
    if settings and not training:
        settings.update(_TRAINING_ONLY_SETTINGS)
    return settings


class MotNeuroCLI(LightningCLI):
    """LightningCLI with the data -> model link, the options every command accepts from an experiment file, models
    built from a checkpoint's settings, atomic checkpoints, and the test/predictions hooks of ``fit`` and ``test``.

    ``model_checkpoint`` (a tool's ``run=False`` parse, e.g. embed): build the model from that checkpoint's
    settings, as ``test --ckpt_path`` does."""

    def __init__(self, *args, model_checkpoint: str | None = None, **kwargs) -> None:
        self.model_checkpoint = model_checkpoint
        super().__init__(*args, **kwargs)

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
        # fit/test/... --ckpt_path: the model is built from the checkpoint's settings, as Lightning does, read
        # through checkpoint_model_settings so that checkpoints of older versions load too; a tool (embed) has
        # no subcommand, so Lightning would build the config's model and then fail to load another variant's
        # weights: take the model's settings from the checkpoint there as well
        subcommand = self.config.get("subcommand")
        path = self.model_checkpoint
        if subcommand:
            path = self.config[subcommand].get("ckpt_path")
            if not (path and Path(path).is_file()):
                return
        if path is None:
            return
        hparams = checkpoint_model_settings(path, training=subcommand == "fit")
        if not hparams:
            return
        section = self.config[subcommand] if subcommand else self.config
        configured = _plain(section.get("model"))
        saved = {key: value for key, value in hparams.items() if key not in _TRAINING_ONLY_SETTINGS}
        differ = _differing_keys(saved, configured) if configured is not None else []
        if differ and not subcommand:
            print(
                f"note: the model is built from the checkpoint's settings ({', '.join(sorted(differ))} differ"
                " from the config's)",
                file=sys.stderr,
            )
        update = {"model": hparams}
        self.config = self.parser.parse_object({subcommand: update} if subcommand else update, self.config)

    def _add_subcommands(self, parser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name in self.subcommands():
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
            steps = ModelCheckpoint(dirpath=checkpoint.dirpath, every_n_train_steps=every, save_top_k=0, save_last=True)
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


def build_cli(args: list[str] | None, run: bool = True, model_checkpoint: str | None = None) -> MotNeuroCLI:
    """:class:`MotNeuroCLI` over ``args`` (see :func:`mot_neuro.experiment.lightning_cli`)."""
    with warnings.catch_warnings():
        # our tools (ablate, embed, probe) pass their own args while sys.argv holds the tool's: intended
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return MotNeuroCLI(
            NeuroOmicsModule,
            NeuroOmicsDataModule,
            model_checkpoint=model_checkpoint,
            save_config_callback=MLflowSaveConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            # parse errors raise (main prints one line) instead of printing the whole usage and exiting
            parser_kwargs={"prog": "mot-neuro", "exit_on_error": False},
            # the optimiser and its schedule are model.optimizer; Lightning's own --optimizer would silently replace
            # them (and the no-decay groups), so it is not offered
            auto_configure_optimizers=False,
        )
