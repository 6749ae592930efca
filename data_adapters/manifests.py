"""Manifests of per-subject files (a table of subject ID and path) and reading the files they list."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .core import (
    DEFAULT_ID_COLUMN,
    AdapterError,
    normalize_ids,
)
from .tables import read_table, require_id_column

MISSING_FILE_POLICIES = ("error", "absent")


def _read_manifest(
    manifest, *, id_column: str, path_column: str, what: str
) -> tuple[np.ndarray, list[Path], str | None]:
    label = f"{what} manifest".strip()  # listed_files reads any manifest, with what=""
    df, file = read_table(manifest, id_column=id_column, what=label)
    df.columns = [str(c) for c in df.columns]
    require_id_column(df, id_column, file)
    if path_column not in df.columns:
        raise AdapterError(
            f"no path column {path_column!r}; columns are {list(df.columns)[:10]} (set path_column=)", file=file
        )
    if len(df) == 0:
        raise AdapterError(f"{label} has no rows (header only?): it needs one row per subject", file=file)
    ids = normalize_ids(df[id_column], file=file, column=id_column)
    base = Path(file).parent if file is not None else Path.cwd()
    paths = []
    for sid, value in zip(ids, df[path_column].tolist(), strict=True):
        if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
            raise AdapterError(
                "empty path: drop the row for a subject without data", file=file, column=path_column, subject=sid
            )
        path = Path(str(value).strip()).expanduser()
        paths.append(path if path.is_absolute() else base / path)  # relative to the manifest's folder
    return ids, paths, file


def listed_files(
    manifest: str | os.PathLike | pd.DataFrame, *, id_column: str = DEFAULT_ID_COLUMN, path_column: str = "path"
) -> list[Path]:
    """The files a manifest lists (resolved like the readers resolve them) that exist: what a cache of
    :func:`regions_from_nifti` or :func:`connectivity_matrices` must fingerprint besides the manifest."""
    _, paths, _ = _read_manifest(manifest, id_column=id_column, path_column=path_column, what="")
    return [p for p in paths if p.is_file()]


def _existing_files(paths: list[Path], ids: np.ndarray, policy: str, manifest_file, *, what: str) -> np.ndarray:
    """Which listed files exist; a missing one is an error unless ``policy == "absent"``, none at all always."""
    exists = np.array([p.is_file() for p in paths])
    if policy == "error" and not exists.all():
        first = int(np.flatnonzero(~exists)[0])
        raise AdapterError(
            f"{what} file not found ({int((~exists).sum())} of {len(paths)} listed in {manifest_file} are missing;"
            " pass missing_files='absent' to treat them as subjects without data)",
            file=paths[first],
            subject=ids[first],
        )
    if not exists.any():
        raise AdapterError(f"none of the {len(paths)} {what} files listed exists", file=manifest_file)
    return exists


def _map_subjects(function, items: list, n_jobs: int):
    """``[function(item) for item in items]``; with ``n_jobs > 1`` in threads (nibabel's gzip decoding and
    numpy's reductions release the GIL), results in input order, the first error raised as is."""
    if n_jobs <= 1 or len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        return list(pool.map(function, items))
