"""What ``alignx compare`` prints: the table, sized to the terminal, then the files it wrote."""

from __future__ import annotations

import shutil

from alignx.compare.table import (
    CI_SUFFIX,
    N_SUFFIX,
    STDERR_SUFFIX,
    Z_95,
    CompareResult,
    is_number,
)


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
    # an ungrouped row's standard errors are shown as ± 95% half-widths inside the metric's cell
    folded |= {m + STDERR_SUFFIX for m in result.metrics}
    shown = [c for c in result.columns if c not in ("run_id", "run_ids") and c not in folded]
    title = f"alignx compare: sweep {result.parent_run_id}"
    if grouped:
        title += f", mean ± 95% CI over {result.grouped_by}"
    elif any(m + STDERR_SUFFIX in result.columns for m in result.metrics):
        title += ", ± 95% interval over prompts"
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
            elif col in result.metrics and is_number(value) and is_number(row.get(col + STDERR_SUFFIX)):
                cells.append(f"{value:.4g} ± {Z_95 * row[col + STDERR_SUFFIX]:.2g}")
            else:
                cells.append(f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value)))
        table.add_row(*cells, style="bold green" if i == result.best else None)
    # as wide as the terminal (rich wraps the text columns to fit); 120 when not a terminal
    Console(width=shutil.get_terminal_size((120, 24)).columns).print(table)
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
