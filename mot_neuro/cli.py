"""``mot-neuro`` command line.

* ``fit | validate | test | predict``: Lightning's CLI (``mot-neuro fit --config configs/experiments/demo.yaml``,
  ``--print_config`` to see the resolved config). The DataModule's ``model_inputs`` (tokens and features
  per modality, target kinds) are linked into the model, never copied by hand between config files.
* ``ablate``: dense vs MoT variants and leave-one-modality-out over seeds and folds (``mot_neuro.ablate``).
* ``embed``: per-subject embeddings of a checkpoint to parquet, streamed and merged by subject ID; the model's
  settings come from the checkpoint (as for ``test --ckpt_path``).
* ``explain``: attributions of tokens and modalities (Integrated Gradients, occlusion), cross-modal attention,
  stability across folds and seeds and a permuted-target null, as tables, brain maps and plots
  (``mot_neuro.explain.command``).
* ``probe``: scikit-learn probes on subject embeddings vs early fusion of raw features (``mot_neuro.probe``).
* ``tune``: Optuna search over config keys, selected on each fold's training and validation parts, the best
  refitted and tested per fold, the study resumable (``mot_neuro.tune``).

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
from collections.abc import Callable
from functools import partial
from pathlib import Path

from mot_neuro.experiment import (  # re-exported: mot_neuro.cli is where scripts and notebooks find them
    EXPERIMENT_HELP,
    EXPERIMENT_OPTIONS,
    LIGHTNING_COMMANDS,
    experiment_overrides,
    lightning_cli,
    set_overrides,
)
from mot_neuro.model import PARTS, ModalityLayout, MoTBackbone, MoTConfig, count_parameters, training_flops
from mot_neuro.predictions_file import PREDICTION_COLUMNS, write_test_predictions


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


# ---------------------------------------------------------------------------------------------- commands
# Each command is a function args -> exit status (args: what follows the command's name), run by main through
# run_command. The tools' modules are imported when their command runs, so that a command loads only its own
# libraries (describe: no Lightning); none of them imports this module back.
def _run_lightning(command: str, args: list[str]) -> int:
    lightning_cli([command, *args])
    return 0


def _ablate(args: list[str]) -> int:
    from mot_neuro.ablate import main as ablate_main

    return ablate_main(args)


def _embed(args: list[str]) -> int:
    from mot_neuro.embed import embed_main

    return embed_main(args)


def _explain(args: list[str]) -> int:
    from mot_neuro.explain.command import explain_main

    return explain_main(args)


def _probe(args: list[str]) -> int:
    from mot_neuro.probe import main as probe_main

    return probe_main(args)


def _tune(args: list[str]) -> int:
    from mot_neuro.tune import main as tune_main

    return tune_main(args)


def _describe_command(args: list[str]) -> int:
    return _describe(build_parser().parse_args(["describe", *args]))


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    **{name: partial(_run_lightning, name) for name in LIGHTNING_COMMANDS},
    "ablate": _ablate,
    "embed": _embed,
    "explain": _explain,
    "probe": _probe,
    "tune": _tune,
    "describe": _describe_command,
}


def _reported_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or settings: one line and exit status 2 (evaluated only when one is raised,
    so that ``describe`` does not import Lightning)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from data_adapters.core import AdapterError

    # MisconfigurationException: a --trainer setting this machine cannot run (e.g. a GPU trainer on a CPU)
    return (AdapterError, ValueError, FileNotFoundError, argparse.ArgumentError, MisconfigurationException)


def run_command(command: str, run: Callable[[], int], debug: bool = False) -> int:
    """``run()``'s exit status; an error of bad input becomes one stderr line naming what to fix and exit status 2
    (``debug``: raised with its traceback instead). The one error wrapper of every command."""
    try:
        return run()
    except _reported_errors() as err:
        if debug:
            raise
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        print(_error_line(command, _trainer_named(err, MisconfigurationException)), file=sys.stderr)
        if command in LIGHTNING_COMMANDS and isinstance(err, argparse.ArgumentError):
            print(f"mot-neuro {command} --help lists the options", file=sys.stderr)  # parse errors print no usage
        return 2
    except pickle.UnpicklingError as err:
        if debug:
            raise
        print(_unsafe_checkpoint_line(command, err), file=sys.stderr)
        return 2
    except SystemExit as exit_:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if command not in LIGHTNING_COMMANDS or not isinstance(exit_, SIGTERMException):
            raise
        # fit stopped at a batch boundary and saved last-sigterm.ckpt (mot_neuro.resume.SaveOnSigterm);
        # Lightning marked the MLflow run FAILED and raised this SystemExit with no code (exit 0 otherwise)
        print(
            f"mot-neuro {command}: stopped by SIGTERM; resume with the same command and --ckpt_path last",
            file=sys.stderr,
        )
        return 128 + 15


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("MOT_NEURO_DEBUG", "") not in ("", "0")
    command = argv[0] if argv else None
    if command not in COMMANDS:  # no command, --help or an unknown command: argparse says so and exits
        args = build_parser().parse_args(argv)
        return run_command(args.command, partial(args.func, args), debug)
    if command != "describe" and _refuse_unreadable_checkpoint(command, argv, debug):
        return 2
    return run_command(command, partial(COMMANDS[command], argv[1:]), debug)


__all__ = [
    "COMMANDS",
    "EXPERIMENT_HELP",
    "EXPERIMENT_OPTIONS",
    "LIGHTNING_COMMANDS",
    "PREDICTION_COLUMNS",
    "build_parser",
    "experiment_overrides",
    "lightning_cli",
    "main",
    "run_command",
    "set_overrides",
    "write_test_predictions",
]


if __name__ == "__main__":
    sys.exit(main())
