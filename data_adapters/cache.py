"""Tokenized arrays written once, then memory-mapped: parse NIfTI/PLINK once, load in milliseconds after.

Cache layout (one folder per entry, under ``cache_dir``)::

    <name>-<slot>/            slot = hash of the input paths and the adapter settings
        manifest.json         format, fingerprint, settings, per-input details, token/feature names, categories,
                              source, and the shape, dtype and byte size of every array
        values.npy            float32 [N, T, F]
        present.npy           bool [N, T]
        feature_mask.npy      bool [T, F]
        subject_ids.npy       unicode [N] (never pickled)

Fingerprint. For every input file (folders are walked): absolute path, size, ``mtime_ns`` and a content
hash — the whole file up to 1 MiB, else its first and last 64 KiB. Head and tail are cheap on 40,000 scans
and still strong: a NIfTI header lies in the head, and a gzip file ends with the CRC32 and length of
its whole content, so a changed ``.nii.gz`` changes its tail. The adapter settings (JSON) and the
cache format join the hash. A same-size in-place edit of the middle of a large uncompressed file that
also keeps ``mtime_ns`` would go unnoticed; nothing else realistic does.

An entry is used only when its manifest parses, its fingerprint equals the inputs' current one, and every
array file exists with the recorded byte size, dtype and shape, in agreement with each other. Otherwise it
is *stale* (inputs changed) or *corrupt* (anything else), and is rebuilt. Entries are built in a temporary
folder and renamed into place, so a reader sees a whole entry or none. Contents of arrays are not hashed
on load (that would read every byte and defeat memory mapping); pass ``verify=True`` to do so.

``save_cohort``/``load_cohort`` store a whole aligned :class:`~data_adapters.cohort.Cohort` the same way
(participants as parquet, one folder per modality).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import Cohort
from .core import AdapterError, TokenizedModality

CACHE_FORMAT = 1
SMALL_FILE_BYTES = 1 << 20
EDGE_BYTES = 64 << 10
MANIFEST = "manifest.json"
COHORT_MANIFEST = "cohort.json"
PARTICIPANTS = "participants.parquet"
ARRAY_NAMES = ("values", "present", "feature_mask", "subject_ids")

log = logging.getLogger(__name__)


class CorruptEntry(AdapterError):
    """A cache entry or saved cohort that cannot be trusted (missing, truncated or inconsistent files)."""


# ---------------------------------------------------------------------------------------------- fingerprints
def _hash_file_content(path: Path, size: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        if size <= SMALL_FILE_BYTES:
            digest.update(fh.read())
        else:
            digest.update(fh.read(EDGE_BYTES))
            fh.seek(size - EDGE_BYTES)
            digest.update(fh.read(EDGE_BYTES))
    return digest.hexdigest()


def _input_items(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The inputs as given (files or folders), absolute, sorted, without repeats."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return sorted({Path(item).absolute() for item in inputs})


def _input_files(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    files = set()
    for path in _input_items(inputs):
        if path.is_dir():
            files.update(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.add(path)
        else:
            raise AdapterError("cache input not found", file=path)
    if not files:
        raise AdapterError("no input files to fingerprint (an empty folder or list)")
    return sorted(files)


def file_fingerprints(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Path, size, ``mtime_ns`` and content hash of every input file (folders are walked), sorted by path."""
    out = []
    for path in _input_files(inputs):
        stat = path.stat()
        out.append(
            {
                "path": str(path),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "content": _hash_file_content(path, stat.st_size),
            }
        )
    return out


def _jsonable(value, *, strict: bool = True):
    """``value`` as plain JSON data; anything else is an error (``strict``) or spelled out as text."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, strict=strict) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v, strict=strict) for v in value), key=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if not strict:
        return str(value)
    raise AdapterError(f"cache settings must be JSON-like (str, numbers, lists, dicts, paths); got {type(value)}")


def _canonical(value) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _key(details: list[dict], settings: Mapping | None) -> str:
    return _hash(_canonical({"format": CACHE_FORMAT, "inputs": details, "settings": settings}))


def fingerprint(inputs, settings: Mapping | None = None) -> str:
    """The content key of ``inputs`` (paths) and ``settings`` (JSON-like): equal keys, equal cache entry."""
    return _key(file_fingerprints(inputs), settings)


def _slot(inputs, settings, name: str | None) -> str:
    """Entry folder name: stable while the same inputs (files or folders, as given) are read with the same
    settings, whatever their content, so that a changed input replaces its entry instead of adding one."""
    paths = [str(p) for p in _input_items(inputs)]
    key = _hash(_canonical({"format": CACHE_FORMAT, "paths": paths, "settings": settings}))[:20]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or "modality").strip("._") or "modality"
    return f"{label}-{key}"


# ---------------------------------------------------------------------------------------------- one modality
def _fsync_write_npy(path: Path, array: np.ndarray) -> int:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return path.stat().st_size


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def write_modality(modality: TokenizedModality, folder: str | os.PathLike, extra: Mapping | None = None) -> None:
    """Write ``modality`` as ``.npy`` arrays and a manifest (plus ``extra`` entries) into ``folder``.

    Not atomic on its own: callers write into a temporary folder and rename it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    subject_ids = np.asarray(modality.subject_ids).astype(str)
    arrays = {
        "values": np.ascontiguousarray(modality.values, dtype=np.float32),
        "present": np.ascontiguousarray(modality.present, dtype=bool),
        "feature_mask": np.ascontiguousarray(modality.feature_mask, dtype=bool),
        "subject_ids": subject_ids if len(subject_ids) else subject_ids.astype("<U1"),
    }
    described = {}
    for array_name, array in arrays.items():
        size = _fsync_write_npy(folder / f"{array_name}.npy", array)
        described[array_name] = {
            "shape": list(array.shape),
            "dtype": array.dtype.str,
            "bytes": size,
            "blake2b": _hash_path(folder / f"{array_name}.npy"),
        }
    manifest = {
        "format": CACHE_FORMAT,
        "name": modality.name,
        "token_names": list(modality.token_names),
        "feature_names": None if modality.feature_names is None else list(modality.feature_names),
        "categories": {k: list(v) for k, v in modality.categories.items()},
        "source": _jsonable(modality.source, strict=False),
        "arrays": described,
        **(extra or {}),
    }
    _write_json(folder / MANIFEST, manifest)


def _hash_path(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError as err:
        raise CorruptEntry("manifest missing", file=folder / MANIFEST) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptEntry(f"manifest unreadable ({err})", file=folder / MANIFEST) from err
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise CorruptEntry(f"manifest is not cache format {CACHE_FORMAT}", file=folder / MANIFEST)
    return manifest


def read_modality(folder: str | os.PathLike, *, mmap: bool = True, verify: bool = False) -> TokenizedModality:
    """A modality written by :func:`write_modality`, memory-mapped read-only when ``mmap``.

    Raises :class:`CorruptEntry` when a file is missing or truncated, or shapes and names disagree.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    try:
        described = {name: manifest["arrays"][name] for name in ARRAY_NAMES}
        token_names = list(manifest["token_names"])
    except (KeyError, TypeError) as err:
        raise CorruptEntry(f"manifest lacks {err}", file=folder / MANIFEST) from err
    arrays = {}
    for array_name, meta in described.items():
        path = folder / f"{array_name}.npy"
        if not path.is_file():
            raise CorruptEntry("array file missing", file=path)
        if path.stat().st_size != meta.get("bytes"):
            raise CorruptEntry(
                f"{path.stat().st_size} bytes, the manifest says {meta.get('bytes')} (truncated?)", file=path
            )
        if verify and _hash_path(path) != meta.get("blake2b"):
            raise CorruptEntry("content hash differs from the manifest", file=path)
        try:
            # subject IDs are read whole: they become Python strings anyway
            array = np.load(path, mmap_mode="r" if mmap and array_name != "subject_ids" else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise CorruptEntry(f"unreadable array ({err})", file=path) from err
        if list(array.shape) != list(meta.get("shape", [])) or array.dtype.str != meta.get("dtype"):
            raise CorruptEntry(
                f"array is {array.dtype.str}{list(array.shape)},"
                f" the manifest says {meta.get('dtype')}{meta.get('shape')}",
                file=path,
            )
        arrays[array_name] = array
    n, t, f = arrays["values"].shape if arrays["values"].ndim == 3 else (-1, -1, -1)
    expected = {"present": (n, t), "feature_mask": (t, f), "subject_ids": (n,)}
    for array_name, shape in expected.items():
        if arrays[array_name].shape != shape or len(token_names) != t:
            raise CorruptEntry(
                f"shapes disagree: values {arrays['values'].shape}, {array_name} {arrays[array_name].shape},"
                f" {len(token_names)} token names",
                file=folder,
            )
    try:
        return TokenizedModality(
            name=manifest["name"],
            values=arrays["values"],
            present=arrays["present"],
            token_names=token_names,
            subject_ids=arrays["subject_ids"].astype(object),
            feature_mask=arrays["feature_mask"],
            feature_names=manifest.get("feature_names"),
            categories=manifest.get("categories") or {},
            source=manifest.get("source") or {},
        )
    except AdapterError as err:
        raise CorruptEntry(f"entry does not make a valid modality: {err}", file=folder) from err


def replace_folder(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an old ``final`` (folders cannot be
    replaced in one rename: the old one is moved aside first, then removed)."""
    try:
        os.replace(tmp, final)
        return
    except OSError:
        if not final.exists():
            raise
    aside = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(final, aside)
    except FileNotFoundError:
        pass
    try:
        os.replace(tmp, final)
    except OSError:
        # another process published the same entry in between: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def temporary_folder(parent: Path, label: str) -> Path:
    """A fresh name (not yet created) in ``parent``: beside the final folder, on the same file system, so
    that the last rename is atomic."""
    parent.mkdir(parents=True, exist_ok=True)
    return parent / f".tmp-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _inspect(folder: Path, key: str, verify: bool = False) -> tuple[str, str, TokenizedModality | None]:
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
    verify: bool = False,
) -> tuple[str, str]:
    """``(status, why)`` of the entry :func:`cached_modality` would use: fresh, missing, stale or corrupt."""
    folder = Path(cache_dir) / _slot(inputs, settings, name)
    status, why, _ = _inspect(folder, fingerprint(inputs, settings), verify=verify)
    return status, why


def cached_modality(
    cache_dir: str | os.PathLike,
    build_fn: Callable[[], TokenizedModality],
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    settings: Mapping | None = None,
    *,
    name: str | None = None,
    verify: bool = False,
) -> TokenizedModality:
    """``build_fn()`` once, then memory-mapped loads while ``inputs`` (every file read) and ``settings``
    (every option of the adapter) stay the same.

    ``inputs`` must list every file the build reads: for a manifest of scans, the manifest *and* each scan.
    ``name`` only labels the entry folder. Returns read-only memory-mapped arrays.
    """
    cache_dir = Path(cache_dir)
    folder = cache_dir / _slot(inputs, settings, name)
    key = fingerprint(inputs, settings)
    status, why, cached = _inspect(folder, key, verify=verify)
    if cached is not None:
        return cached
    log.info("cache %s: %s (%s); building", folder.name, status, why)
    modality = build_fn()
    if not isinstance(modality, TokenizedModality):
        raise AdapterError(f"build_fn returned {type(modality).__name__}, expected a TokenizedModality")
    details = file_fingerprints(inputs)
    if _key(details, settings) != key:
        log.warning("cache %s: inputs changed while building; result not cached", folder.name)
        return modality
    tmp = temporary_folder(cache_dir, folder.name)
    try:
        extra = {"fingerprint": key, "settings": _jsonable(settings), "inputs": details}
        write_modality(modality, tmp, extra=extra)
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_modality(folder, mmap=True)


# ---------------------------------------------------------------------------------------------- whole cohort
def _safe_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise AdapterError(f"modality name {name!r} cannot be a folder name; use letters, digits, '_', '-', '.'")
    return name


def save_cohort(cohort: Cohort, folder: str | os.PathLike) -> Path:
    """Write ``cohort`` into ``folder`` (participants.parquet, cohort.json, modalities/<name>/), atomically.

    An existing saved cohort in ``folder`` is replaced; any other non-empty folder is refused.
    """
    folder = Path(folder).absolute()
    if folder.exists() and any(folder.iterdir()) and not (folder / COHORT_MANIFEST).is_file():
        raise AdapterError("folder exists and is not a saved cohort; choose an empty or new folder", file=folder)
    names = [_safe_name(n) for n in cohort.modalities]
    tmp = temporary_folder(folder.parent, folder.name)
    try:
        tmp.mkdir()
        table = cohort.participants.copy()
        table.index = pd.Index(cohort.subject_ids, name=cohort.id_column)
        try:
            table.reset_index().to_parquet(tmp / PARTICIPANTS, index=False)
        except (ValueError, TypeError, ImportError) as err:
            raise AdapterError(f"participants cannot be written as parquet: {err}", file=folder) from err
        for name in names:
            write_modality(cohort.modalities[name], tmp / "modalities" / name)
        _write_json(
            tmp / COHORT_MANIFEST,
            {
                "format": CACHE_FORMAT,
                "id_column": cohort.id_column,
                "targets": list(cohort.targets),
                "confounds": list(cohort.confounds),
                "join": cohort.join,
                "modalities": names,
                "n_subjects": cohort.n_subjects,
                "build_info": _jsonable(cohort.build_info, strict=False),
            },
        )
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_cohort(folder: str | os.PathLike, *, mmap: bool = True, verify: bool = False) -> Cohort:
    """A cohort written by :func:`save_cohort`; modality arrays memory-mapped read-only when ``mmap``.

    Raises :class:`CorruptEntry` (an :class:`AdapterError`) when any file is missing, truncated or
    inconsistent: save the cohort again.
    """
    folder = Path(folder)
    path = folder / COHORT_MANIFEST
    try:
        meta = json.loads(path.read_text())
        names = list(meta["modalities"])
        id_column = meta["id_column"]
    except FileNotFoundError as err:
        raise CorruptEntry("not a saved cohort (cohort.json missing)", file=folder) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CorruptEntry(f"cohort.json unreadable ({err})", file=path) from err
    if meta.get("format") != CACHE_FORMAT:
        raise CorruptEntry(f"saved with cohort format {meta.get('format')}, this code reads {CACHE_FORMAT}", file=path)
    try:
        table = pd.read_parquet(folder / PARTICIPANTS)
    except (OSError, ValueError) as err:
        raise CorruptEntry(f"participants unreadable ({err})", file=folder / PARTICIPANTS) from err
    if id_column not in table.columns or len(table) != meta.get("n_subjects"):
        raise CorruptEntry("participants table does not match cohort.json", file=folder / PARTICIPANTS)
    table.index = pd.Index(table.pop(id_column).astype(str).to_numpy(), name=id_column)
    modalities = {name: read_modality(folder / "modalities" / name, mmap=mmap, verify=verify) for name in names}
    try:
        return Cohort(
            participants=table,
            modalities=modalities,
            targets=meta.get("targets", []),
            confounds=meta.get("confounds", []),
            id_column=id_column,
            join=meta.get("join", "inner"),
            build_info=meta.get("build_info") or {},
        )
    except AdapterError as err:
        raise CorruptEntry(f"saved cohort is inconsistent: {err}", file=folder) from err
