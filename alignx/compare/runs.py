"""Finding a sweep in MLflow for ``alignx compare``: its parent run (by id, sweep dir or the latest), its job runs, their swept values.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids, never the fluent API:
its process-global active run is exactly what the rest of alignx avoids (see tracking/run.py).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from omegaconf import OmegaConf

from alignx.errors import AlignxError
from alignx.paths import resolve_outputs_root
from alignx.tracking.run import default_tracking_uri
from alignx.tracking.sweep_state import read_parent

SWEEP_TAG = "alignx.sweep"
SWEEP_DIR_TAG = "alignx.sweep_dir"
PARENT_TAG = "mlflow.parentRunId"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class CompareError(AlignxError):
    """Nothing to compare: no store, no sweep, an unknown run id, an unknown metric."""


def default_uri() -> str:
    """The embedded store ``alignx`` trains into from this directory: $ALIGNX_OUTPUTS or ./outputs."""
    return default_tracking_uri(resolve_outputs_root(OmegaConf.create()))


def _read_sweep_record(sweep_dir: Path) -> dict:
    """The sweep callback's record (parent run id, tracking uri); {} if missing or unreadable."""

    try:
        return read_parent(sweep_dir) or {}
    except (OSError, ValueError):
        return {}  # unreadable: fall back to matching the parent's alignx.sweep_dir tag


def sweep_dir_uri(sweep: str | os.PathLike | None) -> str | None:
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


def client_for(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri``; a local store that does not exist is a :class:`CompareError` (never created)."""
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


def find_parent(client: Any, uri: str, sweep: str | os.PathLike | None, experiment: str):
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


def job_runs(client: Any, parent: Any) -> list:
    """The sweep's job runs (children of ``parent``) in job-number order."""
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


def param_value(run: Any, key: str) -> str:
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


def swept_params(parent: Any, children: list) -> list[str]:
    """The swept keys the parent recorded; else the params whose values differ across jobs."""
    keys = [k for k in parent.data.params.get("alignx.swept_keys", "").split(",") if k]
    if keys:
        return keys
    names = sorted({k for run in children for k in run.data.params})
    return [k for k in names if len({run.data.params.get(k) for run in children}) > 1]


def default_out(parent: Any) -> Path:
    """``<sweep dir>/compare`` next to the jobs; else under the outputs root, by parent id."""
    sweep_dir = parent.data.tags.get(SWEEP_DIR_TAG)
    if sweep_dir and Path(sweep_dir).is_dir():
        return Path(sweep_dir) / "compare"
    return resolve_outputs_root(OmegaConf.create()) / "compare" / parent.info.run_id
