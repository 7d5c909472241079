"""SIGINT and SIGTERM during a job: end the run KILLED, checkpoint first when checkpointing is on.

Outside ``Trainer.fit`` a signal interrupts at once (raises :class:`~alignx.errors.JobInterrupted`).
During fit it is deferred to the end of the current training step, so the checkpoint written
then is a consistent one (weights, optimizer and loop counters of the same step) that
``resume=auto`` continues from — what a preempted SLURM job needs. A second signal while one
is pending interrupts at once.

Lightning's own SIGTERM handling (``SIGTERMException``, a ``SystemExit`` with code 0) would
make a killed job look successful to a scheduler; the handler installed here runs alongside
it and always turns a signal into ``JobInterrupted``.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from alignx.checkpoint import save_checkpoint_now
from alignx.errors import JobInterrupted

log = logging.getLogger("alignx")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    def __init__(self) -> None:
        self.pending: int | None = None
        self.deferred = False
        #: the checkpoint written for the pending signal, if any
        self.checkpoint: str | None = None


_state = _State()


def _handler(signum: int, frame: Any) -> None:
    if _state.deferred and _state.pending is None:
        _state.pending = signum
        log.warning("received %s: stopping after this training step", signal.Signals(signum).name)
        return
    raise JobInterrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise :class:`JobInterrupted` (deferred inside :func:`deferred`).

    Only the main thread can own signal handlers; elsewhere (a job run from a worker thread)
    the block runs with the process's handlers unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.pending, _state.deferred, _state.checkpoint = None, False, None
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.pending, _state.deferred = None, False


@contextmanager
def deferred() -> Iterator[None]:
    """Signals received in the block wait for :class:`StopOnSignal` at the end of a training step."""
    _state.deferred = True
    try:
        yield
    except SIGTERMException:
        # Lightning's own stop (a SystemExit with status 0) when SIGTERM came after this step's
        # on_train_batch_end: StopOnSignal.on_exception checkpointed the finished step
        raise JobInterrupted(signal.SIGTERM, checkpoint=_state.checkpoint) from None
    finally:
        _state.deferred = False
    if _state.pending is not None:  # arrived after the last step: stop before evaluation and saving
        raise JobInterrupted(_state.pending)


class StopOnSignal(L.Callback):
    """At the end of a training step with a signal pending: write a checkpoint (when the job
    checkpoints) and raise :class:`JobInterrupted`."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        signum = _state.pending
        if signum is None:
            return
        path = save_checkpoint_now(trainer)
        raise JobInterrupted(signum, checkpoint=str(path) if path else None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning raises SIGTERMException at the end of a step (after every update of that step):
        # a consistent point to checkpoint, as on_train_batch_end would have
        if isinstance(exception, SIGTERMException):
            path = save_checkpoint_now(trainer)
            _state.checkpoint = str(path) if path else None
