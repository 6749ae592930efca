"""Tokenized arrays written once, then memory-mapped: parse NIfTI/PLINK once, then load without parsing.

The public face of the cache, kept at this path; the work is done, one job per file, by
:mod:`~data_adapters.store` (the on-disk form of a modality: arrays, manifest, checksums),
:mod:`~data_adapters.fingerprints` (content keys and the stat index), :mod:`~data_adapters.modality_cache`
(:func:`cached_modality`), :mod:`~data_adapters.cohort_cache` (:func:`save_cohort`, :func:`load_cohort`),
:mod:`~data_adapters.writer` (:class:`CohortWriter`) and :mod:`~data_adapters.io` (:func:`release_pages`,
folder swaps).

The cache's on-disk layout is described in :mod:`~data_adapters.store`.

Fingerprints and the stat index are described in :mod:`~data_adapters.fingerprints`; content verification
(CRC-32 per array, ``verify=``) in :mod:`~data_adapters.store`. ``save_cohort``/``load_cohort`` store a whole
aligned :class:`~data_adapters.cohort.Cohort` the same way (participants as parquet, one folder per
modality); :class:`CohortWriter` writes the same folder block by block of subjects.

:func:`release_pages` drops the pages a reader has touched from the process's resident set (they stay in
the page cache), keeping a full pass over a large cohort at flat memory.

A write that fails (a full or read-only folder) removes its temporary folder and raises one
:class:`AdapterError` naming the folder and what to do.
"""

from __future__ import annotations

from . import cohort_cache, fingerprints, io, modality_cache, store, writer
from .cohort_cache import COHORT_MANIFEST, PARTICIPANTS, cohort_fingerprint, load_cohort, save_cohort, saved_cohort_info
from .core import DEFAULT_ID_COLUMN, AdapterError, TokenizedModality
from .facade import forward_sets
from .fingerprints import (
    EDGE_BYTES,
    RACY_SECONDS,
    SMALL_FILE_BYTES,
    STAT_INDEX,
    STAT_INDEX_FORMAT,
    _hash_file_content,  # noqa: F401  (internals the tests patch through this module)
    file_fingerprints,
    fingerprint,
)
from .io import release_pages, replace_folder, storage_failure, temporary_folder
from .modality_cache import cache_status, cached_modality
from .store import (
    ARRAY_NAMES,
    CACHE_FORMAT,
    CHECKSUM,
    MANIFEST,
    VERIFY_BLOCK_BYTES,
    CorruptEntry,
    _fsync_write_npy,  # noqa: F401
    read_modality,
    write_modality,
)
from .writer import (
    CohortWriter,
    ModalityLayout,
    ModalityShape,
    _ModalityStream,  # noqa: F401
)

__all__ = [
    "ARRAY_NAMES",
    "CACHE_FORMAT",
    "CHECKSUM",
    "COHORT_MANIFEST",
    "DEFAULT_ID_COLUMN",
    "EDGE_BYTES",
    "MANIFEST",
    "PARTICIPANTS",
    "RACY_SECONDS",
    "SMALL_FILE_BYTES",
    "STAT_INDEX",
    "STAT_INDEX_FORMAT",
    "VERIFY_BLOCK_BYTES",
    "AdapterError",
    "CohortWriter",
    "CorruptEntry",
    "ModalityLayout",
    "ModalityShape",
    "TokenizedModality",
    "cache_status",
    "cached_modality",
    "cohort_fingerprint",
    "file_fingerprints",
    "fingerprint",
    "load_cohort",
    "read_modality",
    "release_pages",
    "replace_folder",
    "save_cohort",
    "saved_cohort_info",
    "storage_failure",
    "temporary_folder",
    "write_modality",
]

forward_sets(__name__, (store, fingerprints, modality_cache, cohort_cache, writer, io))
