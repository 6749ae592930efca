"""The search space of ``mot-neuro tune``: a YAML file of dotted config keys -> distributions.

One entry per key, its value a mapping with exactly one distribution::

    model.optimizer.lr: {float: [1.0e-4, 1.0e-2], log: true}   # low, high; log: sampled on a log scale (low > 0)
    model.encoder.dropout: {float: [0.0, 0.3]}                  # optional step: 0.05 (not with log)
    data.batch_size: {int: [16, 64], step: 16}                  # whole numbers, both ends included
    model.encoder.dim: {categorical: [32, 64]}                  # numbers, strings, booleans or null

A key is what ``mot-neuro fit`` takes as ``--KEY VALUE`` (``--print_config`` shows them all). Keys that decide
which subjects are tested (the splits) or that only pick noise (the seed) are refused: tuning them would let the
search see, or fit itself to, what it is later tested on.

This module reads and checks the file on its own (no Lightning); that every key is a real config key is checked
by :mod:`mot_neuro.tune` with the experiment's parser.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

KINDS = ("float", "int", "categorical")
OPTIONS = {"float": {"log", "step"}, "int": {"log", "step"}, "categorical": set()}

REFUSED_KEYS = {
    **dict.fromkeys(
        (
            "data.fold",
            "data.splits_file",
            "data.scheme",
            "data.n_folds",
            "data.val_fraction",
            "data.test_fraction",
            "data.split_seed",
            "data.stratify",
            "data.group",
            "data.relatedness",
            "data.withdrawals",
        ),
        "it changes which subjects are tested (the saved splits); every trial must use the same splits",
    ),
    "seed_everything": "choosing a seed selects noise, not a setting; vary seeds with mot-neuro ablate --seeds",
    "data.permute_targets": "a null model is not a setting to tune",
    **dict.fromkeys(
        ("checkpoint_dir", "test_after_fit", "predictions_file", "trainer.logger", "data.inner_fold"),
        "mot-neuro tune sets it for each trial",
    ),
}
"""Keys (and, for ``trainer.logger``, everything under them) a search space may not hold, with the reason."""


def _refusal(key: str) -> str | None:
    for refused, reason in REFUSED_KEYS.items():
        if key == refused or key.startswith(refused + "."):
            return reason
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``float``/``int`` between ``low`` and ``high`` (both included), or one of ``choices``."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial):
        """The trial's value of this key (Optuna's ``suggest_*``; the key is the parameter's name)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def samples(self) -> list:
        """Values the experiment's parser must accept for this key: both ends, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def as_dict(self) -> dict:
        """The entry as it would be written in a space file (also what the study's name is derived from)."""
        if self.kind == "categorical":
            return {"categorical": list(self.choices)}
        entry = {self.kind: [self.low, self.high]}
        if self.log:
            entry["log"] = True
        if self.step is not None:
            entry["step"] = self.step
        return entry


def _dimension(key: str, entry, where: str) -> Dimension:
    """``entry`` of ``key`` read and checked; a ValueError naming ``where`` (file and key) otherwise."""
    example = "e.g. {float: [1.0e-4, 1.0e-2], log: true}, {int: [16, 64], step: 16} or {categorical: [32, 64]}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with one distribution ({example}), got {entry!r}")
    kinds = [k for k in entry if k in KINDS]
    if len(kinds) != 1:
        found = f"keys {sorted(map(str, entry))}"
        raise ValueError(f"{where}: give exactly one distribution of {list(KINDS)} ({example}); found {found}")
    kind = kinds[0]
    unknown = sorted(set(map(str, entry)) - {kind} - OPTIONS[kind])
    if unknown:
        allowed = sorted(OPTIONS[kind]) or "none"
        raise ValueError(f"{where}: unknown option(s) {unknown} for a {kind} distribution (options: {allowed})")
    values = entry[kind]
    if kind == "categorical":
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: categorical needs a non-empty list of choices, got {values!r}")
        for choice in values:
            if not (choice is None or isinstance(choice, (bool, int, float, str))):
                raise ValueError(
                    f"{where}: choice {choice!r} is not a number, string, boolean or null (Optuna stores only"
                    " those; for a list setting, search a key inside it or give a config file per choice)"
                )
        if len({json.dumps(c) for c in values}) != len(values):
            raise ValueError(f"{where}: categorical choices repeat: {values!r}")
        return Dimension(key, kind, choices=tuple(values))
    if not (isinstance(values, list) and len(values) == 2 and all(_is_number(v) for v in values)):
        raise ValueError(f"{where}: {kind} needs [low, high] (two finite numbers), got {values!r}")
    low, high = values
    if kind == "int" and not all(float(v).is_integer() for v in values):
        raise ValueError(f"{where}: int needs whole numbers for [low, high], got {values!r}")
    if not low < high:
        raise ValueError(f"{where}: empty range [{low}, {high}]: low must be below high")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: a log scale needs low > 0, got [{low}, {high}]")
    step = entry.get("step")
    if step is not None:
        if not _is_number(step) or step <= 0 or (kind == "int" and not float(step).is_integer()):
            raise ValueError(
                f"{where}: step must be a positive {'whole ' if kind == 'int' else ''}number, got {step!r}"
            )
        if log:
            raise ValueError(f"{where}: step and log cannot be combined (Optuna samples one or the other)")
        if step > high - low:
            raise ValueError(f"{where}: step {step} is larger than the range [{low}, {high}]")
    if kind == "int":
        low, high = int(low), int(high)
        step = None if step is None else int(step)
    else:
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    return Dimension(key, kind, low, high, log, step)


def load_space(path: str | Path) -> list[Dimension]:
    """The search space in ``path``, every entry checked (see the module docstring); a ValueError or
    FileNotFoundError naming the file (and the key) otherwise."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search space {path}: no such file")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"search space {path}: not valid YAML{at}") from err
    if not isinstance(content, dict) or not content:
        raise ValueError(
            f"search space {path}: expected a mapping of config keys to distributions, e.g."
            " 'model.optimizer.lr: {float: [1.0e-4, 1.0e-2], log: true}'"
        )
    space = []
    for key, entry in content.items():
        where = f"search space {path}: {key}"
        if not isinstance(key, str) or not key.strip() or key.startswith("-"):
            raise ValueError(f"{where}: a key is a dotted config key such as model.optimizer.lr")
        reason = _refusal(key)
        if reason:
            raise ValueError(f"{where}: cannot be searched: {reason}")
        space.append(_dimension(key, entry, where))
    return space


def cli_value(value) -> str:
    """A value as ``fit`` reads it on its command line (strings as they are, the rest as JSON: true, null, 1e-3)."""
    return value if isinstance(value, str) else json.dumps(value)


def as_overrides(params: dict) -> list[str]:
    """``{"model.encoder.dim": 32}`` -> ``["--model.encoder.dim", "32"]``."""
    out = []
    for key, value in params.items():
        out += [f"--{key}", cli_value(value)]
    return out


def space_digest(space: list[Dimension], *settings) -> str:
    """A short digest of the space and the ``settings`` that give its trials their meaning (overrides, metric)."""
    described = {d.key: d.as_dict() for d in space}
    return hashlib.sha256(json.dumps([described, *settings], sort_keys=True).encode()).hexdigest()[:10]
