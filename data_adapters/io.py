"""Generic file helpers of the data layer and the training side: atomic writes, folder swaps, words for
storage failures, releasing memory-mapped pages.

Standard library only (it imports no reader, no pandas, no nibabel, no torch), so that ``mot_neuro``'s
analysis, splits and checkpoint code can use it cheaply.
"""

from __future__ import annotations

import errno
import mmap as mmap_module
import os
import shutil
import uuid
from pathlib import Path

from .errors import AdapterError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temporary file beside ``path`` and rename it: readers see the old file or the complete new
    one, never a partial one; a failed write leaves no temporary file behind. Returns ``path``."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


STORAGE_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
STORAGE_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def nearly_full(folder: str | os.PathLike) -> bool:
    """Less than 1 MiB left for us on ``folder``'s file system (some writers report a full disk without errno:
    numpy's short write, torch's zip writer)."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < (1 << 20)


def storage_problem(err: OSError, folder: str | os.PathLike, what: str, fix: str) -> str:
    """``what`` failed in ``folder`` because of ``err``, said in words a user acts on, ending with ``fix``: the
    one wording of full and read-only folders for the cache, checkpoints and the MLflow store."""
    if err.errno in STORAGE_FULL or (err.errno is None and nearly_full(folder)):
        cause = "no space left on the device (or quota exceeded)"
    elif err.errno in STORAGE_READ_ONLY:
        cause = "not writable (read-only file system or permissions)"
    else:
        cause = err.strerror or str(err) or type(err).__name__
    return f"{what} failed: {cause}; {fix}"


def storage_failure(err: OSError, folder: Path, what: str) -> AdapterError:
    """One line for a write that failed in ``folder`` (full, read-only ...), saying what to do; the callers
    have removed what they had written."""
    fix = (
        "nothing partial was kept. Free space or make the folder writable, or choose another one (cache_dir, or"
        " the cohort's folder)"
    )
    return AdapterError(storage_problem(err, folder, what, fix), file=folder)


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


def release_pages(*arrays) -> int:
    """Drop the pages of these memory-mapped (numpy) arrays from this process's resident set; returns how many maps.

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
