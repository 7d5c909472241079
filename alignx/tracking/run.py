"""One MLflow run per job, driven through MlflowClient (never the fluent global active run).

The fluent API keeps a process-global active run; Hydra's basic launcher runs sweep jobs in one
process, so a leaked active run would silently merge jobs. MlflowClient calls name the run id.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from alignx.errors import AlignxError

log = logging.getLogger("alignx")

TAG_PREFIX = "alignx."


class TrackingUnavailable(AlignxError):
    """The MLflow tracking server cannot be reached when a job starts."""


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingUnavailable unless a remote tracking server answers its health check."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
            reason = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise TrackingUnavailable(
        f"MLflow tracking server {uri} is unreachable ({reason}). Start one, e.g. "
        f"`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`, "
        f"or drop tracking.uri to use the embedded store under outputs/ (nothing to start), or set tracking=none."
    )


def default_tracking_uri(outputs_root: str | os.PathLike) -> str:
    """The embedded store: an sqlite file under ``outputs_root``, as an absolute URI."""
    return f"sqlite:///{Path(outputs_root).resolve() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """How to look at the runs stored at ``uri``."""
    if _is_remote(uri):
        return f"open {uri} in a browser (the tracking server's UI)"
    return f"mlflow ui --backend-store-uri {uri}"


class Tracker:
    """Tracking interface; this base is the ``tracking=none`` implementation (does nothing)."""

    enabled = False
    run_id: str | None = None
    uri: str | None = None
    errors: tuple[str, ...] | list[str] = ()

    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_table(self, rows: list[dict], artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(Tracker):
    """An MLflow run created on start; ``finish`` always sets a terminal status.

    Creating the run must succeed (a server that is down at start is an error before any
    training). After that, logging failures are never fatal: see :meth:`_guard`.
    """

    enabled = True
    #: while the server is down, seconds between attempts to reach it again
    RETRY_AFTER_S = 30.0

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        artifact_location: str | None = None,
        parent_run_id: str | None = None,
        resume_run_id: str | None = None,
    ) -> None:
        from mlflow import MlflowClient

        if _is_remote(uri):
            # MLflow's default HTTP retries back off for minutes; a lost server must not stall training
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            check_server(uri)
        self.uri = uri
        self.errors: list[str] = []
        self._down_since: float | None = None
        self.client = MlflowClient(tracking_uri=uri)
        tags = dict(tags or {})
        #: per metric key, the last step already in the run (a resumed run does not log those again)
        self._logged_through: dict[str, int] = {}
        self._existing_params: dict[str, str] = {}
        if resume_run_id:
            run = self._reopen(resume_run_id, tags)
        else:
            self.experiment_id = self._experiment(experiment, artifact_location)
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name
        self.artifact_uri = run.info.artifact_uri
        self._finished = False

    def _reopen(self, run_id: str, tags: Mapping[str, str]) -> Any:
        """Continue an interrupted run: status back to RUNNING, its logged steps remembered."""
        from mlflow.entities import RunTag

        try:
            run = self.client.get_run(run_id)
        except Exception as exc:
            raise TrackingUnavailable(f"cannot resume MLflow run {run_id} in {self.uri}: {str(exc).splitlines()[0]}") from None
        self.experiment_id = run.info.experiment_id
        for key in run.data.metrics:
            history = self.client.get_metric_history(run_id, key)
            if history:
                self._logged_through[key] = max(m.step for m in history)
        self._existing_params = dict(run.data.params)
        count = int(run.data.tags.get("alignx.resume_count", "0")) + 1
        tags = {k: v for k, v in tags.items() if k != "mlflow.runName"}
        tags["alignx.resume_count"] = str(count)
        self.client.update_run(run_id, status="RUNNING")
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
        log.info("resuming MLflow run %s (resume #%d)", run_id, count)
        return self.client.get_run(run_id)

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

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        """Run one logging call; a failure is reported and counted, never fatal.

        Losing the tracking server mid-run must not cost the training: the model is still
        saved, every failure is warned about and the job's summary counts them. While the
        server is down, calls are skipped (and counted) instead of each waiting out HTTP
        retries; the server is probed again at most every RETRY_AFTER_S seconds.
        """
        import time

        if self._down_since is not None:
            if time.monotonic() - self._down_since < self.RETRY_AFTER_S or not self._reachable():
                if time.monotonic() - self._down_since >= self.RETRY_AFTER_S:
                    self._down_since = time.monotonic()  # probed and still down: wait again
                self.errors.append(f"{what}: skipped, tracking server unavailable")
                return
            self._down_since = None
            log.warning("MLflow tracking server %s is reachable again; logging resumes", self.uri)
        try:
            fn()
        except Exception as exc:
            self._down_since = time.monotonic()
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            self.errors.append(f"{what}: {type(exc).__name__}: {first_line}"[:300])
            log.warning(
                "MLflow logging to %s failed (%s); training continues without it, failures are counted",
                self.uri, self.errors[-1],
            )

    def _reachable(self) -> bool:
        if not _is_remote(self.uri or ""):
            return True
        try:
            check_server(self.uri, timeout=2.0)
            return True
        except TrackingUnavailable:
            return False

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        if self._existing_params:
            # a resumed run keeps its params (MLflow forbids changing one); differences are recorded
            changed = {k: v for k, v in params.items() if k in self._existing_params and self._existing_params[k] != v}
            if changed:
                text = "; ".join(f"{k}: {self._existing_params[k]} -> {v}" for k, v in sorted(changed.items()))
                log.warning("resumed with changed settings: %s", text)
                self.set_tags({"alignx.resume_changed": text})
            params = {k: v for k, v in params.items() if k not in self._existing_params}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-request param limit
            chunk = items[i : i + 100]
            self._guard("log params", lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = step or 0
        # on resume, steps between the checkpoint and the interruption come round again; they
        # were logged (with the same values, on a deterministic setup) by the interrupted attempt
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self._logged_through.get(k, -1)]
        for i in range(0, len(items), 1000):
            chunk = items[i : i + 1000]
            self._guard("log metrics", lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._guard("set tags", lambda: self.client.log_batch(self.run_id, tags=batch))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            dest = artifact_path or path.name
            self._guard(f"log {dest}/", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path=dest))
        else:
            self._guard(f"log {path.name}", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path))

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        columns = list(rows[0]) if rows else []
        data = {"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]}
        self.log_text(json.dumps(data, indent=1), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            target.write_text(text)
            parent = str(Path(artifact_file).parent)
            dest = None if parent == "." else parent
            self._guard(f"log {artifact_file}", lambda: self.client.log_artifact(self.run_id, str(target), artifact_path=dest))

    def finish(self, status: str = "FINISHED") -> None:
        if not self._finished:
            self._finished = True
            self._guard(f"set status {status}", lambda: self.client.set_terminated(self.run_id, status))


@contextmanager
def finishing(tracker: Tracker) -> Iterator[Tracker]:
    """End ``tracker``'s run with the block's outcome: KILLED on Ctrl-C, FAILED on any error (re-raised),
    else FINISHED. A run is never left RUNNING, and never FINISHED after a failure."""
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
