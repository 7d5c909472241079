"""SIGTERM and SIGINT end a job's run KILLED, exit 128 + signal, and checkpoint first (issue 14).

Each test runs the installed ``alignx`` console script, waits until training has logged a step
(read from the real MLflow store), signals the process and checks the exit status, the run's
status in MLflow, run.json and the checkpoint a ``resume=auto`` then continues from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from mlflow import MlflowClient

from conftest import ALIGNX_BIN, fast, seed_store

# long enough that the signal always arrives mid-training; a step takes milliseconds here
LONG = fast("trainer.max_steps=100000", "eval.enabled=false")


def start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    args = [*LONG, f"outputs_root={tmp_path}", f"output_dir={tmp_path / 'run'}", *extra]
    return subprocess.Popen([str(ALIGNX_BIN), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_training(proc: subprocess.Popen, tmp_path: Path, steps: int = 3, timeout: float = 300) -> str:
    """The job's run id, once its run has logged ``train/loss`` at step >= ``steps``."""
    deadline = time.monotonic() + timeout
    record = tmp_path / "run" / "run.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the job ended early:\n{proc.communicate()[1][-3000:]}"
        if record.is_file():
            run_id = json.loads(record.read_text())["run_id"]
            history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run_id, "train/loss")
            if history and max(m.step for m in history) >= steps:
                return run_id
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("training did not start in time")


def stop(proc: subprocess.Popen, signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def run_status(tmp_path: Path, run_id: str) -> str:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status


def test_sigterm_checkpoints_marks_run_killed_exits_143_and_resume_auto_continues(tmp_path: Path, empty_store: Path):
    seed_store(empty_store, tmp_path)
    proc = start(tmp_path, "checkpoint.every_n_steps=100000")
    run_id = wait_for_training(proc, tmp_path)
    code, err = stop(proc, signal.SIGTERM)

    assert code == 143, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("alignx: error:")]
    assert len(errors) == 1 and "interrupted by SIGTERM" in errors[0] and "KILLED" in errors[0], err[-2000:]
    assert run_status(tmp_path, run_id) == "KILLED"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "KILLED"
    # every_n_steps is never reached: the only checkpoint is the one written on the signal
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*.ckpt"))
    assert len(ckpts) == 1 and (tmp_path / "run" / "checkpoints" / "last.ckpt").exists(), ckpts
    step = int(ckpts[0][len("step-"):-len(".ckpt")])
    assert step >= 3

    resumed = subprocess.run(
        [str(ALIGNX_BIN), *fast(f"trainer.max_steps={step + 2}", "eval.enabled=false"), f"outputs_root={tmp_path}",
         f"output_dir={tmp_path / 'run'}", "resume=auto", "checkpoint.every_n_steps=100000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the same MLflow run continues from the signal's checkpoint and now finishes
    assert run_status(tmp_path, run_id) == "FINISHED"
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run_id, "train/loss")
    assert max(m.step for m in history) >= step + 1


def test_sigint_without_checkpointing_marks_run_killed_and_exits_130(tmp_path: Path, empty_store: Path):
    seed_store(empty_store, tmp_path)
    proc = start(tmp_path)
    run_id = wait_for_training(proc, tmp_path)
    code, err = stop(proc, signal.SIGINT)

    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    assert run_status(tmp_path, run_id) == "KILLED"
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "model").exists()


def test_lightning_own_sigterm_stop_still_ends_as_an_interruption():
    """SIGTERM that lands after a step's on_train_batch_end is stopped by Lightning itself, with its
    SIGTERMException (a SystemExit with status 0); the job turns that into JobInterrupted (exit 143)."""
    import pytest
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from alignx.errors import JobInterrupted
    from alignx.job.signals import deferred, interruptible

    with pytest.raises(JobInterrupted) as err, interruptible(), deferred():
        raise SIGTERMException
    assert err.value.exit_code == 143 and err.value.signal_name == "SIGTERM"
