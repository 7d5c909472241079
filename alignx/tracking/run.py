"""One MLflow run per job, driven through MlflowClient (never the fluent global active run).

The fluent API keeps a process-global active run; Hydra's basic launcher runs sweep jobs in one
process, so a leaked active run would silently merge jobs. MlflowClient calls name the run id.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

TAG_PREFIX = "alignx."


def default_tracking_uri(outputs_root: str | os.PathLike) -> str:
    """The embedded store: an sqlite file under ``outputs_root``, as an absolute URI."""
    return f"sqlite:///{Path(outputs_root).resolve() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri}"


class Tracker:
    """Tracking interface; this base is the ``tracking=none`` implementation (does nothing)."""

    enabled = False
    run_id: str | None = None
    uri: str | None = None

    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_table(self, rows: list[dict], artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(Tracker):
    """An MLflow run created (or resumed) on start; ``finish`` always sets a terminal status."""

    enabled = True

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        artifact_location: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment(experiment, artifact_location)
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name
        self.artifact_uri = run.info.artifact_uri
        self._finished = False

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except Exception:
            # parallel sweep jobs race to create it; the loser reads the winner's
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-request param limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=artifact_path or path.name)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        columns = list(rows[0]) if rows else []
        data = {"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]}
        self.log_text(json.dumps(data, indent=1), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            target.write_text(text)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(target), artifact_path=None if parent == "." else parent)

    def finish(self, status: str = "FINISHED") -> None:
        if not self._finished:
            self.client.set_terminated(self.run_id, status)
            self._finished = True
