"""The experiment as every command builds it: Lightning's CLI with mot-neuro's model and data, and the overrides.

* :func:`lightning_cli`: ``fit | validate | test | predict`` run through it; the tools (``ablate``, ``embed``,
  ``probe``) build it with ``run=False`` for the experiment's DataModule, model and trainer.
* :func:`experiment_overrides`, :func:`set_overrides`, :data:`EXPERIMENT_HELP`: the ``--data``/``--model``/
  ``--trainer`` and ``--set KEY=VALUE`` options the tools pass through, with the meaning they have in ``fit``.
* The CLI class itself, and the model settings a checkpoint holds: :mod:`mot_neuro.experiment_cli`;
  ``--predictions_file``: :mod:`mot_neuro.predictions_file`.

This module imports none of the commands (``mot_neuro.cli``, ``.ablate``, ``.embed``, ``.probe``), so each of
them can import it; torch and Lightning are imported only when a function here is called.
"""

from __future__ import annotations

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def lightning_cli(args: list[str] | None, run: bool = True, model_checkpoint: str | None = None):
    """Lightning's CLI with mot-neuro's model, data, MLflow config saving and data -> model links
    (:class:`mot_neuro.experiment_cli.MotNeuroCLI`).

    ``model_checkpoint`` (with ``run=False``): the model's settings come from that checkpoint's hyper_parameters,
    as Lightning does for ``test --ckpt_path``; the data, trainer and seed still come from ``args``."""
    from mot_neuro.experiment_cli import build_cli

    return build_cli(args, run=run, model_checkpoint=model_checkpoint)


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
