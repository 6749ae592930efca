"""Region x region connectivity: Fisher-z correlation of time series, and precomputed matrices as tokens
(one token per region, carrying its row)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .core import (
    DEFAULT_ID_COLUMN,
    AdapterError,
    TokenizedModality,
    check_choice,
    load_npy,
    read_subject_ids,
)
from .manifests import MISSING_FILE_POLICIES, _existing_files, _read_manifest

R_CLIP = 1.0 - 1e-7
_MATRIX_SUFFIXES = (".npy", ".csv", ".tsv", ".txt")


def fisher_z_connectivity(series: np.ndarray) -> np.ndarray:
    """``[R, R]`` Fisher z of the Pearson correlation between the columns of ``series`` ``[T, R]``.

    The diagonal is 0 (masked out by the callers); a constant or missing column gives NaN row and column.
    """
    centred = series - series.mean(axis=0)
    norm = np.sqrt((centred**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = centred / np.where(norm > 0, norm, np.nan)
    r = unit.T @ unit
    z = np.arctanh(np.clip(r, -R_CLIP, R_CLIP))
    np.fill_diagonal(z, 0.0)
    return z


# ====================================================================== connectivity matrices
def is_stacked(source) -> bool:
    """Whether a ``source`` of :func:`connectivity_matrices` is one stacked ``.npy`` array (else a manifest)."""
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".npy"


def connectivity_matrices(
    source: str | os.PathLike | pd.DataFrame,
    *,
    id_column: str = DEFAULT_ID_COLUMN,
    path_column: str = "path",
    ids: str | os.PathLike | Sequence | None = None,
    region_names: Sequence[str] | None = None,
    fisher_z: bool = False,
    diagonal: str = "drop",
    missing_files: str = "error",
    name: str = "brain",
) -> TokenizedModality:
    """One token per region, carrying its row of a precomputed region x region matrix.

    ``source`` is either a manifest (table with the ID and a ``path`` column) of per-subject matrices
    (``.npy``, or ``.csv``/``.tsv``/``.txt`` text, optionally with a header row and an index column of
    region names), or one stacked ``.npy`` ``[N, R, R]`` whose subject IDs are in ``ids`` (or ``ids.npy``
    beside it). ``region_names`` name the tokens (else the text header, else ``region_<i>``).
    ``fisher_z=True`` applies arctanh to correlation matrices (values outside [-1, 1] are an error).
    ``diagonal="drop"`` masks the self-connection of each row in ``feature_mask``; ``"keep"`` keeps it.
    NaN entries stay missing; infinite ones are errors naming the subject. Matrices need not be symmetric.
    """
    check_choice(diagonal, ("drop", "keep"), "diagonal")
    check_choice(missing_files, MISSING_FILE_POLICIES, "missing_files")
    if is_stacked(source):
        subject_ids, matrices, header_names, files, where, have = _stacked_matrices(Path(source), ids)
    else:
        if ids is not None:
            raise AdapterError("ids= goes with a stacked .npy array; a manifest carries its own ID column")
        subject_ids, matrices, header_names, files, where, have = _listed_matrices(
            source, id_column, path_column, missing_files
        )
    missing = int((~have).sum())

    n_regions = matrices.shape[1]
    if n_regions == 0:
        raise AdapterError("connectivity matrices are empty (0 regions)", file=files[0])
    names = _region_names(region_names, header_names, n_regions, files[0])
    if fisher_z:
        off = ~np.eye(n_regions, dtype=bool)
        outside = (np.abs(matrices) > 1) & off[None]
        if outside.any():
            row = int(np.argwhere(outside)[0][0])
            raise AdapterError(
                "fisher_z=True needs correlations in [-1, 1]; found a value outside",
                file=where[row],
                subject=subject_ids[row],
            )
        with np.errstate(divide="ignore"):
            matrices = np.arctanh(np.clip(matrices, -R_CLIP, R_CLIP))
    feature_mask = np.ones((n_regions, n_regions), dtype=bool)
    if diagonal == "drop":
        feature_mask = ~np.eye(n_regions, dtype=bool)
    values = matrices.astype(np.float32)
    values[:, ~feature_mask] = 0.0
    present = (~np.isnan(values) & feature_mask).any(axis=2) & have[:, None]
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=names,
        subject_ids=subject_ids,
        feature_mask=feature_mask,
        feature_names=list(names),
        source={
            "adapter": "brain.connectivity_matrices",
            "files": files,
            "id_column": id_column,
            "fisher_z": bool(fisher_z),
            "diagonal": diagonal,
            "missing_files": missing,
        },
    )


def _stacked_matrices(path: Path, ids):
    """Subject IDs, matrices, header names (None), files, per-subject file and presence of a stacked array."""
    stacked = load_npy(path, "connectivity array")
    if stacked.ndim != 3 or stacked.shape[1] != stacked.shape[2]:
        raise AdapterError(f"a stacked connectivity array must be [N, R, R], got shape {stacked.shape}", file=path)
    subject_ids, ids_file = read_subject_ids(ids, path)
    if len(subject_ids) != stacked.shape[0]:
        raise AdapterError(f"{stacked.shape[0]} matrices but {len(subject_ids)} subject IDs in {ids_file}", file=path)
    matrices = _numeric_array(stacked, path, None)
    files = [str(path)]
    where = [str(path)] * len(subject_ids)
    have = np.ones(len(subject_ids), dtype=bool)
    return subject_ids, matrices, None, files, where, have


def _listed_matrices(source, id_column: str, path_column: str, missing_files: str):
    """Subject IDs, matrices (NaN for absent subjects), header names, files, per-subject file and presence of
    the per-subject matrices a manifest lists."""
    header_names = None
    subject_ids, paths, manifest_file = _read_manifest(
        source, id_column=id_column, path_column=path_column, what="connectivity"
    )
    have = _existing_files(paths, subject_ids, missing_files, manifest_file, what="connectivity")
    size = None
    blocks = {}
    for row in np.flatnonzero(have):
        matrix, names = _read_matrix_file(paths[row], subject_ids[row])
        if size is None:
            size, header_names, first_row = matrix.shape[0], names, row
        elif matrix.shape[0] != size:
            raise AdapterError(
                f"{matrix.shape[0]} x {matrix.shape[0]} matrix, but {size} x {size} for subject"
                f" {subject_ids[first_row]} ({paths[first_row].name}); every subject needs the same regions",
                file=paths[row],
                subject=subject_ids[row],
            )
        elif names is not None and header_names is not None and names != header_names:
            raise AdapterError(
                f"region names in the header differ from {paths[first_row].name}'s (first:"
                f" {next(a for a, b in zip(names, header_names, strict=True) if a != b)!r})",
                file=paths[row],
                subject=subject_ids[row],
            )
        blocks[row] = matrix
    matrices = np.full((len(subject_ids), size, size), np.nan, dtype=np.float64)
    for row, matrix in blocks.items():
        matrices[row] = matrix
    files = [manifest_file]
    where = [str(p) for p in paths]
    return subject_ids, matrices, header_names, files, where, have


def _numeric_array(array: np.ndarray, path: Path, subject: str | None) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise AdapterError(f"matrix must hold real numbers, got dtype {array.dtype}", file=path, subject=subject)
    array = array.astype(np.float64)
    if np.isinf(array).any():
        where = np.argwhere(np.isinf(array))[0]
        sub = subject
        if sub is None and array.ndim == 3:
            sub = f"row {where[0]} of the stack"
        raise AdapterError(f"infinite value at {tuple(int(i) for i in where[-2:])}", file=path, subject=sub)
    return array


def _read_matrix_file(path: Path, subject: str) -> tuple[np.ndarray, list[str] | None]:
    suffix = path.suffix.lower()
    if suffix not in _MATRIX_SUFFIXES:
        raise AdapterError(
            f"unknown matrix format {suffix!r}; use .npy, .csv, .tsv or .txt", file=path, subject=subject
        )
    names = None
    if suffix == ".npy":
        matrix = load_npy(path, "connectivity matrix")
    else:
        matrix, names = _read_text_matrix(path, subject)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise AdapterError(
            f"expected a square region x region matrix, got shape {matrix.shape}", file=path, subject=subject
        )
    if names is not None and len(names) != matrix.shape[0]:
        names = None
    return _numeric_array(matrix, path, subject), names


def _read_text_matrix(path: Path, subject: str) -> tuple[np.ndarray, list[str] | None]:
    """A delimited text matrix; a first row and/or first column of text are region names."""
    sep = "," if path.suffix.lower() == ".csv" else r"\s+"
    try:
        cells = pd.read_csv(path, sep=sep, header=None, dtype=str, engine="python", keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise AdapterError("connectivity file is empty", file=path, subject=subject) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise AdapterError(f"cannot parse the matrix: {err}", file=path, subject=subject) from err
    cells = cells.apply(lambda column: column.str.strip())
    missing = cells.isin(["", "nan", "NaN", "NA", "n/a"])
    numbers = cells.apply(pd.to_numeric, errors="coerce")
    text = (numbers.isna() & ~missing).to_numpy()
    header = text.shape[1] > 1 and text[0, 1:].all()  # the corner cell may be blank or text
    index = text.shape[0] > int(header) and text[int(header) :, 0].all()
    names = None
    if header:
        names = cells.iloc[0, int(index) :].tolist()
    elif index:
        names = cells.iloc[:, 0].tolist()
    body_text = text[int(header) :, int(index) :]
    if body_text.any():
        r, c = np.argwhere(body_text)[0]
        r, c = r + int(header), c + int(index)
        raise AdapterError(
            f"non-numeric entry {cells.iloc[r, c]!r} at line {r + 1}, field {c + 1}", file=path, subject=subject
        )
    return numbers.iloc[int(header) :, int(index) :].to_numpy(dtype=np.float64), names


def _region_names(region_names, header_names, n_regions: int, file) -> list[str]:
    if region_names is not None:
        names = [str(n) for n in region_names]
        if len(names) != n_regions:
            raise AdapterError(f"{len(names)} region names for {n_regions} x {n_regions} matrices", file=file)
    elif header_names is not None:
        names = header_names
    else:
        names = [f"region_{i}" for i in range(n_regions)]
    dup = pd.Index(names)[pd.Index(names).duplicated()].unique().tolist()
    if dup:
        raise AdapterError(f"duplicated region name(s) {dup[:5]}", file=file)
    return names
