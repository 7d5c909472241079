"""``alignx compare``: one table and a few plots for the jobs of a sweep.

A Hydra multirun leaves one MLflow parent run (tag ``alignx.sweep=true``) with one child run per
job (see :mod:`alignx.tracking.sweep`). :func:`compare` reads the children, builds a table of what
each job swept and what it scored, marks the best job, writes ``compare.csv`` and PNG plots, and
logs them back to the parent under ``compare/`` so the MLflow UI shows them next to the sweep.

Seeds are an axis of their own: when ``seed`` is among the swept keys, the jobs that differ only
by seed form one group (a setting), and the table, the plots and the frontier show each group's
mean with its 95% Student-t interval (:func:`summarize`); the best group is picked
by its mean. The per-job table is still written, as ``compare_jobs.csv``.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids, never the fluent API:
its process-global active run is exactly what the rest of alignx avoids (see tracking/run.py).
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import unquote, urlparse

from alignx.errors import AlignxError
from alignx.paths import resolve_outputs_root
from alignx.tracking.run import default_tracking_uri
from alignx.tracking.sweep_state import read_parent

#: metrics shown when none are asked for, in this order; only those some job has are kept
DEFAULT_METRICS = ("eval/gold_reward_sampled", "eval/gold_reward_greedy", "eval/perplexity", "val/loss")
DEFAULT_CURVE = "train/loss"
DEFAULT_EXPERIMENT = "alignx"
ARTIFACT_DIR = "compare"
#: the swept key whose jobs are repetitions of one setting, averaged into one row
SEED_KEY = "seed"
#: suffixes of a grouped row's per-metric columns: 95% half-width, number of jobs with the metric
CI_SUFFIX = "_ci95"
N_SUFFIX = "_n"

SWEEP_TAG = "alignx.sweep"
SWEEP_DIR_TAG = "alignx.sweep_dir"
PARENT_TAG = "mlflow.parentRunId"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class CompareError(AlignxError):
    """Nothing to compare: no store, no sweep, an unknown run id, an unknown metric."""


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


# -- public entry point ----------------------------------------------------------------------


def compare(
    sweep: str | os.PathLike | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    metrics: Sequence[str] | None = None,
    curve: str = DEFAULT_CURVE,
    mode: str | None = None,
    out: str | os.PathLike | None = None,
    log_artifacts: bool = True,
    frontier: Sequence[str] | None = None,
    by: str | None = None,
    group_seeds: bool = True,
) -> CompareResult:
    """Compare the jobs of one sweep; write and log ``compare.csv`` and plots.

    Args:
        sweep: the parent run id, the sweep directory (``hydra.sweep.dir``), or None for the
            latest sweep in ``experiment``.
        tracking_uri: MLflow store; default the embedded ``<outputs_root>/mlflow.db`` (the one
            ``alignx -m ...`` wrote to from the same directory), or the one the sweep dir names.
        experiment: where to look for the latest sweep (only used when ``sweep`` is None).
        metrics: table columns, the first one ranks the jobs; default :data:`DEFAULT_METRICS`.
        curve: the metric whose per-step history is plotted for every job.
        mode: ``max`` or ``min`` for the ranking metric; default ``min`` for losses and
            perplexities, ``max`` for anything else (rewards, accuracies).
        out: output directory; default ``<sweep dir>/compare`` or ``<outputs_root>/compare/<id>``.
        log_artifacts: also log the files to the parent run under ``compare/``.
        frontier: ``(x, y)`` metrics: also plot every job as a point (x, y), one series per value
            of ``by`` (a swept param, e.g. the method; default: the first non-numeric swept
            param), joined in x order: a reward-vs-KL frontier (``frontier_<y>_vs_<x>.png``).
            With seeds swept, each point is a group's mean with x and y 95% error bars.
        by: the swept param that names a frontier's series.
        group_seeds: when ``seed`` is swept, one row per setting (its jobs' mean ± 95% CI);
            False: one row per job, as for a sweep without seeds.

    Raises:
        CompareError: with a message a user can act on (what exists instead, when helpful).
    """
    if mode not in (None, "min", "max"):
        raise CompareError(f"--mode must be 'min' or 'max', not {mode!r}")
    uri = tracking_uri or _sweep_dir_uri(sweep) or default_uri()
    client = _client(uri)
    parent = _find_parent(client, uri, sweep, experiment)
    children = _children(client, parent)
    if not children:
        if parent.data.tags.get(SWEEP_TAG) != "true":
            raise CompareError(f"run {parent.info.run_id} is not a sweep (it has no job runs); compare a sweep's parent run")
        raise CompareError(f"sweep run {parent.info.run_id} in {uri} has no job runs (yet?)")

    notes: list[str] = []
    params = _swept_params(parent, children)
    chosen, missing = _pick_metrics(children, metrics)
    if metrics and missing:
        if not chosen:
            raise CompareError(
                f"no job of sweep {parent.info.run_id} has {', '.join(missing)}; "
                f"metrics they have: {', '.join(_all_metrics(children)) or '(none)'}"
            )
        notes.append(f"not logged by any job, left out: {', '.join(missing)}")
    metric = chosen[0] if chosen else None
    mode = mode or (infer_mode(metric) if metric else "max")

    if frontier is not None and len(frontier) != 2:
        raise CompareError(f"--frontier takes two metrics (x y), got {list(frontier)}")
    extra = [m for m in (frontier or []) if m not in chosen]
    job_columns = ["job", "status", *params, *chosen, "best", "run_id"]
    job_rows = [_row(run, params, [*chosen, *extra]) for run in children]
    grouped_by = SEED_KEY if group_seeds and SEED_KEY in params else None
    if grouped_by:
        swept = params
        params = [p for p in swept if p != grouped_by]
        rows = group_rows(job_rows, params, [*chosen, *extra], grouped_by)
        columns = ["jobs", "status", *params, grouped_by, "n",
                   *(c for m in chosen for c in (m, m + CI_SUFFIX, m + N_SUFFIX)), "best", "run_ids"]
        notes.append(
            f"{len(job_rows)} jobs in {len(rows)} settings that differ only by {grouped_by}: each row is the "
            f"mean ± 95% CI half-width (Student t, n-1 df) over its seeds; one job per row in compare_jobs.csv"
        )
        single = sum(r["n"] == 1 for r in rows)
        if single:
            notes.append(f"{single} setting(s) with one job (n=1): a mean without an interval")
    else:
        rows = job_rows
        columns = job_columns
    unit = "settings" if grouped_by else "jobs"
    best = _best(rows, metric, mode)
    if best is not None:
        ties = sum(r.get(metric) == rows[best][metric] for r in rows)
        if ties > 1:
            notes.append(f"{ties} {unit} tie on {metric}; the first of them is marked best")
    for i, row in enumerate(rows):
        row["best"] = "*" if i == best else ""
    if grouped_by:
        best_runs = set(rows[best]["run_ids"].split()) if best is not None else set()
        for row in job_rows:
            row["best"] = "*" if row["run_id"] in best_runs else ""  # the members of the best setting

    out_dir = Path(out) if out else _default_out(parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_write_csv(out_dir / "compare.csv", columns, rows)]
    if grouped_by:
        paths.append(_write_csv(out_dir / "compare_jobs.csv", job_columns, job_rows))
    error = metric + CI_SUFFIX if grouped_by and metric else None
    if metric:
        for param in params:
            path = _plot_metric_vs_param(out_dir, rows, param, params, metric, mode, best, error)
            if path:
                paths.append(path)
        if grouped_by and not params:
            notes.append(f"only {grouped_by} is swept: one setting, no metric-vs-parameter plot")
    else:
        notes.append(f"no metric to rank or plot the {unit} by")
    if frontier:
        x, y = frontier
        if by is not None and by not in params:
            if grouped_by and by == grouped_by:
                raise CompareError(
                    f"--by {by!r}: the jobs of this sweep are averaged over {grouped_by}; "
                    f"name another swept param: {', '.join(params) or '(none)'}"
                )
            raise CompareError(f"--by {by!r} is not a swept param of this sweep. Swept: {', '.join(params) or '(none)'}")
        group = by or next((p for p in params if _as_numbers([r.get(p) for r in rows]) is None), None)
        path = _plot_frontier(out_dir, rows, x, y, group, params, grouped=grouped_by is not None)
        if path:
            paths.append(path)
        else:
            notes.append(f"no {'setting' if grouped_by else 'job'} logged both {x} and {y}: no frontier plot")
    curve_path = _plot_curves(out_dir, client, children, curve)
    if curve_path:
        paths.append(curve_path)
    else:
        notes.append(f"no job logged {curve!r}: no learning-curve plot")

    if log_artifacts:
        # the parent may be FINISHED; MLflow still accepts artifacts for it. Only this call's
        # files: a stale plot left in out_dir by an earlier compare must not be logged as new.
        for path in paths:
            client.log_artifact(parent.info.run_id, str(path), artifact_path=ARTIFACT_DIR)
    return CompareResult(
        parent_run_id=parent.info.run_id,
        tracking_uri=uri,
        columns=columns,
        rows=rows,
        params=params,
        metrics=chosen,
        metric=metric,
        mode=mode,
        best=best,
        out_dir=out_dir.resolve(),
        paths=[p.resolve() for p in paths],
        notes=notes,
        artifact_path=ARTIFACT_DIR if log_artifacts else None,
        grouped_by=grouped_by,
        jobs=job_rows,
    )


def infer_mode(metric: str) -> str:
    """``min`` for losses and perplexities (lower is better), ``max`` for everything else."""
    name = metric.lower()
    return "min" if "loss" in name or "perplexity" in name or name.endswith("ppl") else "max"


def default_uri() -> str:
    """The embedded store ``alignx`` trains into from this directory: $ALIGNX_OUTPUTS or ./outputs."""
    from omegaconf import OmegaConf


    return default_tracking_uri(resolve_outputs_root(OmegaConf.create()))


# -- seed statistics -------------------------------------------------------------------------
# The mean of a seed group and the half-width of its 95% interval, t_{0.975, n-1} * s / sqrt(n)
# with s the sample standard deviation (n-1 in the denominator); one value has no interval.
# The t quantiles are a table for 1..30 degrees of freedom (scipy's t.ppf(0.975, df) to 6
# decimals; scipy is not a dependency of alignx) and, beyond 30, the Cornish-Fisher expansion of
# t around the normal quantile (Abramowitz & Stegun 26.7.5), within 2e-6 of the exact value there.

#: the normal distribution's 0.975 quantile: the limit of t_{0.975, df} as df grows
Z_975 = 1.959963984540054

#: t_{0.975, df} for df = 1..30 (index df - 1)
T_975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)


@dataclass(frozen=True)
class Summary:
    """The mean of ``n`` values and the half-width of its 95% interval (None when n < 2)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def interval(self) -> tuple[float, float] | None:
        """``(mean - half_width, mean + half_width)``, or None without an interval."""
        if self.half_width is None:
            return None
        return self.mean - self.half_width, self.mean + self.half_width


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean of one or more values."""
    if not values:
        raise ValueError("the mean of no values is undefined")
    return math.fsum(values) / len(values)


def sample_sd(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1 in the denominator) of two or more values."""
    if len(values) < 2:
        raise ValueError(f"a sample standard deviation needs at least 2 values, got {len(values)}")
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def t_half_width(values: Sequence[float]) -> float | None:
    """Half-width of the 95% Student-t interval of the mean: ``t_{0.975,n-1} * s / sqrt(n)``; None for n < 2."""
    n = len(values)
    if n < 2:
        return None
    return t_quantile_975(n - 1) * sample_sd(values) / math.sqrt(n)


def summarize(values: Sequence[float]) -> Summary:
    """Mean, 95% half-width (None for one value) and count of one or more values."""
    return Summary(mean=mean(values), half_width=t_half_width(values), n=len(values))


# -- finding the sweep -----------------------------------------------------------------------


def _read_sweep_record(sweep_dir: Path) -> dict:
    """The sweep callback's record (parent run id, tracking uri); {} if missing or unreadable."""

    try:
        return read_parent(sweep_dir) or {}
    except (OSError, ValueError):
        return {}  # unreadable: fall back to matching the parent's alignx.sweep_dir tag


def _sweep_dir_uri(sweep: str | os.PathLike | None) -> str | None:
    """The store a sweep dir's record names, so ``compare <dir>`` works from any directory."""
    if sweep is None or not Path(sweep).expanduser().is_dir():
        return None
    return _read_sweep_record(Path(sweep).expanduser().resolve()).get("tracking_uri")


def _local_store(uri: str) -> Path | None:
    """The file or directory behind a local store URI (None for servers and databases)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:////abs/path -> /abs/path; sqlite:///rel -> rel; :memory: has no file
        path = unquote(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else ""
        return Path(path) if path and path != ":memory:" else None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    return None


def _client(uri: str):
    # An sqlite store is created on first use: check first, or a typo would leave an empty db.
    local = _local_store(uri)
    if local is not None and not local.exists():
        raise CompareError(
            f"no MLflow store at {local} ({uri}); run a sweep first (alignx -m ...) from this "
            "directory, or pass --tracking-uri (or set $ALIGNX_OUTPUTS)"
        )
    from mlflow import MlflowClient  # after the check: importing MLflow takes seconds

    return MlflowClient(tracking_uri=uri)


def _experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _sweep_parents(client, experiment_ids: list[str], extra: str = "", max_results: int = 1000) -> list:
    filter_string = f"tags.`{SWEEP_TAG}` = 'true'" + (f" and {extra}" if extra else "")
    if not experiment_ids:
        return []
    return client.search_runs(
        experiment_ids, filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=max_results
    )


def _listing(runs: list, limit: int = 10) -> str:
    lines = [f"  {r.info.run_id}  {r.info.run_name}  ({r.data.tags.get(SWEEP_DIR_TAG, '?')})" for r in runs[:limit]]
    if len(runs) > limit:
        lines.append(f"  ... and {len(runs) - limit} more")
    return "\n".join(lines)


def _find_parent(client, uri: str, sweep: str | os.PathLike | None, experiment: str):
    """The sweep's parent run, from an id, a sweep dir, or the latest in ``experiment``."""
    if sweep is None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = ", ".join(e.name for e in client.search_experiments()) or "(none)"
            raise CompareError(f"no experiment {experiment!r} in {uri}; experiments there: {names}")
        found = _sweep_parents(client, [exp.experiment_id], max_results=1)
        if not found:
            raise CompareError(
                f"no sweep in experiment {experiment!r} of {uri}; run one with `alignx -m key=a,b ...`"
            )
        return found[0]

    text = str(sweep)
    path = Path(text).expanduser()
    if path.is_dir():
        sweep_dir = path.resolve()
        record = _read_sweep_record(sweep_dir)
        run_id = record.get("parent_run_id")
        if run_id:
            return _get_run(client, uri, run_id)
        # no record (e.g. copied without .alignx/): fall back to the tag every parent carries
        # (matched here, not in a filter string, so no path needs quoting for MLflow's parser)
        known = _sweep_parents(client, _experiment_ids(client))
        found = [r for r in known if r.data.tags.get(SWEEP_DIR_TAG) == str(sweep_dir)]
        if found:
            return found[0]  # newest first: a sweep dir reused by a later sweep means that one
        raise CompareError(
            f"no sweep run for directory {sweep_dir} in {uri}"
            + (f"; sweeps there:\n{_listing(known)}" if known else "; there are no sweeps there")
        )
    if not _RUN_ID.match(text) and ("/" in text or os.sep in text or text.startswith(".")):
        raise CompareError(f"no such sweep directory: {text}")
    return _get_run(client, uri, text)


def _get_run(client, uri: str, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        known = _sweep_parents(client, _experiment_ids(client))
        raise CompareError(
            f"no run {run_id!r} in {uri}"
            + (f"; sweeps there:\n{_listing(known)}" if known else "; there are no sweeps there")
        ) from None
    parent_of = run.data.tags.get(PARENT_TAG)
    if run.data.tags.get(SWEEP_TAG) != "true" and parent_of:
        raise CompareError(f"run {run_id} is one job of a sweep; compare the sweep: alignx compare {parent_of}")
    return run


def _children(client, parent) -> list:
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
        max_results=10000,
    )
    # job order (Hydra's job number), not MLflow's default newest-first
    def key(run) -> tuple:
        num = run.data.tags.get("alignx.job_num", "")
        return (int(num) if num.isdigit() else math.inf, run.info.start_time or 0)

    return sorted(runs, key=key)


# -- the table -------------------------------------------------------------------------------


def _param_value(run, key: str) -> str:
    """A job's value of swept key ``key``.

    A config-group override (``adapter=lora``) is logged as ``adapter.name``; anything else
    as itself. The job's overrides tag is the last resort (e.g. ``+new_key=...``).
    """
    params = run.data.params
    for name in (key, f"{key}.name"):
        if name in params:
            return params[name]
    for override in run.data.tags.get("alignx.overrides", "").split():
        k, sep, v = override.partition("=")
        if sep and k.lstrip("+~") == key:
            return v
    return ""


def _swept_params(parent, children: list) -> list[str]:
    """The swept keys the parent recorded; else the params whose values differ across jobs."""
    keys = [k for k in parent.data.params.get("alignx.swept_keys", "").split(",") if k]
    if keys:
        return keys
    names = sorted({k for run in children for k in run.data.params})
    return [k for k in names if len({run.data.params.get(k) for run in children}) > 1]


def _all_metrics(children: list) -> list[str]:
    return sorted({k for run in children for k in run.data.metrics})


def _pick_metrics(children: list, wanted: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(metrics some job logged, in the asked order; the asked ones no job logged)."""
    have = set(_all_metrics(children))
    wanted = list(dict.fromkeys(wanted or DEFAULT_METRICS))
    return [m for m in wanted if m in have], [m for m in wanted if m not in have]


def _row(run, params: list[str], metrics: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"job": run.info.run_name, "status": run.info.status}
    for key in params:
        row[key] = _param_value(run, key)
    for name in metrics:
        # run.data.metrics holds each metric's last value (highest step): the final one
        value = run.data.metrics.get(name)
        row[name] = float(value) if value is not None else None
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
            "jobs": ",".join(_job_number(str(m["job"])) for m in members),
            "status": statuses[0] if len(counts) == 1 else ", ".join(f"{s} x{c}" for s, c in counts.items()),
        }
        for key in params:
            row[key] = members[0].get(key)
        row[over] = ",".join(str(m.get(over)) for m in members)
        row["n"] = len(members)
        for name in metrics:
            values = [m[name] for m in members if _is_number(m.get(name))]
            stats = summarize(values) if values else None
            row[name] = stats.mean if stats else None
            row[name + CI_SUFFIX] = stats.half_width if stats else None
            row[name + N_SUFFIX] = len(values)
        row["run_ids"] = " ".join(m["run_id"] for m in members)
        rows.append(row)
    return rows


def _job_number(name: str) -> str:
    """``3`` from a sweep job's run name ``3: optim.lr=1e-3 seed=1``; the whole name otherwise."""
    number, sep, _ = name.partition(":")
    return number if sep and number.isdigit() else name


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _best(rows: list[dict], metric: str | None, mode: str) -> int | None:
    """Index of the best row by ``metric`` (the first on ties); None when no row has it."""
    if metric is None:
        return None
    scored = [(i, r[metric]) for i, r in enumerate(rows) if _is_number(r.get(metric))]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda item: item[1])[0]


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return path


# -- plots -----------------------------------------------------------------------------------


def _safe(name: str) -> str:
    """A metric or param name as a file-name part: ``train/loss`` -> ``train_loss``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "value"


def _pyplot():
    import matplotlib

    # no display on servers and in CI; Agg also never opens windows on a desktop
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _as_numbers(values: list[str]) -> list[float] | None:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(n) for n in numbers) else None


def _errors(members: list, column: str | None) -> list[float] | None:
    """The error-bar half-widths of ``members`` (rows, or (index, row) pairs) from ``column``; 0 where
    a row has no interval (n=1); None when there are no error bars at all (``column`` None)."""
    if column is None:
        return None
    rows = [m[1] if isinstance(m, tuple) else m for m in members]
    return [r[column] if _is_number(r.get(column)) else 0.0 for r in rows]


def _plot_metric_vs_param(
    out_dir: Path,
    rows: list[dict],
    param: str,
    params: list[str],
    metric: str,
    mode: str,
    best: int | None,
    error: str | None = None,
) -> Path | None:
    """Final ``metric`` against ``param``: one series per combination of the other swept params.

    ``error`` names the column of each point's error-bar half-width (a seed group's 95% CI).
    """
    points = [(i, r) for i, r in enumerate(rows) if r.get(param) not in ("", None) and _is_number(r.get(metric))]
    if not points:
        return None
    plt = _pyplot()
    others = [p for p in params if p != param]
    numbers = _as_numbers([r[param] for _, r in points])
    # categorical values keep their first-seen order (the sweep's order)
    categories = list(dict.fromkeys(r[param] for _, r in points))
    series: dict[str, list[tuple[int, dict]]] = {}
    for i, r in points:
        label = " ".join(f"{o}={r.get(o)}" for o in others) or metric
        series.setdefault(label, []).append((i, r))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    best_xy = None
    for n, (label, members) in enumerate(series.items()):
        if numbers is not None:
            members = sorted(members, key=lambda m: float(m[1][param]))
            xs = [float(r[param]) for _, r in members]
            ax.errorbar(xs, [r[metric] for _, r in members], yerr=_errors(members, error), marker="o",
                        capsize=3, label=label)
        else:
            # dodge the series a little so equal values on one category do not hide each other
            shift = (n - (len(series) - 1) / 2) * 0.08
            xs = [categories.index(r[param]) + shift for _, r in members]
            ax.errorbar(xs, [r[metric] for _, r in members], yerr=_errors(members, error), marker="o",
                        linestyle="none", capsize=3, label=label)
        best_xy = best_xy or next(((x, r[metric]) for x, (i, r) in zip(xs, members) if i == best), None)
    if best_xy is not None:
        ax.scatter(*best_xy, s=180, facecolors="none", edgecolors="red", zorder=5, label="best")
    if numbers is not None:
        low, high = min(numbers), max(numbers)
        if low > 0 and high / low > 10:  # an lr or a weight decay: even spacing on a log axis
            ax.set_xscale("log")
        values = list(dict.fromkeys(r[param] for _, r in points))
        if len(values) <= 8:  # a sweep's few values: tick exactly those, written as swept
            ax.set_xticks([float(v) for v in values], values)
            ax.minorticks_off()
    else:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(param)
    ax.set_ylabel(f"{metric} (final, {mode} is best)")
    ax.set_title(f"{metric} vs {param}" + ("\nmean ± 95% CI over seeds" if error else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = out_dir / f"metric_vs_{_safe(param)}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_frontier(
    out_dir: Path, rows: list[dict], x: str, y: str, group: str | None, params: list[str], grouped: bool = False
) -> Path | None:
    """Every job as a point (x, y); one series per value of ``group``, each point labelled by the
    other swept params (e.g. beta), joined in x order: the DPO paper's reward-vs-KL frontier.

    ``grouped``: the rows are seed groups; each point is their mean with x and y 95% error bars.
    """
    points = [r for r in rows if _is_number(r.get(x)) and _is_number(r.get(y))]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    series: dict[str, list[dict]] = {}
    for r in points:
        series.setdefault(str(r.get(group)) if group else y, []).append(r)
    others = [p for p in params if p != group]
    for label, members in series.items():
        members = sorted(members, key=lambda r: r[x])
        ax.errorbar(
            [r[x] for r in members], [r[y] for r in members],
            xerr=_errors(members, x + CI_SUFFIX if grouped else None),
            yerr=_errors(members, y + CI_SUFFIX if grouped else None),
            marker="o", capsize=3, label=f"{group}={label}" if group else label,
        )
        for r in members:
            note = " ".join(f"{str(o).rsplit('.', 1)[-1]}={r.get(o)}" for o in others if r.get(o) not in ("", None))
            if grouped:
                note = f"{note} n={min(r[x + N_SUFFIX], r[y + N_SUFFIX])}".strip()
            if note:
                ax.annotate(note, (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{y} vs {x}" + ("\nmean ± 95% CI over seeds" if grouped else ", every job"))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = out_dir / f"frontier_{_safe(y)}_vs_{_safe(x)}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_curves(out_dir: Path, client, children: list, metric: str) -> Path | None:
    """``metric`` against step for every job (its full history, not just the final value)."""
    histories = []
    for run in children:
        history = client.get_metric_history(run.info.run_id, metric)
        if history:
            history = sorted(history, key=lambda m: (m.step, m.timestamp))
            histories.append((run.info.run_name, [m.step for m in history], [m.value for m in history]))
    if not histories:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for name, steps, values in histories:
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}, every job")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    path = out_dir / f"curves_{_safe(metric)}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _default_out(parent) -> Path:
    """``<sweep dir>/compare`` next to the jobs; else under the outputs root, by parent id."""
    from omegaconf import OmegaConf


    sweep_dir = parent.data.tags.get(SWEEP_DIR_TAG)
    if sweep_dir and Path(sweep_dir).is_dir():
        return Path(sweep_dir) / "compare"
    return resolve_outputs_root(OmegaConf.create()) / "compare" / parent.info.run_id


# -- console ---------------------------------------------------------------------------------


def format_summary(mean: float | None, half_width: float | None, n: int | None, group_n: int | None) -> str:
    """A seed group's metric cell: ``0.5123 ± 0.0345``; ``(n=2)`` appended when fewer members than
    the group's ``group_n`` logged it (None: always); ``0.5123 (n=1, no CI)`` for a single value."""
    if mean is None:
        return ""
    if half_width is None:
        return f"{mean:.4g} (n={n}, no CI)"
    text = f"{mean:.4g} ± {half_width:.2g}"
    return text if group_n is not None and n == group_n else f"{text} (n={n})"


def print_result(result: CompareResult) -> None:
    """The table (rich) and then the written paths (plain prints: copy-pasteable, never wrapped)."""
    from rich.console import Console
    from rich.table import Table

    grouped = result.grouped_by is not None
    # a grouped row's per-metric half-width and count are shown inside the metric's cell
    folded = {m + suffix for m in result.metrics for suffix in (CI_SUFFIX, N_SUFFIX)} if grouped else set()
    shown = [c for c in result.columns if c not in ("run_id", "run_ids") and c not in folded]
    title = f"alignx compare: sweep {result.parent_run_id}"
    if grouped:
        title += f", mean ± 95% CI over {result.grouped_by}"
    table = Table(title=title, show_header=True)
    for col in shown:
        header = f"{col} ({result.mode})" if col == result.metric else col
        numeric = col in result.metrics
        table.add_column(header, justify="right" if numeric else "left", no_wrap=numeric)
    for i, row in enumerate(result.rows):
        cells = []
        for col in shown:
            value = row.get(col)
            if grouped and col in result.metrics:
                cells.append(format_summary(value, row.get(col + CI_SUFFIX), row.get(col + N_SUFFIX), row["n"]))
            else:
                cells.append(f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value)))
        table.add_row(*cells, style="bold green" if i == result.best else None)
    Console(width=max(120, sum(len(c) + 8 for c in shown))).print(table)
    for note in result.notes:
        print(f"note: {note}")
    if result.best is not None and grouped:
        best = result.rows[result.best]
        setting = " ".join(f"{p}={best[p]}" for p in result.params) or "all jobs"
        n = best[result.metric + N_SUFFIX]
        value = format_summary(best[result.metric], best[result.metric + CI_SUFFIX], n, n)
        if best[result.metric + CI_SUFFIX] is not None:
            value += f", n={n}"
        print(f"best:        {setting} ({result.metric} = {value}; jobs {best['jobs']}; runs {best['run_ids']})")
    elif result.best is not None:
        best = result.rows[result.best]
        print(f"best:        {best['job']} ({result.metric} = {best[result.metric]:.6g}, run {best['run_id']})")
    for path in result.paths:
        print(f"wrote:       {path}")
    if result.artifact_path:
        print(f"logged to:   run {result.parent_run_id}, artifacts {result.artifact_path}/ in {result.tracking_uri}")
