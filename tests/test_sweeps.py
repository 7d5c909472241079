"""Multirun sweeps as real subprocesses: one MLflow parent run per sweep, one child per job."""

from pathlib import Path

import pytest

from conftest import fast, run_cli, sweep_runs


def _sweep(tmp_path: Path, *args: str):
    return run_cli(
        ["-m", *fast(*args), f"hydra.sweep.dir={tmp_path / 'sweep'}", f"outputs_root={tmp_path}"], cwd=tmp_path
    )


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_is_one_parent_with_a_child_per_job(tmp_path, launcher):
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = _sweep(tmp_path, "adapter=none,lora", "optim.lr=1e-3,3e-3", "trainer.max_steps=2", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parents, children = sweep_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["alignx.failed_jobs"] == "0"
    assert parent.data.params["alignx.swept_keys"] == "adapter,optim.lr"
    assert parent.data.params["model.name"] == "tiny"  # the fixed config
    assert "optim.lr" not in parent.data.params  # swept, so not a fixed param
    # the parent describes the sweep: the swept adapters, not the default's name
    assert parent.data.tags["alignx.adapter"] == "none,lora"
    assert "adapter.name" not in parent.data.params and parent.data.tags["alignx.objective"] == "sft"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    # readable, unique names built from what the sweep varies
    names = sorted(c.info.run_name for c in children)
    assert len(set(names)) == 4
    assert names[0] == "0: adapter=none optim.lr=0.001"
    combos = {(c.data.params["adapter.name"], c.data.params["optim.lr"]) for c in children}
    assert combos == {("none", "0.001"), ("none", "0.003"), ("lora", "0.001"), ("lora", "0.003")}
    # no job's run leaked into another's: every child has its own metrics
    assert all("train/loss" in c.data.metrics for c in children)


def test_a_failing_job_fails_its_child_and_the_parent(tmp_path):
    # the second job fails mid-training (a strict early-stopping metric that is never logged):
    # a config error would be refused before its run exists
    proc = _sweep(tmp_path, "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
                  "+callbacks.stop.check_on_train_epoch_end=true", "+callbacks.stop.monitor=train/loss,val/no_such_metric")
    assert proc.returncode != 0
    parents, children = sweep_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    by_monitor = {c.data.params["callbacks.stop.monitor"]: c.info.status for c in children}
    assert by_monitor == {"train/loss": "FINISHED", "val/no_such_metric": "FAILED"}
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["alignx.failed_jobs"] == "1"
    assert not any(r.info.status == "RUNNING" for r in [*parents, *children])


