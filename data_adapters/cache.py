"""Tokenized arrays written once, then memory-mapped: parse NIfTI/PLINK once, load in milliseconds after.

Cache layout (one folder per entry, under ``cache_dir``)::

    <name>-<slot>/            slot = hash of the input paths and the adapter settings
        manifest.json         format, fingerprint, settings, per-input details, token/feature names, categories,
                              source, and the shape, dtype, byte size, blake2b and CRC-32 of every array
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

Stat index. Even head and tail are ~5 GB of reads for 40,000 scans, on every run, just to confirm a fresh
cache. So ``cache_dir`` keeps ``.fingerprint-index.json`` (path -> size, ``mtime_ns``, ``ctime_ns``, inode,
content hash; replaced atomically), and a file whose four stat fields are unchanged reuses its recorded
hash without being opened; any other file is hashed again. ``ctime`` cannot be set by a user, so a rewrite
that restores the old ``mtime`` is still re-hashed. A file changed less than :data:`RACY_SECONDS` before it
was hashed is not recorded (a second write within the same timestamp tick would look unchanged), as git
does with "racily clean" entries. A missing or unreadable index only costs a re-hash.

``save_cohort``/``load_cohort`` store a whole aligned :class:`~data_adapters.cohort.Cohort` the same way
(participants as parquet, one folder per modality). :class:`CohortWriter` writes the same folder block by
block of subjects, for cohorts larger than memory.

Content verification. Every array's CRC-32 (and blake2b, the content key) is recorded in the manifest as it
is written. Loading checks shapes, sizes and names, and by default (``verify=True``) reads every array once,
sequentially, and compares its CRC-32: rows rewritten in place with the same size and mtime are caught (a
built cohort is then rebuilt; a saved ``cohort_dir`` is refused, naming the file). The values are not
scanned again for +-inf (they were when written, and the checksum says they are those bytes). Cost: ~0.3 s
for the 525 MB of a 100,000-subject cohort from the page cache (BENCHMARKS.md), the disk's read time when
cold; a file whose stat is unchanged since it was verified in this process is not read again.
``verify=False`` opens any cohort in milliseconds without reading a value.

:func:`release_pages` drops the pages a reader has touched from the process's resident set (they stay in
the page cache), keeping a full pass over a large cohort at flat memory.

A write that fails (a full or read-only folder) removes its temporary folder and raises one
:class:`AdapterError` naming the folder and what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap as mmap_module
import os
import re
import shutil
import time
import uuid
import weakref
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import Cohort
from .core import (
    DEFAULT_ID_COLUMN,
    AdapterError,
    TokenizedModality,
    atomic_write_bytes,
    check_finite_or_missing,
    normalize_ids,
    storage_problem,
)

CACHE_FORMAT = 1
SMALL_FILE_BYTES = 1 << 20
EDGE_BYTES = 64 << 10
MANIFEST = "manifest.json"
COHORT_MANIFEST = "cohort.json"
PARTICIPANTS = "participants.parquet"
ARRAY_NAMES = ("values", "present", "feature_mask", "subject_ids")
STAT_INDEX = ".fingerprint-index.json"
STAT_INDEX_FORMAT = 1
CHECKSUM = "crc32"
"""The per-array checksum recorded at write time and verified on every load (a fast sequential read)."""
VERIFY_BLOCK_BYTES = 8 << 20
RACY_SECONDS = 2.0
"""A file modified this recently when hashed is not recorded in the stat index (coarse file-system clocks)."""

log = logging.getLogger(__name__)


class CorruptEntry(AdapterError):
    """A cache entry or saved cohort that cannot be trusted (missing, truncated or inconsistent files)."""


def storage_failure(err: OSError, folder: Path, what: str) -> AdapterError:
    """One line for a write that failed in ``folder`` (full, read-only ...), saying what to do; the callers
    have removed what they had written."""
    fix = (
        "nothing partial was kept. Free space or make the folder writable, or choose another one (cache_dir, or"
        " the cohort's folder)"
    )
    return AdapterError(storage_problem(err, folder, what, fix), file=folder)


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


class _StatIndex:
    """path -> (size, mtime_ns, ctime_ns, inode, content hash) of files hashed before; see the module docstring."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is None or not path.is_file():
            return
        try:
            data = json.loads(path.read_text())
            if data.get("format") == STAT_INDEX_FORMAT and isinstance(data.get("files"), dict):
                self.entries = data["files"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            log.warning("fingerprint index %s unreadable (%s); hashing every input again", path, err)

    @staticmethod
    def _stat_key(stat: os.stat_result) -> list[int]:
        return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]

    def content(self, path: Path, stat: os.stat_result) -> str:
        entry = self.entries.get(str(path))
        key = self._stat_key(stat)
        if isinstance(entry, list) and len(entry) == 5 and entry[:4] == key:
            return entry[4]
        content = _hash_file_content(path, stat.st_size)
        if self.path is not None:
            # a file written within the clock's tick could change again without changing its stat: not recorded
            recent = time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) < RACY_SECONDS * 1e9
            if not recent:
                self.entries[str(path)] = [*key, content]
                self.dirty = True
            elif str(path) in self.entries:
                del self.entries[str(path)]
                self.dirty = True
        return content

    def save(self, used: set[str]) -> None:
        if self.path is None or not self.dirty:
            return
        # entries of files that are gone would pile up over the years of a project
        kept = {p: e for p, e in self.entries.items() if p in used or os.path.exists(p)}
        try:
            atomic_write_bytes(self.path, json.dumps({"format": STAT_INDEX_FORMAT, "files": kept}).encode())
        except OSError as err:  # a read-only cache folder still works, only slower
            log.warning("fingerprint index %s not written (%s)", self.path, err)
        self.dirty = False


def file_fingerprints(
    inputs: str | os.PathLike | Iterable[str | os.PathLike], *, stat_index: str | os.PathLike | None = None
) -> list[dict]:
    """Path, size, ``mtime_ns`` and content hash of every input file (folders are walked), sorted by path.

    With ``stat_index`` (a JSON file, created if missing), a file whose size, ``mtime_ns``, ``ctime_ns`` and
    inode are those recorded there reuses its recorded content hash without being read.
    """
    index = _StatIndex(None if stat_index is None else Path(stat_index))
    out = []
    for path in _input_files(inputs):
        stat = path.stat()
        out.append(
            {
                "path": str(path),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "content": index.content(path, stat),
            }
        )
    index.save({d["path"] for d in out})
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


def fingerprint(inputs, settings: Mapping | None = None, *, stat_index: str | os.PathLike | None = None) -> str:
    """The content key of ``inputs`` (paths) and ``settings`` (JSON-like): equal keys, equal cache entry.

    ``stat_index``: see :func:`file_fingerprints` (the key is the same with or without it)."""
    return _key(file_fingerprints(inputs, stat_index=stat_index), settings)


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
        blake2b, crc32 = _checksums(folder / f"{array_name}.npy")
        described[array_name] = {
            "shape": list(array.shape),
            "dtype": array.dtype.str,
            "bytes": size,
            "blake2b": blake2b,
            CHECKSUM: crc32,
        }
    _write_json(folder / MANIFEST, _modality_manifest(modality, described, extra))


def _modality_manifest(modality, described: dict, extra: Mapping | None = None) -> dict:
    """The manifest of a modality (a TokenizedModality or a :class:`ModalityLayout`) with arrays ``described``."""
    return {
        "format": CACHE_FORMAT,
        "name": modality.name,
        "token_names": list(modality.token_names),
        "feature_names": None if modality.feature_names is None else list(modality.feature_names),
        "categories": {k: list(v) for k, v in modality.categories.items()},
        "source": _jsonable(modality.source, strict=False),
        "arrays": described,
        **(extra or {}),
    }


def _hash_path(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _blocks(path: Path):
    """The bytes of ``path`` in large blocks, read into one reused buffer (no allocation per block)."""
    buffer = bytearray(VERIFY_BLOCK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buffer)
            if not n:
                return
            yield view[:n]


def _checksums(path: Path) -> tuple[str, int]:
    """blake2b (the content key) and CRC-32 (what loading verifies) of a file just written, in one read."""
    digest, crc = hashlib.blake2b(digest_size=16), 0
    for block in _blocks(path):
        digest.update(block)
        crc = zlib.crc32(block, crc)
    return digest.hexdigest(), crc


def _crc32_path(path: Path) -> int:
    crc = 0
    for block in _blocks(path):
        crc = zlib.crc32(block, crc)
    return crc


def _stat_key(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# file identity and stat -> checksum it was verified to have, in this process (forked loader workers inherit
# it): a cohort opened again by the same run (the dataset in each worker, ablation cells) is not re-read.
# Any write to the file changes its ctime, which no user can set back, so a changed file is read again.
_VERIFIED: dict[tuple[int, ...], object] = {}


def _verify_array(path: Path, meta: Mapping) -> None:
    """Raise :class:`CorruptEntry` unless the file's content has the checksum recorded when it was written."""
    expected = meta.get(CHECKSUM)
    kind = CHECKSUM if expected is not None else "blake2b"
    if expected is None:
        expected = meta.get("blake2b")  # entries written before CRC-32 was recorded
    key = _stat_key(path)
    if _VERIFIED.get(key) == (kind, expected):
        return
    actual = _crc32_path(path) if kind == CHECKSUM else _hash_path(path)
    if actual != expected:
        raise CorruptEntry(
            f"content differs from the {kind} checksum recorded when it was written (changed or damaged"
            " since); write or build it again",
            file=path,
        )
    _VERIFIED[key] = (kind, expected)


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


def read_modality(folder: str | os.PathLike, *, mmap: bool = True, verify: bool = True) -> TokenizedModality:
    """A modality written by :func:`write_modality`, memory-mapped read-only when ``mmap``.

    ``verify``: read every array once and compare its CRC-32 with the one recorded when it was written (the
    cost is a sequential read; see BENCHMARKS.md); ``False`` checks sizes, shapes and names only.
    Raises :class:`CorruptEntry` when a file is missing, truncated or changed, or shapes and names disagree.
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
        if verify:
            _verify_array(path, meta)
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
    subject_ids = arrays["subject_ids"].astype(object)
    try:
        # validated on the first row only: the +-inf scan of every value ran when the entry was written, and
        # repeating it here would read the whole file on every load (and map all of it into memory)
        modality = TokenizedModality(
            name=manifest["name"],
            values=arrays["values"][:1],
            present=arrays["present"][:1],
            token_names=token_names,
            subject_ids=subject_ids[:1],
            feature_mask=arrays["feature_mask"],
            feature_names=manifest.get("feature_names"),
            categories=manifest.get("categories") or {},
            source=manifest.get("source") or {},
        )
        # plain ndarray views of the maps, as TokenizedModality itself would hold them
        modality.values, modality.present = np.asarray(arrays["values"]), np.asarray(arrays["present"])
        modality.subject_ids = subject_ids
    except AdapterError as err:
        raise CorruptEntry(f"entry does not make a valid modality: {err}", file=folder) from err
    return modality


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
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_failure(err, parent, f"creating {parent}") from err
    return parent / f".tmp-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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


# ---------------------------------------------------------------------------------------------- whole cohort
def _safe_name(name: str) -> str:
    # the model's rule (names become parameter keys and MLflow keys too), checked here so that a cohort written
    # for mot-neuro cannot hold a name training would refuse; mot_neuro.names imports nothing but re
    from mot_neuro.names import name_problem

    problem = name_problem(name)
    if problem:
        raise AdapterError(problem)
    return name


def _check_destination(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()) and not (folder / COHORT_MANIFEST).is_file():
        raise AdapterError("folder exists and is not a saved cohort; choose an empty or new folder", file=folder)


def _write_participants(table: pd.DataFrame, subject_ids, id_column: str, path: Path, folder: Path) -> None:
    table = table.copy()
    table.index = pd.Index(subject_ids, name=id_column)
    try:
        table.reset_index().to_parquet(path, index=False)
    except (ValueError, TypeError, ImportError) as err:
        raise AdapterError(f"participants cannot be written as parquet: {err}", file=folder) from err
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _write_cohort_manifest(folder: Path, **entries) -> None:
    """cohort.json, with the CRC-32 of the participants table written before it (targets, confounds: checked
    on load like the arrays)."""
    entries["participants_" + CHECKSUM] = _crc32_path(folder / PARTICIPANTS)
    _write_json(folder / COHORT_MANIFEST, {"format": CACHE_FORMAT, **entries})


def save_cohort(cohort: Cohort, folder: str | os.PathLike) -> Path:
    """Write ``cohort`` into ``folder`` (participants.parquet, cohort.json, modalities/<name>/), atomically.

    An existing saved cohort in ``folder`` is replaced; any other non-empty folder is refused.
    """
    folder = Path(folder).absolute()
    _check_destination(folder)
    names = [_safe_name(n) for n in cohort.modalities]
    tmp = temporary_folder(folder.parent, folder.name)
    try:
        tmp.mkdir()
        _write_participants(cohort.participants, cohort.subject_ids, cohort.id_column, tmp / PARTICIPANTS, folder)
        for name in names:
            write_modality(cohort.modalities[name], tmp / "modalities" / name)
        _write_cohort_manifest(
            tmp,
            id_column=cohort.id_column,
            targets=list(cohort.targets),
            confounds=list(cohort.confounds),
            join=cohort.join,
            modalities=names,
            n_subjects=cohort.n_subjects,
            build_info=_jsonable(cohort.build_info, strict=False),
        )
        replace_folder(tmp, folder)
    except OSError as err:
        raise storage_failure(err, folder.parent, f"writing the cohort {folder.name}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@dataclass
class ModalityLayout:
    """The shape of one modality before any subject is written (fields as in ``TokenizedModality``)."""

    token_names: Sequence[str]
    n_features: int = 1
    feature_mask: np.ndarray | None = None
    """bool ``[T, F]``; default all True."""
    feature_names: Sequence[str] | None = None
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)
    source: Mapping = field(default_factory=dict)


class _ModalityStream:
    """One modality's ``values.npy`` and ``present.npy``, appended to in subject order and hashed as written."""

    def __init__(self, name: str, layout: ModalityLayout, folder: Path, n_subjects: int):
        n_tokens, n_features = len(layout.token_names), int(layout.n_features)
        if n_features < 1:
            raise AdapterError(f"modality {name!r}: n_features must be >= 1, got {n_features}")
        mask = np.ones((n_tokens, n_features), bool) if layout.feature_mask is None else layout.feature_mask
        # an empty TokenizedModality runs every check of names, feature mask and categories
        template = TokenizedModality(
            name=name,
            values=np.zeros((0, n_tokens, n_features), np.float32),
            present=np.zeros((0, n_tokens), bool),
            token_names=list(layout.token_names),
            subject_ids=[],
            feature_mask=np.asarray(mask, dtype=bool),
            feature_names=None if layout.feature_names is None else list(layout.feature_names),
            categories={str(k): [str(c) for c in v] for k, v in dict(layout.categories).items()},
            source=dict(layout.source),
        )
        unknown = sorted(set(template.categories) - set(template.token_names))
        if unknown:
            raise AdapterError(f"modality {name!r}: categories name tokens {unknown[:5]} it does not have")
        self.template, self.folder = template, folder
        self.shape = (n_tokens, n_features)
        self.with_data = 0
        folder.mkdir(parents=True)
        _fsync_write_npy(folder / "feature_mask.npy", np.ascontiguousarray(template.feature_mask))
        self.files, self.digests, self.crcs = {}, {}, {}
        for array_name, dtype, shape in (
            ("values", np.float32, (n_subjects, n_tokens, n_features)),
            ("present", np.bool_, (n_subjects, n_tokens)),
        ):
            path = folder / f"{array_name}.npy"
            # open_memmap writes the exact header np.save would; the data then goes through plain appends,
            # which (unlike stores into a map) leave no written pages in this process's resident set
            header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            offset = header.offset
            del header
            fh = open(path, "r+b")  # closed by finish() or close()
            digest = hashlib.blake2b(digest_size=16)
            head = fh.read(offset)
            digest.update(head)
            self.files[array_name], self.digests[array_name] = fh, digest
            self.crcs[array_name] = zlib.crc32(head)

    def check(self, values, present, n: int, block: int, subject_ids: np.ndarray, file: Path):
        name = self.template.name
        values = np.ascontiguousarray(values, dtype=np.float32)
        present = np.ascontiguousarray(present, dtype=bool)
        if values.shape != (n, *self.shape):
            raise AdapterError(
                f"block {block}, modality {name!r}: values have shape {values.shape}, expected {(n, *self.shape)}"
                f" ({n} subjects in the block's participants, {self.shape[0]} tokens x {self.shape[1]} features)",
                file=file,
            )
        if present.shape != (n, self.shape[0]):
            raise AdapterError(
                f"block {block}, modality {name!r}: present has shape {present.shape}, expected {(n, self.shape[0])}",
                file=file,
            )
        check_finite_or_missing(values, file=file, token_names=self.template.token_names, subject_ids=subject_ids)
        return values, present

    def write(self, values: np.ndarray, present: np.ndarray) -> None:
        for array_name, array in (("values", values), ("present", present)):
            data = memoryview(array).cast("B")
            self.files[array_name].write(data)
            self.digests[array_name].update(data)
            self.crcs[array_name] = zlib.crc32(data, self.crcs[array_name])
        self.with_data += int(present.any(axis=1).sum())

    def finish(self, subject_ids: np.ndarray) -> None:
        described = {}
        for fh in self.files.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        ids = subject_ids if len(subject_ids) else subject_ids.astype("<U1")
        _fsync_write_npy(self.folder / "subject_ids.npy", ids)
        n = len(subject_ids)
        streamed = {name: (self.digests[name].hexdigest(), self.crcs[name]) for name in self.files}
        arrays = {
            "values": ((n, *self.shape), np.dtype(np.float32).str, streamed["values"]),
            "present": ((n, self.shape[0]), np.dtype(bool).str, streamed["present"]),
            "feature_mask": (self.shape, np.dtype(bool).str, _checksums(self.folder / "feature_mask.npy")),
            "subject_ids": ((n,), ids.dtype.str, _checksums(self.folder / "subject_ids.npy")),
        }
        for array_name, (shape, dtype, (digest, crc)) in arrays.items():
            size = (self.folder / f"{array_name}.npy").stat().st_size
            described[array_name] = {
                "shape": list(shape),
                "dtype": dtype,
                "bytes": size,
                "blake2b": digest,
                CHECKSUM: crc,
            }
        _write_json(self.folder / MANIFEST, _modality_manifest(self.template, described))

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


class CohortWriter:
    """Writes a cohort block by block of subjects, in :func:`save_cohort`'s format, never holding it whole.

    ::

        layouts = {"gene": ModalityLayout(gene_names), "brain": ModalityLayout(regions, n_features=4)}
        with CohortWriter("cohort", n_subjects=N, modalities=layouts, targets=["target"]) as writer:
            for participants, arrays in blocks:  # arrays: {"gene": (values [n, T, F], present [n, T]), ...}
                writer.append(participants, arrays)
        cohort = load_cohort("cohort")  # memory-mapped

    ``participants`` of a block is a DataFrame holding the subjects' IDs (column ``id_column``, else its
    index) and the same columns in every block; row ``i`` of every array is its subject ``i``. A subject with
    no data in a modality has ``present`` all False there (an outer join). Everything goes into a temporary
    folder beside ``folder``, renamed into place by :meth:`close` (leaving the ``with`` block without an
    error) only when exactly ``n_subjects`` were written: a failure or a crash leaves nothing at ``folder``.
    Memory holds one block, the subject IDs and the participants table (a few columns per subject).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        n_subjects: int,
        modalities: Mapping[str, ModalityLayout],
        targets: Sequence[str] = (),
        confounds: Sequence[str] = (),
        id_column: str = DEFAULT_ID_COLUMN,
        join: str = "outer",
        build_info: Mapping | None = None,
    ) -> None:
        self.folder = Path(folder).absolute()
        _check_destination(self.folder)
        if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 0:
            raise AdapterError(f"n_subjects must be a non-negative integer, got {n_subjects!r}")
        if not modalities:
            raise AdapterError("no modalities given; pass a dict of name -> ModalityLayout")
        self.n_subjects = int(n_subjects)
        self.targets, self.confounds = [str(t) for t in targets], [str(c) for c in confounds]
        self.id_column, self.join = id_column, join
        self.build_info = None if build_info is None else dict(build_info)
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._tables: list[pd.DataFrame] = []
        self._columns: list[str] | None = None
        self._streams: dict[str, _ModalityStream] = {}
        self._tmp = temporary_folder(self.folder.parent, self.folder.name)
        try:
            self._tmp.mkdir()
        except OSError as err:
            raise storage_failure(err, self.folder.parent, f"writing the cohort {self.folder.name}") from err
        self._open = True
        # a writer dropped without close() or a with block (an exception in the caller's loop) still cleans up
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, ignore_errors=True)
        try:
            for name, layout in modalities.items():
                if not isinstance(layout, ModalityLayout):
                    raise AdapterError(f"modality {name!r}: expected a ModalityLayout, got {type(layout).__name__}")
                folder = self._tmp / "modalities" / _safe_name(str(name))
                self._streams[str(name)] = _ModalityStream(str(name), layout, folder, self.n_subjects)
        except BaseException as err:
            self.abort()
            if isinstance(err, OSError):
                raise storage_failure(err, self.folder.parent, f"writing the cohort {self.folder.name}") from err
            raise

    @property
    def n_written(self) -> int:
        return len(self._ids)

    def append(self, participants: pd.DataFrame, modalities: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Add the block's subjects: ``modalities`` maps every modality to ``(values, present)`` of those subjects.

        A rejected block (wrong shapes, a repeated or missing ID, other columns, +-inf) writes nothing.
        """
        if not self._open:
            raise AdapterError("the cohort writer is closed", file=self.folder)
        block = len(self._tables)
        where = f"block {block} of participants"
        if not isinstance(participants, pd.DataFrame):
            raise AdapterError(f"{where} is a {type(participants).__name__}, expected a pandas DataFrame")
        table = participants
        if self.id_column in table.columns:
            table = table.set_index(self.id_column)
        ids = normalize_ids(table.index, file=where, column=self.id_column).astype(str)
        id_list = ids.tolist()  # one Python string per subject, shared by the index, the list and the set
        repeated = [sid for sid in id_list if sid in self._seen]
        if repeated:
            raise AdapterError(
                f"{len(repeated)} subject ID(s) of {where} were already written in an earlier block; each subject"
                " goes into exactly one block",
                file=self.folder,
                column=self.id_column,
                subject=repeated[0],
            )
        table = table.copy()
        table.columns = [str(c) for c in table.columns]
        table.index = pd.Index(id_list, dtype=object, name=self.id_column)
        if self._columns is None:
            missing = [c for c in [*self.targets, *self.confounds] if c not in table.columns]
            if missing:
                raise AdapterError(f"target/confound column(s) {missing} not in {where}", file=self.folder)
        elif set(table.columns) != set(self._columns):
            raise AdapterError(
                f"{where} has columns {sorted(table.columns)}, the first block had {sorted(self._columns)}",
                file=self.folder,
            )
        else:
            table = table[self._columns]
        if self.n_written + len(ids) > self.n_subjects:
            raise AdapterError(
                f"{where} brings the count to {self.n_written + len(ids)} subjects, more than n_subjects"
                f" ({self.n_subjects})",
                file=self.folder,
            )
        unknown = sorted(set(modalities) - set(self._streams))
        lacking = sorted(set(self._streams) - set(modalities))
        if unknown or lacking:
            raise AdapterError(
                f"block {block} must give every modality {sorted(self._streams)} (a subject without one has"
                f" present all False); unknown: {unknown}, missing: {lacking}",
                file=self.folder,
            )
        checked = {}
        for name, stream in self._streams.items():
            pair = modalities[name]
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise AdapterError(f"block {block}, modality {name!r}: give a (values, present) pair", file=self.folder)
            checked[name] = stream.check(pair[0], pair[1], len(ids), block, ids, self.folder)
        try:
            for name, (values, present) in checked.items():
                self._streams[name].write(values, present)
        except BaseException as err:
            self.abort()  # a half-written block cannot be taken back
            if isinstance(err, OSError):
                raise storage_failure(err, self.folder.parent, f"writing the cohort {self.folder.name}") from err
            raise
        self._columns = list(table.columns)
        self._tables.append(table)
        self._ids.extend(id_list)
        self._seen.update(id_list)

    def close(self) -> Path:
        """Finish the files and rename the folder into place; returns it. Fails (and cleans up) unless exactly
        ``n_subjects`` were written."""
        if not self._open:
            raise AdapterError("the cohort writer is closed", file=self.folder)
        try:
            if self.n_written != self.n_subjects:
                raise AdapterError(
                    f"{self.n_written} subjects written, but n_subjects is {self.n_subjects}; nothing was saved",
                    file=self.folder,
                )
            subject_ids = np.array(self._ids, dtype=str)
            if self._tables:
                table = pd.concat(self._tables)
            else:
                table = pd.DataFrame(index=pd.Index(subject_ids, name=self.id_column))
            for stream in self._streams.values():
                stream.finish(subject_ids)
            _write_participants(table, subject_ids, self.id_column, self._tmp / PARTICIPANTS, self.folder)
            build_info = self.build_info
            if build_info is None:
                build_info = {
                    "n_participants": self.n_subjects,
                    "modality_inputs": {
                        name: {"subjects": self.n_subjects, "with_data": s.with_data, "not_in_participants": 0}
                        for name, s in self._streams.items()
                    },
                }
            _write_cohort_manifest(
                self._tmp,
                id_column=self.id_column,
                targets=self.targets,
                confounds=self.confounds,
                join=self.join,
                modalities=list(self._streams),
                n_subjects=self.n_subjects,
                build_info=_jsonable(build_info, strict=False),
            )
            replace_folder(self._tmp, self.folder)
        except OSError as err:
            raise storage_failure(err, self.folder.parent, f"writing the cohort {self.folder.name}") from err
        finally:
            self.abort()
        return self.folder

    def abort(self) -> None:
        """Drop everything written so far (the destination is left as it was)."""
        for stream in self._streams.values():
            stream.close()
        self._finalizer()  # removes the temporary folder (once)
        self._open = False

    def __enter__(self) -> CohortWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.close()


def saved_cohort_info(folder: str | os.PathLike) -> dict:
    """The contents of a saved cohort's ``cohort.json`` (modality names, targets, size ...), checked."""
    folder = Path(folder)
    path = folder / COHORT_MANIFEST
    try:
        meta = json.loads(path.read_text())
        meta["modalities"] = list(meta["modalities"])
        meta["id_column"] = str(meta["id_column"])
    except FileNotFoundError as err:
        raise CorruptEntry("not a saved cohort (cohort.json missing)", file=folder) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CorruptEntry(f"cohort.json unreadable ({err})", file=path) from err
    if meta.get("format") != CACHE_FORMAT:
        raise CorruptEntry(f"saved with cohort format {meta.get('format')}, this code reads {CACHE_FORMAT}", file=path)
    return meta


def cohort_fingerprint(folder: str | os.PathLike) -> str:
    """A key of a saved cohort's content, whatever its path: its cohort.json, participants and the modality
    manifests (which hold the hash of every array), so computing it reads no array."""
    folder = Path(folder)
    meta = saved_cohort_info(folder)
    digest = hashlib.blake2b(digest_size=16)
    files = [folder / COHORT_MANIFEST, folder / PARTICIPANTS]
    files += [folder / "modalities" / name / MANIFEST for name in meta["modalities"]]
    for path in files:
        if not path.is_file():
            raise CorruptEntry("file of the saved cohort missing", file=path)
        digest.update(_hash_path(path).encode())
    return digest.hexdigest()


def load_cohort(folder: str | os.PathLike, *, mmap: bool = True, verify: bool = True) -> Cohort:
    """A cohort written by :func:`save_cohort` or :class:`CohortWriter`; modality arrays memory-mapped read-only
    when ``mmap``.

    ``verify`` (default): every array's content is checked against the CRC-32 recorded when it was written
    (once per file and change in a process; see :func:`read_modality`).
    Raises :class:`CorruptEntry` (an :class:`AdapterError`) when any file is missing, truncated, changed or
    inconsistent: save the cohort again.
    """
    folder = Path(folder)
    meta = saved_cohort_info(folder)
    names, id_column = meta["modalities"], meta["id_column"]
    recorded = meta.get("participants_" + CHECKSUM)
    if verify and recorded is not None and (folder / PARTICIPANTS).is_file():  # None: saved before it was recorded
        _verify_array(folder / PARTICIPANTS, {CHECKSUM: recorded})
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


def release_pages(*arrays: np.ndarray) -> int:
    """Drop the pages of these memory-mapped arrays from this process's resident set; returns how many maps.

    The pages stay in the OS page cache, so the next read of them is a cheap minor fault; without this, a
    pass over a cohort leaves every page it read counted in the process's RSS (what schedulers and
    ``ru_maxrss`` see). Arrays that are not memory-mapped are skipped.
    """
    released = 0
    if not hasattr(mmap_module, "MADV_DONTNEED"):  # not on this platform: nothing to do
        return released
    for array in arrays:
        base = array
        while base is not None and not isinstance(base, mmap_module.mmap):
            base = getattr(base, "base", None)
        if base is not None and not base.closed:
            base.madvise(mmap_module.MADV_DONTNEED)
            released += 1
    return released
