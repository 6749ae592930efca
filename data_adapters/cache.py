"""Tokenized arrays written once, then memory-mapped: parse NIfTI/PLINK once, load in milliseconds after.

The public face of the cache, kept at this path; the work is done, one job per file, by
:mod:`~data_adapters.store` (the on-disk form of a modality: arrays, manifest, checksums),
:mod:`~data_adapters.fingerprints` (content keys and the stat index), :mod:`~data_adapters.modality_cache`
(:func:`cached_modality`), :mod:`~data_adapters.cohort_cache` (:func:`save_cohort`, :func:`load_cohort`),
:mod:`~data_adapters.writer` (:class:`CohortWriter`) and :mod:`~data_adapters.io` (:func:`release_pages`,
folder swaps).

Cache layout (one folder per entry, under ``cache_dir``)::

    <name>-<slot>/            slot = hash of the input paths and the adapter settings
        manifest.json         format, fingerprint, settings, per-input details, token/feature names, categories,
                              source, and the shape, dtype, byte size, blake2b and CRC-32 of every array
        values.npy            float32 [N, T, F]
        present.npy           bool [N, T]
        feature_mask.npy      bool [T, F]
        subject_ids.npy       unicode [N] (never pickled)

Fingerprint. For every input file (folders are walked): absolute path, size, ``mtime_ns`` and a content
hash — the whole file up to 1 MiB, else its first and last 64 KiB. Head and tail are cheap on 40,000 scans
and still strong: a NIfTI header lies in the head, and a gzip file ends with the CRC32 and length of
its whole content, so a changed ``.nii.gz`` changes its tail. The adapter settings (JSON) and the
cache format join the hash. A same-size in-place edit of the middle of a large uncompressed file that
also keeps ``mtime_ns`` would go unnoticed; nothing else realistic does.

Stat index. Even head and tail are ~5 GB of reads for 40,000 scans, on every run, just to confirm a fresh
cache. So ``cache_dir`` keeps ``.fingerprint-index.json`` (path -> size, ``mtime_ns``, ``ctime_ns``, inode,
content hash; replaced atomically), and a file whose four stat fields are unchanged reuses its recorded
hash without being opened; any other file is hashed again. ``ctime`` cannot be set by a user, so a rewrite
that restores the old ``mtime`` is still re-hashed. A file changed less than :data:`RACY_SECONDS` before it
was hashed is not recorded (a second write within the same timestamp tick would look unchanged), as git
does with "racily clean" entries. A missing or unreadable index only costs a re-hash.

``save_cohort``/``load_cohort`` store a whole aligned :class:`~data_adapters.cohort.Cohort` the same way
(participants as parquet, one folder per modality). :class:`CohortWriter` writes the same folder block by
block of subjects, for cohorts larger than memory.

Content verification. Every array's CRC-32 (and blake2b, the content key) is recorded in the manifest as it
is written. Loading checks shapes, sizes and names, and by default (``verify=True``) reads every array once,
sequentially, and compares its CRC-32: rows rewritten in place with the same size and mtime are caught (a
built cohort is then rebuilt; a saved ``cohort_dir`` is refused, naming the file). The values are not
scanned again for +-inf (they were when written, and the checksum says they are those bytes). Cost: ~0.3 s
for the 525 MB of a 100,000-subject cohort from the page cache (BENCHMARKS.md), the disk's read time when
cold; a file whose stat is unchanged since it was verified in this process is not read again.
``verify=False`` opens any cohort in milliseconds without reading a value.

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
