"""The one rule for modality (and tower) names, shared by the data side and the model. No imports beyond re.

A modality name becomes a parameter key (``blocks.0.ffn.gene``), a torch ``ModuleDict`` key, a cache folder
(``cache/cohort-<key>/modalities/gene``) and part of MLflow metric keys (``val/recon/gene``,
``train/expert_load/block3.gene_brain/e7`` for two merged towers). Hence:

* an identifier: an ASCII letter, then letters, digits or ``_`` (no ``.``, ``-`` or spaces: a ``.`` splits
  a parameter key; a leading ``_`` is reserved for torch's private attributes);
* not an attribute of ``torch.nn.ModuleDict`` (``training``, ``values``, ``keys`` ...): ModuleDict refuses them;
* at most :data:`MAX_NAME_LENGTH` characters. MLflow keys hold 250 characters and a path component 255 bytes;
  the longest key built from names joins two of them (a merged tower in an ablation) with about 40 characters
  around: 2 x 64 + 40 stays well inside both limits.

This module imports nothing heavy, so ``data_adapters`` (no torch) and ``mot_neuro.model`` (no pandas) both use it;
``mot_neuro.names`` re-exports it (the data layer imports nothing from ``mot_neuro``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_NAME_LENGTH = 64
MAX_TOWER_NAME_LENGTH = 2 * MAX_NAME_LENGTH + 1  # an ablation's merged tower: "<modality>_<modality>"
NAME_RULE = f"letters, digits and '_', starting with a letter, at most {MAX_NAME_LENGTH} characters"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # used with fullmatch: "$" would let a trailing newline through

# The public attributes of torch.nn.ModuleDict (torch 2.x); names starting with "_" are refused by the pattern.
# tests/test_trust_adapters.py checks this list against the installed torch so that a new attribute is noticed.
MODULEDICT_ATTRIBUTES = frozenset(
    """T_destination add_module apply bfloat16 buffers call_super_init children clear compile cpu cuda double
    dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule half ipu items
    keys load_state_dict modules mtia named_buffers named_children named_modules named_parameters parameters pop
    register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
    register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook
    register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory state_dict to to_empty
    train training type update values xpu zero_grad""".split()
)


def name_problem(
    name, what: str = "modality", reserved: frozenset[str] = MODULEDICT_ATTRIBUTES, max_length: int = MAX_NAME_LENGTH
) -> str | None:
    """What is wrong with ``name`` as a modality name, or None when it is usable."""
    if isinstance(name, bool):  # YAML 1.1 reads an unquoted on/off/yes/no key as a boolean
        return f"{what} name {name!r} is a boolean, not text: YAML reads on/off/yes/no so; quote it or rename it"
    if not isinstance(name, str):
        return f"{what} name {name!r} is a {type(name).__name__}, not text: quote it, or start it with a letter"
    shown = name if len(name) <= 80 else f"{name[:40]}...{name[-20:]}"
    if len(name) > max_length:
        return (
            f"{what} name {shown!r} has {len(name)} characters, more than {max_length}: it goes into MLflow"
            " keys (250 characters) and folder names; shorten it"
        )
    if not _NAME.fullmatch(name):
        return f"{what} name {shown!r} is not usable: use {NAME_RULE}"
    if name in reserved:
        return f"{what} name {name!r} is taken by torch.nn.ModuleDict's own attributes: rename it"
    return None


def check_names(
    names: Sequence[str],
    what: str = "modality",
    reserved: frozenset[str] = MODULEDICT_ATTRIBUTES,
    max_length: int = MAX_NAME_LENGTH,
) -> None:
    """Raise ValueError naming the first unusable or repeated name (see the module docstring)."""
    names = list(names)
    if not names:
        raise ValueError(f"at least one {what} is needed")
    for name in names:
        problem = name_problem(name, what, reserved, max_length)
        if problem:
            raise ValueError(problem)
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{what} names must be unique; repeated: {duplicated}")
