"""A real `mlflow server` on 127.0.0.1: sweeps against it, and what happens when it is missing or lost."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import ALIGNX_BIN, fast, run_cli, seed_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp: Path, port: int | None = None, empty_store: Path | None = None) -> tuple[subprocess.Popen, str]:
    """An `mlflow server` on 127.0.0.1 storing under ``tmp`` (started again on the same ``port``, it
    serves the same store). With ``empty_store`` (conftest's), its database starts as a copy of
    that migrated store instead of being created and migrated by the server."""
    port = port or _free_port()
    if empty_store is not None and not (tmp / "server.db").exists():
        seed_store(empty_store, tmp).rename(tmp / "server.db")
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}", "--artifacts-destination", str(tmp / "server-artifacts"),
         "--workers", "1"],
        stdout=open(tmp / "server.log", "a"), stderr=subprocess.STDOUT,
        # its own process group, so stopping it stops its uvicorn worker too; no background job
        # runner (three more processes the tests never use)
        start_new_session=True, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as resp:
                if resp.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
    proc.kill()
    raise AssertionError("mlflow server did not start: " + (tmp / "server.log").read_text()[-3000:])


def _stop(proc: subprocess.Popen, *, crash: bool = False) -> None:
    """Stop the server and its worker (SIGTERM; SIGKILL after 20 s, or at once with ``crash``)."""
    if not crash:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture
def server(tmp_path, empty_store):
    proc, uri = _start_server(tmp_path, empty_store=empty_store)
    yield proc, uri
    if proc.poll() is None:
        _stop(proc)


def _artifacts(client, run_id, path=""):
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_joblib_sweep_against_a_real_server(tmp_path, server):
    _, uri = server
    proc = run_cli(
        ["-m", *fast("optim.lr=1e-3,3e-3", "trainer.max_steps=3"), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"outputs_root={tmp_path / 'outs'}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "outs" / "mlflow.db").exists()  # nothing went to the embedded store
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])
    parents = [r for r in runs if r.data.tags.get("alignx.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.status == "FINISHED"
    assert sorted(c.data.params["optim.lr"] for c in children) == ["0.001", "0.003"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) >= 2
        assert "eval/perplexity" in child.data.metrics
        assert {"config/resolved.yaml", "model/model.safetensors", "samples/generations.json"} <= _artifacts(client, child.info.run_id)
    # artifacts went through the server to its artifact store
    assert list((tmp_path / "server-artifacts").rglob("model.safetensors"))


def test_unreachable_server_fails_before_training(tmp_path):
    port = _free_port()  # nothing listens here
    proc = run_cli(
        [*fast(), f"tracking.uri=http://127.0.0.1:{port}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path
    )
    assert proc.returncode == 2
    line = next(l for l in proc.stderr.splitlines() if l.startswith("alignx: error:"))
    assert f"127.0.0.1:{port} is unreachable" in line and "mlflow server" in line and "embedded store" in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "model").exists()


def test_server_lost_mid_run_still_saves_the_model(tmp_path, server):
    server_proc, uri = server
    job = subprocess.Popen(
        [str(ALIGNX_BIN), *fast("model.hidden_size=128", "model.num_hidden_layers=2", "trainer.max_steps=150",
                                "dataset.n_train=400", "eval.num_prompts=4"),
         f"tracking.uri={uri}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    client = MlflowClient(tracking_uri=uri)
    deadline = time.time() + 240
    killed = False
    while time.time() < deadline and job.poll() is None:
        exp = client.get_experiment_by_name("alignx")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and "train/loss" in runs[0].data.metrics:
            _stop(server_proc)  # training has started logging: take the server away
            killed = True
            break
        time.sleep(0.2)
    assert killed, "training never logged a metric"
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-3000:]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert "MLflow logging to" in out + err and "training continues" in out + err  # warned when it happened
    assert "MLflow call(s) failed" in err  # and summarised at the end
