"""A cache of one tokenized modality: built once by its adapter, then memory-mapped while its input files
and settings stay the same (entries under ``cache_dir``, see :mod:`data_adapters.store` for their form)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .core import AdapterError, TokenizedModality
from .fingerprints import STAT_INDEX, _key, _slot, file_fingerprints, fingerprint
from .io import replace_folder, storage_failure, temporary_folder
from .store import CorruptEntry, _jsonable, _read_manifest, read_modality, write_modality

log = logging.getLogger(__name__)


def _inspect(folder: Path, key: str, verify: bool = True) -> tuple[str, str, TokenizedModality | None]:
    """("fresh" | "missing" | "stale" | "corrupt", why, the loaded modality when fresh) for ``folder``."""
    if not folder.exists():
        return "missing", "no entry yet", None
    try:
        manifest = _read_manifest(folder)
    except CorruptEntry as err:
        return "corrupt", str(err), None
    if manifest.get("fingerprint") != key:
        return "stale", "inputs or settings changed since the entry was built", None
    try:
        return "fresh", "up to date", read_modality(folder, mmap=True, verify=verify)
    except CorruptEntry as err:
        return "corrupt", str(err), None


def cache_status(
    cache_dir: str | os.PathLike,
    inputs,
    settings: Mapping | None = None,
    *,
    name: str | None = None,
    verify: bool = True,
) -> tuple[str, str]:
    """``(status, why)`` of the entry :func:`cached_modality` would use: fresh, missing, stale or corrupt."""
    folder = Path(cache_dir) / _slot(inputs, settings, name)
    key = fingerprint(inputs, settings, stat_index=Path(cache_dir) / STAT_INDEX)
    status, why, _ = _inspect(folder, key, verify=verify)
    return status, why


def cached_modality(
    cache_dir: str | os.PathLike,
    build_fn: Callable[[], TokenizedModality],
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    settings: Mapping | None = None,
    *,
    name: str | None = None,
    verify: bool = True,
) -> TokenizedModality:
    """``build_fn()`` once, then memory-mapped loads while ``inputs`` (every file read) and ``settings``
    (every option of the adapter) stay the same.

    ``inputs`` must list every file the build reads: for a manifest of scans, the manifest *and* each scan.
    ``name`` only labels the entry folder. Returns read-only memory-mapped arrays.
    """
    cache_dir = Path(cache_dir)
    folder = cache_dir / _slot(inputs, settings, name)
    key = fingerprint(inputs, settings, stat_index=cache_dir / STAT_INDEX)
    status, why, cached = _inspect(folder, key, verify=verify)
    if cached is not None:
        return cached
    log.info("cache %s: %s (%s); building", folder.name, status, why)
    modality = build_fn()
    if not isinstance(modality, TokenizedModality):
        raise AdapterError(f"build_fn returned {type(modality).__name__}, expected a TokenizedModality")
    details = file_fingerprints(inputs, stat_index=cache_dir / STAT_INDEX)
    if _key(details, settings) != key:
        log.warning("cache %s: inputs changed while building; result not cached", folder.name)
        return modality
    tmp = temporary_folder(cache_dir, folder.name)
    try:
        extra = {"fingerprint": key, "settings": _jsonable(settings), "inputs": details}
        write_modality(modality, tmp, extra=extra)
        replace_folder(tmp, folder)
    except OSError as err:
        raise storage_failure(err, cache_dir, f"writing cache entry {folder.name}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_modality(folder, mmap=True)
