"""A whole aligned cohort saved as one folder and loaded memory-mapped.

Layout: ``cohort.json`` (IDs, targets, confounds, modality names, the participants' CRC-32),
``participants.parquet`` and ``modalities/<name>/`` in :mod:`data_adapters.store`'s form. Written into a
temporary folder beside the destination and renamed into place; :class:`~data_adapters.writer.CohortWriter`
writes the same folder block by block."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from .cohort import Cohort
from .core import AdapterError
from .io import replace_folder, storage_failure, temporary_folder
from .names import name_problem
from .store import (
    CACHE_FORMAT,
    CHECKSUM,
    MANIFEST,
    CorruptEntry,
    _crc32_path,
    _hash_path,
    _jsonable,
    _verify_array,
    _write_json,
    read_modality,
    write_modality,
)

COHORT_MANIFEST = "cohort.json"
PARTICIPANTS = "participants.parquet"


def _safe_name(name: str) -> str:
    # the model's rule (names become parameter keys and MLflow keys too), checked here so that a cohort written
    # for mot-neuro cannot hold a name training would refuse
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
