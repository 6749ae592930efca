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
* :func:`regions_from_bids` -- :func:`regions_from_nifti` on the images of a BIDS dataset (raw or derivatives
  such as fMRIPrep) chosen by entities (session, task, space, desc, suffix ...) instead of a manifest
  (:mod:`~data_adapters.bids`).
* :func:`freesurfer_stats` -- a FreeSurfer ``SUBJECTS_DIR``: ``aseg.stats`` and ``{lh,rh}.<parcellation>.stats``
  per subject, tabulated as ``asegstats2table``/``aparcstats2table`` would, then tokenized as :func:`idp_table`
  (:mod:`~data_adapters.freesurfer`).
* :func:`read_atlas` -- the atlas and its label table, reused across calls.

UK Biobank's imaging-derived phenotypes come from its showcase tables: :func:`data_adapters.ukb.ukb_fields`.

The atlas (label image, label tables, resampling to image grids): :mod:`~data_adapters.atlas`.

Voxel values: NaN voxels are left out of the region statistics (a region with no finite voxel is absent);
an infinite voxel is an error naming the file and subject. Connectivity: a region whose time series is
constant has no defined correlation: its row and column are NaN (its token absent); correlations of
exactly +-1 between two regions are clipped to +-(1 - 1e-7) before the Fisher transform so values stay
finite (z ~ +-8.4).

No torch here; nibabel (with scipy for resampling) and numpy/pandas.

The public face kept at this path; the work is done, one job per file, by :mod:`~data_adapters.atlas`,
:mod:`~data_adapters.images` (loading NIfTI), :mod:`~data_adapters.nifti`, :mod:`~data_adapters.idp`,
:mod:`~data_adapters.connectivity` and :mod:`~data_adapters.manifests` (per-subject file lists).
"""

from __future__ import annotations

from . import atlas, connectivity, idp, images, manifests, nifti
from .atlas import MAX_LABEL, Atlas, read_atlas, token_codes
from .bids import bids_manifest, regions_from_bids
from .connectivity import R_CLIP, connectivity_matrices, fisher_z_connectivity
from .facade import forward_sets
from .freesurfer import freesurfer_stats, freesurfer_table
from .idp import IDP_LAYOUTS, idp_table
from .images import _fast_gunzip, _load_gzipped_nifti  # noqa: F401  (a benchmark switches ISA-L off here)
from .manifests import (
    MISSING_FILE_POLICIES,
    _read_manifest,  # noqa: F401  (older import path)
    listed_files,
)
from .nifti import MIN_TIMEPOINTS, MODES, STATISTICS, region_statistics, region_timeseries, regions_from_nifti

__all__ = [
    "IDP_LAYOUTS",
    "MAX_LABEL",
    "MIN_TIMEPOINTS",
    "MISSING_FILE_POLICIES",
    "MODES",
    "R_CLIP",
    "STATISTICS",
    "Atlas",
    "bids_manifest",
    "connectivity_matrices",
    "fisher_z_connectivity",
    "freesurfer_stats",
    "freesurfer_table",
    "idp_table",
    "listed_files",
    "read_atlas",
    "region_statistics",
    "region_timeseries",
    "regions_from_bids",
    "regions_from_nifti",
    "token_codes",
]

forward_sets(__name__, (images, atlas, nifti, idp, connectivity, manifests))
