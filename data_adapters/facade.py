"""Modules that kept their old path while their code moved into parts (``cache``, ``brain``).

Code that sets a name on the old module (a test's ``monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)``, a
benchmark switching ``brain._fast_gunzip`` off) expects the code that reads it to see the new value, as when
everything was one module. :func:`forward_sets` makes that so.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence


class _Facade(types.ModuleType):
    """Setting a name here sets it in every part that holds it; a name no part holds (a builtin such as
    ``open``) is set in every part, and removed from them again when it is deleted here."""

    _parts: Sequence[types.ModuleType] = ()
    _shadows: set[str]

    def __setattr__(self, name: str, value) -> None:
        parts = type(self)._parts
        holders = [part for part in parts if name in vars(part)]
        if not holders:
            type(self)._shadows.add(name)
            holders = list(parts)
        for part in holders:
            setattr(part, name, value)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in type(self)._shadows:
            type(self)._shadows.discard(name)
            for part in type(self)._parts:
                vars(part).pop(name, None)
        super().__delattr__(name)


def forward_sets(module_name: str, parts: Sequence[types.ModuleType]) -> None:
    """Make attribute sets on the module ``module_name`` reach ``parts`` (see the module docstring)."""
    facade = type(f"Facade[{module_name}]", (_Facade,), {"_parts": tuple(parts), "_shadows": set()})
    sys.modules[module_name].__class__ = facade
