"""The on-disk form of one tokenized modality: ``.npy`` arrays and a manifest with their checksums.

Cache layout (one folder per entry, under ``cache_dir``)::

    <name>-<slot>/            slot = hash of the input paths and the adapter settings
        manifest.json         format, fingerprint, settings, per-input details, token/feature names, categories,
                              source, and the shape, dtype, byte size, blake2b and CRC-32 of every array
        values.npy            float32 [N, T, F]
        present.npy           bool [N, T]
        feature_mask.npy      bool [T, F]
        subject_ids.npy       unicode [N] (never pickled)

Content verification. Every array's CRC-32 (and blake2b, the content key) is recorded in the manifest as it
is written. Loading checks shapes, sizes and names, and by default (``verify=True``) reads every array once,
sequentially, and compares its CRC-32: rows rewritten in place with the same size and mtime are caught (a
built cohort is then rebuilt; a saved ``cohort_dir`` is refused, naming the file). The values are not
scanned again for +-inf (they were when written, and the checksum says they are those bytes). Cost: one
sequential read of the arrays, from the page cache or the disk (figures in BENCHMARKS.md); a file whose stat
is unchanged since it was verified in this process is not read again. ``verify=False`` opens any cohort
without reading a value.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .core import AdapterError, TokenizedModality

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
ARRAY_NAMES = ("values", "present", "feature_mask", "subject_ids")
CHECKSUM = "crc32"
"""The per-array checksum recorded at write time and verified on every load (a fast sequential read)."""
VERIFY_BLOCK_BYTES = 8 << 20


class CorruptEntry(AdapterError):
    """A cache entry or saved cohort that cannot be trusted (missing, truncated or inconsistent files)."""


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
    """The manifest of a modality (a TokenizedModality, or a writer's template) with arrays ``described``."""
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
