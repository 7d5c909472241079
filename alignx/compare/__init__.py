"""``alignx compare``: one table and a few plots for the jobs of a sweep.

A Hydra multirun leaves one MLflow parent run (tag ``alignx.sweep=true``) with one child run per
job (see :mod:`alignx.tracking.sweep`). :func:`compare` reads the children, builds a table of what
each job swept and what it scored, marks the best job, writes ``compare.csv`` and PNG plots, and
logs them back to the parent under ``compare/`` so the MLflow UI shows them next to the sweep, and
records the winner on the parent (``best/<metric>``, ``alignx.best_run_id``, ``sweep/jobs.csv``:
:func:`alignx.tracking.summary.record_sweep_summary`).

Seeds are an axis of their own: when ``seed`` is among the swept keys, the jobs that differ only
by seed form one group (a setting), and the table, the plots and the frontier show each group's
mean with its 95% Student-t interval (:func:`summarize`); the best group is picked
by its mean. The per-job table is still written, as ``compare_jobs.csv``.

Evaluation during training (``eval.every_n_steps``) adds reward-vs-step and reward-vs-KL plots; every
plot uses one colour per value of one swept param (:mod:`.plots`).

Modules: :mod:`.runs` finds the sweep in MLflow, :mod:`.table` builds the rows, :mod:`.stats` the seed
statistics, :mod:`.plots` the PNGs, :mod:`.console` the terminal table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from alignx.compare.console import format_summary, print_result
from alignx.compare.plots import (
    Styles,
    as_numbers,
    plot_curves,
    plot_eval_curves,
    plot_frontier,
    plot_metric_vs_param,
    plot_trajectories,
)
from alignx.compare.runs import (
    PARENT_TAG,
    SWEEP_DIR_TAG,
    SWEEP_TAG,
    CompareError,
    client_for,
    default_out,
    default_uri,
    find_parent,
    job_runs,
    sweep_dir_uri,
    swept_params,
)
from alignx.compare.stats import (
    T_975,
    Z_975,
    Summary,
    mean,
    sample_sd,
    summarize,
    t_half_width,
    t_quantile_975,
)
from alignx.compare.table import (
    CI_SUFFIX,
    DEFAULT_METRICS,
    N_SUFFIX,
    SEED_KEY,
    STDERR_SUFFIX,
    CompareResult,
    all_metrics,
    best_row,
    group_rows,
    infer_mode,
    is_number,
    job_row,
    pick_metrics,
    write_csv,
)
from alignx.tracking.summary import record_sweep_summary, summarize_sweep

DEFAULT_CURVE = "train/loss"
#: the evaluation mean plotted over training steps when the ranking metric is not an eval/* one
DEFAULT_EVAL_CURVE = "eval/gold_reward_sampled"
#: the x of each job's reward trajectory over training
DEFAULT_TRAJECTORY_X = "eval/kl_to_reference"
DEFAULT_EXPERIMENT = "alignx"
ARTIFACT_DIR = "compare"

__all__ = [
    "ARTIFACT_DIR", "CI_SUFFIX", "DEFAULT_CURVE", "DEFAULT_EVAL_CURVE", "DEFAULT_EXPERIMENT", "DEFAULT_METRICS",
    "DEFAULT_TRAJECTORY_X", "N_SUFFIX", "PARENT_TAG", "SEED_KEY", "STDERR_SUFFIX", "SWEEP_DIR_TAG", "SWEEP_TAG",
    "T_975", "Z_975", "CompareError", "CompareResult", "Styles", "Summary", "compare", "default_uri",
    "format_summary", "group_rows", "infer_mode", "mean", "print_result", "sample_sd", "summarize",
    "t_half_width", "t_quantile_975",
]


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
        log_artifacts: also log the files to the parent run under ``compare/`` and record the best job
            on it (``best/<metric>`` metrics, ``alignx.best_run_id`` tag, ``sweep/jobs.csv``).
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
    uri = tracking_uri or sweep_dir_uri(sweep) or default_uri()
    client = client_for(uri)
    parent = find_parent(client, uri, sweep, experiment)
    children = job_runs(client, parent)
    if not children:
        if parent.data.tags.get(SWEEP_TAG) != "true":
            raise CompareError(f"run {parent.info.run_id} is not a sweep (it has no job runs); compare a sweep's parent run")
        raise CompareError(f"sweep run {parent.info.run_id} in {uri} has no job runs (yet?)")

    notes: list[str] = []
    params = swept = swept_params(parent, children)
    chosen, missing = pick_metrics(children, metrics)
    if metrics and missing:
        if not chosen:
            raise CompareError(
                f"no job of sweep {parent.info.run_id} has {', '.join(missing)}; "
                f"metrics they have: {', '.join(all_metrics(children)) or '(none)'}"
            )
        notes.append(f"not logged by any job, left out: {', '.join(missing)}")
    metric = chosen[0] if chosen else None
    mode = mode or (infer_mode(metric) if metric else "max")

    if frontier is not None and len(frontier) != 2:
        raise CompareError(f"--frontier takes two metrics (x y), got {list(frontier)}")
    extra = [m for m in (frontier or []) if m not in chosen]
    job_rows = [job_row(run, params, [*chosen, *extra]) for run in children]
    # a metric's standard error over prompts, next to it, when the jobs logged one
    job_columns = ["job", "status", *params,
                   *(c for m in chosen for c in (m, m + STDERR_SUFFIX)
                     if c == m or any(c in r for r in job_rows)), "best", "run_id"]
    grouped_by = SEED_KEY if group_seeds and SEED_KEY in params else None
    if grouped_by:
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
    best = best_row(rows, metric, mode)
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

    out_dir = Path(out) if out else default_out(parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_csv(out_dir / "compare.csv", columns, rows)]
    if grouped_by:
        paths.append(write_csv(out_dir / "compare_jobs.csv", job_columns, job_rows))
    # one colour per value of one swept param, the same in every plot below
    styles = Styles.for_rows(rows, params)
    if metric:
        for param in params:
            path = plot_metric_vs_param(out_dir, rows, param, styles, metric, mode, best, grouped=grouped_by is not None)
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
        group = by or next((p for p in params if as_numbers([r.get(p) for r in rows]) is None), None)
        path = plot_frontier(out_dir, rows, x, y, group, params, styles, grouped=grouped_by is not None)
        if path:
            paths.append(path)
        else:
            notes.append(f"no {'setting' if grouped_by else 'job'} logged both {x} and {y}: no frontier plot")
    curve_path = plot_curves(out_dir, client, children, job_rows, curve, styles)
    if curve_path:
        paths.append(curve_path)
    else:
        notes.append(f"no job logged {curve!r}: no learning-curve plot")
    # evaluation during training (eval.every_n_steps): reward over steps and the reward-vs-KL path
    reward = metric if metric and metric.startswith("eval/") else DEFAULT_EVAL_CURVE
    for path in (plot_eval_curves(out_dir, client, children, job_rows, reward, styles),
                 plot_trajectories(out_dir, client, children, job_rows, DEFAULT_TRAJECTORY_X, reward, styles)):
        if path:
            paths.append(path)

    if log_artifacts:
        # the parent may be FINISHED; MLflow still accepts artifacts for it. Only this call's
        # files: a stale plot left in out_dir by an earlier compare must not be logged as new.
        for path in paths:
            client.log_artifact(parent.info.run_id, str(path), artifact_path=ARTIFACT_DIR)
        # the parent names this comparison's winner (best/<metric>, alignx.best_run_id, sweep/jobs.csv)
        # the way the sweep's end does; with seeds grouped, the best member of the best setting
        summary = summarize_sweep(children, swept, metric, mode=mode, best_run_id=_best_job(rows, job_rows, best, metric, mode),
                                  rank=best is not None)
        record_sweep_summary(client, parent.info.run_id, summary)
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
        colour_key=styles.key,
        colours=dict(styles.colours),
    )


def _best_job(rows: list[dict], job_rows: list[dict], best: int | None, metric: str | None, mode: str) -> str | None:
    """The run id of the best job: the best row's, or (a seed group) its member with the best value."""
    if best is None or metric is None:
        return None
    if "run_id" in rows[best]:
        return rows[best]["run_id"]
    members = [r for r in job_rows if r["run_id"] in rows[best]["run_ids"].split() and is_number(r.get(metric))]
    if not members:
        return None
    pick = max if mode == "max" else min
    return pick(members, key=lambda r: r[metric])["run_id"]
