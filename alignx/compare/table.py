"""The table of ``alignx compare``: one row per job (or per seed group), the best row, the CSV."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignx.compare.runs import param_value
from alignx.compare.stats import summarize
from alignx.tracking.summary import DEFAULT_METRICS, infer_mode

#: the swept key whose jobs are repetitions of one setting, averaged into one row
SEED_KEY = "seed"
#: suffixes of a grouped row's per-metric columns: 95% half-width, number of jobs with the metric
CI_SUFFIX = "_ci95"
N_SUFFIX = "_n"
#: suffix of the metric holding a mean's standard error over prompts (``eval/gold_reward_sampled_stderr``)
STDERR_SUFFIX = "_stderr"
#: the normal 0.975 quantile: a standard error times this is a 95% half-width
Z_95 = 1.959963984540054
_JOB_NUMBER = re.compile(r"^(\d+)(?::|\s|$)")


@dataclass
class CompareResult:
    """What :func:`compare` found and wrote.

    ``rows`` are the table (one dict per job, keys = ``columns``); ``best`` indexes the best row
    (None when no job has the ranking metric); ``paths`` are the files written, in order
    (``compare.csv`` first), all also logged to the parent run under ``compare/``.

    When the sweep swept ``seed`` (``grouped_by`` is ``"seed"``), each row is a group of jobs that
    differ only by seed: ``jobs``, ``seed`` and ``run_ids`` list its members, ``n`` counts them,
    each metric column holds the group mean, ``<metric>_ci95`` the half-width of its 95% Student-t
    interval (None for one value) and ``<metric>_n`` how many members logged it; ``params`` then
    leaves out ``seed``. ``jobs`` holds the per-job rows either way.
    """

    parent_run_id: str
    tracking_uri: str
    columns: list[str]
    rows: list[dict[str, Any]]
    params: list[str]
    metrics: list[str]
    metric: str | None
    mode: str
    best: int | None
    out_dir: Path
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: where in the parent run's artifacts ``paths`` were logged (None: not logged)
    artifact_path: str | None = None
    #: the swept key averaged over (``seed``), or None: one row per job
    grouped_by: str | None = None
    #: one row per job (the same as ``rows`` when not grouped)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    #: the swept param whose values pick the plots' colours (None: nothing swept)
    colour_key: str | None = None
    #: the colour (``#rrggbb``) of each value of ``colour_key``, the same in every plot of this call
    colours: dict[str, str] = field(default_factory=dict)


def all_metrics(children: list) -> list[str]:
    """Every metric some job logged, sorted."""
    return sorted({k for run in children for k in run.data.metrics})


def pick_metrics(children: list, wanted: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(metrics some job logged, in the asked order; the asked ones no job logged)."""
    have = set(all_metrics(children))
    wanted = list(dict.fromkeys(wanted or DEFAULT_METRICS))
    return [m for m in wanted if m in have], [m for m in wanted if m not in have]


def job_row(run: Any, params: list[str], metrics: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"job": run.info.run_name, "status": run.info.status}
    for key in params:
        row[key] = param_value(run, key)
    for name in metrics:
        # run.data.metrics holds each metric's last value (highest step): the final one
        value = run.data.metrics.get(name)
        row[name] = float(value) if value is not None else None
        # a mean over prompts logged with its standard error (eval/gold_reward_*_stderr)
        stderr = run.data.metrics.get(name + STDERR_SUFFIX)
        if stderr is not None:
            row[name + STDERR_SUFFIX] = float(stderr)
    row["run_id"] = run.info.run_id
    return row


def group_rows(job_rows: list[dict], params: list[str], metrics: list[str], over: str = SEED_KEY) -> list[dict]:
    """One row per setting: the jobs whose ``params`` agree (they differ only by ``over``), in job order.

    Each metric becomes the mean over the members that logged it, ``<metric>_ci95`` the half-width
    of its 95% Student-t interval (None with fewer than two values) and ``<metric>_n`` that count.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in job_rows:
        groups.setdefault(tuple(row.get(p) for p in params), []).append(row)
    rows = []
    for members in groups.values():
        statuses = [m["status"] for m in members]
        counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
        row: dict[str, Any] = {
            "jobs": ",".join(job_number(str(m["job"])) for m in members),
            "status": statuses[0] if len(counts) == 1 else ", ".join(f"{s} x{c}" for s, c in counts.items()),
        }
        for key in params:
            row[key] = members[0].get(key)
        row[over] = ",".join(str(m.get(over)) for m in members)
        row["n"] = len(members)
        for name in metrics:
            values = [m[name] for m in members if is_number(m.get(name))]
            stats = summarize(values) if values else None
            row[name] = stats.mean if stats else None
            row[name + CI_SUFFIX] = stats.half_width if stats else None
            row[name + N_SUFFIX] = len(values)
        row["run_ids"] = " ".join(m["run_id"] for m in members)
        rows.append(row)
    return rows


def job_number(name: str) -> str:
    """``3`` from a sweep job's run name (``3: optim.lr=1e-3 seed=1`` or ``3 1e-3 1``); the whole name otherwise."""
    found = _JOB_NUMBER.match(name)
    return found.group(1) if found else name


def is_number(value: Any) -> bool:
    """A real number that is not NaN (a table cell that holds a value)."""
    return isinstance(value, (int, float)) and not math.isnan(value)


def best_row(rows: list[dict], metric: str | None, mode: str) -> int | None:
    """Index of the best row by ``metric`` (the first on ties); None when no row has it."""
    if metric is None:
        return None
    scored = [(i, r[metric]) for i, r in enumerate(rows) if is_number(r.get(metric))]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda item: item[1])[0]


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    """``rows`` as CSV with ``columns`` (None as an empty cell); returns ``path``."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return path
