"""Images of a BIDS dataset (raw, or derivatives such as fMRIPrep's) found by their entities, as region tokens.

A BIDS root holds ``participants.tsv`` (column ``participant_id``, values ``sub-<label>``) and one folder per
subject: ``sub-<label>/[ses-<label>/]<datatype>/sub-<label>[_ses-<label>][_<key>-<value>...]_<suffix>.nii[.gz]``.
:func:`bids_manifest` lists, per subject, the image matching a query of entities (``session``, ``task``,
``acq``, ``run``, ``space``, ``desc``, ``suffix``, any other through ``entities``); :func:`regions_from_bids`
feeds those images to :func:`~data_adapters.nifti.regions_from_nifti`.

Subject IDs keep the ``sub-`` prefix (``sub-01``): they are the ``participant_id`` values of
``participants.tsv``, so that a data config can use ``participants: <root>/participants.tsv`` with
``id_column: participant_id``.

Query values: ``None`` accepts any value and no value; a string must equal the file's label; ``False`` means
the entity must be absent (``acq: false`` picks ``sub-01_T1w`` over ``sub-01_acq-highres_T1w``). Numbers
compare as numbers with numeric labels (``run: 1`` matches ``run-01``, and so does ``session: 1`` matches
``ses-01``: YAML reads ``01`` as 1). A subject with several matching files is an error naming them and the
entities they differ in: choose with those entities, never a silent pick.

The folder walk is a small reader of the BIDS naming rules (measured faster than pybids' ``BIDSLayout`` on
thousands of files: ``benchmarks/bids_index.py``); only ``sub-*`` folders are read (``derivatives/``,
``sourcedata/``, ``code/`` are not). Folders that are symbolic links are followed (DataLad datasets link
folders), each folder read once (a link loop is not walked twice). BIDS extensions are lower case: an image
named ``...T1w.NII.GZ`` breaks the naming rules like any other bad name (an error, or skipped and counted with
``invalid_names='skip'``), never skipped silently. Column names of ``participants.tsv`` are read without
surrounding spaces. The same file name in two datatype folders (``anat/`` and ``extra/``) is an error naming
the folders: the query cannot choose a folder.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .atlas import Atlas
from .core import AdapterError, TokenizedModality, check_choice, normalize_ids
from .manifests import MISSING_FILE_POLICIES
from .nifti import regions_from_nifti
from .tables import read_table, require_id_column

PARTICIPANT_ID = "participant_id"
IMAGE_EXTENSIONS = (".nii.gz", ".nii")
INVALID_NAMES = ("error", "skip")
FOLDER = "datatype folder"
QUERY_ENTITIES = {"session": "ses", "task": "task", "acq": "acq", "run": "run", "space": "space", "desc": "desc"}
"""Argument of :func:`bids_manifest` -> BIDS entity key."""
_LABEL = re.compile(r"[A-Za-z0-9]+")
_KEY = re.compile(r"[a-z][a-zA-Z0-9]*")


def parse_bids_name(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[dict[str, str], str, str]:
    """``sub-01_ses-1_desc-preproc_T1w.nii.gz`` -> (``{"sub": "01", "ses": "1", "desc": "preproc"}``, ``"T1w"``,
    ``".nii.gz"``). A name that breaks the BIDS naming rules raises a ValueError saying which rule."""
    extension = next((e for e in sorted(extensions, key=len, reverse=True) if name.endswith(e)), None)
    if extension is None:
        cased = next((e for e in sorted(extensions, key=len, reverse=True) if name.lower().endswith(e.lower())), None)
        if cased is not None:
            raise ValueError(f"extension {name[-len(cased) :]!r} is not {cased!r}: BIDS extensions are lower case")
        raise ValueError(f"extension is not one of {list(extensions)}")
    parts = name[: -len(extension)].split("_")
    if len(parts) < 2:
        raise ValueError("needs sub-<label>_..._<suffix>")
    *pairs, suffix = parts
    if not _LABEL.fullmatch(suffix):
        raise ValueError(f"suffix {suffix!r} is not alphanumeric")
    entities: dict[str, str] = {}
    for pair in pairs:
        key, dash, value = pair.partition("-")
        if not dash or not _KEY.fullmatch(key) or not _LABEL.fullmatch(value):
            raise ValueError(f"{pair!r} is not <key>-<label> (alphanumeric label)")
        if key in entities:
            raise ValueError(f"entity {key!r} appears twice")
        entities[key] = value
    if next(iter(entities)) != "sub":
        raise ValueError("does not start with sub-<label>")
    return entities, suffix, extension


def _matches(value, label: str | None, key: str) -> bool:
    if value is None:
        return True
    if value is False:
        return label is None
    if label is None:
        return False
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return label.isdigit() and int(label) == int(value)
    if key == "run" and label.isdigit() and str(value).isdigit():
        return int(label) == int(value)  # run is an index: run-01 is run 1
    return str(value) == label


def _query(*, session, task, acq, run, space, desc, suffix, entities) -> dict[str, object]:
    """BIDS key -> wanted value (None: any), from the arguments of :func:`bids_manifest`."""
    query: dict[str, object] = {
        key: value
        for key, value in zip(QUERY_ENTITIES.values(), (session, task, acq, run, space, desc), strict=True)
        if value is not None
    }
    for key, value in (entities or {}).items():
        if key == "sub":
            raise AdapterError("choose subjects through participants.tsv, not entities={'sub': ...}")
        if key in query and query[key] != value:
            raise AdapterError(f"entity {key!r} given twice ({query[key]!r} and {value!r})")
        if value is not None:
            query[key] = value
    for key, value in query.items():
        if value is True or (value is not False and not isinstance(value, (str, int, np.integer))):
            raise AdapterError(f"entity {key!r}: give a label, a number, or false (absent), not {value!r}")
        if isinstance(value, str) and not _LABEL.fullmatch(value):
            raise AdapterError(f"entity {key!r}: {value!r} is not a BIDS label (letters and digits only)")
    if suffix is not None:
        query["suffix"] = suffix
    return query


def _scan(root: Path, invalid_names: str, extensions: Sequence[str]) -> tuple[list, int]:
    """Every image under the ``sub-*`` folders: (subject ID, entities, suffix, path); and the number of image
    files whose names break the rules (skipped when ``invalid_names='skip'``, else the first is an error).

    Folders that are symbolic links are followed (DataLad and git-annex datasets link folders and files); a
    folder reached twice (a link loop, or two links to one folder) is read once. An image extension in
    another case (``.NII.GZ``) is a name that breaks the rules (BIDS extensions are lower case), not skipped
    silently."""
    found, skipped = [], 0
    lowered = tuple(e.lower() for e in extensions)
    with os.scandir(root) as top:
        subject_dirs = sorted(e.path for e in top if e.name.startswith("sub-") and e.is_dir())
    for subject_dir in subject_dirs:
        folder_label = os.path.basename(subject_dir)[4:]
        visited = {os.path.realpath(subject_dir)}
        for folder, dirs, files in os.walk(subject_dir, followlinks=True):
            walked = []
            for d in sorted(dirs):
                real = os.path.realpath(os.path.join(folder, d))
                if real not in visited:
                    visited.add(real)
                    walked.append(d)
            dirs[:] = walked
            session_folder = _session_folder(folder, subject_dir)
            for name in sorted(files):
                if not name.lower().endswith(lowered):
                    continue
                path = os.path.join(folder, name)
                try:
                    entities, suffix, _ = parse_bids_name(name, extensions)
                    if entities["sub"] != folder_label:
                        raise ValueError(f"sub-{entities['sub']} in the name, inside folder sub-{folder_label}")
                    if session_folder is not None and entities.get("ses") != session_folder:
                        raise ValueError(f"ses-{entities.get('ses')} in the name, inside folder ses-{session_folder}")
                except ValueError as err:
                    if invalid_names == "error":
                        raise AdapterError(
                            f"not a BIDS file name ({err}); rename or move it, or pass invalid_names='skip'",
                            file=path,
                            subject=f"sub-{folder_label}",
                        ) from None
                    skipped += 1
                    continue
                found.append((f"sub-{folder_label}", entities, suffix, path))
    return found, skipped


def _session_folder(folder: str, subject_dir: str) -> str | None:
    relative = os.path.relpath(folder, subject_dir)
    first = relative.split(os.sep)[0]
    return first[4:] if first.startswith("ses-") else None


def read_participants(path: str | os.PathLike) -> list[str]:
    """The ``participant_id`` values of a ``participants.tsv``, checked to be ``sub-<label>`` (header names and
    values are read without surrounding spaces)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(
            "participants.tsv not found: a BIDS root lists its subjects there (a derivatives folder may not; pass"
            " participants= the raw dataset's participants.tsv)",
            file=path,
        )
    df, file = read_table(path, id_column=PARTICIPANT_ID, what="participants table")
    # a header written by hand may pad its names ("participant_id "); two names equal once stripped are
    # refused by read_table
    df.columns = [str(c).strip() for c in df.columns]
    require_id_column(df, PARTICIPANT_ID, file)
    if len(df) == 0:
        raise AdapterError("participants.tsv has no rows", file=file)
    ids = [str(i) for i in normalize_ids(df[PARTICIPANT_ID], file=file, column=PARTICIPANT_ID)]
    bad = [i for i in ids if not (i.startswith("sub-") and _LABEL.fullmatch(i[4:]))]
    if bad:
        raise AdapterError(
            f"{len(bad)} participant_id value(s) are not sub-<label> (first: {bad[0]!r}); BIDS writes them as the"
            " subject folder names, e.g. sub-01",
            file=file,
            column=PARTICIPANT_ID,
        )
    return ids


def bids_manifest(
    root: str | os.PathLike,
    *,
    suffix: str | None = None,
    session=None,
    task=None,
    acq=None,
    run=None,
    space=None,
    desc=None,
    entities: Mapping[str, object] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    participants: str | os.PathLike | None = None,
    invalid_names: str = "error",
) -> pd.DataFrame:
    """The image of each participant matching the query (see the module docstring): a table with
    ``participant_id``, ``path`` (absolute) and one column per entity of the matched files, in the order of
    ``participants.tsv`` (``participants=`` another file), for the participants that have one.

    Subjects with images but not in participants.tsv are left out with a warning. A participant with several
    matches is an error naming the files and what tells them apart.
    """
    check_choice(invalid_names, INVALID_NAMES, "invalid_names")
    wanted = {"session": session, "task": task, "acq": acq, "run": run, "space": space, "desc": desc}
    query = _query(suffix=suffix, entities=entities, **wanted)
    table, _ = _manifest(root, query, extensions, participants, invalid_names)
    return table


def _manifest(root, query: dict, extensions, participants, invalid_names) -> tuple[pd.DataFrame, dict]:
    """The manifest table of :func:`bids_manifest` and what was read (participants, their IDs, the query)."""
    root = Path(root)
    if not root.is_dir():
        raise AdapterError("BIDS root not found (or not a folder)", file=root)
    if isinstance(extensions, str):
        extensions = (extensions,)
    participants_file = Path(participants) if participants is not None else root / "participants.tsv"
    ids = read_participants(participants_file)
    found, skipped = _scan(root, invalid_names, extensions)
    by_subject: dict[str, list[tuple[dict, str, str]]] = {}
    for subject, ents, file_suffix, path in found:
        labels = {**ents, "suffix": file_suffix}
        if all(_matches(value, labels.get(key), key) for key, value in query.items()):
            by_subject.setdefault(subject, []).append((ents, file_suffix, path))
    for subject, matches in by_subject.items():
        if len(matches) > 1:
            raise AdapterError(_ambiguity(matches, query), file=root, subject=subject)
    listed = set(ids)
    extra = sorted(s for s in by_subject if s not in listed)
    if extra:
        warnings.warn(
            f"{len(extra)} subject folder(s) with matching images are not in {participants_file} and are left out:"
            f" {extra[:5]}",
            stacklevel=3,
        )
    rows = []
    for subject in ids:
        if subject in by_subject:
            ents, file_suffix, path = by_subject[subject][0]
            rows.append({PARTICIPANT_ID: subject, "path": os.path.abspath(path), **_entity_columns(ents, file_suffix)})
    columns = [
        PARTICIPANT_ID,
        "path",
        *dict.fromkeys(k for row in rows for k in row if k not in (PARTICIPANT_ID, "path")),
    ]
    table = pd.DataFrame(rows, columns=columns)
    info = {
        "participants": str(participants_file),
        "participant_ids": ids,
        "query": {k: v for k, v in query.items()},
        "invalid_names_skipped": skipped,
        "not_in_participants": len(extra),
        "available": _available(found, query),
    }
    return table, info


def _available(found: list, query: dict) -> str:
    """The values the images have for the queried entities (``ses 1/2, suffix T1w/bold``): for a query that
    matches nothing."""
    seen: dict[str, dict[str, None]] = {key: {} for key in query}
    for _, entities, suffix, _ in found:
        labels = {**entities, "suffix": suffix}
        for key in query:
            seen[key][labels.get(key, "(absent)")] = None
    return ", ".join(f"{key} {'/'.join(sorted(values)[:8])}" for key, values in seen.items())


def _entity_columns(entities: dict, suffix: str) -> dict:
    return {k: v for k, v in entities.items() if k != "sub"} | {"suffix": suffix}


def _ambiguity(matches: list, query: dict) -> str:
    """Why several files match one subject: the files and the entities whose values differ among them (and
    the datatype folders holding them, when those differ: the same name in ``anat/`` and ``func/``)."""
    labels = [
        {
            **ents,
            "suffix": suffix,
            "extension": "." + os.path.basename(path).split(".", 1)[1],
            FOLDER: os.path.basename(os.path.dirname(path)),
        }
        for ents, suffix, path in matches
    ]
    keys = dict.fromkeys(k for lab in labels for k in lab)
    differ = {k: list(dict.fromkeys(lab.get(k, "(absent)") for lab in labels)) for k in keys}
    differ = {k: v for k, v in differ.items() if len(v) > 1}
    if len(differ) > 1:
        differ.pop(FOLDER, None)  # the entities tell them apart: the folder is no choice
    names = [os.path.relpath(path, os.path.dirname(os.path.dirname(path))) for _, _, path in matches]
    names = [os.path.basename(path) for _, _, path in matches] if FOLDER not in differ else names
    shown = ", ".join(f"{k} {'/'.join(v)}" for k, v in differ.items())
    asked = ", ".join(f"{k}={v!r}" for k, v in query.items()) or "no entities"
    argument = {v: k for k, v in QUERY_ENTITIES.items()}
    hint = ", ".join(
        f"{argument[k]}=" if k in argument else "suffix=" if k == "suffix" else f"entities={{{k!r}: ...}}"
        for k in differ
        if k not in ("extension", FOLDER)
    )
    if FOLDER in differ:
        choose = (
            "the query cannot choose a folder: one of them is misplaced (BIDS keeps an image in the folder of"
            " its datatype); move or remove it"
        )
    else:
        choose = f"choose one with {hint or 'extensions='} (false: the entity must be absent)"
    return f"{len(matches)} images match {asked}: {names[:5]}; they differ in {shown}: {choose}"


def bids_files(root: str | os.PathLike, kwargs: Mapping) -> list[Path]:
    """Every file :func:`regions_from_bids` with these keyword arguments reads: participants.tsv and the
    matched images. What a cache key must cover."""
    query = _query(**{k: kwargs.get(k) for k in ("suffix", *QUERY_ENTITIES, "entities")})
    extensions = kwargs.get("extensions", IMAGE_EXTENSIONS)
    table, info = _manifest(root, query, extensions, kwargs.get("participants"), kwargs.get("invalid_names", "error"))
    return [Path(info["participants"]), *(Path(p) for p in table["path"] if os.path.isfile(p))]


def regions_from_bids(
    root: str | os.PathLike,
    atlas: str | os.PathLike | Atlas,
    labels: str | os.PathLike | pd.DataFrame | None = None,
    *,
    suffix: str | None = None,
    session=None,
    task=None,
    acq=None,
    run=None,
    space=None,
    desc=None,
    entities: Mapping[str, object] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    participants: str | os.PathLike | None = None,
    invalid_names: str = "error",
    statistics: Sequence[str] | str = ("mean",),
    mode: str = "auto",
    missing_files: str = "error",
    n_jobs: int = 1,
    allow_unused_labels: bool = False,
    name: str = "brain",
) -> TokenizedModality:
    """One token per atlas region from the image of each participant of a BIDS dataset.

    The images are those :func:`bids_manifest` finds for the query (``suffix="bold"``, ``task="rest"``,
    ``space="MNI152NLin2009cAsym"``, ``desc="preproc"``, ...); they are read by
    :func:`~data_adapters.nifti.regions_from_nifti` (``atlas``, ``labels``, ``statistics``, ``mode``,
    ``n_jobs``, ``allow_unused_labels`` as there). Subjects are the ``participant_id`` values (``sub-01``) of
    ``participants.tsv`` (``participants=`` another file). A participant without a matching image is an error
    unless ``missing_files="absent"`` (the subject is then absent; the count is in ``source["missing_files"]``).
    """
    check_choice(missing_files, MISSING_FILE_POLICIES, "missing_files")
    check_choice(invalid_names, INVALID_NAMES, "invalid_names")
    wanted = {"session": session, "task": task, "acq": acq, "run": run, "space": space, "desc": desc}
    query = _query(suffix=suffix, entities=entities, **wanted)
    table, info = _manifest(root, query, extensions, participants, invalid_names)
    ids = info["participant_ids"]
    unfetched = [i for i, path in enumerate(table["path"]) if not os.path.isfile(path)]
    if unfetched and missing_files == "error":
        first = table.iloc[unfetched[0]]
        raise AdapterError(
            f"the image is a link to nothing ({len(unfetched)} of {len(table)} matched images are): a DataLad or"
            " git-annex file whose content is not fetched (`datalad get` it), or pass missing_files='absent'",
            file=first["path"],
            subject=first[PARTICIPANT_ID],
        )
    table = table.drop(index=table.index[unfetched]).reset_index(drop=True)
    have = set(table[PARTICIPANT_ID])
    lacking = [s for s in ids if s not in have]
    asked = ", ".join(f"{k}={v!r}" for k, v in info["query"].items()) or "no entities"
    if not have:
        raise AdapterError(
            f"no image matches {asked} for any of the {len(ids)} participants; the images under sub-*/ have"
            f" {info['available'] or 'no such entities'}",
            file=root,
        )
    if lacking and missing_files == "error":
        raise AdapterError(
            f"no image matches {asked} ({len(lacking)} of {len(ids)} participants have none; pass"
            " missing_files='absent' to treat them as subjects without data)",
            file=Path(root) / lacking[0],
            subject=lacking[0],
        )
    modality = regions_from_nifti(
        table[[PARTICIPANT_ID, "path"]],
        atlas,
        labels,
        id_column=PARTICIPANT_ID,
        statistics=statistics,
        mode=mode,
        name=name,
        n_jobs=n_jobs,
        allow_unused_labels=allow_unused_labels,
    )
    if lacking:
        modality = modality.reindex(ids)  # participants without an image: present nowhere
    modality.source = {
        **modality.source,
        "adapter": "brain.regions_from_bids",
        "manifest": None,
        "bids_root": str(root),
        "participants": info["participants"],
        "query": {k: (v if isinstance(v, (bool, str)) else int(v)) for k, v in info["query"].items()},
        "extensions": list(extensions) if not isinstance(extensions, str) else [extensions],
        "images": len(table),
        "missing_files": len(lacking),
        "invalid_names_skipped": info["invalid_names_skipped"],
        "subjects_not_in_participants": info["not_in_participants"],
    }
    return modality
