"""Jobs started at the same moment on one fresh ``outputs_root`` all finish, each in its own run dir (issue 14).

Four real ``alignx`` processes wait for one start instant, then run: they race to create the
embedded MLflow store (sqlite + migrations), to name their Hydra run dir (by the second), and to
fill the shared tokenised-data cache. The suite runs one round (about a minute and a half on two
cores); ``ALIGNX_CONCURRENCY_ROUNDS=N`` repeats it on N fresh directories. Before the fix, 8 of 10
such starts corrupted the store (tests/test_store_lock.py repeats the store race alone, cheaply).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import fast

JOBS = 4
# each process sleeps until the shared start instant, then runs the real CLI entry point
LAUNCH = "import sys, time; time.sleep(max(0.0, float(sys.argv[1]) - time.time())); from alignx.cli import main; sys.exit(main(sys.argv[2:]))"


@pytest.mark.parametrize("round_", range(1, int(os.environ.get("ALIGNX_CONCURRENCY_ROUNDS", "1")) + 1))
def test_simultaneous_jobs_on_a_fresh_outputs_root_all_finish_in_their_own_dirs(tmp_path: Path, round_: int):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = fast("trainer.max_steps=2", "eval.num_prompts=2", "eval.max_new_tokens=4")
    start_at = time.time() + 12  # after every interpreter has imported alignx
    procs = [
        subprocess.Popen([sys.executable, "-c", LAUNCH, str(start_at), *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(JOBS)
    ]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]

    run_dirs = sorted(d for d in (tmp_path / "outputs" / "runs").glob("*/*") if d.is_dir())
    assert len(run_dirs) == JOBS, run_dirs
    for d in run_dirs:
        assert (d / "model" / "config.json").is_file() and (d / "run.json").is_file(), d

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])
    assert len(runs) == JOBS and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["alignx.output_dir"] for r in runs}) == JOBS
    # the store is healthy afterwards: later runs can be created and read back
    later = client.create_run(runs[0].info.experiment_id)
    client.set_terminated(later.info.run_id)
    assert client.get_run(later.info.run_id).info.status == "FINISHED"
