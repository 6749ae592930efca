"""What makes an interrupted run resume to the uninterrupted result: per-batch seeds, a checkpoint on SIGTERM.

(The third part, a training loader that resumes mid-epoch, is ``mot_neuro.data.datamodule.ResumableLoader``.)

Training randomness must not depend on history.

Dropout, modality dropout and the masks of masked-token pretraining draw from torch's global generator.
Its state after N steps depends on everything that drew before (sanity-check validation, how many
batches ran in this process), so a run resumed from a checkpoint would draw different masks than the
uninterrupted run. :class:`StepSeed` re-seeds the generator at the start of every training batch from
``(seed, epoch, batch, rank)``: a resumed run, a run with more data workers and an uninterrupted run then
draw the same numbers for the same batch. The seed is Lightning's ``seed_everything`` value; without one
(``seed_everything: false``) nothing is re-seeded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mot_neuro.checkpoint_io import CheckpointWriteError, check_writable_folder


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A 63-bit seed for one training batch; distinct inputs give independent streams (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(batch_idx), int(rank)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class StepSeed(Callback):
    """Seed torch's generators (CPU and CUDA) before each training batch from the run's seed and the batch's
    position, so that the randomness of a batch is the same whether or not the run was interrupted."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is None:
            return
        torch.manual_seed(step_seed(int(seed), trainer.current_epoch, batch_idx, trainer.global_rank))


class SaveOnSigterm(Callback):
    """On SIGTERM (what schedulers send before killing a job), stop at the next training-batch boundary and
    save ``last-sigterm.ckpt`` beside the run's other checkpoints (the folder of ``checkpoint``, a
    ModelCheckpoint).

    Left to itself, Lightning runs a single process on to the epoch's end, aborts the validation after one
    batch and raises ``SIGTERMException`` without saving, so the work since the last checkpoint is lost;
    with several processes it raises at the start of the next step on every rank. Either way this saves
    only where the state is whole (between training batches): a signal during validation leaves the last
    periodic checkpoint as the resume point. The name starts with ``last``, so ``--ckpt_path last`` (the
    newest ``last*.ckpt``) resumes from it.

    It also checks, when fit starts, that the checkpoint folder takes files (read-only or full: one line and
    exit 2 before any training), and a ``last-sigterm.ckpt`` that cannot be written still marks the MLflow
    run FAILED.
    """

    FILENAME = "last-sigterm.ckpt"

    def __init__(self, checkpoint) -> None:
        super().__init__()
        self.checkpoint = checkpoint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # several processes: Lightning broadcasts the signal and raises on every rank at the next step
        if trainer.received_sigterm and trainer.world_size == 1:
            raise SIGTERMException()

    def on_fit_start(self, trainer, pl_module) -> None:
        # a read-only or full checkpoint folder is found now, not when the first epoch's checkpoint is saved
        # (ModelCheckpoint has resolved its folder in setup, which runs before this hook)
        folder = self.checkpoint.dirpath
        # local folders only (s3:// and co. are Lightning's), on every rank: one raising alone would hang the rest
        if folder and "://" not in str(folder):
            check_writable_folder(
                folder,
                "writing to the checkpoint folder",
                "make it writable, free space or choose another folder (--checkpoint_dir)",
            )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.training and self.checkpoint.dirpath:
            try:
                trainer.save_checkpoint(Path(self.checkpoint.dirpath) / self.FILENAME)  # written atomically
            except CheckpointWriteError:
                # raising here skips Lightning's own marking of the loggers (it comes after the callbacks)
                for logger in trainer.loggers:
                    logger.finalize("failed")
                raise
