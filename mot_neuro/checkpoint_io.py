"""Checkpoints written durably: a temporary file in the checkpoint's own folder, fsync, rename.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction that puts the bytes in the system's
temporary folder and moves them: across file systems that move is a copy, and a full disk left a truncated
``best-epoch=0.ckpt`` under its final name. :class:`AtomicCheckpointIO` writes ``.<name>.tmp-<pid>-<rand>``
beside the final file (same file system, so the rename is atomic), flushes it to disk, renames it and
syncs the folder. When anything fails the temporary file is removed, the previous checkpoint of that name
(if any) is untouched, and the error is a :class:`CheckpointWriteError` naming the folder and what to do
(the CLI prints it as one line, exit status 2; Lightning marks the MLflow run FAILED on the way out).

Every mot-neuro trainer gets it (``mot_neuro.cli``) unless the config sets its own ``CheckpointIO`` plugin,
so ModelCheckpoint (best, last, ``last-step``) and ``SaveOnSigterm`` (``last-sigterm``) all go through it.
Remote paths (``s3://`` ...) are left to Lightning's own writer.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from data_adapters.errors import AdapterError
from data_adapters.io import nearly_full, storage_problem

TEMPORARY_MARK = ".tmp-"


class StorageError(AdapterError):
    """A folder that cannot take the files a run must write there (read-only, full, not a folder)."""


class CheckpointWriteError(StorageError):
    """A checkpoint could not be written (full or read-only folder); nothing partial was left behind."""


def _is_local(path) -> bool:
    text = os.fspath(path)
    return "://" not in text or text.startswith("file://")


def _local_path(path) -> Path:
    text = os.fspath(path)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (the folder's entry); not possible everywhere, and only then skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable_folder(folder: str | os.PathLike, what: str, fix: str) -> Path:
    """Create ``folder`` if needed and write (then remove) a small file in it, so that a read-only or full
    folder is found before hours of work, not at the first save. Raises :class:`StorageError`."""
    folder = Path(folder)
    probe = folder / f".write-test{TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"0")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise StorageError(storage_problem(err, folder, what, fix), file=folder) from err
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return folder


def write_checkpoint(checkpoint: dict[str, Any], handle) -> None:
    """The bytes of a checkpoint into an open file (streamed by torch.save, never a whole copy in memory)."""
    torch.save(checkpoint, handle)


def _os_error_in(err: BaseException) -> OSError | None:
    """The first OSError in an exception's chain (its causes and the exceptions it was raised while handling)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes to a temporary file beside the checkpoint, fsyncs and renames it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        final = _local_path(path).absolute()
        folder = final.parent
        fix = "free space there or point the checkpoints elsewhere (--checkpoint_dir, or ModelCheckpoint's dirpath)"
        tmp = folder / f".{final.name}{TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                write_checkpoint(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException as err:
            # torch's zip writer reports a failed write as a RuntimeError ("file write failed", or "unexpected pos"
            # when it raised while closing after an ENOSPC): the OSError is in its chain, or the folder is full
            full = isinstance(err, RuntimeError) and nearly_full(folder)  # asked before the partial file goes
            try:
                tmp.unlink()
            except OSError:
                pass
            if not isinstance(err, OSError):
                err = _os_error_in(err) or (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if full else err)
            if isinstance(err, OSError):
                message = storage_problem(err, folder, f"writing checkpoint {final.name}", fix)
                raise CheckpointWriteError(f"{message} (no partial file was left)", file=folder) from err
            raise
        _sync_folder(folder)


def with_atomic_checkpoint_io(plugins):
    """``plugins`` (None, one plugin or a list, as the Trainer takes them) plus :class:`AtomicCheckpointIO`,
    unless one of them already is a ``CheckpointIO`` (the user's choice wins)."""
    listed = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in listed):
        return plugins
    return [*listed, AtomicCheckpointIO()]
