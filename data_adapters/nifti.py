"""NIfTI images and a labelled atlas to region tokens: statistics of 3-D images, connectivity of 4-D ones."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .atlas import Atlas, _RegionIndex, read_atlas
from .connectivity import fisher_z_connectivity
from .core import (
    DEFAULT_ID_COLUMN,
    AdapterError,
    TokenizedModality,
    check_choice,
)
from .images import _load_image, _raw_voxels, _scaled
from .manifests import MISSING_FILE_POLICIES, _existing_files, _map_subjects, _read_manifest

STATISTICS = ("mean", "std", "min", "max", "sum")
MODES = ("auto", "statistics", "connectivity")
MIN_TIMEPOINTS = 3


def _image_kind(shape: tuple[int, ...], path: Path, subject: str | None) -> str:
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        return "statistics"
    if len(shape) == 4:
        return "connectivity"
    raise AdapterError(
        f"image has {len(shape)} dimensions (shape {shape}); need a 3-D volume or a 4-D time series",
        file=path,
        subject=subject,
    )


def _world_box(shape: tuple[int, ...], affine: np.ndarray) -> str:
    """The world (mm) bounding box of a grid's voxel centres, e.g. ``x -46..46, y -54..54, z -46..46``:
    shorter to read than two affines when telling why an image and an atlas do not overlap."""
    corners = np.array(np.meshgrid(*[[0, max(int(n) - 1, 0)] for n in shape[:3]], indexing="ij")).reshape(3, -1)
    world = np.asarray(affine, dtype=np.float64)[:3, :3] @ corners + np.asarray(affine, dtype=np.float64)[:3, 3:]
    return ", ".join(f"{axis} {lo:g}..{hi:g}" for axis, lo, hi in zip("xyz", world.min(1), world.max(1), strict=True))


def _gather(data: np.ndarray, index: _RegionIndex, scaling=None) -> np.ndarray:
    """Labelled voxels of ``data`` in region order, on the last axis, as float32: ``[V]`` (3-D) or ``[T, V]``
    (4-D). ``data`` is in the file's own type (see :func:`_raw_voxels`): only the voxels taken are converted,
    with the file's ``scaling``, to the values ``get_fdata(dtype=np.float32)`` gives."""
    if data.ndim == 3:
        voxels = data.reshape(-1, order="F")[index.voxels]  # a view first: nibabel arrays are Fortran-ordered
    else:
        by_time = data.reshape(-1, data.shape[3], order="F").T  # [T, V], each volume contiguous
        voxels = np.take(by_time, index.voxels, axis=1)  # contiguous reads: faster than gathering rows
    voxels = _scaled(voxels, scaling)
    if np.isinf(voxels).any():
        raise AdapterError("infinite voxel value(s) inside the atlas regions")
    return voxels


def _region_sums(values: np.ndarray, index: _RegionIndex) -> tuple[np.ndarray, np.ndarray]:
    """Per-region sums (float64) of the non-NaN entries over the last axis and their counts: ``[..., R]``,
    0 for regions that are not on this grid."""
    shape = (*values.shape[:-1], len(index.counts))
    total, count = np.zeros(shape), np.zeros(shape)
    rows = index.nonempty
    if not rows.any():
        return total, count
    missing = np.isnan(values)
    if missing.any():
        values = np.where(missing, 0.0, values)
        count[..., rows] = np.add.reduceat(~missing, index.starts, axis=-1)
    else:
        count[..., rows] = index.counts[rows]
    total[..., rows] = np.add.reduceat(values, index.starts, axis=-1, dtype=np.float64)
    return total, count


def _statistics(voxels: np.ndarray, index: _RegionIndex, statistics: Sequence[str]) -> np.ndarray:
    total, count = _region_sums(voxels, index)
    rows = index.nonempty
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count  # NaN where a region has no finite voxel
    out = np.full((len(index.counts), len(statistics)), np.nan)
    for s, stat in enumerate(statistics):
        if stat == "mean":
            column = mean
        elif stat == "sum":
            column = np.where(count > 0, total, np.nan)
        elif stat == "std":
            # two passes (deviations from the region mean) for accuracy; population sd, numpy's default
            deviation = voxels - np.repeat(mean[rows], index.counts[rows])
            squares, _ = _region_sums(deviation**2, index)
            with np.errstate(invalid="ignore", divide="ignore"):
                column = np.sqrt(squares / count)
        else:
            reduce, fill = (np.minimum, np.inf) if stat == "min" else (np.maximum, -np.inf)
            column = np.full(len(count), np.nan)
            if rows.any():
                column[rows] = reduce.reduceat(np.where(np.isnan(voxels), fill, voxels), index.starts)
            column[count == 0] = np.nan
        out[:, s] = column
    return out


def _timeseries(voxels: np.ndarray, index: _RegionIndex) -> np.ndarray:
    total, count = _region_sums(voxels, index)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def _image_and_index(image, atlas) -> tuple[np.ndarray, tuple | None, _RegionIndex]:
    """The voxels of an image (a path or nibabel image) in the file's type, their read scaling, and the atlas
    regions on its grid."""
    atlas = read_atlas(atlas)
    path = Path(image) if isinstance(image, (str, os.PathLike)) else Path("<image>")
    if isinstance(image, (str, os.PathLike)):
        image = _load_image(path)
    data, scaling = _raw_voxels(image, path)
    return data, scaling, atlas.on_grid(image.shape, image.affine)


def region_statistics(image, atlas: str | os.PathLike | Atlas, statistics: Sequence[str] = ("mean",)) -> np.ndarray:
    """``[R, S]`` statistics of one 3-D image (a path or nibabel image) over each atlas region.

    NaN voxels are left out; a region with no finite voxel on the image grid gives NaN.
    """
    data, scaling, index = _image_and_index(image, atlas)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise AdapterError(f"region_statistics needs a 3-D image, got shape {data.shape}")
    return _statistics(_gather(data, index, scaling), index, statistics)


def region_timeseries(image, atlas: str | os.PathLike | Atlas) -> np.ndarray:
    """``[T, R]`` mean time series of each atlas region in one 4-D image (a path or nibabel image)."""
    data, scaling, index = _image_and_index(image, atlas)
    if data.ndim != 4:
        raise AdapterError(f"region_timeseries needs a 4-D image, got shape {data.shape}")
    return _timeseries(_gather(data, index, scaling), index)


# ====================================================================== NIfTI + atlas -> region tokens
def _image_tokens(image, path: Path, sid: str, kind: str, atlas: Atlas, statistics: tuple[str, ...]):
    """The region tokens of one subject's image (``kind``: statistics or connectivity) and the voxel count of
    each region on its grid."""
    image_kind = _image_kind(image.shape, path, sid)
    if image_kind != kind:
        raise AdapterError(
            f"{'3-D' if image_kind == 'statistics' else '4-D'} image (shape {image.shape}) among"
            f" {'3-D' if kind == 'statistics' else '4-D'} ones: one modality needs one kind of image"
            " (put structural and functional scans in two modalities)",
            file=path,
            subject=sid,
        )
    data, scaling = _raw_voxels(image, path, subject=sid)
    index = atlas.on_grid(image.shape, image.affine)
    if not index.nonempty.any():
        raise AdapterError(
            f"no atlas region falls inside this image: the image spans {_world_box(image.shape, image.affine)}"
            f" mm, the atlas ({Path(atlas.file).name if atlas.file else 'in memory'}) spans"
            f" {_world_box(atlas.labels.shape, atlas.affine)} mm. Are both in the same space (e.g. MNI)?",
            file=path,
            subject=sid,
        )
    if kind == "statistics" and data.ndim == 4:
        data = data[..., 0]
    if kind == "connectivity" and data.shape[3] < MIN_TIMEPOINTS:
        raise AdapterError(
            f"4-D image has {data.shape[3]} volume(s); correlations need at least {MIN_TIMEPOINTS}",
            file=path,
            subject=sid,
        )
    try:
        voxels = _gather(data, index, scaling)
    except AdapterError as err:
        raise AdapterError(err.reason, file=path, subject=sid) from None
    if kind == "statistics":
        tokens = _statistics(voxels, index, statistics)
    else:
        tokens = fisher_z_connectivity(_timeseries(voxels, index))
    return tokens, index.counts


def _collect_tokens(results: list, n_subjects: int, feature_mask: np.ndarray, atlas: Atlas):
    """Values, presence and the regions lost on some grids (name -> subjects) from the per-subject results."""
    values = np.zeros((n_subjects, *feature_mask.shape), dtype=np.float32)
    present = np.zeros((n_subjects, feature_mask.shape[0]), dtype=bool)
    lost_regions: dict[str, int] = {}
    for result in results:
        if result is None:
            continue
        row, tokens, counts = result
        values[row] = tokens
        values[row][~feature_mask] = 0.0
        present[row] = (~np.isnan(tokens) & feature_mask).any(axis=1) & (counts > 0)
        for r in np.flatnonzero(counts == 0):
            lost_regions[atlas.names[r]] = lost_regions.get(atlas.names[r], 0) + 1
    return values, present, lost_regions


def regions_from_nifti(
    manifest: str | os.PathLike | pd.DataFrame,
    atlas: str | os.PathLike | Atlas,
    labels: str | os.PathLike | pd.DataFrame | None = None,
    *,
    id_column: str = DEFAULT_ID_COLUMN,
    path_column: str = "path",
    statistics: Sequence[str] | str = ("mean",),
    mode: str = "auto",
    missing_files: str = "error",
    name: str = "brain",
    n_jobs: int = 1,
    allow_unused_labels: bool = False,
) -> TokenizedModality:
    """One token per atlas region from one NIfTI image per subject (see the module docstring).

    ``manifest``: a table (CSV/TSV/parquet or DataFrame) with the subject ID and a ``path`` column; relative
    paths are relative to the manifest's folder. ``mode="auto"`` reads the first image: 3-D gives
    ``statistics`` per region, 4-D gives Fisher-z connectivity rows; every image must be of that kind.
    ``missing_files="absent"`` makes a subject whose file does not exist absent instead of an error (the
    count is in ``source["missing_files"]``). ``n_jobs`` reads images in that many threads.
    ``allow_unused_labels`` accepts a label table most of whose labels are not in the atlas (see :func:`read_atlas`).
    """
    statistics = _check_statistics(statistics)
    check_choice(mode, MODES, "mode")
    check_choice(missing_files, MISSING_FILE_POLICIES, "missing_files")
    atlas = read_atlas(atlas, labels, allow_unused_labels=allow_unused_labels)
    ids, paths, manifest_file = _read_manifest(manifest, id_column=id_column, path_column=path_column, what="image")
    exists = _existing_files(paths, ids, missing_files, manifest_file, what="image")

    first = int(np.flatnonzero(exists)[0])
    first_image = _load_image(paths[first], subject=ids[first])
    kind = _image_kind(first_image.shape, paths[first], ids[first]) if mode == "auto" else mode
    feature_names, feature_mask = _token_features(kind, statistics, atlas)
    grids: set[tuple] = set()  # the distinct image grids of this call (the atlas keeps its grids across calls)

    def tokenize(row: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        if not exists[row]:
            return None
        image = first_image if row == first else _load_image(paths[row], subject=ids[row])
        grids.add((tuple(image.shape[:3]), np.round(np.asarray(image.affine, dtype=np.float64), 6).tobytes()))
        return (row, *_image_tokens(image, paths[row], ids[row], kind, atlas, statistics))

    results = _map_subjects(tokenize, list(range(len(ids))), n_jobs)
    values, present, lost_regions = _collect_tokens(results, len(ids), feature_mask, atlas)
    if lost_regions:
        warnings.warn(
            f"{len(lost_regions)} atlas region(s) have no voxel on some image grids (marked absent for those"
            f" subjects): {sorted(lost_regions)[:5]}",
            stacklevel=2,
        )
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=list(atlas.names),
        subject_ids=ids,
        feature_mask=feature_mask,
        feature_names=feature_names,
        source={
            "adapter": "brain.regions_from_nifti",
            "manifest": manifest_file,
            "atlas": atlas.file,
            "labels": atlas.labels_file,
            "label_ids": atlas.ids.tolist(),
            "mode": kind,
            "statistics": list(statistics) if kind == "statistics" else None,
            "connectivity": "Fisher z of Pearson r between region mean time series" if kind != "statistics" else None,
            "id_column": id_column,
            "path_column": path_column,
            "missing_files": int((~exists).sum()),
            "image_grids": len(grids),
            "regions_lost_on_some_grids": sorted(lost_regions),
        },
    )


def _check_statistics(statistics: Sequence[str] | str) -> tuple[str, ...]:
    """The statistics asked for, as a tuple; refused when empty or naming one that is not in STATISTICS."""
    if isinstance(statistics, str):
        statistics = (statistics,)
    statistics = tuple(statistics)
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown or not statistics:
        raise AdapterError(f"statistics={list(statistics)}: choose from {', '.join(STATISTICS)}")
    return statistics


def _token_features(kind: str, statistics: tuple[str, ...], atlas: Atlas) -> tuple[list[str], np.ndarray]:
    """Feature names and mask of a region token: one feature per statistic, or (connectivity) the region's
    row of the connectivity matrix, its own region masked out."""
    n_regions = atlas.n_regions
    if kind == "statistics":
        return list(statistics), np.ones((n_regions, len(statistics)), dtype=bool)
    return list(atlas.names), ~np.eye(n_regions, dtype=bool)
