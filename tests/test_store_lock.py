"""The embedded sqlite store is created (and migrated) exactly once when jobs start together on a fresh directory.

Without the lock, processes that open a fresh ``mlflow.db`` at the same moment each run MLflow's
migrations and collide (``table latest_metrics already exists``), leaving a store every later
job fails on. Here real processes open a fresh store at the same instant, several times over.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alignx.tracking import default_tracking_uri
from alignx.tracking.local_store import sqlite_path

N_JOBS = 4

# One job: import everything, say ready, wait until every job is ready, then go at once.
JOB = """
import sys, time
from pathlib import Path
from alignx.tracking import MlflowTracker, default_tracking_uri

root, index, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
(root / f"ready-{index}").touch()
deadline = time.time() + 300
while len(list(root.glob("ready-*"))) < n and time.time() < deadline:
    time.sleep(0.005)
tracker = MlflowTracker(default_tracking_uri(root / "outputs"), "race", run_name=f"job {index}",
                        artifact_location=(root / "outputs" / "mlartifacts").as_uri())
tracker.log_params({"job": str(index)})
tracker.log_metrics({"train/loss": float(index)}, step=1)
tracker.finish()
print(tracker.run_id)
sys.exit(1 if tracker.errors else 0)
"""


def _start_together(root: Path) -> list[subprocess.CompletedProcess]:
    root.mkdir(parents=True)
    procs = [
        subprocess.Popen([sys.executable, "-c", JOB, str(root), str(i), str(N_JOBS)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(N_JOBS)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.mark.parametrize("attempt", range(3))
def test_jobs_started_together_on_a_fresh_store_all_finish(tmp_path, attempt):
    root = tmp_path / f"attempt-{attempt}"
    results = _start_together(root)
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    uri = default_tracking_uri(root / "outputs")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(r.stdout.strip() for r in results)
    assert [r.info.status for r in runs] == ["FINISHED"] * N_JOBS
    assert sorted(r.data.params["job"] for r in runs) == [str(i) for i in range(N_JOBS)]
    assert sorted(r.data.metrics["train/loss"] for r in runs) == [float(i) for i in range(N_JOBS)]
    # one experiment of that name, and the lock file the jobs queued on
    assert [e.name for e in client.search_experiments()].count("race") == 1
    db = sqlite_path(uri)
    assert db is not None and db.with_name(db.name + ".lock").is_file()

