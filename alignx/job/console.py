"""What a person sees while a job runs: one step-based progress bar, each log line once, no
third-party advertising, progress bars or internal deprecation notices.

Lightning, transformers and MLflow each talk to the console on their own terms (Lightning adds its
own handler, so its lines appear twice under Hydra's logging; its progress bar counts epochs of a
step-bounded job as ``Epoch 3/-2``; transformers draws bars for millisecond operations).
:func:`quiet_third_party` brings them under Hydra's logging config, once per process, and
:class:`StepProgressBar` replaces Lightning's bar.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import warnings
from typing import Any

import lightning as L
import transformers
from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm

# Lightning's INFO lines that say nothing about this job: an advertisement, a restatement of a
# default, accelerators that are not there, and "stopped: max_steps reached" (the bar ends at
# max_steps; printed while the bar is still open, it would land in the middle of its line)
_NOISE = re.compile(
    r"💡 Tip|litlogger|was configured so 100% of the batches|(TPU|HPU|IPU) available: False"
    r"|`Trainer.fit` stopped: `max_steps=\d+` reached"
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _NOISE.search(record.getMessage())


_quieted = False


def quiet_third_party() -> None:
    """Route Lightning's messages through Hydra's handlers only, drop its noise, turn off
    transformers' progress bars and MLflow's schema-migration INFO lines, and ignore deprecation
    warnings raised from inside Lightning (they are about Lightning's code, not the user's)."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropNoise())
    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"lightning(\.|$)")
        warnings.filterwarnings("ignore", category=category, module=r"torch(\.|$)")


class StepProgressBar(ProgressBar):
    """One bar for the whole fit, in optimizer steps (jobs are step-bounded), with the latest
    ``train/loss`` and ``val/loss``; validation and sanity checks draw nothing."""

    SHOWN = ("train/loss", "val/loss")

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar: Any = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _total(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        steps = trainer.estimated_stepping_batches
        return int(steps) if steps and math.isfinite(steps) else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.is_enabled:
            return
        # redirected to a file (CI, `make run > log`), a redraw every step would fill it with
        # carriage-return updates: redraw every 30 s there instead
        interactive = sys.stderr.isatty()
        self._bar = tqdm(total=self._total(trainer), initial=int(trainer.global_step), desc="train",
                         unit="step", dynamic_ncols=True, leave=True, file=sys.stderr,
                         mininterval=0.1 if interactive else 30.0)

    def _update(self, trainer: L.Trainer) -> None:
        if self._bar is None:
            return
        metrics = trainer.progress_bar_metrics
        shown = {k.replace("train/", "").replace("/", "_"): f"{float(metrics[k]):.4g}" for k in self.SHOWN if k in metrics}
        self._bar.set_postfix(shown, refresh=False)
        # update() redraws at most every mininterval; the bar's close() draws the final state
        self._bar.update(int(trainer.global_step) - self._bar.n)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._update(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._update(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._update(trainer)
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ShortRunValidation(L.Callback):
    """Validation in a job shorter than an epoch, when ``trainer.val_check_interval`` is null.

    Lightning validates at epoch ends by default, so a step-bounded job shorter than one epoch never
    reports ``val/loss``. With the interval left null, alignx validates every
    ``ceil(max_steps / CHECKS)`` steps (never less often than once an epoch) and always after the
    last step, so every job's validation curve has at least one point and ends where training ends.
    """

    CHECKS = 4

    def __init__(self, max_steps: int, accumulate: int) -> None:
        self.batches = max(1, math.ceil(max_steps / self.CHECKS)) * accumulate
        self.max_steps = max_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # set after Lightning sized its loops from the (null) interval: only shorten, never lengthen
        if trainer.val_check_batch is not None and self.batches < trainer.val_check_batch:
            trainer.val_check_batch = self.batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # a stop request at the last step makes Lightning run validation before the loop ends
        if self.max_steps > 0 and trainer.global_step >= self.max_steps:
            trainer.should_stop = True
