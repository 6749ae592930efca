"""Batches of a cached cohort: which rows go in each batch (:class:`RowBatches`, shuffled per epoch, sharded
by rank, resumable mid-epoch with :class:`ResumableLoader`), and the batch itself (:class:`CohortBatches`: the
rows' slices of the memory maps, preprocessed in one block).

A batch::

    {"values": {modality: float32 [B, T, F]}, "missing": {modality: bool [B, T, F]},
     "present": {modality: bool [B, T]}, "targets": {target: float32 [B]} (NaN = missing), "row": int64 [B],
     "split": int8 [B] (:data:`SPLIT_CODES`: 0 train, 1 val, 2 test; -1 a row outside the fold)}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_adapters.cache import load_cohort

from .preprocess import FoldPreprocessor

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
"""Code of each split in ``batch["split"]`` (int8); -1 marks a row in none of the fold's splits."""
PRELOAD_BYTES = 16 << 20
"""A loader's rows are preprocessed once and kept in memory (per worker) when they take at most this much: small
cohorts, where reading and preprocessing per batch is a visible share of a short step. Kept small because a
biobank-size run holds its training and validation loaders at once (at 64 MB the 10,000 validation rows of
``benchmarks/scale.py``'s 100,000-subject cohort were preloaded and its training peak rose by ~50 MB)."""


def _take(batch, at: torch.Tensor):
    """The entries ``at`` of every tensor of a (nested) batch."""
    if isinstance(batch, dict):
        return {key: _take(value, at) for key, value in batch.items()}
    return batch[at]


class CohortBatches(Dataset):
    """Item ``i`` is a whole batch: the rows in ``batches[i]`` of the cohort, preprocessed.

    Holds the cohort folder, not the arrays, so each DataLoader worker opens its own memory maps.
    """

    def __init__(
        self,
        cohort_dir: Path,
        preprocessor_state: dict,
        modalities: Sequence[str],
        split_of_row: np.ndarray | None = None,
        preload_rows: np.ndarray | None = None,
        preload_bytes: int = PRELOAD_BYTES,
    ):
        self.cohort_dir = Path(cohort_dir)
        self.preprocessor_state = preprocessor_state
        self.modalities = list(modalities)
        self.split_of_row = split_of_row  # int8 per cohort row (SPLIT_CODES), or None: every row -1
        self.preload_rows = None if preload_rows is None else np.unique(np.asarray(preload_rows, dtype=np.int64))
        self.preload_bytes = int(preload_bytes)
        self._cohort = None
        self._preprocessor = None
        self._preloaded: dict | None | bool = None  # None: not decided yet; False: too large, read per batch

    def _open(self):
        if self._cohort is None:
            self._cohort = load_cohort(self.cohort_dir, mmap=True)
            self._preprocessor = FoldPreprocessor.from_state_dict(self.preprocessor_state, cohort=self._cohort)
        return self._cohort, self._preprocessor

    def __len__(self) -> int:  # unused: the sampler drives the loader
        return 0

    def __getitem__(self, rows) -> dict:
        rows = np.sort(np.asarray(rows, dtype=np.int64))  # sorted: sequential reads from the memory maps
        preloaded = self._preload()
        if preloaded:
            at = np.searchsorted(preloaded["row"].numpy(), rows).clip(max=len(preloaded["row"]) - 1)
            if np.array_equal(preloaded["row"].numpy()[at], rows):
                return _take(preloaded, torch.from_numpy(at))
        return self._read(rows)

    def _preload(self) -> dict | bool:
        """All of ``preload_rows``, preprocessed once, when they fit in ``preload_bytes``; False otherwise.

        Preprocessing is row by row, so a batch sliced from this equals one read and preprocessed on its own
        (``tests/test_batches.py``); a small cohort then costs a fancy index per batch instead of reading three
        modalities' memory maps and regressing their confounds (most of the loading time of a small step)."""
        if self._preloaded is None:
            self._preloaded = False
            if self.preload_rows is not None and len(self.preload_rows):
                cohort, _ = self._open()
                per_row = 0
                for name in self.modalities:
                    modality = cohort.modalities[name]
                    per_row += modality.n_tokens * (modality.n_features * 5 + 1)  # float32 values, bool missing
                if per_row * len(self.preload_rows) <= self.preload_bytes:
                    self._preloaded = self._read(self.preload_rows)
        return self._preloaded

    def _read(self, rows: np.ndarray) -> dict:
        cohort, preprocessor = self._open()
        batch = {"values": {}, "missing": {}, "present": {}}
        for name in self.modalities:
            values, missing = preprocessor.transform(name, rows)
            batch["values"][name] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
            batch["missing"][name] = torch.from_numpy(np.ascontiguousarray(missing))
            batch["present"][name] = torch.from_numpy(np.ascontiguousarray(cohort.modalities[name].present[rows]))
        targets = preprocessor.transform_targets(rows)
        batch["targets"] = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in targets.items()}
        batch["row"] = torch.from_numpy(rows)
        split = self.split_of_row[rows] if self.split_of_row is not None else np.full(len(rows), -1)
        batch["split"] = torch.from_numpy(np.asarray(split, dtype=np.int8))
        return batch


class RowBatches:
    """Lists of cohort rows, one list per batch; what the DataLoader's sampler yields.

    Shuffling is a function of ``(seed, epoch)`` only (Lightning calls :meth:`set_epoch` every epoch), so
    a run resumed from a checkpoint sees the same batches as an uninterrupted one. Under
    ``torch.distributed`` each rank takes every ``world_size``-th batch, padded so that all ranks step
    equally often.
    """

    def __init__(self, rows: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0):
        self.rows, self.batch_size, self.shuffle, self.seed = rows, int(batch_size), shuffle, int(seed)
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already done): see resume_at

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next iteration, if it is of ``epoch``, starts after its first ``batches_done`` batches (this
        rank's), as they were in the run that was interrupted; later iterations start at the beginning.

        Sets the epoch too: on resume Lightning starts iterating before it calls :meth:`set_epoch`."""
        self.set_epoch(epoch)
        self._resume_at = (int(epoch), int(batches_done))

    def _shard(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _batches(self) -> list[np.ndarray]:
        order = self.rows
        if self.shuffle:
            order = self.rows[np.random.default_rng((self.seed, self.epoch)).permutation(len(self.rows))]
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _position(self, batch_idx: int, rank: int, world: int) -> int:
        """Rank ``rank``'s batch ``batch_idx`` is entry ``rank + batch_idx * world`` of the list of batches,
        wrapping around: positions past the end repeat the first batches so every rank steps equally."""
        return rank + batch_idx * world

    def is_repeat(self, batch_idx: int, rank: int, world: int) -> bool:
        """Whether that batch is one of the padding repeats (an embedding writer must skip it)."""
        return self._position(batch_idx, rank, world) >= math.ceil(len(self.rows) / self.batch_size)

    def __iter__(self):
        batches = self._batches()
        rank, world = self._shard()
        start = 0
        if self._resume_at is not None:
            epoch, done = self._resume_at
            self._resume_at = None
            start = done if epoch == self.epoch else 0
        for batch_idx in range(start, math.ceil(len(batches) / world)):
            yield batches[self._position(batch_idx, rank, world) % len(batches)].tolist()

    def __len__(self) -> int:
        _, world = self._shard()
        n_batches = math.ceil(len(self.rows) / self.batch_size)
        return math.ceil(n_batches / world)


def _no_batches_done() -> int:
    return 0


class ResumableLoader(DataLoader):
    """The training DataLoader, resumable mid-epoch: Lightning saves :meth:`state_dict` in checkpoints and
    calls :meth:`load_state_dict` on resume, so a run restarted from a mid-epoch checkpoint goes on with the
    batches the interrupted run had not trained on yet (without this, Lightning restarts the epoch's data).

    ``batches_done`` counts the batches of the current epoch the training loop has finished; the DataModule
    points it at the trainer's progress, since the loader itself is read ahead of the training loop.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done: Callable[[], int] = _no_batches_done

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches_done": int(self.batches_done())}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resume_at(state["epoch"], state["batches_done"])
