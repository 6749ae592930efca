"""The Optuna side of ``mot-neuro tune``: where studies live, one process per study, trials a killed process left.

* :func:`default_storage`: ``sqlite:///<folder of mlflow.db>/optuna.db`` beside a local SQLite MLflow store, else
  ``./optuna.db``.
* :func:`study_lock`: one ``mot-neuro tune`` per study at a time (a file lock). Holding it proves that no live
  process runs a trial of the study, so on start :func:`fail_abandoned_trials` marks every trial still RUNNING as
  FAIL: those were left by a process that was killed (SIGKILL, power, a cluster's time limit) and never finish.
* :func:`open_study`: the study created or loaded (``load_if_exists``), refused when it was made for another
  search space, metric or direction, with its sampler seeded past the trials it already holds.
"""

from __future__ import annotations

import fcntl
import re
from contextlib import contextmanager
from pathlib import Path

ABANDONED_ATTR = "mot_neuro.abandoned"
DIGEST_ATTR = "mot_neuro.space_digest"
SQLITE = "sqlite:///"


def _sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (relative paths as given), else None."""
    if not url.startswith(SQLITE) or ":memory:" in url:
        return None
    return Path(url[len(SQLITE) :].split("?", 1)[0])


def absolute_storage(url: str) -> str:
    """A SQLite URL with its path made absolute (the study stays where it was when the folder changes)."""
    database = _sqlite_file(url)
    if database is None or database.is_absolute():
        return url
    return SQLITE + str(database.absolute()) + (url[url.index("?") :] if "?" in url else "")


def default_storage(tracking_uri: str | None) -> str:
    """``optuna.db`` in the folder of the local SQLite MLflow store, else in the working directory."""
    database = _sqlite_file(tracking_uri) if tracking_uri else None
    folder = database.parent if database is not None else Path.cwd()
    return SQLITE + str((folder / "optuna.db").absolute())


@contextmanager
def study_lock(storage_url: str, name: str, fallback_folder: Path):
    """Held while this process runs study ``name``: beside a SQLite storage (``optuna.db.<name>.lock``), else in
    ``fallback_folder``. A second process on the same study is refused with one line instead of racing it."""
    database = _sqlite_file(storage_url)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    path = database.with_name(f"{database.name}.{safe}.lock") if database is not None else fallback_folder / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"study {name!r} is being run by another mot-neuro tune (it holds {path}); wait for it to end,"
                " or give this search another --study-name"
            ) from None
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fail_abandoned_trials(storage, study_name: str) -> list[int]:
    """Mark FAIL the trials of ``study_name`` left RUNNING (call only under :func:`study_lock`): they belong to a
    process that ended without finishing them, and would otherwise never end. Returns their numbers."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study_name)
    abandoned = []
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        note = "left RUNNING by a process that ended without finishing it (killed); marked FAIL on resume"
        storage.set_trial_user_attr(trial_id, ABANDONED_ATTR, note)  # before FAIL: a finished trial takes no attrs
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        abandoned.append(trial.number)
    return abandoned


def make_sampler(kind: str, seed: int | None):
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ValueError(f"--sampler {kind!r}: choose tpe or random")


def make_pruner(prune: bool):
    """Median pruning (a trial whose validation metric at an epoch is worse than the median of earlier trials at
    that epoch stops), after 5 finished trials and from the second epoch on; off with ``--no-prune``."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()


def open_study(storage, name: str, direction: str, digest: str, sampler: str, seed: int | None, prune: bool):
    """Study ``name``, created or loaded. Refused when it was made for another direction or search space (the
    ``digest`` of the space, overrides and metric). The sampler's seed is ``seed`` plus the number of trials the
    study holds: a resumed study does not draw its first trials' values again."""
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        load_if_exists=True,
        pruner=make_pruner(prune),
    )
    recorded = study.user_attrs.get(DIGEST_ATTR)
    if recorded is None:
        study.set_user_attr(DIGEST_ATTR, digest)
    elif recorded != digest or study.direction.name.lower() != direction:
        raise ValueError(
            f"study {name!r} in {storage.url} was made for another search space, metric, direction or overrides"
            " (--data/--model/--trainer) than this command's; its trials would not compare. Give another"
            " --study-name, or the first command's settings"
        )
    offset = seed + len(study.get_trials(deepcopy=False)) if seed is not None else None
    study.sampler = make_sampler(sampler, offset)
    return study
