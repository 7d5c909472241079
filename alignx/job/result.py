"""What a job produced (:class:`Job`), returned by every entry point of :mod:`alignx.job`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Job:
    """What a job produced: final metrics, where outputs went, and the MLflow run."""

    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: Path | None = None
    model_dir: Path | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    samples: list[dict] = field(default_factory=list)
    #: MLflow calls that failed after the run started (e.g. the server went away)
    tracking_errors: list[str] = field(default_factory=list)
    #: what MLflow missed: failures, missing step ranges (``gaps``), a status not yet set (``pending_finish``)
    tracking: dict[str, Any] = field(default_factory=dict)
    #: False in the extra processes of a data-parallel job, which neither track nor write outputs
    rank_zero: bool = True
    #: a pipeline's stages by name (see alignx.job.pipeline); empty for a single-stage job
    stages: dict[str, Any] = field(default_factory=dict)
