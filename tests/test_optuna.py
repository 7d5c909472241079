"""Optuna searches (``hparams_search=...``) as real subprocess sweeps on the tiny model.

Each job returns its ``optimized_metric`` to the sweeper; the sweep's MLflow parent run records
the best trial Optuna found. The slow runs start together at module setup and overlap.
"""

from __future__ import annotations

import math
import subprocess
from concurrent.futures import Future
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alignx.config import compose, validate
from conftest import fast, run_cli, seed_store, start_background_fixtures, sweep_runs


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


# -- slow runs, started together at module setup ----------------------------------------------


@pytest.fixture(scope="module")
def bg_search(pool, tmp_path_factory, empty_store) -> tuple[Future, Path]:
    """The lr_rank preset, 3 trials, no -m (the preset sets hydra.mode=MULTIRUN)."""
    tmp = tmp_path_factory.mktemp("optuna")
    seed_store(empty_store, tmp)
    # what is asserted: val/loss (the optimized metric), the trials' params and adapters; no eval/* metric
    args = ["hparams_search=lr_rank", "hydra.sweeper.n_trials=3", *fast("eval.enabled=false"),
            f"hydra.sweep.dir={tmp / 'sweep'}", f"outputs_root={tmp}"]
    return pool.submit(run_cli, args, tmp), tmp


@pytest.fixture(scope="module")
def bg_missing_metric_run(pool, tmp_path_factory) -> tuple[Future, Path]:
    tmp = tmp_path_factory.mktemp("missing_run")
    args = [*fast("trainer.max_steps=2", "eval.enabled=false", "save.model=false", "tracking=none"),
            "optimized_metric=val/nope", f"hydra.run.dir={tmp / 'run'}", f"outputs_root={tmp}"]
    return pool.submit(run_cli, args, tmp), tmp


@pytest.fixture(scope="module")
def bg_missing_metric_search(pool, tmp_path_factory, empty_store) -> tuple[Future, Path]:
    tmp = tmp_path_factory.mktemp("missing_search")
    seed_store(empty_store, tmp)
    args = ["hparams_search=lr_rank", "hydra.sweeper.n_trials=2", "optimized_metric=eval/nope",
            *fast("trainer.max_steps=2", "eval.enabled=false", "save.model=false"),
            f"hydra.sweep.dir={tmp / 'sweep'}", f"outputs_root={tmp}"]
    return pool.submit(run_cli, args, tmp), tmp


@pytest.fixture(scope="module", autouse=True)
def _start_slow_runs_early(request: pytest.FixtureRequest) -> None:
    start_background_fixtures(request, ["bg_search", "bg_missing_metric_run", "bg_missing_metric_search"])


# -- the preset --------------------------------------------------------------------------------


def test_preset_configures_the_optuna_sweeper():
    cfg = compose(["hparams_search=lr_rank"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert sweeper.direction == "minimize" and sweeper.n_jobs == 1 and sweeper.n_trials == 8
    assert dict(sweeper.params) == {"optim.lr": "tag(log, interval(1e-4, 1e-2))", "adapter.r": "choice(4, 8, 16)"}
    assert str(cfg.hydra.mode).endswith("MULTIRUN")
    assert cfg.optimized_metric == "val/loss"
    assert cfg.adapter.name == "lora"
    job_cfg = compose(["hparams_search=lr_rank"])
    validate(job_cfg)  # optimized_metric is a known top-level key


def test_no_preset_no_optimized_metric():
    cfg = compose([], return_hydra_config=True)
    assert cfg.optimized_metric is None
    assert cfg.hydra.sweeper._target_ == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    assert cfg.adapter.name == "none"
    # an explicit adapter choice still wins over the preset's
    assert compose(["hparams_search=lr_rank", "adapter=dora"]).adapter.use_dora is True


# -- a real search -----------------------------------------------------------------------------


def test_search_runs_n_trials_under_one_parent(bg_search: tuple[Future, Path]):
    future, tmp = bg_search
    proc = future.result()
    assert proc.returncode == 0, explain(proc)
    parents, children = sweep_runs(tmp)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["alignx.failed_jobs"] == "0"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    # what Optuna varies is swept: the parent holds its search space, children are named by their values
    assert parent.data.params["alignx.swept_keys"] == "adapter.r,optim.lr"
    assert parent.data.params["optim.lr"] == "tag(log, interval(1e-4, 1e-2))" and parent.data.params["adapter.r"] == "4,8,16"
    for child in children:
        num, *values = child.info.run_name.split()
        assert num == child.data.tags["alignx.job_num"]
        assert sorted(values) == sorted([child.data.params["adapter.r"], child.data.params["optim.lr"]])
        assert child.data.params["adapter.name"] == "lora"
        assert 1e-4 <= float(child.data.params["optim.lr"]) <= 1e-2
        assert child.data.params["adapter.r"] in {"4", "8", "16"}
    for job in range(3):
        assert (tmp / "sweep" / str(job) / "model" / "adapter_config.json").is_file()


def test_parent_records_the_best_trial(bg_search: tuple[Future, Path]):
    future, tmp = bg_search
    proc = future.result()
    assert proc.returncode == 0, explain(proc)
    results_file = tmp / "sweep" / "optimization_results.yaml"
    assert results_file.is_file()
    results = OmegaConf.load(results_file)
    parents, children = sweep_runs(tmp)
    parent = parents[0]
    best_child = min(children, key=lambda c: c.data.metrics["val/loss"])
    # Optuna's best value is the min of the children's val/loss (minimize)
    assert math.isclose(results.best_value, best_child.data.metrics["val/loss"], rel_tol=1e-6)
    assert math.isclose(parent.data.metrics["best/val/loss"], best_child.data.metrics["val/loss"], rel_tol=1e-6)
    assert parent.data.tags["alignx.optimized_metric"] == "val/loss"
    assert parent.data.tags["alignx.best_run_id"] == best_child.info.run_id
    assert parent.data.params["best.optim.lr"] == best_child.data.params["optim.lr"]
    assert parent.data.params["best.adapter.r"] == best_child.data.params["adapter.r"]
    assert {k for k in parent.data.params if k.startswith("best.")} == {"best.optim.lr", "best.adapter.r"}


# -- a metric the job does not have ----------------------------------------------------------


def test_missing_metric_is_a_clear_error_in_a_run(bg_missing_metric_run: tuple[Future, Path]):
    future, _tmp = bg_missing_metric_run
    proc = future.result()
    assert proc.returncode == 2, explain(proc)
    err = proc.stderr
    assert "alignx: error: optimized_metric=val/nope is not a metric of this job" in err, explain(proc)
    assert "Available metrics:" in err and "train/loss" in err
    assert "Traceback" not in err


def test_missing_metric_fails_the_search_with_the_same_message(bg_missing_metric_search: tuple[Future, Path]):
    future, tmp = bg_missing_metric_search
    proc = future.result()
    assert proc.returncode != 0, explain(proc)
    assert "optimized_metric=eval/nope is not a metric of this job" in proc.stderr, explain(proc)
    assert "Available metrics:" in proc.stderr
    parents, children = sweep_runs(tmp)
    # max_failure_rate=0: the search stops after the first failed trial
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert len(children) == 1
    assert not (tmp / "sweep" / "optimization_results.yaml").exists()
    assert "best.optim.lr" not in parents[0].data.params
