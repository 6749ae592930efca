"""Callbacks that pin the moment a test kills a real ``mot-neuro`` process (imported by the subprocess).

Killing at a random time would make the tests flaky (the demo trains in seconds); these wait at a known
step until the test's signal arrives. Controlled by environment variables so the command line stays
that of a user:

* ``MOT_NEURO_TEST_HOLD_AT``: ``fit:<global step>`` or ``predict:<batch index>``, where to wait;
* ``MOT_NEURO_TEST_HOLD_FILE``: written when the process reaches that point (the test then signals it);
* ``MOT_NEURO_TEST_HOLD_ON_FIT``: hold only in the N-th fit this folder has started (counted in a file
  beside the hold file), so an ablation grid gets a finished cell before the interrupted one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("MOT_NEURO_TEST_HOLD_AT")
    if not spec:
        return None
    stage, _, value = spec.partition(":")
    return stage, int(value)


class HoldForSignal(Callback):
    def __init__(self) -> None:
        super().__init__()
        self._active = True

    def _hold(self, trainer) -> None:
        marker = Path(os.environ["MOT_NEURO_TEST_HOLD_FILE"])
        marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        # SIGKILL ends this at once; after SIGTERM Lightning goes on to the epoch's end, as in a real job
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)

    def on_fit_start(self, trainer, pl_module) -> None:
        wanted = os.environ.get("MOT_NEURO_TEST_HOLD_ON_FIT")
        if not wanted:
            return
        counter = Path(os.environ["MOT_NEURO_TEST_HOLD_FILE"] + ".fits")
        count = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(count))
        self._active = count == int(wanted)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        target = _target()
        if self._active and target and target[0] == "fit" and trainer.global_step == target[1]:
            self._hold(trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        target = _target()
        if target and target[0] == "predict" and batch_idx == target[1]:
            self._hold(trainer)


class CrashAtStep(Callback):
    """A bug in the middle of training: raises at global step 3."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 3:
            raise RuntimeError("an injected crash at step 3")
