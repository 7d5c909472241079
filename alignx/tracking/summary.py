"""What a run's metrics are, and what a sweep's parent run says about its jobs.

Metrics are results and training curves. The one-off data counters of a job
(``data/<split>/kept``, ``.../truncated``, ``.../dropped``, ``.../invalid_dropped``,
``.../cache_hit``, ``.../ref_logps_cache_hit``, ...) are bookkeeping about the inputs: as metrics
they filled the top of every run's metric table and the charts MLflow opens on. The tracker
records them instead as **tags** ``data.<split>.<counter>`` and one ``data/summary.json``
artifact (:func:`is_data_counter`). Tags rather than params: params are the experiment's settings
(MLflow's compare page plots them against metrics, and a param can never change, while a cache
hit differs between a job's first attempt and its resumed one); a tag is a fact about this run,
searchable (``tags.`data.train.dropped` != '0'``) and shown in the runs table when asked for.

A sweep's parent names its winner (:func:`summarize_sweep`): the best job by the sweep's
``optimized_metric`` (else the first of :data:`DEFAULT_METRICS` some job logged), its metrics as
``best/<metric>``, its swept values as params ``best.<key>``, tags ``alignx.best_run_id``,
``alignx.best_metric``, ``alignx.best_mode``, ``alignx.best_value``, and the table of every job as
the artifact ``sweep/jobs.csv``. An Optuna search records the same keys (from the trial Optuna
reports best), so a grid sweep and a search read alike.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from alignx.tracking.params import masked_tags

#: metrics that rank a sweep's jobs when it names no ``optimized_metric``: the first some job logged
DEFAULT_METRICS = ("eval/gold_reward_sampled", "eval/gold_reward_greedy", "eval/perplexity", "val/loss")
#: where a sweep's table of jobs goes in its parent run's artifacts
JOBS_TABLE = "sweep/jobs.csv"
#: where a job's data counters go in its run's artifacts
DATA_SUMMARY = "data/summary.json"

_DATA_COUNTER = re.compile(r"^data/(?P<split>[^/]+)/(?P<name>[^/]+)$")


def infer_mode(metric: str) -> str:
    """``min`` for losses and perplexities (lower is better), ``max`` for everything else."""
    name = metric.lower()
    return "min" if "loss" in name or "perplexity" in name or name.endswith("ppl") else "max"


def ranking_metric(available: Iterable[str], optimized_metric: Any = None) -> str | None:
    """The metric that ranks a sweep's jobs: the (first) ``optimized_metric`` when set, else the first of
    :data:`DEFAULT_METRICS` among ``available``; None when there is none."""
    if optimized_metric is not None:
        several = isinstance(optimized_metric, Sequence) and not isinstance(optimized_metric, str)  # a ListConfig too
        names = [str(m) for m in optimized_metric] if several else [str(optimized_metric)]
        return names[0] if names else None
    have = set(available)
    return next((m for m in DEFAULT_METRICS if m in have), None)


# -- data counters ----------------------------------------------------------------------------


def is_data_counter(key: str) -> bool:
    """True for a job's one-off data counter ``data/<split>/<name>`` (recorded as a tag, not a metric)."""
    return _DATA_COUNTER.match(key) is not None


def _number(value: float) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def data_counter_tags(counters: Mapping[str, float]) -> dict[str, str]:
    """``data/train/kept -> 12`` as the tag ``data.train.kept = "12"``."""
    return {key.replace("/", "."): str(_number(v)) for key, v in counters.items()}


def data_summary(counters: Mapping[str, float]) -> dict[str, dict[str, int | float]]:
    """The ``data/summary.json`` artifact: ``{split: {counter: value}}``."""
    out: dict[str, dict[str, int | float]] = {}
    for key, value in counters.items():
        m = _DATA_COUNTER.match(key)
        if m is not None:
            out.setdefault(m["split"], {})[m["name"]] = _number(value)
    return {split: dict(sorted(c.items())) for split, c in sorted(out.items())}


# -- a sweep's summary ------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What a sweep's parent run records about its jobs (see the module docstring)."""

    metric: str | None
    mode: str
    best_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: one row per job: job, run_name, status, the swept keys, the key metrics, best, run_id
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    def table_csv(self) -> str:
        """The table of jobs as CSV text."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buf.getvalue()


def job_values(run: Any, keys: Sequence[str]) -> dict[str, str]:
    """A job's value of each swept key, from its overrides tag (``objective=kto``, ``optim.lr=1e-3``);
    a key it did not override falls back to its param (``objective.name`` for a group)."""
    given = {}
    for override in run.data.tags.get("alignx.overrides", "").split():
        key, sep, value = override.partition("=")
        if sep:
            given[key.lstrip("+~")] = value
    params = run.data.params
    return {k: given.get(k.lstrip("+~"), params.get(k, params.get(f"{k}.name", ""))) for k in keys}


def _job_num(run: Any) -> float:
    num = run.data.tags.get("alignx.job_num", "")
    return int(num) if num.isdigit() else math.inf


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summarize_sweep(
    children: Sequence[Any],
    swept_keys: Sequence[str],
    optimized_metric: Any = None,
    *,
    mode: str | None = None,
    best_run_id: str | None = None,
    rank: bool = True,
) -> SweepSummary:
    """The parent run's record of a sweep whose job runs are ``children`` (MLflow ``Run`` objects).

    The best job is ``best_run_id`` when given (the trial an optimizing sweeper chose), else the
    finished job with the best value of :func:`ranking_metric` (``mode``: ``min``/``max``, default
    :func:`infer_mode`; the lowest job number wins a tie). No job with that metric, or ``rank``
    False (a Pareto front of several metrics, an optimizer that named no job): no best, the table only.
    """
    children = sorted(children, key=lambda r: (_job_num(r), r.info.start_time or 0))
    available = {k for r in children for k in r.data.metrics}
    metric = ranking_metric(available, optimized_metric)
    mode = mode or (infer_mode(metric) if metric else "max")
    best = next((r for r in children if r.info.run_id == best_run_id), None) if best_run_id else None
    if best is None and metric is not None and rank:
        scored = [r for r in children if r.info.status == "FINISHED" and _finite(r.data.metrics.get(metric))]
        if scored:
            pick = max if mode == "max" else min
            best = pick(scored, key=lambda r: r.data.metrics[metric])  # first of equals: job order
    key_metrics = [m for m in dict.fromkeys([*(m for m in [metric] if m), *DEFAULT_METRICS, "train/loss"]) if m in available]
    summary = SweepSummary(metric=metric, mode=mode,
                           columns=["job", "run_name", "status", *swept_keys, *key_metrics, "best", "run_id"])
    for run in children:
        num = run.data.tags.get("alignx.job_num", "")
        row: dict[str, Any] = {"job": num, "run_name": run.info.run_name, "status": run.info.status}
        row.update(job_values(run, swept_keys))
        row.update({m: run.data.metrics.get(m) for m in key_metrics})
        row.update({"best": "*" if best is not None and run.info.run_id == best.info.run_id else "", "run_id": run.info.run_id})
        summary.rows.append(row)
    summary.tags = {"alignx.best_metric": metric or "", "alignx.best_mode": mode}
    if best is not None:
        summary.best_run_id = best.info.run_id
        summary.metrics = {f"best/{k}": float(v) for k, v in best.data.metrics.items() if _finite(v)}
        summary.params = {f"best.{k}": v for k, v in job_values(best, swept_keys).items()}
        summary.tags.update({"alignx.best_run_id": best.info.run_id, "alignx.best_run_name": str(best.info.run_name)})
        if metric in best.data.metrics:
            summary.tags["alignx.best_value"] = repr(float(best.data.metrics[metric]))
    return summary


def log_sweep_summary(tracker: Any, summary: SweepSummary, *, params: bool = True) -> None:
    """Record ``summary`` on a sweep's parent run through its tracker (``params=False``: leave the
    ``best.<key>`` params out, for a run that already has them: MLflow never changes a param)."""
    if summary.metrics:
        tracker.log_metrics(summary.metrics)
    if params and summary.params:
        tracker.log_params(summary.params)
    tracker.set_tags(summary.tags)
    if summary.rows:
        tracker.log_text(summary.table_csv(), JOBS_TABLE)


def summary_json(counters: Mapping[str, float]) -> str:
    """The ``data/summary.json`` text."""
    return json.dumps(data_summary(counters), indent=1, sort_keys=True)


def record_sweep_summary(client: Any, parent_run_id: str, summary: SweepSummary) -> None:
    """Record ``summary`` on a finished sweep's parent run through an ``MlflowClient`` (``alignx compare``).

    The ``best/<metric>`` metrics, the tags and ``sweep/jobs.csv`` are replaced by this summary's;
    the ``best.<key>`` params are written only if the parent has none yet (MLflow never changes a
    param: they keep naming the job that was best when the sweep ended, ``alignx.best_run_id`` the
    latest pick).
    """
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    existing = client.get_run(parent_run_id).data.params
    params = [] if any(k.startswith("best.") for k in existing) else [Param(k, v) for k, v in summary.params.items()]
    client.log_batch(
        parent_run_id,
        metrics=[Metric(k, v, now, 0) for k, v in summary.metrics.items()],
        params=params,
        tags=[RunTag(k, v) for k, v in masked_tags(summary.tags).items()],
    )
    if summary.rows:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(JOBS_TABLE).name
            path.write_text(summary.table_csv())
            client.log_artifact(parent_run_id, str(path), artifact_path=str(Path(JOBS_TABLE).parent))
