"""A Lightning logger that writes into an alignx Tracker's run (and never ends it)."""

from __future__ import annotations

from typing import Any, Mapping

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from alignx.tracking.run import Tracker


class TrackerLogger(Logger):
    """Forwards Lightning's per-step metrics to the job's run.

    Lightning's own MLFlowLogger terminates the run when fit() ends; alignx still has to
    evaluate and save after that, and only alignx may decide FINISHED or FAILED.
    """

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.last: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "alignx"

    @property
    def version(self) -> str:
        return self.tracker.run_id or "local"

    @property
    @rank_zero_experiment
    def experiment(self) -> Tracker:
        return self.tracker

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        # alignx logs the resolved Hydra config itself, flattened and scrubbed
        return None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if k != "epoch"}
        self.last.update(metrics)
        self.tracker.log_metrics(metrics, step=step)
