"""Writing a cohort larger than memory block by block of subjects, in :func:`~data_adapters.cohort_cache.save_cohort`'s
format, never holding it whole."""

from __future__ import annotations

import hashlib
import os
import shutil
import weakref
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort_cache import PARTICIPANTS, _check_destination, _safe_name, _write_cohort_manifest, _write_participants
from .core import DEFAULT_ID_COLUMN, AdapterError, TokenizedModality, check_finite_or_missing, normalize_ids
from .io import replace_folder, storage_failure, temporary_folder
from .store import CHECKSUM, MANIFEST, _checksums, _fsync_write_npy, _jsonable, _modality_manifest, _write_json


@dataclass
class ModalityShape:
    """The shape of one modality before any subject is written (fields as in ``TokenizedModality``)."""

    token_names: Sequence[str]
    n_features: int = 1
    feature_mask: np.ndarray | None = None
    """bool ``[T, F]``; default all True."""
    feature_names: Sequence[str] | None = None
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)
    source: Mapping = field(default_factory=dict)


ModalityLayout = ModalityShape
"""The older name of :class:`ModalityShape` (``mot_neuro.model.layout.ModalityLayout`` is another thing: where a
modality's tokens sit in the model's sequence)."""


class _ModalityStream:
    """One modality's ``values.npy`` and ``present.npy``, appended to in subject order and hashed as written."""

    def __init__(self, name: str, layout: ModalityShape, folder: Path, n_subjects: int):
        n_tokens, n_features = len(layout.token_names), int(layout.n_features)
        if n_features < 1:
            raise AdapterError(f"modality {name!r}: n_features must be >= 1, got {n_features}")
        mask = np.ones((n_tokens, n_features), bool) if layout.feature_mask is None else layout.feature_mask
        # an empty TokenizedModality runs every check of names, feature mask and categories
        template = TokenizedModality(
            name=name,
            values=np.zeros((0, n_tokens, n_features), np.float32),
            present=np.zeros((0, n_tokens), bool),
            token_names=list(layout.token_names),
            subject_ids=[],
            feature_mask=np.asarray(mask, dtype=bool),
            feature_names=None if layout.feature_names is None else list(layout.feature_names),
            categories={str(k): [str(c) for c in v] for k, v in dict(layout.categories).items()},
            source=dict(layout.source),
        )
        unknown = sorted(set(template.categories) - set(template.token_names))
        if unknown:
            raise AdapterError(f"modality {name!r}: categories name tokens {unknown[:5]} it does not have")
        self.template, self.folder = template, folder
        self.shape = (n_tokens, n_features)
        self.with_data = 0
        folder.mkdir(parents=True)
        _fsync_write_npy(folder / "feature_mask.npy", np.ascontiguousarray(template.feature_mask))
        self.files, self.digests, self.crcs = {}, {}, {}
        for array_name, dtype, shape in (
            ("values", np.float32, (n_subjects, n_tokens, n_features)),
            ("present", np.bool_, (n_subjects, n_tokens)),
        ):
            path = folder / f"{array_name}.npy"
            # open_memmap writes the exact header np.save would; the data then goes through plain appends,
            # which (unlike stores into a map) leave no written pages in this process's resident set
            header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            offset = header.offset
            del header
            fh = open(path, "r+b")  # closed by finish() or close()
            digest = hashlib.blake2b(digest_size=16)
            head = fh.read(offset)
            digest.update(head)
            self.files[array_name], self.digests[array_name] = fh, digest
            self.crcs[array_name] = zlib.crc32(head)

    def check(self, values, present, n: int, block: int, subject_ids: np.ndarray, file: Path):
        name = self.template.name
        values = np.ascontiguousarray(values, dtype=np.float32)
        present = np.ascontiguousarray(present, dtype=bool)
        if values.shape != (n, *self.shape):
            raise AdapterError(
                f"block {block}, modality {name!r}: values have shape {values.shape}, expected {(n, *self.shape)}"
                f" ({n} subjects in the block's participants, {self.shape[0]} tokens x {self.shape[1]} features)",
                file=file,
            )
        if present.shape != (n, self.shape[0]):
            raise AdapterError(
                f"block {block}, modality {name!r}: present has shape {present.shape}, expected {(n, self.shape[0])}",
                file=file,
            )
        check_finite_or_missing(values, file=file, token_names=self.template.token_names, subject_ids=subject_ids)
        return values, present

    def write(self, values: np.ndarray, present: np.ndarray) -> None:
        for array_name, array in (("values", values), ("present", present)):
            data = memoryview(array).cast("B")
            self.files[array_name].write(data)
            self.digests[array_name].update(data)
            self.crcs[array_name] = zlib.crc32(data, self.crcs[array_name])
        self.with_data += int(present.any(axis=1).sum())

    def finish(self, subject_ids: np.ndarray) -> None:
        described = {}
        for fh in self.files.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        ids = subject_ids if len(subject_ids) else subject_ids.astype("<U1")
        _fsync_write_npy(self.folder / "subject_ids.npy", ids)
        n = len(subject_ids)
        streamed = {name: (self.digests[name].hexdigest(), self.crcs[name]) for name in self.files}
        arrays = {
            "values": ((n, *self.shape), np.dtype(np.float32).str, streamed["values"]),
            "present": ((n, self.shape[0]), np.dtype(bool).str, streamed["present"]),
            "feature_mask": (self.shape, np.dtype(bool).str, _checksums(self.folder / "feature_mask.npy")),
            "subject_ids": ((n,), ids.dtype.str, _checksums(self.folder / "subject_ids.npy")),
        }
        for array_name, (shape, dtype, (digest, crc)) in arrays.items():
            size = (self.folder / f"{array_name}.npy").stat().st_size
            described[array_name] = {
                "shape": list(shape),
                "dtype": dtype,
                "bytes": size,
                "blake2b": digest,
                CHECKSUM: crc,
            }
        _write_json(self.folder / MANIFEST, _modality_manifest(self.template, described))

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


class CohortWriter:
    """Writes a cohort block by block of subjects, in :func:`save_cohort`'s format, never holding it whole.

    ::

        layouts = {"gene": ModalityShape(gene_names), "brain": ModalityShape(regions, n_features=4)}
        with CohortWriter("cohort", n_subjects=N, modalities=layouts, targets=["target"]) as writer:
            for participants, arrays in blocks:  # arrays: {"gene": (values [n, T, F], present [n, T]), ...}
                writer.append(participants, arrays)
        cohort = load_cohort("cohort")  # memory-mapped

    ``participants`` of a block is a DataFrame holding the subjects' IDs (column ``id_column``, else its
    index) and the same columns in every block; row ``i`` of every array is its subject ``i``. A subject with
    no data in a modality has ``present`` all False there (an outer join). Everything goes into a temporary
    folder beside ``folder``, renamed into place by :meth:`close` (leaving the ``with`` block without an
    error) only when exactly ``n_subjects`` were written: a failure or a crash leaves nothing at ``folder``.
    Memory holds one block, the subject IDs and the participants table (a few columns per subject).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        n_subjects: int,
        modalities: Mapping[str, ModalityShape],
        targets: Sequence[str] = (),
        confounds: Sequence[str] = (),
        id_column: str = DEFAULT_ID_COLUMN,
        join: str = "outer",
        build_info: Mapping | None = None,
    ) -> None:
        self.folder = Path(folder).absolute()
        _check_destination(self.folder)
        if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 0:
            raise AdapterError(f"n_subjects must be a non-negative integer, got {n_subjects!r}")
        if not modalities:
            raise AdapterError("no modalities given; pass a dict of name -> ModalityShape")
        self.n_subjects = int(n_subjects)
        self.targets, self.confounds = [str(t) for t in targets], [str(c) for c in confounds]
        self.id_column, self.join = id_column, join
        self.build_info = None if build_info is None else dict(build_info)
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._tables: list[pd.DataFrame] = []
        self._columns: list[str] | None = None
        self._streams: dict[str, _ModalityStream] = {}
        self._tmp = temporary_folder(self.folder.parent, self.folder.name)
        try:
            self._tmp.mkdir()
        except OSError as err:
            raise storage_failure(err, self.folder.parent, f"writing the cohort {self.folder.name}") from err
        self._open = True
        # a writer dropped without close() or a with block (an exception in the caller's loop) still cleans up
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, ignore_errors=True)
        try:
            for name, layout in modalities.items():
                if not isinstance(layout, ModalityShape):
                    raise AdapterError(f"modality {name!r}: expected a ModalityShape, got {type(layout).__name__}")
                folder = self._tmp / "modalities" / _safe_name(str(name))
                self._streams[str(name)] = _ModalityStream(str(name), layout, folder, self.n_subjects)
        except BaseException as err:
            self.abort()
            if isinstance(err, OSError):
                raise storage_failure(err, self.folder.parent, f"writing the cohort {self.folder.name}") from err
            raise

    @property
    def n_written(self) -> int:
        return len(self._ids)

    def append(self, participants: pd.DataFrame, modalities: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Add the block's subjects: ``modalities`` maps every modality to ``(values, present)`` of those subjects.

        A rejected block (wrong shapes, a repeated or missing ID, other columns, +-inf) writes nothing.
        """
        if not self._open:
            raise AdapterError("the cohort writer is closed", file=self.folder)
        block = len(self._tables)
        where = f"block {block} of participants"
        if not isinstance(participants, pd.DataFrame):
            raise AdapterError(f"{where} is a {type(participants).__name__}, expected a pandas DataFrame")
        table = participants
        if self.id_column in table.columns:
            table = table.set_index(self.id_column)
        ids = normalize_ids(table.index, file=where, column=self.id_column).astype(str)
        id_list = ids.tolist()  # one Python string per subject, shared by the index, the list and the set
        repeated = [sid for sid in id_list if sid in self._seen]
        if repeated:
            raise AdapterError(
                f"{len(repeated)} subject ID(s) of {where} were already written in an earlier block; each subject"
                " goes into exactly one block",
                file=self.folder,
                column=self.id_column,
                subject=repeated[0],
            )
        table = table.copy()
        table.columns = [str(c) for c in table.columns]
        table.index = pd.Index(id_list, dtype=object, name=self.id_column)
        if self._columns is None:
            missing = [c for c in [*self.targets, *self.confounds] if c not in table.columns]
            if missing:
                raise AdapterError(f"target/confound column(s) {missing} not in {where}", file=self.folder)
        elif set(table.columns) != set(self._columns):
            raise AdapterError(
                f"{where} has columns {sorted(table.columns)}, the first block had {sorted(self._columns)}",
                file=self.folder,
            )
        else:
            table = table[self._columns]
        if self.n_written + len(ids) > self.n_subjects:
            raise AdapterError(
                f"{where} brings the count to {self.n_written + len(ids)} subjects, more than n_subjects"
                f" ({self.n_subjects})",
                file=self.folder,
            )
        unknown = sorted(set(modalities) - set(self._streams))
        lacking = sorted(set(self._streams) - set(modalities))
        if unknown or lacking:
            raise AdapterError(
                f"block {block} must give every modality {sorted(self._streams)} (a subject without one has"
                f" present all False); unknown: {unknown}, missing: {lacking}",
                file=self.folder,
            )
        checked = {}
        for name, stream in self._streams.items():
            pair = modalities[name]
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise AdapterError(f"block {block}, modality {name!r}: give a (values, present) pair", file=self.folder)
            checked[name] = stream.check(pair[0], pair[1], len(ids), block, ids, self.folder)
        try:
            for name, (values, present) in checked.items():
                self._streams[name].write(values, present)
        except BaseException as err:
            self.abort()  # a half-written block cannot be taken back
            if isinstance(err, OSError):
                raise storage_failure(err, self.folder.parent, f"writing the cohort {self.folder.name}") from err
            raise
        self._columns = list(table.columns)
        self._tables.append(table)
        self._ids.extend(id_list)
        self._seen.update(id_list)

    def close(self) -> Path:
        """Finish the files and rename the folder into place; returns it. Fails (and cleans up) unless exactly
        ``n_subjects`` were written."""
        if not self._open:
            raise AdapterError("the cohort writer is closed", file=self.folder)
        try:
            if self.n_written != self.n_subjects:
                raise AdapterError(
                    f"{self.n_written} subjects written, but n_subjects is {self.n_subjects}; nothing was saved",
                    file=self.folder,
                )
            subject_ids = np.array(self._ids, dtype=str)
            if self._tables:
                table = pd.concat(self._tables)
            else:
                table = pd.DataFrame(index=pd.Index(subject_ids, name=self.id_column))
            for stream in self._streams.values():
                stream.finish(subject_ids)
            _write_participants(table, subject_ids, self.id_column, self._tmp / PARTICIPANTS, self.folder)
            build_info = self.build_info
            if build_info is None:
                build_info = {
                    "n_participants": self.n_subjects,
                    "modality_inputs": {
                        name: {"subjects": self.n_subjects, "with_data": s.with_data, "not_in_participants": 0}
                        for name, s in self._streams.items()
                    },
                }
            _write_cohort_manifest(
                self._tmp,
                id_column=self.id_column,
                targets=self.targets,
                confounds=self.confounds,
                join=self.join,
                modalities=list(self._streams),
                n_subjects=self.n_subjects,
                build_info=_jsonable(build_info, strict=False),
            )
            replace_folder(self._tmp, self.folder)
        except OSError as err:
            raise storage_failure(err, self.folder.parent, f"writing the cohort {self.folder.name}") from err
        finally:
            self.abort()
        return self.folder

    def abort(self) -> None:
        """Drop everything written so far (the destination is left as it was)."""
        for stream in self._streams.values():
            stream.close()
        self._finalizer()  # removes the temporary folder (once)
        self._open = False

    def __enter__(self) -> CohortWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.close()
