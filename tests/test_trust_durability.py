"""Cache truth, durable checkpoints and faults of the environment, every case through ``mot-neuro``.

* A cache whose arrays were rewritten in place (same size, mtime restored) is rebuilt (a built cohort) or
  refused in one line (a saved ``cohort_dir``, which cannot be rebuilt): never trusted.
* A checkpoint write that fails (disk full mid-write, read-only folder) leaves no ``.ckpt`` and no temporary
  file, marks the MLflow run FAILED and ends with one line naming the folder, exit 2; for best, last,
  every-n-steps and SIGTERM checkpoints alike.
* A read-only or full folder (MLflow store, its artifact root, checkpoints, cache) ends fast with one line
  naming the folder; two runs creating the same new ``mlflow.db`` at once both succeed.

Faults come two ways: injected into the write (half a file, then ``ENOSPC``), and real ones from a small or
read-only tmpfs mounted for the test. Tests run as root here, and root ignores permission bits, so a
read-only folder is a read-only mount (``mount -o remount,ro``); where mounting is not permitted those
cases are skipped.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import DEBUG_TRAINER, EXPERIMENT, Case, assert_refused

import mot_neuro.checkpoint_io as checkpoint_io
from data_adapters import cache as cache_module

# one epoch of the CPU trainer config (it has ModelCheckpoint: best and last), no test afterwards
ONE_EPOCH = ("--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--test_after_fit", "false")
NO_MLFLOW_DEBUG = ("--trainer", str(DEBUG_TRAINER), "--trainer.logger", "false")  # cache cases: no MLflow
FAST_SECONDS = 60  # "fast": no retries for minutes (MLflow's retry loop on a read-only store took ~100 s)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="tmpfs mounts, fcntl locks and ENOSPC on Linux")


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def mounts():
    """Mount small or read-only tmpfs folders for a test (skips when mounting is not permitted)."""
    mounted: list[Path] = []

    def mount(folder: Path, *, size: str = "1m", read_only: bool = False, fill=None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:120]})")
        mounted.append(folder)
        if fill is not None:
            fill(folder)  # what must be there before the folder turns read-only
        if read_only:
            done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"cannot remount a tmpfs read-only here ({done.stderr.decode().strip()[:120]})")
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def run_statuses(folder: Path) -> list[str]:
    """The status of every MLflow run in ``folder/mlflow.db`` (read directly: no MLflow store is opened)."""
    database = folder / "mlflow.db"
    if not database.exists():
        return []
    with sqlite3.connect(database) as connection:
        return [row[0] for row in connection.execute("select status from runs")]


def leftovers(folder: Path) -> list[str]:
    """Checkpoints and temporary files under ``folder`` (none may survive a failed write)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob("*") if p.suffix == ".ckpt" or ".tmp" in p.name)


def fit(case: Case, *args, data: Path | None = None, trainer: tuple = ONE_EPOCH) -> tuple[int, str]:
    argv = ["fit", "--config", str(EXPERIMENT), "--data", str(data or case.data_config()), *trainer]
    return case.main(*argv, *map(str, args))


def half_written_then_full(names: tuple[str, ...] = ()):
    """A ``write_checkpoint`` that writes part of the file and then finds the disk full (for the checkpoints
    whose file name starts with one of ``names``; all when empty); the others are written for real."""
    real = checkpoint_io.write_checkpoint

    def write(checkpoint, handle) -> None:
        final_name = Path(handle.name).name.lstrip(".").split(checkpoint_io.TEMPORARY_MARK)[0]
        if names and not final_name.startswith(names):
            real(checkpoint, handle)
            return
        handle.write(b"PK\x03\x04" + b"\0" * 65536)  # the start of a zip archive, as torch.save begins
        handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def assert_one_error_line(status: int, stderr: str, *pieces: str) -> None:
    """Exit 2, no traceback, one error line (the last) holding every piece. For runs that reach MLflow, whose
    own INFO lines ("Creating initial MLflow database tables") go to stderr too; else see assert_refused."""
    assert status == 2, f"exit status {status!r}; stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert errors == [stderr.strip().splitlines()[-1]], stderr[-3000:]
    for piece in pieces:
        assert piece in errors[0], f"{piece!r} not in: {errors[0]}"


def assert_checkpoint_refused(case: Case, status: int, stderr: str, folder: Path, *pieces: str) -> None:
    assert_one_error_line(status, stderr, str(folder), *pieces)
    assert leftovers(folder) == [], leftovers(folder)
    assert run_statuses(case.folder) == ["FAILED"]


# ---------------------------------------------------------------------------------------------- class 8
@pytest.mark.slow  # an epoch of training through the CLI
def test_best_checkpoint_disk_full_mid_write(case, monkeypatch):
    monkeypatch.setattr(checkpoint_io, "write_checkpoint", half_written_then_full())
    folder = case.path("ckpts")
    status, stderr = fit(case, "--checkpoint_dir", folder)
    assert_checkpoint_refused(case, status, stderr, folder, "best-epoch=0.ckpt", "no space left")


@pytest.mark.slow  # an epoch of training through the CLI
def test_every_n_steps_checkpoint_disk_full_mid_write(case, monkeypatch):
    monkeypatch.setattr(checkpoint_io, "write_checkpoint", half_written_then_full(("last-step",)))
    folder = case.path("ckpts")
    status, stderr = fit(case, "--checkpoint_dir", folder, "--checkpoint_every_n_steps", "1")
    assert_checkpoint_refused(case, status, stderr, folder, "last-step.ckpt", "no space left")


@pytest.mark.slow  # an epoch of training through the CLI
def test_last_checkpoint_disk_full_keeps_the_previous_one(case, monkeypatch):
    """Epoch 1 saves best and last; epoch 2's last fails mid-write: the old last.ckpt stays, whole."""
    folder = case.path("ckpts")
    status, stderr = fit(case, "--checkpoint_dir", folder, "--trainer.logger", "false")
    assert status == 0, stderr[-3000:]
    before = (folder / "last.ckpt").read_bytes()
    monkeypatch.setattr(checkpoint_io, "write_checkpoint", half_written_then_full(("last",)))
    status, stderr = fit(
        case,
        "--checkpoint_dir",
        folder,
        "--ckpt_path",
        "last",
        "--trainer.logger",
        "false",
        trainer=("--trainer.max_epochs", "2", *ONE_EPOCH[2:]),
    )
    assert_refused(status, stderr, str(folder), "last.ckpt", "no space left")
    assert (folder / "last.ckpt").read_bytes() == before
    assert [name for name in leftovers(folder) if ".tmp" in name] == []


SIGTERM_RUNNER = textwrap.dedent(
    """
    import sys
    import mot_neuro.checkpoint_io as checkpoint_io
    from test_trust_durability import half_written_then_full
    checkpoint_io.write_checkpoint = half_written_then_full(("last-sigterm",))
    from mot_neuro.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow  # a fit in a process of its own, stopped by a signal
def test_sigterm_checkpoint_disk_full_mid_write(case):
    """The scheduler's SIGTERM (a real signal) arrives, last-sigterm.ckpt cannot be written: FAILED, one line."""
    import signal

    from test_faults import environment, wait_for_hold

    folder = case.path("ckpts")
    argv = ["fit", "--config", str(EXPERIMENT), "--data", str(case.data_config()), *ONE_EPOCH]
    argv += ["--checkpoint_dir", str(folder), "--trainer.callbacks+=faults_support.HoldForSignal"]
    process = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_RUNNER, *argv],
        cwd=case.folder,
        env=environment(case.folder, hold_at="fit:1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_hold(process, case.folder)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert_checkpoint_refused(case, process.returncode, stderr, folder, "last-sigterm.ckpt", "no space left")


@pytest.mark.slow  # an epoch of training through the CLI
def test_checkpoint_on_a_really_full_filesystem(case, mounts):
    """A 1 MiB file system and a 2 MB checkpoint: a real ENOSPC from the kernel."""
    folder = mounts(case.path("small"), size="1m")
    status, stderr = fit(case, "--checkpoint_dir", folder)
    assert_checkpoint_refused(case, status, stderr, folder, "no space left")


@pytest.mark.slow  # the CLI up to the trainer and its MLflow store
def test_read_only_checkpoint_folder_stops_before_training(case, mounts):
    folder = mounts(case.path("readonly"), read_only=True)
    started = time.monotonic()
    status, stderr = fit(case, "--checkpoint_dir", folder / "ckpts", trainer=("--trainer.max_epochs", "30"))
    assert_one_error_line(status, stderr, str(folder / "ckpts"), "not writable")
    assert time.monotonic() - started < FAST_SECONDS  # refused at the start, not after 30 epochs
    assert run_statuses(case.folder) == ["FAILED"]


def test_own_checkpoint_io_plugin_is_kept():
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    own = TorchCheckpointIO()
    assert checkpoint_io.with_atomic_checkpoint_io([own]) == [own]
    assert [type(p) for p in checkpoint_io.with_atomic_checkpoint_io(None)] == [checkpoint_io.AtomicCheckpointIO]
    assert len(checkpoint_io.with_atomic_checkpoint_io("bf16-mixed")) == 2  # a precision string is not one


# ---------------------------------------------------------------------------------------------- class 9: MLflow
def test_read_only_working_folder_names_the_mlflow_store(case, mounts, monkeypatch):
    work = mounts(case.path("work"), read_only=True)
    monkeypatch.chdir(work)
    started = time.monotonic()
    status, stderr = fit(case, data=case.data_config(), trainer=("--trainer", str(DEBUG_TRAINER)))
    assert_refused(status, stderr, str(work), "mlflow.db", "not writable")
    assert time.monotonic() - started < FAST_SECONDS


def test_read_only_existing_mlflow_database(case, mounts):
    """The folder is writable, the existing database is not (it lives on a read-only mount)."""
    store = mounts(case.path("store"), read_only=True, fill=lambda f: (f / "mlflow.db").write_bytes(b""))
    (case.folder / "mlflow.db").symlink_to(store / "mlflow.db")
    status, stderr = fit(case, trainer=("--trainer", str(DEBUG_TRAINER)))
    assert_refused(status, stderr, "mlflow.db", "not writable")


def test_read_only_artifact_root(case, mounts):
    mounts(case.path("mlruns"), read_only=True)
    status, stderr = fit(case, trainer=("--trainer", str(DEBUG_TRAINER)))
    assert_refused(status, stderr, str(case.path("mlruns")), "artifacts", "not writable")


CREATE_STORE = textwrap.dedent(
    """
    import sys, time
    start_at = float(sys.argv[1])
    from mot_neuro.tracking import MLflowLogger
    time.sleep(max(0.0, start_at - time.time()))  # both processes reach the new store at the same moment
    logger = MLflowLogger(experiment_name="race")
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    print(logger.run_id)
    """
)


@pytest.mark.slow
def test_two_runs_create_the_same_new_store_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for attempt in range(2):  # without the lock, each of 3 attempts failed: two catch a regression
        folder = tmp_path / f"attempt{attempt}"
        folder.mkdir()
        start_at = f"{time.time() + 6.0}"  # after both have imported MLflow and Lightning
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", CREATE_STORE, start_at],
                cwd=folder,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [p.communicate(timeout=180) + (p.returncode,) for p in processes]
        for _, err, code in results:
            assert code == 0, err[-3000:]
        assert len({out.strip() for out, _, _ in results}) == 2  # two runs
        assert sorted(run_statuses(folder)) == ["FINISHED", "FINISHED"]


# ---------------------------------------------------------------------------------------------- class 9: cache
def cache_entries(cache_dir: Path) -> list[str]:
    return (
        sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith(".fingerprint"))
        if cache_dir.exists()
        else []
    )


def test_cache_disk_full_mid_write(case, monkeypatch):
    cache_dir = case.path("cache")
    real = cache_module._fsync_write_npy

    def half_then_full(path, array):
        if path.name == "values.npy":
            path.write_bytes(b"\x93NUMPY" + b"\0" * 1024)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, array)

    monkeypatch.setattr(cache_module, "_fsync_write_npy", half_then_full)
    status, stderr = fit(case, data=case.data_config(cache_dir=str(cache_dir)), trainer=NO_MLFLOW_DEBUG)
    assert_refused(status, stderr, str(cache_dir), "no space left")
    assert cache_entries(cache_dir) == []  # no partial entry, no temporary folder


def test_cache_on_a_really_full_filesystem(case, mounts):
    cache_dir = mounts(case.path("cache"), size="256k")  # the demo cohort's entry is ~600 KB
    status, stderr = fit(case, data=case.data_config(cache_dir=str(cache_dir)), trainer=NO_MLFLOW_DEBUG)
    assert_refused(status, stderr, str(cache_dir), "no space left")
    assert cache_entries(cache_dir) == []


def test_read_only_cache_folder(case, mounts):
    cache_dir = mounts(case.path("cache"), read_only=True)
    status, stderr = fit(case, data=case.data_config(cache_dir=str(cache_dir)), trainer=NO_MLFLOW_DEBUG)
    assert_refused(status, stderr, str(cache_dir), "not writable")


# ---------------------------------------------------------------------------------------------- class 7
def rewrite_rows_in_place(path: Path) -> None:
    """Change the middle of an array file without changing its size or its mtime (a copy tool, a bad disk)."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(stat.st_size // 2)
        chunk = handle.read(64)
        handle.seek(stat.st_size // 2)
        handle.write(bytes(b ^ 0x5A for b in chunk))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def built_entry(cache_dir: Path) -> Path:
    (entry,) = [p for p in cache_dir.iterdir() if p.name.startswith("cohort-")]
    return entry


def test_built_cache_rewritten_in_place_is_rebuilt(case):
    cache_dir = case.path("cache")
    data = case.data_config(cache_dir=str(cache_dir))
    status, stderr = fit(case, data=data, trainer=NO_MLFLOW_DEBUG)
    assert status == 0, stderr[-3000:]
    values = built_entry(cache_dir) / "modalities" / "brain" / "values.npy"
    original = values.read_bytes()
    rewrite_rows_in_place(values)
    status, stderr = fit(case, data=data, trainer=NO_MLFLOW_DEBUG)
    assert status == 0, stderr[-3000:]
    rebuilt = built_entry(cache_dir) / "modalities" / "brain" / "values.npy"
    assert rebuilt.read_bytes() == original  # rebuilt from the inputs, not trusted


@pytest.mark.parametrize(
    "changed",
    [
        "modalities/behaviour/values.npy",
        "modalities/behaviour/present.npy",
        "modalities/gene/subject_ids.npy",
        "participants.parquet",  # targets and confounds
    ],
)
def test_saved_cohort_rewritten_in_place_is_refused(case, changed):
    """A cohort_dir (written by CohortWriter or save_cohort) cannot be rebuilt: refuse, naming the file."""
    cache_dir = case.path("cache")
    status, stderr = fit(case, data=case.data_config(cache_dir=str(cache_dir)), trainer=NO_MLFLOW_DEBUG)
    assert status == 0, stderr[-3000:]
    cohort = case.path("cohort")
    shutil.copytree(built_entry(cache_dir), cohort)
    target = cohort / changed
    rewrite_rows_in_place(target)
    data = case.write(
        "saved.yaml",
        f"cohort_dir: {cohort}\nparticipants: null\nmodalities: null\ngenerate_demo: null\n"
        "targets: [target]\nconfounds: [age, sex, site]\n"
        f"splits_file: {case.path('saved_splits.json')}\n",
    )
    status, stderr = fit(case, data=data, trainer=NO_MLFLOW_DEBUG)
    assert_refused(status, stderr, str(target), "checksum")
    assert not case.path("saved_splits.json").exists()
    if target.name == "subject_ids.npy":
        ids = np.load(target, allow_pickle=False)
        assert not any(str(i) in stderr for i in ids[:50])  # the message names the file, not the subjects


# ---------------------------------------------------------------------------------------------- Python API
def small_streamed_cohort(folder: Path, n: int = 40) -> Path:
    layout = {"x": cache_module.ModalityLayout([f"t{i}" for i in range(8)], n_features=2)}
    rng = np.random.default_rng(0)
    with cache_module.CohortWriter(folder, n_subjects=n, modalities=layout, targets=["y"]) as writer:
        for start in range(0, n, 16):
            ids = [f"s{i}" for i in range(start, min(n, start + 16))]
            block = {"x": (rng.normal(size=(len(ids), 8, 2)), np.ones((len(ids), 8), bool))}
            writer.append(pd.DataFrame({"eid": ids, "y": rng.normal(size=len(ids))}), block)
    return folder


def test_streamed_cohort_rewritten_in_place_is_refused(tmp_path):
    """CohortWriter records the CRC-32 as it streams; a same-size, same-mtime change is caught on load."""
    folder = small_streamed_cohort(tmp_path / "cohort")
    assert cache_module.load_cohort(folder).n_subjects == 40
    values = folder / "modalities" / "x" / "values.npy"
    rewrite_rows_in_place(values)
    with pytest.raises(cache_module.CorruptEntry, match="checksum") as refused:
        cache_module.load_cohort(folder)
    assert str(values) in str(refused.value)
    assert cache_module.load_cohort(folder, verify=False).n_subjects == 40  # the opt-out reads no value


def test_streamed_cohort_disk_full_leaves_nothing(tmp_path, monkeypatch):
    real_write = cache_module._ModalityStream.write

    def full_after_first_block(self, values, present):
        if self.with_data:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(self, values, present)

    monkeypatch.setattr(cache_module._ModalityStream, "write", full_after_first_block)
    with pytest.raises(cache_module.AdapterError, match="no space left") as refused:
        small_streamed_cohort(tmp_path / "cohort")
    assert str(tmp_path) in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # no cohort folder, no temporary folder
