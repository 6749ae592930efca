"""NIfTI images for the brain adapters: loading (nibabel, with a faster gzip path when ISA-L is installed, and
errors that say what a file is when it is not an image), voxels read in the file's own type (no float copy of
the whole image), and nearest-neighbour mapping between grids with parallel axes (atlas -> image grid)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .core import (
    AdapterError,
)


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
    """ISA-L's gzip decompression (the optional ``isal`` package, faster than zlib) or None."""
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


def _raw_voxels(image, path: Path, *, what: str = "image", subject: str | None = None):
    """The voxel array in the file's own type, with no float copy of the whole image, and the read scaling
    (``slope, inter``) to apply to the voxels taken from it (None: plain cast), so that
    ``_scaled(raw[i], scaling)`` equals ``image.get_fdata(dtype=np.float32)[i]`` for any index ``i``.

    An image decompressed whole (ISA-L) is viewed in its bytes; an uncompressed ``.nii`` is memory-mapped by
    nibabel; a ``.nii.gz`` read by nibabel is decompressed into an array of the file's type. At 1 mm and
    0.5 mm the float32 copy of every voxel (most outside any atlas region) cost as much as the region means."""
    from nibabel.arrayproxy import ArrayProxy

    try:
        proxy = image.dataobj
        if type(proxy) is not ArrayProxy:  # an array in memory, or a format with its own proxy
            if isinstance(proxy, np.ndarray):
                return proxy, None
            return image.get_fdata(caching="unchanged", dtype=np.float32), None
        raw = _bytes_view(proxy)
        if raw is None:
            raw = proxy.get_unscaled()
        return raw, (proxy.slope, proxy.inter)
    except Exception as err:  # noqa: BLE001 - truncated gzip: EOFError, zlib.error, OSError, ValueError
        raise AdapterError(
            f"cannot read the {what} voxels ({type(err).__name__}: {err}); the file is truncated or corrupt",
            file=path,
            subject=subject,
        ) from err


def _bytes_view(proxy) -> np.ndarray | None:
    """The voxels of an image held in a ``BytesIO`` (the ISA-L path) as a read-only view of its bytes; None
    for an image read from a file."""
    buffer = proxy.file_like
    if not isinstance(buffer, io.BytesIO):
        return None
    data = buffer.getvalue()  # the bytes the image was made from: no copy while nothing was written to it
    count = int(np.prod(proxy.shape, dtype=np.int64))
    needed = proxy.offset + count * proxy.dtype.itemsize
    if len(data) < needed:
        raise ValueError(f"{len(data)} bytes after decompression, the header's shape needs {needed}")
    view = np.frombuffer(data, dtype=proxy.dtype, count=count, offset=proxy.offset)
    return view.reshape(proxy.shape, order=proxy.order)


def _scaled(voxels: np.ndarray, scaling) -> np.ndarray:
    """float32 values of voxels taken from :func:`_raw_voxels`' array: nibabel's read scaling, step by step as
    ``get_fdata(dtype=np.float32)`` does it, so values are the same to the bit."""
    if scaling is None:
        return voxels.astype(np.float32, copy=False)
    from nibabel.volumeutils import apply_read_scaling

    slope, inter = (np.asanyarray(v) for v in scaling)
    if np.can_cast(slope, np.float32):
        slope = slope.astype(np.float32)
    if np.can_cast(inter, np.float32):
        inter = inter.astype(np.float32)
    scaled = apply_read_scaling(voxels, slope, inter)
    return scaled.astype(np.promote_types(scaled.dtype, np.float32), copy=False).astype(np.float32, copy=False)


# ====================================================================== grids
def _nearest_on_axes(codes: np.ndarray, source_affine: np.ndarray, shape: tuple[int, int, int], affine: np.ndarray):
    """``codes`` resampled by nearest neighbour onto a grid whose axes are parallel to the atlas's, in any order
    (zooms, shifts, flips, swapped axes: MNI images and MNI atlases), as the box of the grid that the labelled
    voxels reach (Fortran-ordered) and its first voxel; None for a rotated or sheared grid.

    Each output axis then reads one atlas axis, so scipy maps three 1-D index ranges (with the voxel-to-voxel
    affine nibabel's ``resample_from_to`` builds, so rounding and edges are those of its 3-D call) and the
    box is one outer-indexed gather: a fraction of a second at 0.5 mm, where the 3-D call takes several."""
    from scipy import ndimage

    to_source = np.linalg.inv(source_affine).dot(affine)  # as nibabel.processing.resample_from_to
    matrix, offset = to_source[:3, :3], to_source[:3, 3]
    nonzero = matrix != 0
    if not ((nonzero.sum(axis=0) == 1).all() and (nonzero.sum(axis=1) == 1).all()):
        return None
    reads, corner = [], []  # per output axis: the atlas axis it reads and the atlas index of each voxel read
    for axis in range(3):
        source_axis = int(np.flatnonzero(nonzero[:, axis])[0])
        index = ndimage.affine_transform(
            np.arange(codes.shape[source_axis], dtype=np.float64),
            matrix[source_axis : source_axis + 1, axis : axis + 1],
            offset[source_axis : source_axis + 1],
            (shape[axis],),
            order=0,
            mode="constant",
            cval=-1.0,
        ).astype(np.intp)  # -1: outside the atlas
        other = tuple(a for a in range(3) if a != source_axis)
        labelled = np.flatnonzero(codes.any(axis=other))  # atlas slices along this axis holding a region
        reach = np.flatnonzero(np.isin(index, labelled)) if len(labelled) else np.zeros(0, dtype=np.intp)
        start, stop = (int(reach[0]), int(reach[-1]) + 1) if len(reach) else (0, 0)
        reads.append((source_axis, index[start:stop]))
        corner.append(start)
    small = np.uint16 if int(codes.max(initial=0)) < np.iinfo(np.uint16).max else np.int32  # half the bytes
    padded = np.zeros(tuple(n + 1 for n in codes.shape), dtype=small)  # index -1 reads the zero plane
    padded[: codes.shape[0], : codes.shape[1], : codes.shape[2]] = codes
    arranged = padded.transpose([source_axis for source_axis, _ in reads])  # axis i: what output axis i reads
    # gathered through the transposes, the box is Fortran-ordered, as the region index reads it
    return arranged.T[np.ix_(*[index for _, index in reversed(reads)])].T, tuple(corner)


def _box_to_grid(voxels: np.ndarray, box: tuple[int, ...], corner: tuple[int, ...], shape: tuple[int, ...]):
    """Flat (Fortran-order) indices in a box -> flat indices in the grid the box sits in at ``corner``; the
    order is kept."""
    (m0, m1, _), (n0, n1, _) = box[:3], shape[:3]
    rows = voxels // m0  # j + m1 * k
    slabs = rows // m1  # k
    start = corner[0] + n0 * corner[1] + n0 * n1 * corner[2]
    return voxels + (n0 - m0) * rows + n0 * (n1 - m1) * slabs + start
