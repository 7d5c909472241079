"""Training never goes on without signal: a non-finite loss or non-finite weights stop the job.

:class:`DivergenceGuard` is a Lightning callback for objectives trained with automatic
optimisation (SFT, RM, DPO, KTO and plugins built on :class:`~alignx.objectives.base.Objective`):

* before every backward it checks the loss: a NaN/inf loss stops training before its gradients
  exist, so no update of that step is applied;
* after every optimizer step it checks the trainable weights, before any checkpoint of that step
  is written (Lightning runs checkpoint callbacks after all others), so the last checkpoint on
  disk always holds the finite weights of an earlier step.

Either raises :class:`~alignx.errors.TrainingDiverged` naming the objective, the step and what to
try. Online RL objectives (manual optimisation) check their own losses, samples and updates
inside their loop (:mod:`alignx.objectives.online`); the guard leaves them alone.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from alignx.errors import TrainingDiverged
from alignx.objectives.base import Objective

#: what a user can change when training diverges
HINT = "lower optim.lr, and check the data and the model's weights"


def checkpoint_hint(trainer: L.Trainer | None) -> str:
    """One sentence saying which checkpoint still holds good weights (or that none was written)."""
    callback = trainer.checkpoint_callback if trainer is not None else None
    path = (callback.last_model_path or callback.best_model_path) if callback is not None else ""
    if path:
        return (f" No update of this step was saved: the last checkpoint, written before it, is {path} "
                "(resume=<it> with a lower optim.lr; earlier ones are next to it).")
    return " No checkpoint was saved (set checkpoint.every_n_steps to keep some); lower optim.lr and retry."


def nonfinite_parameters(module: torch.nn.Module, limit: int = 3) -> list[str]:
    """Names of (at most ``limit``) trainable parameters holding a NaN or inf entry.

    The common case (all finite) costs one device sync: each parameter's check stays on the
    device and only their conjunction is read back.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
    if bool(flags.all()):
        return []
    return [n for (n, _), ok in zip(named, flags.tolist()) if not ok][:limit]


class DivergenceGuard(L.Callback):
    """Stop automatic-optimisation training with :class:`~alignx.errors.TrainingDiverged` on a
    non-finite loss (before its backward) or non-finite weights (after an optimizer step, before
    that step's checkpoint). Under data parallelism every rank takes the same decision."""

    def __init__(self) -> None:
        # the global step whose weights were last checked: with gradient accumulation several
        # batches end between two optimizer steps, and only a step changes the weights
        self._checked_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._checked_step = int(trainer.global_step)  # a resumed run's loaded weights were checked when saved

    @staticmethod
    def _applies(pl_module: L.LightningModule) -> bool:
        # manual optimisation (online RL) checks inside its own loop, where it knows what failed
        return bool(pl_module.automatic_optimization)

    @staticmethod
    def _objective(pl_module: L.LightningModule) -> str:
        return f"objective={pl_module.name}" if isinstance(pl_module, Objective) else type(pl_module).__name__

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not self._applies(pl_module):
            return
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        value = f"{float(loss.detach().float().mean())}" if not finite else "not finite on another rank"
        raise TrainingDiverged(
            f"{self._objective(pl_module)}: the training loss is {value} in training step {trainer.global_step + 1}, "
            f"so training stopped before its update; {HINT}.{checkpoint_hint(trainer)}"
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if not self._applies(pl_module) or step == self._checked_step:
            return
        self._checked_step = step
        bad = nonfinite_parameters(pl_module)
        if trainer.strategy.reduce_boolean_decision(not bad, all=True):
            return
        which = f" ({', '.join(bad)}, ...)" if bad else " (on another rank)"
        raise TrainingDiverged(
            f"{self._objective(pl_module)}: the weights are not finite after the update of training step {step}{which}; "
            f"training stopped; {HINT}.{checkpoint_hint(trainer)}"
        )


__all__ = ["DivergenceGuard", "TrainingDiverged", "checkpoint_hint", "nonfinite_parameters"]
