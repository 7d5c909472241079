"""One MLflow run per job, driven through MlflowClient (never the fluent global active run).

The fluent API keeps a process-global active run; Hydra's basic launcher runs sweep jobs in one
process, so a leaked active run would silently merge jobs. MlflowClient calls name the run id.

A run survives its store going away: calls that fail are counted and buffered, re-sent when the
store answers again, and the run gets tags recording the outage (:mod:`alignx.tracking.outage`).
A tracking URL may carry ``user:password@``: the password goes to MLflow through its environment
variables and never appears in ``tracker.uri``, a message or the store.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from alignx.secrets import redact_text, strip_url_credentials
from alignx.tracking.base import Tracker, finishing
from alignx.tracking.connection import TrackingUnavailable, check_server, default_tracking_uri, is_remote, ui_command
from alignx.tracking.local_store import ensure_store, sqlite_path, store_lock
from alignx.tracking.outage import OutageLog, PendingRuns, step_ranges
from alignx.tracking.params import config_params, masked_tags
from alignx.tracking.summary import DATA_SUMMARY, data_counter_tags, is_data_counter, summary_json

# names that have always been importable from here
__all__ = [
    "MlflowTracker", "Tracker", "TrackingUnavailable", "check_server", "default_tracking_uri", "finishing",
    "ui_command",
]

log = logging.getLogger("alignx")

TAG_PREFIX = "alignx."


class _StoreDown(Exception):
    """Raised inside the tracker when the store stopped answering while re-sending."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return redact_text(f"{type(exc).__name__}: {text}")[:300]


class MlflowTracker(Tracker):
    """An MLflow run created on start; ``finish`` always sets a terminal status, now or at a later contact.

    Creating the run must succeed (a server that is down at start is an error before any
    training). After that, logging failures are never fatal: see :meth:`_guard`.

    ``pending_dir``: where a run whose final status could not be set is remembered
    (``tracking-pending.json``); the next tracker given the same directory and store sends
    what it missed and sets its status.
    """

    enabled = True
    #: while the server is down, seconds between attempts to reach it again
    RETRY_AFTER_S = 30.0
    #: metric points kept to re-send after an outage; older points beyond this are lost (and tagged)
    MAX_BUFFERED_POINTS = 10_000

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
        pending_dir: str | os.PathLike | None = None,
    ) -> None:
        from mlflow import MlflowClient

        client_uri = self._connect(uri)
        if sqlite_path(client_uri) is not None:
            ensure_store(client_uri)  # the first process creates and migrates it; the rest wait
        self._init_state(MlflowClient(tracking_uri=client_uri), client_uri)
        self._pending = PendingRuns(pending_dir) if pending_dir is not None else None
        self._finalise_earlier_runs()
        # the last gate before the store: whatever a caller passes, no secret is written
        tags, run_name = masked_tags(tags or {}), redact_text(run_name) if run_name else run_name
        if resume_run_id:
            run = self._reopen(resume_run_id, tags)
        else:
            with store_lock(client_uri):
                self.experiment_id = self._experiment(experiment, artifact_location)
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name
        self.artifact_uri = run.info.artifact_uri

    @staticmethod
    def _connect(uri: str) -> str:
        """The URI MLflow's client gets; a server's credentials move to MLflow's variables (this process only)."""
        if not is_remote(uri):
            return uri
        clean, username, password = strip_url_credentials(uri)
        if username is not None or password is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"] = username or ""
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password or ""
        # MLflow's default HTTP retries back off for minutes; a lost server must not stall training
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        check_server(clean)
        return clean

    def _init_state(self, client: Any, client_uri: str) -> None:
        self.client = client
        self._client_uri = client_uri
        #: the store, as shown to people: never with a password
        self.uri = redact_text(client_uri)
        self.errors: list[str] = []
        self.outage = OutageLog(max_points=self.MAX_BUFFERED_POINTS)
        self._down_since: float | None = None
        self._finish_called = False
        self.pending_finish = None
        self.finalised = False
        self._pending: PendingRuns | None = None
        self._persisted = False  # this run is in the pending file
        self._finish_retried = False  # finish failed and is being tried again
        #: per metric key, the last step already in the run (a resumed run does not log those again)
        self._logged_through: dict[str, int] = {}
        self._existing_params: dict[str, str] = {}
        #: the data counters recorded so far (what data/summary.json holds)
        self._data_counters: dict[str, float] = {}

    def _reopen(self, run_id: str, tags: Mapping[str, str]) -> Any:
        """Continue an interrupted run: status back to RUNNING, its logged steps remembered."""
        from mlflow.entities import RunTag

        try:
            run = self.client.get_run(run_id)
        except Exception as exc:
            raise TrackingUnavailable(f"cannot resume MLflow run {run_id} in {self.uri}: {_first_line(exc)}") from None
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
            # jobs on a server race to create it (a local store is locked); the loser reads the winner's
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # -- failures, outages and re-sending -------------------------------------------------------

    def _guard(self, what: str, fn: Callable[[], Any], keep: Callable[[], None] | None = None) -> bool:
        """Run one logging call; a failure is reported, counted and (with ``keep``) buffered, never fatal.

        Losing the tracking server mid-run must not cost the training: the model is still
        saved, every failure is warned about and the job's summary counts them. While the
        server is down, calls are skipped (and buffered) instead of each waiting out HTTP
        retries; the server is probed again at most every RETRY_AFTER_S seconds, and when it
        answers, what was buffered is sent first. ``keep`` buffers this call's data. True when
        the call went through.
        """
        if self._down_since is not None and not self._back_up():
            self._fail(what, "skipped, tracking server unavailable", keep)
            return False
        try:
            fn()
            return True
        except Exception as exc:
            self._down_since = time.monotonic()
            self._fail(what, _first_line(exc), keep)
            log.warning(
                "MLflow logging to %s failed (%s); training continues without it, failures are counted",
                self.uri, self.errors[-1],
            )
            return False

    def _fail(self, what: str, reason: str, keep: Callable[[], None] | None) -> None:
        self.errors.append(f"{what}: {reason}"[:300])
        self.outage.failures += 1
        if keep is not None:
            keep()
        else:
            self.outage.lost.append(what)

    def _back_up(self) -> bool:
        """While down: True once the store answers again and what was buffered has been re-sent."""
        now = time.monotonic()
        if now - (self._down_since or now) < self.RETRY_AFTER_S:
            return False
        if not self._reachable():
            self._down_since = now  # probed and still down: wait again
            return False
        self._down_since = None
        log.warning("MLflow tracking server %s is reachable again; logging resumes", self.uri)
        try:
            self._resend()
        except _StoreDown:
            return False
        return True

    def _reachable(self) -> bool:
        if not is_remote(self._client_uri):
            return True
        try:
            check_server(self._client_uri, timeout=2.0)
            return True
        except TrackingUnavailable:
            return False

    def _retry(self, what: str, fn: Callable[[], Any]) -> bool:
        """Send one buffered item: True if sent, False if a store that is up rejected it (it is lost).

        Raises _StoreDown (the item stays buffered) when the store stopped answering again.
        """
        try:
            fn()
            return True
        except Exception as exc:
            reason = _first_line(exc)
            if not self._reachable():
                self._down_since = time.monotonic()
                raise _StoreDown(reason) from None
            log.warning("MLflow rejected buffered %s (%s); it is left out of run %s", what, reason, self.run_id)
            return False

    def _resend(self) -> None:
        """Send everything buffered, oldest first, then record the outage on the run as tags."""
        from mlflow.entities import Metric, Param, RunTag

        outage, run_id = self.outage, self.run_id
        while outage.params:
            chunk = dict(list(outage.params.items())[:100])  # MLflow's per-request param limit
            if not self._retry("params", lambda: self.client.log_batch(run_id, params=[Param(k, v) for k, v in chunk.items()])):
                outage.lost.append("params " + ",".join(chunk))
            for k in chunk:
                outage.params.pop(k)
        while outage.metrics:
            chunk = outage.metrics[:1000]
            batch = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in chunk]
            if self._retry("metrics", lambda: self.client.log_batch(run_id, metrics=batch)):
                outage.resent_points += len(chunk)
            else:
                outage.lose_metrics(chunk)
            del outage.metrics[: len(chunk)]
        while outage.texts:
            text, artifact_file = outage.texts[0]
            if not self._retry(artifact_file, lambda: self._send_text(text, artifact_file)):
                outage.lost.append(artifact_file)
            outage.texts.pop(0)
        while outage.artifacts:
            path, artifact_path = outage.artifacts[0]
            if not Path(path).exists() or not self._retry(str(path), lambda: self._send_artifact(Path(path), artifact_path)):
                outage.lost.append(f"{artifact_path or ''}/{Path(path).name}".lstrip("/"))
            outage.artifacts.pop(0)
        tags = {**outage.tags, **outage.tags_to_set()}
        if tags:
            self._retry("tags", lambda: self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()]))
            outage.tags.clear()
        if outage.failures:
            log.warning("MLflow run %s: %d logging call(s) failed; re-sent %d metric point(s); steps still missing: %s",
                        run_id, outage.failures, outage.resent_points, outage.gaps() or "none")

    # -- logging --------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        params = config_params(params)  # flat already: only masks what a caller left unmasked
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
            self._guard(
                "log params",
                lambda: self.client.log_batch(self.run_id, params=chunk),
                keep=lambda: self.outage.params.update({p.key: p.value for p in chunk}),
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metric values at ``step``; the one-off data counters among them (``data/<split>/<name>``)
        go to :meth:`log_data_counters` instead: metrics are results and curves."""
        from mlflow.entities import Metric

        counters = {k: v for k, v in metrics.items() if is_data_counter(k)}
        if counters:
            self.log_data_counters(counters)
            metrics = {k: v for k, v in metrics.items() if k not in counters}
        now = int(time.time() * 1000)
        step = step or 0
        # on resume, steps between the checkpoint and the interruption come round again; they
        # were logged (with the same values, on a deterministic setup) by the interrupted attempt
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self._logged_through.get(k, -1)]
        for i in range(0, len(items), 1000):
            chunk = items[i : i + 1000]
            self._guard(
                "log metrics",
                lambda: self.client.log_batch(self.run_id, metrics=chunk),
                keep=lambda: self.outage.add_metrics([m.key, m.value, m.timestamp, m.step] for m in chunk),
            )

    def log_data_counters(self, counters: Mapping[str, float]) -> None:
        """Record data counters (``data/train/kept``...) as tags ``data.train.kept`` and in the
        ``data/summary.json`` artifact, which holds every counter this run recorded so far."""
        changed = {k: float(v) for k, v in counters.items() if self._data_counters.get(k) != float(v)}
        if not changed:
            return
        self._data_counters.update(changed)
        self.set_tags(data_counter_tags(changed))
        self.log_text(summary_json(self._data_counters), DATA_SUMMARY)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, v[:5000]) for k, v in masked_tags(tags).items()]
        self._guard(
            "set tags",
            lambda: self.client.log_batch(self.run_id, tags=batch),
            keep=lambda: self.outage.tags.update({t.key: t.value for t in batch}),
        )

    def _send_artifact(self, path: Path, artifact_path: str | None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=artifact_path or path.name)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path).resolve()
        what = f"log {artifact_path or path.name}/" if path.is_dir() else f"log {path.name}"
        self._guard(
            what,
            lambda: self._send_artifact(path, artifact_path),
            keep=lambda: self.outage.artifacts.append([str(path), artifact_path]),
        )

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        columns = list(rows[0]) if rows else []
        data = {"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]}
        self.log_text(json.dumps(data, indent=1), artifact_file)

    def _send_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            target.write_text(text)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(target), artifact_path=None if parent == "." else parent)

    def log_text(self, text: str, artifact_file: str) -> None:
        if artifact_file.endswith((".yaml", ".yml")):
            text = redact_text(text)  # config records; tables of generations are left as generated
        self._guard(
            f"log {artifact_file}",
            lambda: self._send_text(text, artifact_file),
            keep=lambda: self.outage.add_text(text, artifact_file),
        )

    # -- finishing ------------------------------------------------------------------------------

    def finish(self, status: str = "FINISHED") -> None:
        """Send what an outage held back, record it, and set the run's final status (the first call wins).

        If the store is down, the status stays pending: retried at process exit and, with
        ``pending_dir``, by the next tracker that reaches the same store.
        """
        if self._finish_called:
            return
        self._finish_called = True
        self.pending_finish = status
        if self._finalise():
            return
        self.errors.append(f"set status {status}: skipped, tracking server unavailable")
        self.outage.failures += 1
        log.warning(
            "MLflow run %s could not be marked %s (tracking server %s unavailable); %s",
            self.run_id, status, self.uri,
            "it will be finished at exit or by the next job that reaches the server"
            if self._pending is not None else "it will be retried at exit",
        )
        if self._pending is not None:
            self._pending.put(self.run_id, {"uri": self.uri, "status": status, "outage": self.outage.to_json()})
            self._persisted = True
        atexit.register(self.retry_pending)

    def _finalise(self) -> bool:
        """Re-send, tag and set the pending status now if the store answers; True when done."""
        if self.pending_finish is None:
            return self.finalised
        if self._down_since is not None:
            if not self._reachable():
                return False
            self._down_since = None
        status = self.pending_finish
        if self._persisted and self.run_id not in self._pending.for_uri(self.uri):
            # a later tracker on the same store already finished it (and sent what was buffered)
            self.pending_finish, self.finalised = None, True
            return True
        try:
            if self.outage.buffered or self.outage.failures:
                self._resend()
            if not self._retry(f"status {status}", lambda: self.client.set_terminated(self.run_id, status)):
                self.outage.lost.append(f"status {status}")
        except _StoreDown:
            return False
        if self._finish_retried:
            log.warning("MLflow run %s is now %s, after the tracking outage", self.run_id, status)
        self.pending_finish, self.finalised = None, True
        if self._pending is not None:
            self._pending.remove(self.run_id)
        return True

    def retry_pending(self) -> bool:
        """Try again to send what an outage held back and to set the final status; True when nothing is left."""
        self._finish_retried = True
        return self._finalise()

    def outage_summary(self) -> dict[str, Any]:
        """What tracking lost, for the job's summary and run.json.

        ``failures``: logging calls that failed or were skipped; ``gaps``: metric steps still not
        in the run ("3-7,12"); ``outage_steps``: steps whose logging failed at the time (later
        re-sent or not); ``resent``: metric points sent after the store came back; ``lost``:
        other items that never arrived; ``finalised``: the final status is set; ``pending_finish``:
        the status still to be set (None when done).
        """
        return {
            "failures": self.outage.failures,
            "gaps": self.outage.gaps(),
            "outage_steps": step_ranges(self.outage.failed_steps),
            "resent": self.outage.resent_points,
            "lost": list(self.outage.lost),
            "finalised": self.finalised,
            "pending_finish": self.pending_finish,
        }

    def _finalise_earlier_runs(self) -> None:
        """Finish the runs earlier jobs left pending on this store (their server was down at their end)."""
        if self._pending is None:
            return
        for run_id, entry in self._pending.for_uri(self.uri).items():
            earlier = MlflowTracker.__new__(MlflowTracker)
            earlier._init_state(self.client, self._client_uri)
            earlier.run_id = run_id
            earlier._pending = self._pending
            earlier.outage = OutageLog.from_json(entry["outage"])
            earlier._finish_called, earlier.pending_finish = True, str(entry["status"])
            earlier.retry_pending()  # says when the run is finished
