"""The LightningModule's settings as the CLI, Python callers and checkpoints give them: range checks of the
objective's options, ``model.encoder``/``model.optimizer`` read from an options object or its dict with errors
that name the option in full, and :func:`checkpoint_settings` for checkpoints of older versions."""

from __future__ import annotations

import math
from collections.abc import Mapping

from mot_neuro.model.config import option_fields
from mot_neuro.model.encoder import EncoderOptions
from mot_neuro.optim import OptimizerOptions


def _option_float(name: str, value) -> float:
    """``value`` as a plain float, or a ValueError naming ``model.<name>``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"model.{name}={value!r}: expected a finite number")
    return float(value)


# option -> (lowest, lowest allowed?, highest, highest allowed?): the same ranges as the signature's types
_OPTION_RANGES = {
    "modality_dropout": (0.0, True, 1.0, False),
    "mask_fraction": (0.0, True, 1.0, True),
    "modality_mask_prob": (0.0, True, 1.0, True),
    "supervised_weight": (0.0, True, math.inf, False),
    "masked_weight": (0.0, True, math.inf, False),
}


def checked_objective_options(options: Mapping) -> dict:
    """The objective's options as plain floats in their ranges, or one ValueError naming the first that is not
    (for callers that bypass the CLI's parser)."""
    checked = {}
    for name, (low, low_ok, high, high_ok) in _OPTION_RANGES.items():
        value = _option_float(name, options[name])
        if value < low or (value == low and not low_ok) or value > high or (value == high and not high_ok):
            interval = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
            raise ValueError(f"model.{name}={value!r} is out of range: use a value in {interval}")
        checked[name] = value
    return checked


def read_options(kind: type, value, group: str):
    """``model.<group>`` as a ``kind`` instance: given as one, or as its dict (a checkpoint's hyperparameters).
    Errors name the option as the CLI does (``model.encoder.dim=...``)."""
    try:
        if isinstance(value, kind):
            value = {name: getattr(value, name) for name in option_fields(kind)}  # a copy: never the caller's
        if not isinstance(value, Mapping):
            raise ValueError(f"expected {kind.__name__} or a mapping of its options, got {type(value).__name__}")
        unknown = sorted(set(value) - set(option_fields(kind)))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {option_fields(kind)}")
        options = kind(**dict(value))
        return options.check() if hasattr(options, "check") else options
    except (TypeError, ValueError) as err:
        raise ValueError(f"model.{group}.{err}" if names_option(str(err), kind) else f"model.{group}: {err}") from err


def names_option(message: str, kind: type) -> bool:
    """Does the message start with one of ``kind``'s option names (``dim=30 is not ...``)?"""
    head = message
    for separator in ("[", ":", "=", " "):
        head = head.split(separator)[0]
    return head in option_fields(kind)


SETTINGS_MOVED = {
    "encoder": option_fields(EncoderOptions),
    "optimizer": option_fields(OptimizerOptions),
}
"""Settings that checkpoints of mot-neuro before the nested ``model.encoder``/``model.optimizer`` kept at the top of
their hyperparameters, by the group they moved to."""


def checkpoint_settings(hparams: Mapping) -> dict:
    """A checkpoint's hyperparameters in today's form: the settings that older checkpoints kept flat (``dim``,
    ``lr``, ...) moved into ``encoder`` and ``optimizer``, so every checkpoint written by mot-neuro loads."""
    settings = dict(hparams)
    for group, names in SETTINGS_MOVED.items():
        flat = {name: settings.pop(name) for name in names if name in settings and name != group}
        if flat:
            settings[group] = {**flat, **dict(settings.get(group) or {})}
    encoder = settings.get("encoder")
    if isinstance(encoder, Mapping) and "attention_dropout" not in encoder:
        # Checkpoints from before the option dropped the attention probabilities at the residual rate: resuming
        # one keeps training as it was (inference never drops anything).
        settings["encoder"] = {**encoder, "attention_dropout": None}
    return settings
