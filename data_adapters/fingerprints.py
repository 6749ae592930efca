"""Content keys of cache inputs: file fingerprints, the stat index that spares re-reading unchanged files,
and the key of input files plus adapter settings.

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .core import AdapterError
from .io import atomic_write_bytes
from .store import CACHE_FORMAT, _jsonable

SMALL_FILE_BYTES = 1 << 20
EDGE_BYTES = 64 << 10
STAT_INDEX = ".fingerprint-index.json"
STAT_INDEX_FORMAT = 1
RACY_SECONDS = 2.0
"""A file modified this recently when hashed is not recorded in the stat index (coarse file-system clocks)."""

log = logging.getLogger(__name__)


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
