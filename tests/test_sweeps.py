"""Multirun sweeps as real subprocesses: one MLflow parent run per sweep, one child per job; the parent
describes the sweep (swept values) and names the best job; the end of the sweep prints where to look."""

import csv
import io
import math
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from mlflow import MlflowClient

from conftest import fast, run_cli, seed_store, sweep_runs


def _sweep(tmp_path: Path, *args: str):
    return run_cli(
        ["-m", *fast(*args), f"hydra.sweep.dir={tmp_path / 'sweep'}", f"outputs_root={tmp_path}"], cwd=tmp_path
    )


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_is_one_parent_with_a_child_per_job(tmp_path, launcher, empty_store):
    seed_store(empty_store, tmp_path)
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
    # the parent describes the sweep: every swept value, in the column the children hold theirs, not the default's
    assert parent.data.params["optim.lr"] == "0.001,0.003" and parent.data.params["adapter.name"] == "none,lora"
    assert parent.data.tags["alignx.sweep.optim.lr"] == "0.001,0.003" and parent.data.tags["alignx.sweep.adapter"] == "none,lora"
    assert parent.data.tags["alignx.adapter"] == "none,lora" and parent.data.tags["alignx.objective"] == "sft"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    # short names that lead with the values telling jobs apart; the full overrides in the description
    by_num = sorted(children, key=lambda c: int(c.data.tags["alignx.job_num"]))
    assert [c.info.run_name for c in by_num] == ["0 none 0.001", "1 none 0.003", "2 lora 0.001", "3 lora 0.003"]
    assert "adapter=lora optim.lr=0.003" in by_num[3].data.tags["mlflow.note.content"]
    assert "trainer.max_steps=2" in by_num[3].data.tags["mlflow.note.content"]
    assert "adapter=lora optim.lr=0.003" in by_num[3].data.tags["alignx.overrides"]
    combos = {(c.data.params["adapter.name"], c.data.params["optim.lr"]) for c in children}
    assert combos == {("none", "0.001"), ("none", "0.003"), ("lora", "0.001"), ("lora", "0.003")}
    # no job's run leaked into another's: every child has its own metrics; data counters are tags
    assert all("train/loss" in c.data.metrics for c in children)
    assert not [k for c in children for k in c.data.metrics if k.startswith("data/")]
    assert all(int(c.data.tags["data.train.kept"]) > 0 for c in children)

    # the parent names the winner: no optimized_metric, so the first default metric the jobs logged, max
    metric = "eval/gold_reward_sampled"
    assert parent.data.tags["alignx.best_metric"] == metric and parent.data.tags["alignx.best_mode"] == "max"
    best = max(by_num, key=lambda c: c.data.metrics[metric])  # the first of equals, in job order
    assert parent.data.tags["alignx.best_run_id"] == best.info.run_id
    assert parent.data.tags["alignx.best_run_name"] == best.info.run_name
    assert {k for k in parent.data.metrics} == {f"best/{k}" for k in best.data.metrics}
    for key, value in best.data.metrics.items():
        assert math.isclose(parent.data.metrics[f"best/{key}"], value, rel_tol=1e-6), key
    assert parent.data.params["best.adapter"] == best.data.params["adapter.name"]
    assert parent.data.params["best.optim.lr"] == best.data.params["optim.lr"]
    # every job's key metrics in one table on the parent
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    table = Path(client.download_artifacts(parent.info.run_id, "sweep/jobs.csv", str(tmp_path)))
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"] and [r["run_id"] for r in rows] == [c.info.run_id for c in by_num]
    assert list(rows[0])[:5] == ["job", "run_name", "status", "adapter", "optim.lr"] and list(rows[0])[5] == metric
    assert [r["best"] for r in rows].count("*") == 1 and rows[by_num.index(best)]["best"] == "*"
    assert {(r["adapter"], r["optim.lr"]) for r in rows} == combos
    # where to look next: the runs view (MLflow 3's training view), the UI command, alignx compare
    out = proc.stdout
    exp = parent.info.experiment_id
    link = re.search(r"sweep's jobs:  (http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs\?\S+)", out)
    assert link and link.group(2) == exp, out[-2000:]
    assert "workflowType=machine_learning" in link.group(1)
    assert unquote(link.group(1).split("searchFilter=")[1]) == f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    assert f"sweep run:     http://127.0.0.1:5000/#/experiments/{exp}/runs/{parent.info.run_id}" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{(tmp_path / 'mlflow.db').resolve()}" in out
    assert f"compare:       alignx compare {(tmp_path / 'sweep').resolve()}" in out


def test_a_failing_job_fails_its_child_and_the_parent(tmp_path, empty_store):
    seed_store(empty_store, tmp_path)
    # the second job fails mid-training (a strict early-stopping metric that is never logged):
    # a config error would be refused before its run exists
    proc = _sweep(tmp_path, "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
                  "+callbacks.stop.check_on_train_epoch_end=true", "+callbacks.stop.monitor=train/loss,val/no_such_metric",
                  "eval.enabled=false")  # statuses are asserted, no metric
    assert proc.returncode != 0
    parents, children = sweep_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    by_monitor = {c.data.params["callbacks.stop.monitor"]: c.info.status for c in children}
    assert by_monitor == {"train/loss": "FINISHED", "val/no_such_metric": "FAILED"}
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["alignx.failed_jobs"] == "1"
    assert not any(r.info.status == "RUNNING" for r in [*parents, *children])


