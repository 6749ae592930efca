"""Readers that turn neuro-omics files into modality-tagged token arrays (numpy/pandas/nibabel; no torch).

The names below load :mod:`data_adapters.core` (numpy, pandas) on first use, so that the light modules
(:mod:`data_adapters.names`, :mod:`data_adapters.io`, :mod:`data_adapters.errors`) import without them.
"""

from __future__ import annotations

__all__ = ["DEFAULT_ID_COLUMN", "AdapterError", "TokenizedModality", "normalize_ids"]


def __getattr__(name: str):
    if name in __all__:
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
