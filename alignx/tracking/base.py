"""The tracking interface every job talks to, and the context manager that always ends its run."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from alignx.errors import JobInterrupted


class Tracker:
    """Tracking interface; this base is the ``tracking=none`` implementation (does nothing)."""

    enabled = False
    run_id: str | None = None
    uri: str | None = None
    errors: tuple[str, ...] | list[str] = ()
    #: the status ``finish`` could not set yet (the store was down); None once set
    pending_finish: str | None = None

    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_data_counters(self, counters: Mapping[str, float]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_table(self, rows: list[dict], artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...

    def retry_pending(self) -> bool:
        """Try again to send what an outage held back and to set the final status; True when nothing is left."""
        return True

    def outage_summary(self) -> dict[str, Any]:
        """What tracking lost (for the job's summary and run.json): see :meth:`MlflowTracker.outage_summary`."""
        return {"failures": 0, "gaps": "", "outage_steps": "", "resent": 0, "lost": [], "finalised": True,
                "pending_finish": None}


@contextmanager
def finishing(tracker: Tracker) -> Iterator[Tracker]:
    """End ``tracker``'s run with the block's outcome: KILLED on Ctrl-C or SIGTERM
    (:class:`~alignx.errors.JobInterrupted`), FAILED on any error (re-raised), else FINISHED.
    A run is never left RUNNING, and never FINISHED after a failure."""
    try:
        yield tracker
    except (KeyboardInterrupt, JobInterrupted):
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
