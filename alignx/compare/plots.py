"""The plots of ``alignx compare``, drawn so they read at a glance.

* One colour per value of one swept param (:class:`Styles`: the first non-numeric one, e.g. the
  objective), the same in every plot of one compare call; the other swept params vary the marker
  or line style.
* Steps are whole numbers on every step axis.
* Losses of different objectives (DPO's and KTO's are different quantities) get a panel each.
* Series whose points differ by a category (adapter=none vs lora) are markers only; a line joins
  points only along a numeric knob (beta, lr), where a trade-off curve is meant.
* Error bars wherever the value is a mean: a seed group's 95% Student-t interval, else ±1.96
  standard errors over prompts when the job logged ``<metric>_stderr``.
* Evaluation during training (``eval.every_n_steps``): reward against step (with its 95% band)
  and the reward-vs-KL trajectory of each job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignx.compare.table import CI_SUFFIX, N_SUFFIX, STDERR_SUFFIX, Z_95, is_number

#: matplotlib's tab10 without its red (it marks the best job) and its grey (the colour of text and grids)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")
LINESTYLES = ("-", "--", ":", "-.")
BEST_COLOUR = "#d62728"
DPI = 100


@dataclass
class Styles:
    """The colour of each value of ``key`` (a swept param) and the variant (marker, line style) of
    each combination of the other swept params: one mapping for every plot of a compare call."""

    key: str | None
    colours: dict[str, str] = field(default_factory=dict)
    others: list[str] = field(default_factory=list)
    variants: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_rows(cls, rows: Sequence[dict], params: Sequence[str]) -> Styles:
        """Colours by the first non-numeric swept param (else the first one), in the rows' order."""
        key = next((p for p in params if as_numbers([r.get(p) for r in rows]) is None), params[0] if params else None)
        styles = cls(key=key, others=[p for p in params if p != key])
        for row in rows:
            styles.colours.setdefault(styles.value(row), PALETTE[len(styles.colours) % len(PALETTE)])
            styles.variants.setdefault(styles.variant(row), len(styles.variants))
        return styles

    def value(self, row: dict) -> str:
        """The row's value of the colour key ("" without one)."""
        return str(row.get(self.key)) if self.key else ""

    def colour(self, row: dict) -> str:
        """The colour of the row's value of :attr:`key`."""
        return self.colours.get(self.value(row), PALETTE[0])

    def variant(self, row: dict) -> str:
        """The row's values of the other swept params, as ``k=v k=v``."""
        return " ".join(f"{_short(o)}={row.get(o)}" for o in self.others)

    def marker(self, row: dict) -> str:
        """The marker of the row's combination of the other swept params."""
        return MARKERS[self.variants.get(self.variant(row), 0) % len(MARKERS)]

    def linestyle(self, row: dict) -> str:
        """The line style of the row's combination of the other swept params."""
        return LINESTYLES[self.variants.get(self.variant(row), 0) % len(LINESTYLES)]

    def label(self, row: dict) -> str:
        """``key=value k=v ...``: what a series of this row is called in a legend."""
        head = f"{_short(self.key)}={self.value(row)}" if self.key else ""
        return " ".join(t for t in (head, self.variant(row)) if t) or "all jobs"


def safe(name: str) -> str:
    """A metric or param name as a file-name part: ``train/loss`` -> ``train_loss``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "value"


def as_numbers(values: Sequence[Any]) -> list[float] | None:
    """``values`` as floats when every one is a finite number; None otherwise (a categorical param)."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(n) for n in numbers) else None


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    # no display on servers and in CI; Agg also never opens windows on a desktop
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _short(name: str | None) -> str:
    """A swept key as a legend shows it: ``objective.beta`` -> ``beta``, ``adapter.name`` -> ``adapter``."""
    return str(name).removesuffix(".name").rsplit(".", 1)[-1]


def _error_column(rows: Sequence[dict], metric: str, grouped: bool) -> tuple[str | None, float, str]:
    """(column of each row's error, its scale to a 95% half-width, what it is) for ``metric``."""
    if grouped:
        return metric + CI_SUFFIX, 1.0, "mean ± 95% CI over seeds"
    if any(is_number(r.get(metric + STDERR_SUFFIX)) for r in rows):
        return metric + STDERR_SUFFIX, Z_95, "± 95% interval over prompts"
    return None, 1.0, ""


def _errors(rows: Sequence[dict], column: str | None, scale: float = 1.0) -> list[float] | None:
    if column is None:
        return None
    return [r[column] * scale if is_number(r.get(column)) else 0.0 for r in rows]


def _integer_steps(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_metric_vs_param(
    out_dir: Path, rows: list[dict], param: str, styles: Styles, metric: str, mode: str, best: int | None,
    grouped: bool = False,
) -> Path | None:
    """Final ``metric`` against ``param``: one series per combination of the other swept params.

    A numeric ``param`` joins each series' points in order; a categorical one puts them side by
    side, markers only. Points take the colour of their value of :attr:`Styles.key`.
    """
    points = [(i, r) for i, r in enumerate(rows) if r.get(param) not in ("", None) and is_number(r.get(metric))]
    if not points:
        return None
    plt = pyplot()
    error, scale, note = _error_column([r for _, r in points], metric, grouped)
    others = [p for p in styles.others + ([styles.key] if styles.key else []) if p != param]
    numbers = as_numbers([r[param] for _, r in points])
    categories = list(dict.fromkeys(r[param] for _, r in points))  # first-seen order: the sweep's
    series: dict[str, list[tuple[int, dict]]] = {}
    for i, r in points:
        series.setdefault(" ".join(f"{_short(o)}={r.get(o)}" for o in others) or metric, []).append((i, r))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    best_xy = None
    for n, (label, members) in enumerate(series.items()):
        if numbers is not None:
            members = sorted(members, key=lambda m: float(m[1][param]))
            xs = [float(r[param]) for _, r in members]
        else:
            # dodge the series a little so equal values on one category do not hide each other
            shift = (n - (len(series) - 1) / 2) * 0.08
            xs = [categories.index(r[param]) + shift for _, r in members]
        ys = [r[metric] for _, r in members]
        errs = _errors([r for _, r in members], error, scale)
        marker = MARKERS[n % len(MARKERS)]
        if numbers is not None and param != styles.key:
            colour = styles.colour(members[0][1])
            ax.errorbar(xs, ys, yerr=errs, marker=marker, color=colour, capsize=3, label=label)
        else:
            for k, (x, y, (_, r)) in enumerate(zip(xs, ys, members)):
                ax.errorbar([x], [y], yerr=None if errs is None else [errs[k]], marker=marker, linestyle="none",
                            color=styles.colour(r), capsize=3, label=label if k == 0 else None)
        best_xy = best_xy or next(((x, r[metric]) for x, (i, r) in zip(xs, members) if i == best), None)
    if best_xy is not None:
        ax.scatter(*best_xy, s=180, facecolors="none", edgecolors=BEST_COLOUR, zorder=5, label="best")
    if numbers is not None:
        low, high = min(numbers), max(numbers)
        if low > 0 and high / low > 10:  # an lr or a weight decay: even spacing on a log axis
            ax.set_xscale("log")
        if len(categories) <= 8:  # a sweep's few values: tick exactly those, written as swept
            ax.set_xticks([float(v) for v in categories], categories)
            ax.minorticks_off()
    else:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(param)
    ax.set_ylabel(f"{metric} (final, {mode} is best)")
    ax.set_title(f"{metric} vs {param}" + (f"\n{note}" if note else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, plt, out_dir / f"metric_vs_{safe(param)}.png")


def plot_frontier(
    out_dir: Path, rows: list[dict], x: str, y: str, group: str | None, params: list[str], styles: Styles,
    grouped: bool = False,
) -> Path | None:
    """Every job (or seed group) as a point (x, y); one series per value of ``group``, each point
    labelled by the other swept params. A series is joined by a line only along numeric params
    (beta: a trade-off curve); points that differ by a category are markers only."""
    points = [r for r in rows if is_number(r.get(x)) and is_number(r.get(y))]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    x_err, x_scale, _ = _error_column(points, x, grouped)
    y_err, y_scale, note = _error_column(points, y, grouped)
    series: dict[str, list[dict]] = {}
    for r in points:
        series.setdefault(str(r.get(group)) if group else y, []).append(r)
    others = [p for p in params if p != group]
    for n, (label, members) in enumerate(series.items()):
        members = sorted(members, key=lambda r: r[x])
        varying = [o for o in others if len({str(r.get(o)) for r in members}) > 1]
        joined = bool(varying) and all(as_numbers([r.get(o) for r in members]) is not None for o in varying)
        one_colour = group == styles.key or len({styles.colour(r) for r in members}) == 1
        xe, ye = _errors(members, x_err, x_scale), _errors(members, y_err, y_scale)
        marker = MARKERS[n % len(MARKERS)]
        name = f"{_short(group)}={label}" if group else label
        if one_colour:
            ax.errorbar([r[x] for r in members], [r[y] for r in members], xerr=xe, yerr=ye, marker=marker,
                        linestyle="-" if joined else "none", color=styles.colour(members[0]), capsize=3, label=name)
        else:
            if joined:
                ax.plot([r[x] for r in members], [r[y] for r in members], color="0.6", linewidth=1, zorder=1)
            for k, r in enumerate(members):
                ax.errorbar([r[x]], [r[y]], xerr=None if xe is None else [xe[k]], yerr=None if ye is None else [ye[k]],
                            marker=marker, linestyle="none", color=styles.colour(r), capsize=3,
                            label=name if k == 0 else None)
        for r in members:
            text = " ".join(f"{_short(o)}={r.get(o)}" for o in others if r.get(o) not in ("", None))
            if grouped:
                text = f"{text} n={min(r[x + N_SUFFIX], r[y + N_SUFFIX])}".strip()
            if text:
                ax.annotate(text, (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{y} vs {x}" + (f"\n{note}" if note else ", every job"))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, plt, out_dir / f"frontier_{safe(y)}_vs_{safe(x)}.png")


@dataclass
class History:
    """One job's logged values of one metric, by step (the last value logged at a step wins)."""

    run_id: str
    name: str
    row: dict
    objective: str
    steps: list[int]
    values: list[float]

    def at(self) -> dict[int, float]:
        """``{step: value}``."""
        return dict(zip(self.steps, self.values))


def histories(client: Any, children: Sequence[Any], job_rows: Sequence[dict], metric: str) -> list[History]:
    """``metric``'s history of every job that logged it, in job order."""
    rows = {r["run_id"]: r for r in job_rows}
    out = []
    for run in children:
        logged = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: (m.step, m.timestamp))
        if logged:
            by_step = {int(m.step): float(m.value) for m in logged}
            objective = run.data.params.get("objective.name") or run.data.tags.get("alignx.objective", "")
            out.append(History(run.info.run_id, str(run.info.run_name), rows.get(run.info.run_id, {}), objective,
                               sorted(by_step), [by_step[s] for s in sorted(by_step)]))
    return out


def _draw_jobs(ax: Any, found: Sequence[History], styles: Styles, labelled: set[str]) -> None:
    for h in found:
        # jobs of one setting (seeds) share colour, style and one legend entry
        label = styles.label(h.row) if h.row else h.name
        ax.plot(h.steps, h.values, color=styles.colour(h.row), linestyle=styles.linestyle(h.row),
                marker="." if len(h.steps) < 30 else None, label=None if label in labelled else label)
        labelled.add(label)


def plot_curves(out_dir: Path, client: Any, children: Sequence[Any], job_rows: Sequence[dict], metric: str,
                styles: Styles) -> Path | None:
    """``metric`` against step for every job; a loss of several objectives gets one panel per objective."""
    found = histories(client, children, job_rows, metric)
    if not found:
        return None
    plt = pyplot()
    objectives = list(dict.fromkeys(h.objective for h in found))
    panels = objectives if "loss" in metric.lower() and len(objectives) > 1 else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.6, 4.4), squeeze=False)
    labelled: set[str] = set()
    for ax, objective in zip(axes[0], panels):
        _draw_jobs(ax, [h for h in found if objective is None or h.objective == objective], styles, labelled)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"objective={objective}" if objective else f"{metric}, every job")
        _integer_steps(ax)
        ax.grid(True, alpha=0.3)
    path = out_dir / f"curves_{safe(metric)}.png"
    if len(panels) == 1:
        axes[0][0].legend(fontsize="x-small")
        return _save(fig, plt, path)
    fig.suptitle(f"{metric}, every job (a panel per objective: their losses are different quantities)", fontsize="medium")
    fig.legend(*_legend(axes[0]), fontsize="x-small", loc="center right")
    fig.tight_layout(rect=(0, 0, 0.78, 0.95))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _legend(axes: Sequence[Any]) -> tuple[list, list]:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    return handles, labels


def plot_eval_curves(out_dir: Path, client: Any, children: Sequence[Any], job_rows: Sequence[dict], metric: str,
                     styles: Styles) -> Path | None:
    """``metric`` (an evaluation mean, e.g. gold reward) against step for every job evaluated during
    training, with its ±1.96 standard-error band when ``<metric>_stderr`` was logged; None unless
    some job has it at two steps or more (``eval.every_n_steps``)."""
    found = histories(client, children, job_rows, metric)
    if not any(len(h.steps) > 1 for h in found):
        return None
    errors = {h.run_id: h.at() for h in histories(client, children, job_rows, metric + STDERR_SUFFIX)}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    _draw_jobs(ax, found, styles, set())
    for h in found:
        se = errors.get(h.run_id, {})
        band = [(s, v, se[s]) for s, v in zip(h.steps, h.values) if is_number(se.get(s))]
        if band:
            ax.fill_between([s for s, _, _ in band], [v - Z_95 * e for _, v, e in band],
                            [v + Z_95 * e for _, v, e in band], color=styles.colour(h.row), alpha=0.12, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training" + ("\nbands: ± 95% interval over prompts" if errors else ""))
    _integer_steps(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    return _save(fig, plt, out_dir / f"eval_curve_{safe(metric)}.png")


def plot_trajectories(out_dir: Path, client: Any, children: Sequence[Any], job_rows: Sequence[dict], x: str, y: str,
                      styles: Styles) -> Path | None:
    """Each job's path through (``x``, ``y``) over training, e.g. KL to the reference vs gold reward:
    one point per evaluation step, joined in step order, the steps written next to the points."""
    xs = {h.run_id: h.at() for h in histories(client, children, job_rows, x)}
    paths = []
    for h in histories(client, children, job_rows, y):
        steps = [s for s in h.steps if s in xs.get(h.run_id, {})]
        if steps:
            paths.append((h, steps, [xs[h.run_id][s] for s in steps], [h.at()[s] for s in steps]))
    if not any(len(steps) > 1 for _, steps, _, _ in paths):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    labelled: set[str] = set()
    for h, steps, px, py in paths:
        label = styles.label(h.row) if h.row else h.name
        ax.plot(px, py, color=styles.colour(h.row), linestyle=styles.linestyle(h.row), marker=styles.marker(h.row),
                label=None if label in labelled else label)
        labelled.add(label)
        for s, a, b in zip(steps, px, py):
            ax.annotate(str(s), (a, b), textcoords="offset points", xytext=(3, 3), fontsize="xx-small",
                        color=styles.colour(h.row))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{y} vs {x} during training\n(numbers: training step)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    return _save(fig, plt, out_dir / f"trajectory_{safe(y)}_vs_{safe(x)}.png")
