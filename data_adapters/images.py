"""Loading NIfTI images for the brain adapters: nibabel, with a faster gzip path when ISA-L is installed,
and errors that say what a file is when it is not an image."""

from __future__ import annotations

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
