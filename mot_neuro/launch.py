"""Run a list of tasks as submitit jobs: one SLURM job array, or local subprocesses (the same path on one machine).

``mot-neuro ablate --launcher slurm|local --launcher-config FILE`` runs its cells through here; any command with
a list of independent runs (``tune``'s trials, say) can too: :func:`read_launcher_config` reads and checks the
file, :func:`launch` submits ``(name, task)`` pairs and waits, and returns one :class:`Outcome` per task.

A task is a picklable callable with no arguments (a small class holding plain data, or a module-level function):
submitit pickles it into the job folder and a fresh Python process runs it. If it also has ``resumed()``, that
is what runs again after a preemption or time-out: for a fit, the same command with ``--ckpt_path last``.

Preemption and time limits. SLURM sends submitit's signal (USR2, ``slurm_signal_delay_s`` before the limit);
:class:`Requeueable` turns it into a SIGTERM for Lightning, so that a running fit stops at the next batch
boundary and writes ``last-sigterm.ckpt`` (:class:`mot_neuro.resume.SaveOnSigterm`); then submitit calls
``Requeueable.checkpoint()``, which gives the resumed task, and requeues the job. A SIGTERM sent by SLURM itself
(preemption with a grace time, ``scancel``) stops the fit the same way and leaves the resumed task in the job
folder, so a job that SLURM requeues resumes too.

The config file holds submitit's own parameter names (:data:`GENERIC_KEYS`, ``slurm_<sbatch option>``), plus
``local_array_parallelism``: how many local jobs run at once (submitit's local executor would start them all).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHERS = ("inline", "local", "slurm")  # inline: in this process, one task after the other (no submitit)
GENERIC_KEYS = ("timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node", "tasks_per_node", "name")
GENERIC_KEYS += ("stderr_to_stdout",)
LOCAL_KEYS = ("local_array_parallelism", "local_setup")
CONSTRUCTOR_KEYS = ("slurm_max_num_timeout",)  # submitit takes it when the executor is made, not as a parameter
POSITIVE_INTEGERS = ("timeout_min", "nodes", "cpus_per_task", "tasks_per_node", "local_array_parallelism")
POSITIVE_INTEGERS += ("slurm_array_parallelism",)
LOCAL_TIMEOUT_MIN = 24 * 60  # submitit's local default is 2 minutes, shorter than most fits


def slurm_keys() -> list[str]:
    """``slurm_<name>`` for every sbatch option submitit's SLURM executor takes."""
    from submitit.slurm.slurm import SlurmExecutor

    return sorted(f"slurm_{name}" for name in SlurmExecutor._valid_parameters())


def accepted_keys() -> list[str]:
    return [*GENERIC_KEYS, *LOCAL_KEYS, *slurm_keys(), *CONSTRUCTOR_KEYS]


@dataclass(frozen=True)
class LauncherConfig:
    """Where tasks run (``local`` or ``slurm``) and with what: submitit's parameters, checked."""

    kind: str
    parameters: dict = field(default_factory=dict)
    source: str = "(defaults)"

    @property
    def local_parallelism(self) -> int:
        return int(self.parameters.get("local_array_parallelism", 1))


def _accepted_keys_text() -> str:
    # one line, short enough to be read whole: the slurm_ names grouped
    names = ",".join(key[len("slurm_") :] for key in slurm_keys())
    return f"{', '.join((*GENERIC_KEYS, *LOCAL_KEYS, *CONSTRUCTOR_KEYS))}, slurm_{{{names}}}"


def read_launcher_config(kind: str, path: str | Path | None) -> LauncherConfig:
    """The checked launcher config of ``--launcher KIND --launcher-config PATH``; bad input raises ValueError with
    one line naming what to fix. Checks the file before the machine (a SLURM launcher needs ``sbatch``)."""
    import yaml

    if kind not in LAUNCHERS:
        raise ValueError(f"--launcher {kind!r}: choose one of {list(LAUNCHERS)}")
    if kind == "inline":
        if path is not None:
            raise ValueError("--launcher-config is for --launcher local or slurm; add one of them, or drop the file")
        return LauncherConfig("inline")
    settings: dict = {}
    if path is None:
        if kind == "slurm":
            raise ValueError(
                "--launcher slurm needs --launcher-config FILE with your cluster's partition and time limit"
                " (start from configs/launcher/slurm.yaml)"
            )
    else:
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"--launcher-config {path}: no such file")
        try:
            settings = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"--launcher-config {path}: not valid YAML ({' '.join(str(err).split())})") from err
        if not isinstance(settings, dict):
            raise ValueError(
                f"--launcher-config {path}: expected a mapping of key: value, got {type(settings).__name__}"
            )
    source = str(path) if path is not None else "(defaults)"
    accepted = accepted_keys()
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        # the commonest slip: an sbatch name without submitit's prefix (partition for slurm_partition)
        prefixed = [f"slurm_{key}" for key in unknown if f"slurm_{key}" in accepted]
        hint = f" (did you mean {', '.join(prefixed)}?)" if prefixed else ""
        raise ValueError(f"launcher config {source}: unknown key(s) {unknown}{hint}; accepted: {_accepted_keys_text()}")
    for key in POSITIVE_INTEGERS:
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"launcher config {source}: {key} must be a whole number >= 1, got {value!r}")
    if settings.get("mem_gb") is not None:
        value = settings["mem_gb"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"launcher config {source}: mem_gb must be a number > 0, got {value!r}")
    additional = settings.get("slurm_additional_parameters")
    if additional is not None and not isinstance(additional, dict):
        raise ValueError(
            f"launcher config {source}: slurm_additional_parameters must be a mapping of sbatch options"
            f" (e.g. {{account: myproject}}), got {additional!r}"
        )
    if kind == "slurm":
        if not settings.get("slurm_partition"):
            raise ValueError(
                f"launcher config {source}: a SLURM launcher needs slurm_partition (the queue to submit to;"
                " `sinfo -s` lists them)"
            )
        if settings.get("timeout_min") is None and settings.get("slurm_time") is None:
            raise ValueError(
                f"launcher config {source}: a SLURM launcher needs timeout_min (minutes per job; submitit's"
                " default is 5)"
            )
        if shutil.which("sbatch") is None:
            raise ValueError(
                "--launcher slurm: sbatch is not on PATH (not a SLURM login node?); run it on the cluster, or use"
                " --launcher local (the same jobs on this machine); ablate --print-commands prints commands to submit"
                " yourself"
            )
    if kind == "local":
        settings.setdefault("timeout_min", LOCAL_TIMEOUT_MIN)
    return LauncherConfig(kind, dict(settings), source)


def make_executor(config: LauncherConfig, folder: Path):
    """submitit's executor for ``config`` writing its job files and logs into ``folder``."""
    import submitit

    parameters = {k: v for k, v in config.parameters.items() if k not in CONSTRUCTOR_KEYS}
    parameters.pop("local_array_parallelism", None)  # mot-neuro's own: launch() keeps to it
    constructor = {k: v for k, v in config.parameters.items() if k in CONSTRUCTOR_KEYS}
    executor = submitit.AutoExecutor(folder=folder, cluster=config.kind, **constructor)
    executor.update_parameters(**parameters)
    return executor


# ---------------------------------------------------------------------------------------------- in the job
def _preemption_signal() -> int:
    import submitit

    return submitit.JobEnvironment._usr_sig()  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise


@contextmanager
def _stop_fit_gracefully_on_preemption():
    """Inside a submitit job: the preemption signal stops a running fit at a batch boundary (it becomes a SIGTERM,
    which Lightning and SaveOnSigterm handle) before submitit checkpoints and requeues the job; with no fit
    listening for SIGTERM, submitit checkpoints and requeues at once."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    preemption = _preemption_signal()
    requeue = signal.getsignal(preemption)  # submitit's: calls checkpoint(), saves it, requeues, exits
    submitit_handler = getattr(requeue, "__self__", None)
    if not callable(requeue):  # not in a submitit job
        yield
        return
    sigterm_without_fit = signal.getsignal(signal.SIGTERM)
    received: list[int] = []

    def on_preemption(signum, frame) -> None:
        if signal.getsignal(signal.SIGTERM) is sigterm_without_fit:
            requeue(signum, frame)  # no Lightning run listening (data set-up, between runs): nothing to save
            return
        received.append(signum)
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler, installed for the fit, takes it from here

    signal.signal(preemption, on_preemption)
    try:
        yield
    except SIGTERMException:
        if received:
            requeue(received[0], None)
        elif hasattr(submitit_handler, "checkpoint_and_exit"):
            # SLURM's own SIGTERM (preemption with a grace time): leave the resumed task for a requeue
            submitit_handler.checkpoint_and_exit(signal.SIGTERM, None)
        raise
    finally:
        signal.signal(preemption, requeue)


class Requeueable:
    """What a submitit job runs: ``task()`` in the folder it was submitted from; after a preemption or time-out,
    ``task.resumed()`` (or the task again, when it has no such method). submitit's checkpoint protocol: on its
    signal it calls :meth:`checkpoint` and submits what it returns."""

    def __init__(self, task: Callable[[], object], cwd: str | None = None) -> None:
        self.task = task
        self.cwd = cwd or os.getcwd()

    def __call__(self):
        os.chdir(self.cwd)  # relative paths in a task (configs, outputs/) mean what they meant at submission
        with _stop_fit_gracefully_on_preemption():
            return self.task()

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        resumed = getattr(self.task, "resumed", None)
        return DelayedSubmission(Requeueable(resumed() if callable(resumed) else self.task, self.cwd))

    def __repr__(self) -> str:
        return f"Requeueable({self.task!r})"


# ---------------------------------------------------------------------------------------------- submitting
@dataclass
class Outcome:
    """How one task ended: its return value, or the last line of its error and the job's log files."""

    name: str
    ok: bool
    value: object = None
    error: str = ""
    job_id: str = ""
    stderr: str = ""


def _outcome(name: str, job) -> Outcome:
    paths = job.paths
    try:
        value = job.result()
    except Exception as err:  # noqa: BLE001 - the task's error, with its traceback in the job's log
        text = str(err)
        # submitit's FailedJobError holds the job's traceback between dashed lines, then the log paths
        parts = text.split("-" * 22)
        lines = [line.strip() for line in (parts[1] if len(parts) > 2 else text).splitlines() if line.strip()]
        message = lines[-1] if lines else type(err).__name__
        return Outcome(name, False, error=message[:400], job_id=job.job_id, stderr=str(paths.stderr))
    return Outcome(name, True, value=value, job_id=job.job_id, stderr=str(paths.stderr))


def launch(
    tasks: Sequence[tuple[str, Callable[[], object]]],
    config: LauncherConfig,
    folder: Path,
    report: Callable[[str], None] = print,
    poll_s: float = 1.0,
) -> list[Outcome]:
    """Run every ``(name, task)`` as a submitit job and wait for all of them: on SLURM one job array (at most
    ``slurm_array_parallelism`` running at once), locally at most ``local_array_parallelism`` subprocesses at a
    time. Returns one :class:`Outcome` per task, in the order given; a failed task does not stop the others.
    ``report`` gets a line when each job is submitted and when it ends."""
    if not tasks:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(config, folder)  # job files and logs named <job id>_<task>_...
    jobs: dict[int, object] = {}
    total = len(tasks)
    if config.kind == "slurm":
        with executor.batch():
            pending = [executor.submit(Requeueable(task)) for _, task in tasks]
        jobs = dict(enumerate(pending))
        array_id = str(pending[0].job_id).split("_")[0]
        report(f"submitted job array {array_id} ({total} tasks); logs in {folder}")
        waiting = dict(jobs)
    else:
        waiting = {}
    outcomes: dict[int, Outcome] = {}
    queue = list(range(total)) if config.kind != "slurm" else []
    try:
        while queue or waiting:
            while queue and len(waiting) < config.local_parallelism:
                index = queue.pop(0)
                waiting[index] = jobs[index] = executor.submit(Requeueable(tasks[index][1]))
                report(f"started {tasks[index][0]} (local job {jobs[index].job_id})")
            for index, job in list(waiting.items()):
                if job.done():
                    outcomes[index] = _outcome(tasks[index][0], job)
                    del waiting[index]
                    status = "done" if outcomes[index].ok else f"FAILED ({outcomes[index].error})"
                    report(f"[{len(outcomes)}/{total}] {tasks[index][0]}: {status}")
            if waiting:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        if config.kind == "slurm":
            # the array belongs to the cluster now; a second submission of the same tasks would run them twice
            report(f"stopped waiting; the jobs keep running (squeue -j {array_id}, scancel {array_id} to stop them)")
        else:
            for job in waiting.values():  # local jobs would outlive this process
                job.cancel()
        raise
    return [outcomes[index] for index in range(total)]
