"""Evaluation during training: the end-of-job suite every ``eval.every_n_steps`` training steps.

:class:`PeriodicEvaluation` calls :func:`alignx.evaluation.suite.evaluate` (what the end of a job
calls, with the same held-out rows, the same reference and the same seed) on the policy as it is
after step N and logs ``eval/*`` at step N, so gold/learned reward, KL and perplexity get curves
over training for every objective: a step is an optimizer step under Lightning's automatic
optimisation (SFT, DPO, KTO, RM) and an iteration under online RL's manual optimisation
(``trainer.global_step`` counts both).

Evaluating must not change the training it observes: the model's modules go back to the train/eval
modes they had, and the random number generators (Python, NumPy, torch on the CPU and the policy's
GPU) to the state they were in, so a job with ``eval.every_n_steps`` trains exactly as one without.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from alignx.data.rows import load_rows
from alignx.evaluation.suite import StartingModel, evaluate
from alignx.objectives.base import Objective
from alignx.tracking import Tracker

log = logging.getLogger("alignx")


class PeriodicEvaluation(L.Callback):
    """Run the evaluation suite every ``cfg.eval.every_n_steps`` steps and log ``eval/*`` at that step.

    The step at which training stops is left to the end-of-job evaluation (it logs at that step
    itself), so each step has one evaluation. Only rank 0 evaluates, as at the end of a job.
    """

    def __init__(self, cfg: DictConfig, tracker: Tracker, *, rank_zero: bool = True) -> None:
        """``cfg``: the job's config (``eval`` node, data and seed); ``tracker``: where ``eval/*`` is logged."""
        self.cfg = cfg
        self.tracker = tracker
        self.every = int(cfg.eval.every_n_steps)
        self.rank_zero = rank_zero
        self.start: StartingModel | None = None
        self.test_rows: list[dict] = []
        self.last_step = -1
        #: every evaluation this callback ran, ``{step: metrics}`` (what it logged)
        self.history: dict[int, dict[str, float]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # before a resumed run's checkpoint is loaded: the model is still the one the job built,
        # what StartingModel records (as the job did before fitting)
        if stage != "fit" or not self.rank_zero:
            return
        objective = _objective(pl_module)
        context = objective.context
        objective_cls = type(objective)
        with preserved_rng(next(objective.model.parameters()).device):
            # the held-out rows the end-of-job evaluation reads: loaders are deterministic in (config, seed)
            rows = load_rows(self.cfg, context.registry, objective_cls.row_kind(self.cfg.objective),
                             objective_cls.test_kind(self.cfg))
            self.test_rows = list(rows["test"])
            self.start = StartingModel(self.cfg, context.registry, objective_cls, objective.model)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = int(trainer.global_step)
        # accumulation: several batches end at one step; only the first that reaches it evaluates
        if not self.rank_zero or step == self.last_step or step == 0 or step % self.every:
            return
        self.last_step = step
        if _last_step(trainer, step):
            return
        self.history[step] = metrics = self.evaluate(_objective(pl_module))
        self.tracker.log_metrics(metrics, step=step)

    def evaluate(self, objective: Objective) -> dict[str, float]:
        """The suite's metrics on the policy as it is now; training state (modes, RNG) untouched."""
        t0 = time.time()
        modes = [(m, m.training) for m in objective.modules()]
        try:
            objective.eval()
            with preserved_rng(next(objective.model.parameters()).device), torch.no_grad():
                metrics, _ = evaluate(self.cfg, objective.context.registry, objective.model, objective.tokenizer,
                                      type(objective), self.test_rows, reference=self.start.factory(objective))
        finally:
            for module, training in modes:
                module.train(training)
        log.debug("evaluation at step %d took %.1fs", objective.global_step, time.time() - t0)
        return metrics


def periodic_evaluation(cfg: DictConfig, tracker: Tracker, *, rank_zero: bool = True) -> list[L.Callback]:
    """The callbacks ``eval.every_n_steps`` asks for: one :class:`PeriodicEvaluation`, or none (null,
    or evaluation disabled)."""
    if not cfg.eval.enabled or cfg.eval.every_n_steps is None:
        return []
    return [PeriodicEvaluation(cfg, tracker, rank_zero=rank_zero)]


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run the body and put Python's, NumPy's and torch's (CPU and ``device``'s) RNG states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _objective(pl_module: L.LightningModule) -> Objective:
    if not isinstance(pl_module, Objective) or pl_module.context is None:
        raise TypeError(f"eval.every_n_steps evaluates an alignx Objective bound to its job, not {type(pl_module).__name__}")
    return pl_module


def _last_step(trainer: L.Trainer, step: int) -> bool:
    """Whether training stops after ``step`` (max_steps reached, or the last batch of the last epoch)."""
    if trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    return bool(trainer.is_last_batch and max_epochs is not None and max_epochs > 0
                and trainer.current_epoch + 1 >= max_epochs)
