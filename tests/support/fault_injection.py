"""Lightning callbacks that tests add to a real `alignx` run (``+callbacks.x._target_=...``,
with ``tests/support`` on PYTHONPATH) to interrupt it at a chosen point."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class PauseAtStep(L.Callback):
    """After training step ``step`` (and any checkpoint of that step), write ``marker`` and hang,
    so the test can SIGKILL the process at a known point. Does nothing once ``marker`` exists:
    the resumed attempt, given the same config, runs through."""

    def __init__(self, step: int, marker: str) -> None:
        self.step = int(step)
        self.marker = Path(marker)
        self.armed = not self.marker.exists()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.armed and trainer.global_step == self.step:
            self.marker.write_text(str(trainer.global_step))
            while True:
                time.sleep(1)
