"""A tracking server that goes away mid-run and comes back on the same port and store.

What the run must show afterwards: every metric step the tracker could still send (buffered
points re-sent), tags counting the failed calls and naming the steps that are missing for good,
and a final status, set at the latest by the next tracker that reaches the server.
"""

from __future__ import annotations

import json
import time

import pytest
from mlflow import MlflowClient

from alignx.tracking import MlflowTracker
from alignx.tracking.outage import PendingRuns, step_ranges
from test_tracking_server import _start_server, _stop


@pytest.fixture
def fast_failures(monkeypatch):
    """MLflow's HTTP client gives up on a dead server at once; the tracker probes again after 0.2 s."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setattr(MlflowTracker, "RETRY_AFTER_S", 0.2)


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_step_ranges():
    assert step_ranges([12, 3, 4, 5, 6, 7]) == "3-7,12"
    assert step_ranges([0]) == "0"
    assert step_ranges([]) == ""
    assert step_ranges([1, 3, 4, 9, 10, 11]) == "1,3-4,9-11"


def test_server_lost_and_restarted_on_the_same_store(tmp_path, fast_failures, monkeypatch):
    """One server, killed mid-run and started again on the same port and store, for three runs:

    ``steady`` keeps logging through the outage (five buffered points fit, so of the seven steps
    logged while down the two oldest are lost); ``early`` and ``late`` end during the outage
    (their final status stays pending), then ``early`` is retried in-process and ``late`` is
    finished by the next tracker on the same pending dir, as a later job would.
    """
    monkeypatch.setattr(MlflowTracker, "MAX_BUFFERED_POINTS", 5)
    state = tmp_path / "state"
    server, uri = _start_server(tmp_path)
    port = int(uri.rsplit(":", 1)[1])
    client = MlflowClient(tracking_uri=uri)
    steady = MlflowTracker(uri, "outage", run_name="steady")
    early = MlflowTracker(uri, "outage", run_name="early", pending_dir=state)
    late = MlflowTracker(uri, "outage", run_name="late", pending_dir=state)
    steady.log_params({"optim.lr": "0.001"})
    for step in range(3):
        steady.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    for tracker in (early, late):
        tracker.log_metrics({"train/loss": 1.0}, step=0)
    assert steady.errors == early.errors == late.errors == []

    _stop(server, crash=True)
    try:
        for step in range(3, 10):
            steady.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        steady.set_tags({"alignx.note": "logged while down"})
        steady.log_params({"late.param": "7"})
        steady.log_text("written while the server was away", "notes/outage.txt")
        failures = len(steady.errors)
        assert failures == 10  # 7 metric calls, tags, params, text: each failed or skipped, none fatal
        summary = steady.outage_summary()
        assert summary["failures"] == failures and summary["gaps"] == "3-9" and summary["outage_steps"] == "3-9"
        assert summary["finalised"] is False
        for tracker in (early, late):
            tracker.log_metrics({"train/loss": 0.5}, step=1)
            tracker.finish("FINISHED")
            assert tracker.pending_finish == "FINISHED"
            assert tracker.outage_summary()["finalised"] is False
        pending = json.loads((state / PendingRuns.FILE).read_text())
        assert set(pending) == {early.run_id, late.run_id}
        assert pending[late.run_id]["status"] == "FINISHED" and pending[late.run_id]["uri"] == uri

        server, _ = _start_server(tmp_path, port=port)
        assert client.get_run(late.run_id).info.status == "RUNNING"

        time.sleep(0.3)  # past RETRY_AFTER_S: the next call probes, finds the server and re-sends first
        steady.log_metrics({"train/loss": 0.01}, step=10)
        steady.finish()
        assert steady.pending_finish is None and steady.finalised
        run = client.get_run(steady.run_id)
        assert run.info.status == "FINISHED"
        history = _history(client, steady.run_id, "train/loss")
        assert [s for s, _ in history] == [0, 1, 2, 5, 6, 7, 8, 9, 10]  # 3 and 4 fell out of the buffer
        assert dict(history)[7] == pytest.approx(1 / 8)
        tags = run.data.tags
        assert tags["alignx.tracking_failures"] == str(failures)
        assert tags["alignx.tracking_gaps"] == "3-4"
        assert tags["alignx.tracking_outage_steps"] == "3-9"
        assert tags["alignx.tracking_resent"] == "5"
        assert tags["alignx.note"] == "logged while down"
        assert run.data.params == {"optim.lr": "0.001", "late.param": "7"}
        assert "notes/outage.txt" in _artifacts(client, steady.run_id)
        assert steady.outage_summary() == {
            "failures": failures, "gaps": "3-4", "outage_steps": "3-9", "resent": 5, "lost": [],
            "finalised": True, "pending_finish": None,
        }

        # in the same process: an explicit retry (also registered to run at exit)
        assert early.retry_pending() is True and early.pending_finish is None
        # in a later job: the next tracker on this store and pending dir finishes what is left
        later_job = MlflowTracker(uri, "outage", run_name="later job", pending_dir=state)
        for run_id in (early.run_id, late.run_id):
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED"
            assert _history(client, run_id, "train/loss") == [(0, 1.0), (1, 0.5)]  # the buffered point too
            assert run.data.tags["alignx.tracking_gaps"] == "none"
            assert run.data.tags["alignx.tracking_outage_steps"] == "1"
            assert run.data.tags["alignx.tracking_failures"] == "2"  # the metric call and the status
        assert json.loads((state / PendingRuns.FILE).read_text()) == {}
        later_job.finish()
        assert client.get_run(later_job.run_id).info.status == "FINISHED"
        assert "alignx.tracking_failures" not in client.get_run(later_job.run_id).data.tags  # nothing failed
    finally:
        _stop(server)
