"""What a job produced (:class:`Job`), returned by every entry point of :mod:`alignx.job`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignx.resume import read_run_record
from alignx.tracking.connection import ui_command
from alignx.tracking.views import job_links


@dataclass
class Job:
    """What a job produced: final metrics, where outputs went, and the MLflow run."""

    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: Path | None = None
    model_dir: Path | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    #: the MLflow experiment of ``run_id`` (when None, :meth:`mlflow_links` reads it from run.json)
    experiment_id: str | None = None
    samples: list[dict] = field(default_factory=list)
    #: MLflow calls that failed after the run started (e.g. the server went away)
    tracking_errors: list[str] = field(default_factory=list)
    #: what MLflow missed: failures, missing step ranges (``gaps``), a status not yet set (``pending_finish``)
    tracking: dict[str, Any] = field(default_factory=dict)
    #: False in the extra processes of a data-parallel job, which neither track nor write outputs
    rank_zero: bool = True
    #: a pipeline's stages by name (see alignx.job.pipeline); empty for a single-stage job
    stages: dict[str, Any] = field(default_factory=dict)

    def mlflow_links(self) -> list[str]:
        """Lines to print at the end of the job: the run's page and the experiment's runs view in the
        MLflow UI (MLflow 3's training-runs view), and ``mlflow ui`` for a local store; none without a run."""
        if not self.run_id or not self.tracking_uri:
            return []
        experiment_id = self.experiment_id
        if experiment_id is None and self.output_dir is not None:
            record = read_run_record(self.output_dir) or {}
            if record.get("run_id") == self.run_id:
                experiment_id = record.get("experiment_id")
        if experiment_id is None:
            return [f"open MLflow: {ui_command(self.tracking_uri)}"]
        return job_links(self.tracking_uri, str(experiment_id), self.run_id)
