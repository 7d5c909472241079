"""What a person sees in MLflow: metrics that are results (data counters as tags and data/summary.json),
a sweep's summary on its parent (best job, table), short job names, and links that open the runs view.
Real sqlite stores under tmp_path; the sweep end to end is in test_sweeps.py."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow import MlflowClient

from alignx.job import Job
from alignx.resume import write_run_record
from alignx.tracking import MlflowTracker, default_tracking_uri, job_links, runs_view_url, sweep_links
from alignx.tracking.start import sweep_job_name
from alignx.tracking.summary import (
    DEFAULT_METRICS, infer_mode, is_data_counter, log_sweep_summary, ranking_metric, summarize_sweep,
)
from alignx.tracking.sweep import swept_values


def _tracker(tmp_path: Path, name: str, **kwargs) -> MlflowTracker:
    return MlflowTracker(default_tracking_uri(tmp_path), "views", run_name=name,
                         artifact_location=(tmp_path / "mlartifacts").as_uri(), **kwargs)


def test_data_counters_are_tags_and_a_summary_artifact_not_metrics(tmp_path):
    tracker = _tracker(tmp_path, "job")
    tracker.log_metrics({"data/train/kept": 90.0, "data/train/dropped": 0.0, "data/val/cache_hit": 1.0,
                         "data/test/invalid_dropped": 2.0, "train/loss": 1.5, "data/rows": 7.0}, step=0)
    tracker.log_metrics({"data/train/ref_logps_cache_hit": 0.0, "val/loss": 1.2}, step=3)
    tracker.log_metrics({"data/train/ref_logps_cache_hit": 0.0}, step=3)  # again, unchanged: nothing new
    tracker.finish()
    client = MlflowClient(tracking_uri=tracker.uri)
    run = client.get_run(tracker.run_id)
    # a 2-part key (a generator's data/rows result) is a metric; data/<split>/<counter> is not
    assert set(run.data.metrics) == {"train/loss", "val/loss", "data/rows"}
    assert {k: v for k, v in run.data.tags.items() if k.startswith("data.")} == {
        "data.train.kept": "90", "data.train.dropped": "0", "data.val.cache_hit": "1", "data.test.invalid_dropped": "2",
        "data.train.ref_logps_cache_hit": "0"}
    summary = json.loads(Path(client.download_artifacts(tracker.run_id, "data/summary.json", str(tmp_path))).read_text())
    assert summary == {"test": {"invalid_dropped": 2}, "train": {"dropped": 0, "kept": 90, "ref_logps_cache_hit": 0},
                       "val": {"cache_hit": 1}}
    assert [is_data_counter(k) for k in ("data/train/kept", "data/rows", "eval/data/x", "data/a/b/c")] == [
        True, False, False, False]


def test_runs_view_links_open_the_training_view():
    url = runs_view_url("sqlite:////tmp/x/mlflow.db", "4")
    assert url == "http://127.0.0.1:5000/#/experiments/4/runs?workflowType=machine_learning"
    server = "https://alice:pw-9@mlflow.example:8443/"
    lines = job_links(server, "7", "abc123")
    assert lines == ["open the run:  https://mlflow.example:8443/#/experiments/7/runs/abc123",
                     "all the runs:  https://mlflow.example:8443/#/experiments/7/runs?workflowType=machine_learning"]
    local = job_links("sqlite:////tmp/x/mlflow.db", "1", "r1")
    assert local[0] == "start the UI:  mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db"
    swept = sweep_links("sqlite:////tmp/x/mlflow.db", "2", "p" * 32, "/tmp/sw/1")
    assert swept[0] == local[0] and swept[2] == f"sweep run:     http://127.0.0.1:5000/#/experiments/2/runs/{'p' * 32}"
    query = parse_qs(urlsplit(swept[1].split(":  ", 1)[1]).fragment.split("?", 1)[1])
    assert query == {"workflowType": ["machine_learning"], "searchFilter": [f"tags.`mlflow.parentRunId` = '{'p' * 32}'"]}
    assert swept[-1] == "compare:       alignx compare /tmp/sw/1"
    assert not any("pw-9" in line for line in [*lines, *swept])


def test_job_links_read_the_experiment_from_run_json(tmp_path):
    uri = default_tracking_uri(tmp_path)
    write_run_record(tmp_path, run_id="r" * 32, tracking_uri=uri, experiment_id="3", fingerprint="f")
    job = Job(output_dir=tmp_path, run_id="r" * 32, tracking_uri=uri)
    assert job.mlflow_links()[1] == f"open the run:  http://127.0.0.1:5000/#/experiments/3/runs/{'r' * 32}"
    assert Job(output_dir=tmp_path / "elsewhere", run_id="x", tracking_uri=uri).mlflow_links() == [
        f"open MLflow: mlflow ui --backend-store-uri {uri}"]
    assert Job().mlflow_links() == []


def test_sweep_job_names_lead_with_the_swept_values():
    name, note = sweep_job_name(3, ["objective=kto", "adapter=lora", "model=tiny", "+tracking.password=hunter2"],
                                ["adapter", "objective"])
    assert name == "3 kto lora"
    assert note == "Job 3 of the sweep: `objective=kto adapter=lora model=tiny +tracking.password=***`"
    assert sweep_job_name(0, ["seed=1"], [])[0] == "0"


def test_swept_values_list_what_each_key_takes():
    values = swept_values(["objective=dpo,kto", "model=tiny", "+x=range(1,4)", "seed=1"],
                          {"optim.lr": "tag(log, interval(1e-4, 1e-2))", "adapter.r": "choice(4, 8)"})
    assert values == {"objective": "dpo,kto", "+x": "1,2,3", "optim.lr": "tag(log, interval(1e-4, 1e-2))",
                      "adapter.r": "4,8"}


def test_ranking_metric_and_mode():
    assert ranking_metric(["val/loss", "eval/perplexity"]) == "eval/perplexity"
    assert ranking_metric(["val/loss"], optimized_metric="train/loss") == "train/loss"
    assert ranking_metric(["x"], optimized_metric=["eval/win_rate", "eval/kl"]) == "eval/win_rate"
    assert ranking_metric(["train/loss"]) is None
    assert DEFAULT_METRICS[0] == "eval/gold_reward_sampled"
    assert (infer_mode("val/loss"), infer_mode("eval/perplexity"), infer_mode("eval/gold_reward_sampled")) == ("min", "min", "max")


@pytest.fixture
def three_jobs(tmp_path):
    """A parent and three finished child runs (one of them FAILED) in a real store."""
    parent = _tracker(tmp_path, "sweep")
    children = []
    for num, (objective, reward, loss, status) in enumerate(
        [("dpo", 0.5, 0.9, "FINISHED"), ("kto", 0.7, 0.8, "FINISHED"), ("kto", 0.9, 0.1, "FAILED")]
    ):
        child = _tracker(tmp_path, f"{num} {objective}", parent_run_id=parent.run_id,
                         tags={"alignx.job_num": str(num), "alignx.overrides": f"objective={objective} seed=0"})
        child.log_params({"objective.name": objective})
        child.log_metrics({"eval/gold_reward_sampled": reward, "val/loss": loss, "train/loss": 2 * loss}, step=4)
        child.finish(status)
        children.append(child.run_id)
    client = MlflowClient(tracking_uri=parent.uri)
    runs = client.search_runs([parent.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
    return parent, runs, children, client


def test_sweep_summary_names_the_best_finished_job(three_jobs, tmp_path):
    parent, runs, ids, client = three_jobs
    summary = summarize_sweep(runs, ["objective"])
    # the failed job scored higher but did not finish: the best is job 1
    assert (summary.metric, summary.mode, summary.best_run_id) == ("eval/gold_reward_sampled", "max", ids[1])
    assert summary.metrics == pytest.approx({"best/eval/gold_reward_sampled": 0.7, "best/val/loss": 0.8, "best/train/loss": 1.6})
    assert summary.params == {"best.objective": "kto"}
    log_sweep_summary(parent, summary)
    parent.finish()
    run = client.get_run(parent.run_id)
    assert run.data.tags["alignx.best_run_id"] == ids[1] and run.data.tags["alignx.best_run_name"] == "1 kto"
    assert run.data.tags["alignx.best_value"] == repr(0.7) and run.data.params["best.objective"] == "kto"
    assert run.data.metrics["best/val/loss"] == pytest.approx(0.8)
    table = Path(client.download_artifacts(parent.run_id, "sweep/jobs.csv", str(tmp_path))).read_text()
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [(r["job"], r["objective"], r["status"], r["best"]) for r in rows] == [
        ("0", "dpo", "FINISHED", ""), ("1", "kto", "FINISHED", "*"), ("2", "kto", "FAILED", "")]
    assert list(rows[0]) == ["job", "run_name", "status", "objective", "eval/gold_reward_sampled", "val/loss",
                             "train/loss", "best", "run_id"]


def test_sweep_summary_follows_the_optimized_metric_or_the_optimizer(three_jobs):
    _, runs, ids, _ = three_jobs
    by_loss = summarize_sweep(runs, ["objective"], "val/loss")
    assert (by_loss.metric, by_loss.mode, by_loss.best_run_id) == ("val/loss", "min", ids[1])
    # an optimizer's choice wins over the ranking; mode from its direction
    chosen = summarize_sweep(runs, ["objective"], "val/loss", mode="max", best_run_id=ids[0])
    assert chosen.best_run_id == ids[0] and chosen.tags["alignx.best_mode"] == "max"
    front = summarize_sweep(runs, ["objective"], ["val/loss", "train/loss"], rank=False)
    assert front.best_run_id is None and front.metrics == {} and "alignx.best_run_id" not in front.tags
    assert len(front.rows) == 3


def test_compare_can_rerecord_the_summary_by_another_metric(three_jobs, tmp_path):
    """What ``alignx compare`` calls on a finished parent: metrics and tags follow the new pick,
    the best.<key> params stay as first written (MLflow never changes a param)."""
    from alignx.tracking.summary import record_sweep_summary

    parent, runs, ids, client = three_jobs
    log_sweep_summary(parent, summarize_sweep(runs, ["objective"]))  # at the sweep's end: best job 1
    parent.finish()
    by_loss = summarize_sweep(runs, ["objective"], "val/loss", mode="max")  # the worst loss, to move the pick
    record_sweep_summary(client, parent.run_id, by_loss)
    run = client.get_run(parent.run_id)
    assert run.data.tags["alignx.best_run_id"] == ids[0] and run.data.tags["alignx.best_metric"] == "val/loss"
    assert run.data.metrics["best/val/loss"] == pytest.approx(0.9)
    assert run.data.params["best.objective"] == "kto"
    table = Path(client.download_artifacts(parent.run_id, "sweep/jobs.csv", str(tmp_path))).read_text()
    assert [r["best"] for r in csv.DictReader(io.StringIO(table))] == ["*", "", ""]
