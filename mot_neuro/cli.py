"""``mot-neuro`` command line.

* ``fit | validate | test | predict``: Lightning's CLI (``mot-neuro fit --config configs/experiments/demo.yaml``,
  ``--print_config`` to see the resolved config). The DataModule's ``model_inputs`` (tokens and features
  per modality, target kinds) are linked into the model, never copied by hand between config files.
* ``ablate``: dense vs MoT variants and leave-one-modality-out over seeds and folds (``mot_neuro.ablate``).
* ``embed``: per-subject embeddings of a checkpoint to parquet, streamed and merged by subject ID; the model's
  settings come from the checkpoint (as for ``test --ckpt_path``).
* ``probe``: scikit-learn probes on subject embeddings vs early fusion of raw features (``mot_neuro.probe``).

Every command takes the same experiment file (keys only ``fit`` acts on, such as ``checkpoint_every_n_steps``,
are accepted and ignored elsewhere), and ``embed`` and ``probe`` take ``--data``/``--model``/``--trainer``
overrides with the meaning they have in ``fit``.

``fit`` (after its test) and ``test`` take ``--predictions_file PATH``: the test set's predictions, one parquet row
per subject and observed target (see :func:`write_test_predictions`), for per-subject statistics such as
DeLong's test between two models.
* ``describe``: build a MoT backbone and its dense twin for a token layout and print parameter
  counts and training FLOPs per token (measured with torch's FlopCounterMode).

Bad input (a missing file, an unknown modality, a target that is not in participants) ends with one
line naming what to fix and exit status 2; ``MOT_NEURO_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import warnings
from pathlib import Path

from mot_neuro.model import PARTS, ModalityLayout, MoTBackbone, MoTConfig, count_parameters, training_flops


def _layout_arg(text: str) -> tuple[str, int]:
    name, sep, count = text.partition("=")
    if not sep or not count.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=TOKENS (e.g. gene=128), got {text!r}")
    return name.strip(), int(count)


def _describe(args: argparse.Namespace) -> int:
    layout = ModalityLayout.from_counts(dict(args.modalities))
    untie = () if args.untie == ["none"] else args.untie
    cfg = MoTConfig(
        layout.names,
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        untie=untie,
        norm_placement=args.norm_placement,
        qk_norm=args.qk_norm,
    )
    rows = []
    for config in (cfg.dense(), cfg):
        name = "dense" if config.is_dense else "mot"
        model = MoTBackbone(config)
        params = count_parameters(model)
        flops = training_flops(model, layout, batch_size=1)
        rows.append(
            {
                "variant": name,
                "untie": list(config.untie),
                "params_total": params["total"],
                "params_per_token": params["per_modality"],
                "training_flops_per_token": flops["training_per_token"],
            }
        )
    if args.json:
        print(json.dumps({"layout": layout.as_dict(), "variants": rows}))
        return 0
    print(f"layout: {' | '.join(f'{n}={c}' for n, c in layout.as_dict().items())} ({layout.seq_len} tokens)")
    print(
        f"dim={cfg.dim} layers={cfg.n_layers} heads={cfg.n_heads} ffn_hidden={cfg.ffn_hidden_dim} "
        f"norm={cfg.norm_placement} qk_norm={cfg.qk_norm}"
    )
    print(f"{'variant':<18}{'untied':<26}{'params':>12}{'params used/token':>20}{'train MFLOP/token':>20}")
    for row in rows:
        used = max(row["params_per_token"].values())
        print(
            f"{row['variant']:<18}{','.join(row['untie']) or '-':<26}{row['params_total']:>12,}{used:>20,}"
            f"{row['training_flops_per_token'] / 1e6:>20.2f}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mot-neuro",
        description="Mixture-of-Transformers for neuro-omics. Training: mot-neuro fit|validate|test|predict --help",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    describe = sub.add_parser("describe", help="parameters and FLOPs of MoT vs dense for a token layout")
    describe.add_argument(
        "--modalities",
        type=_layout_arg,
        nargs="+",
        default=[("gene", 128), ("brain", 192), ("behaviour", 64)],
        metavar="NAME=TOKENS",
        help="modalities in sequence order with their token counts (default: gene=128 brain=192 behaviour=64)",
    )
    describe.add_argument("--dim", type=int, default=256)
    describe.add_argument("--layers", type=int, default=4)
    describe.add_argument("--heads", type=int, default=8)
    describe.add_argument(
        "--untie",
        nargs="+",
        default=list(PARTS),
        choices=[*PARTS, "none"],
        help="parts with one parameter set per modality ('none' = dense)",
    )
    describe.add_argument("--norm-placement", choices=["pre", "output"], default="pre")
    describe.add_argument("--qk-norm", action="store_true")
    describe.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    describe.set_defaults(func=_describe)
    return parser


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# commands with their own argument parser: name -> module with main(argv) -> exit status
TOOL_COMMANDS = {
    "ablate": "mot_neuro.ablate:main",
    "probe": "mot_neuro.probe:main",
    "embed": "mot_neuro.cli:embed_main",
}


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


def _variant(untie) -> str:
    return "mot" if untie else "dense"


def _state_dict_mismatch(checkpoint: str, settings: dict, model, err: RuntimeError) -> ValueError:
    """One line for weights that do not fit the model built from the config (a checkpoint without settings)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    built = f"{_variant(model.hparams.untie)} (untie {list(model.hparams.untie)}, dim {model.hparams.dim})"
    saved = (
        f"{_variant(settings.get('untie'))} (untie {list(settings.get('untie') or [])}, dim {settings.get('dim')})"
        if settings
        else "unknown (it saves no hyper_parameters)"
    )
    return ValueError(
        f"{checkpoint}: its weights do not fit the model of the config: checkpoint's model {saved}, config's model"
        f" {built} ({first[:120]}); pass --model with the config the checkpoint was trained with"
    )


def embed_main(argv: list[str]) -> int:
    """``mot-neuro embed``: per-subject embeddings of a checkpoint to parquet (see ``mot_neuro.embed``)."""
    parser = argparse.ArgumentParser(
        prog="mot-neuro embed",
        description="Write one parquet row per subject: eid, split, fold, the pooled embedding and one per modality."
        " The model's settings (dense or MoT, sizes) come from the checkpoint; the data from the experiment.",
        epilog=EXPERIMENT_HELP,
        allow_abbrev=False,  # an abbreviation must not swallow an experiment override such as --data
    )
    parser.add_argument("--config", required=True, help="the experiment config the checkpoint was trained with")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint to embed with")
    parser.add_argument("--output", default="outputs/embeddings.parquet")
    parser.add_argument("--layer", type=int, default=None, help="encoder block (0-based, -1 = last); default: output")
    parser.add_argument("--split", choices=["all", "train", "val", "test"], default="all", help="subjects to embed")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    args, unparsed = parser.parse_known_args(argv)
    overrides = experiment_overrides("embed", unparsed)
    if not Path(args.ckpt_path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.ckpt_path}")
    from mot_neuro.embed import EmbeddingWriter

    settings = checkpoint_model_settings(args.ckpt_path)
    # every subject of the split, always: a smoke trainer (fast_dev_run, limit_predict_batches) would write a
    # partial file that probes and analyses then take for the cohort
    whole = ["--trainer.fast_dev_run", "false", "--trainer.limit_predict_batches", "1.0"]
    overrides = [*overrides, *set_overrides(args.set), "--data.predict_split", args.split, "--trainer.logger", "false"]
    overrides += whole
    cli = lightning_cli(["--config", args.config, *overrides], run=False, model_checkpoint=args.ckpt_path)
    writer = EmbeddingWriter(args.output, layer=args.layer, metadata={"config": args.config})
    cli.trainer.callbacks.append(writer)
    with warnings.catch_warnings():
        # whole batches come from the dataset (batch_size=None), so Lightning cannot list indices: not needed
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
        try:
            cli.trainer.predict(
                cli.model,
                datamodule=cli.datamodule,
                ckpt_path=args.ckpt_path,
                return_predictions=False,
                weights_only=True,
            )
        except RuntimeError as err:
            if "state_dict" not in str(err):
                raise
            raise _state_dict_mismatch(args.ckpt_path, settings, cli.model, err) from err
    if cli.trainer.global_rank == 0:
        print(
            f"embeddings of {writer.rows_written} subjects (rank 0) written to {args.output}"
            f" ({_variant(cli.model.hparams.untie)} model of the checkpoint)"
        )
    return 0


def _error_line(command: str, err: BaseException) -> str:
    """One line for stderr: jsonargparse and some libraries put newlines and indentation in their messages."""
    from data_adapters.core import AdapterError

    cause = err
    while cause is not None and not isinstance(cause, AdapterError):
        cause = cause.__cause__
    # jsonargparse wraps an error raised while a class is built ("Does not validate against any of the Union
    # subtypes ... Given value: Namespace(...)"): the AdapterError inside names the file or folder
    err = cause if cause is not None else err
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        # raised in a DataLoader worker: torch re-raises it with the worker's traceback as its message, whose
        # last line is "<ExceptionClass>: <the message>"
        lines = [lines[-1].partition(": ")[2] or lines[-1]]
    text = " ".join(lines) or type(err).__name__
    if len(text) > 800:
        text = text[:800] + " ..."
    return f"mot-neuro {command}: error: {text}"


def _unreadable_checkpoint(argv: list[str]) -> str | None:
    """The ``--ckpt_path`` of ``argv`` when it is a local file that cannot be a checkpoint, else None.

    torch.save writes a zip archive; for a truncated file or another format torch raises an error that names
    no file (or, with weights_only, one saying the file holds Python objects), so it is caught up front."""
    import zipfile

    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--ckpt_path" and i + 1 < len(argv) else None
        if arg.startswith("--ckpt_path="):
            value = arg.partition("=")[2]
        if value and Path(value).is_file() and not zipfile.is_zipfile(value):
            return value
    return None


def _refuse_unreadable_checkpoint(command: str, argv: list[str], debug: bool) -> bool:
    checkpoint = None if debug else _unreadable_checkpoint(argv)  # debug: let torch raise with its traceback
    if checkpoint is not None:
        print(
            f"mot-neuro {command}: error: {checkpoint}: not a readable checkpoint (truncated, or not written by"
            " torch.save); point --ckpt_path at a .ckpt written by mot-neuro fit",
            file=sys.stderr,
        )
    return checkpoint is not None


def _unsafe_checkpoint_line(command: str, err: BaseException) -> str:
    """torch refused to unpickle a checkpoint (weights_only): it names a Python object, so it is one line."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    advice = "--weights_only false" if command in LIGHTNING_COMMANDS else "nothing: tools load weights only"
    return (
        f"mot-neuro {command}: error: the checkpoint holds Python objects, not only tensors and plain data, and was"
        f" not loaded ({first[:160]}). Only for a checkpoint you trust: {advice}."
    )


def _trainer_named(err: BaseException, misconfiguration: type) -> BaseException:
    """Lightning's refusals of trainer settings ("No supported gpu backend found!") name no option: say where."""
    if not isinstance(err, misconfiguration):
        return err
    return ValueError(
        f"the trainer settings cannot run here: {err} (check --trainer and the experiment's trainer config:"
        " accelerator, devices, strategy)"
    )


def main(argv: list[str] | None = None) -> int:
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("MOT_NEURO_DEBUG", "") not in ("", "0")
    if argv and argv[0] in TOOL_COMMANDS:
        import importlib

        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from data_adapters.core import AdapterError

        module, _, function = TOOL_COMMANDS[argv[0]].partition(":")
        if _refuse_unreadable_checkpoint(argv[0], argv, debug):
            return 2
        try:
            return getattr(importlib.import_module(module), function)(argv[1:])
        except (
            AdapterError,
            ValueError,
            FileNotFoundError,
            argparse.ArgumentError,
            MisconfigurationException,  # a --trainer setting this machine cannot run (e.g. a GPU trainer on a CPU)
        ) as err:
            if debug:
                raise
            print(_error_line(argv[0], _trainer_named(err, MisconfigurationException)), file=sys.stderr)
            return 2
        except pickle.UnpicklingError as err:
            if debug:
                raise
            print(_unsafe_checkpoint_line(argv[0], err), file=sys.stderr)
            return 2
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from data_adapters.core import AdapterError

        if _refuse_unreadable_checkpoint(argv[0], argv, debug):
            return 2
        try:
            lightning_cli(None if from_console else argv)  # None: Lightning reads sys.argv itself
        except (AdapterError, ValueError, FileNotFoundError, MisconfigurationException, argparse.ArgumentError) as err:
            if debug:
                raise
            print(_error_line(argv[0], _trainer_named(err, MisconfigurationException)), file=sys.stderr)
            if isinstance(err, argparse.ArgumentError):  # parse errors no longer print the usage
                print(f"mot-neuro {argv[0]} --help lists the options", file=sys.stderr)
            return 2
        except pickle.UnpicklingError as err:
            if debug:
                raise
            print(_unsafe_checkpoint_line(argv[0], err), file=sys.stderr)
            return 2
        except SIGTERMException:
            # fit stopped at a batch boundary and saved last-sigterm.ckpt (mot_neuro.resume.SaveOnSigterm);
            # Lightning marked the MLflow run FAILED and raised this SystemExit with no code (exit 0 otherwise)
            print(
                f"mot-neuro {argv[0]}: stopped by SIGTERM; resume with the same command and --ckpt_path last",
                file=sys.stderr,
            )
            return 128 + 15
        return 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # configuration mistakes: say what is wrong, no traceback
        print(f"mot-neuro {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
