"""Where a Hydra multirun keeps its shared state: ``<sweep dir>/.alignx/`` (parent run id, job outcomes).

Read by every job of a sweep, whatever launcher runs it (basic, joblib, submitit all share the
sweep dir); written by :class:`alignx.tracking.sweep.MlflowSweepCallback`.
"""

from __future__ import annotations

import json
from pathlib import Path

STATE_DIR = ".alignx"


def sweep_state_dir(sweep_dir: str | Path) -> Path:
    """The sweep's state directory."""
    return Path(sweep_dir) / STATE_DIR


def read_parent(sweep_dir: str | Path) -> dict | None:
    """The sweep's parent-run record (``parent_run_id``, ``tracking_uri``, ``swept_keys``), if a sweep callback made one."""
    path = sweep_state_dir(sweep_dir) / "sweep.json"
    return json.loads(path.read_text()) if path.is_file() else None
