"""Where a job resumes from: ``resume=auto | <output dir> | <file.ckpt>``.

A job's output dir holds ``checkpoints/`` (see :mod:`alignx.checkpoint`) and ``run.json``, the
MLflow run the checkpoints belong to. Resuming an *interrupted* run (status RUNNING after a
SIGKILL or a lost node, KILLED, FAILED) continues that same run: metrics continue at the
checkpoint's step, and steps the interrupted attempt had already logged are not logged twice.
A FINISHED run is never modified: resuming from one of its checkpoints (to train longer, or to
branch off) starts a new run tagged ``alignx.resumed_from``.

``resume=auto`` looks, in order, at:

1. this job's output dir (a fixed ``hydra.run.dir`` or ``output_dir``, or a requeued SLURM job's
   sweep subdir): its newest checkpoint;
2. the MLflow experiment: the newest unfinished run with this job's config fingerprint whose
   output dir has a checkpoint (so re-running the same command after a crash resumes it, even
   though Hydra gives the new attempt a new timestamped dir); the job then writes into that dir;
3. nothing found: the job starts from scratch (``resume=auto`` is safe to always pass).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignx.checkpoint import checkpoint_global_step, latest_checkpoint
from alignx.errors import ConfigError

log = logging.getLogger("alignx")

RUN_FILE = "run.json"
#: config keys that do not change what a job computes: where it writes, how it resumes, how it reports
NOT_IN_FINGERPRINT = ("output_dir", "outputs_root", "resume", "hydra", "tracking", "pipeline")
NOT_IN_FINGERPRINT_TRAINER = ("enable_progress_bar", "log_every_n_steps")
#: handed from rank 0 to the processes Lightning launches for data parallelism, so every rank
#: resumes from the same checkpoint rank 0 chose (they inherit its environment)
ENV_CHECKPOINT = "ALIGNX_RESUME_CHECKPOINT"


@dataclass
class ResumePoint:
    """A checkpoint to resume from, the output dir it lives in, and the MLflow run it belongs to."""

    checkpoint: Path
    output_dir: Path
    #: the run to continue (None: the checkpoint's run is finished or unknown -> a new run)
    run_id: str | None = None
    #: the checkpoint's global step (training steps done)
    step: int = 0


def fingerprint(cfg: DictConfig) -> str:
    """A digest of everything in the config that decides what the job computes."""
    node = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IN_FINGERPRINT:
        node.pop(key, None)
    for key in NOT_IN_FINGERPRINT_TRAINER:
        (node.get("trainer") or {}).pop(key, None)
    return hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode()).hexdigest()[:32]


def write_run_record(output_dir: Path, *, run_id: str, tracking_uri: str, experiment_id: str, fingerprint: str) -> None:
    """``<output_dir>/run.json``: which MLflow run this dir's checkpoints belong to (written atomically)."""
    path = output_dir / RUN_FILE
    tmp = path.with_name(f".{RUN_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(
        {"run_id": run_id, "tracking_uri": tracking_uri, "experiment_id": experiment_id, "fingerprint": fingerprint},
        indent=1,
    ))
    os.replace(tmp, path)


def update_run_record(output_dir: Path, **fields: Any) -> None:
    """Add ``fields`` to ``<output_dir>/run.json`` (e.g. how the run ended, tracking gaps), atomically."""
    record = read_run_record(output_dir) or {}
    record.update(fields)
    path = output_dir / RUN_FILE
    tmp = path.with_name(f".{RUN_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)


def read_run_record(output_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((output_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_step(path: Path) -> int:

    return checkpoint_global_step(path)


def _point(checkpoint: Path, output_dir: Path, tracking_uri: str | None) -> ResumePoint:
    """The resume point of a checkpoint in ``output_dir``: its run continues only if it is unfinished."""
    record = read_run_record(output_dir) or {}
    run_id = record.get("run_id")
    if run_id and tracking_uri and record.get("tracking_uri") != tracking_uri:
        log.warning(
            "resume: %s belongs to run %s in %s, not this job's tracking store %s; logging to a new run",
            checkpoint, run_id, record.get("tracking_uri"), tracking_uri,
        )
        run_id = None
    if run_id and tracking_uri:
        status = _run_status(tracking_uri, run_id)
        if status is None:
            log.warning("resume: run %s of %s no longer exists; logging to a new run", run_id, checkpoint)
            run_id = None
        elif status == "FINISHED":
            run_id = None  # a finished run is never modified; the new one records where it came from
    return ResumePoint(checkpoint=checkpoint, output_dir=output_dir, run_id=run_id, step=_checkpoint_step(checkpoint))


def _run_status(tracking_uri: str, run_id: str) -> str | None:
    from mlflow import MlflowClient

    try:
        return MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.status
    except Exception:  # noqa: BLE001 - deleted, or another store
        return None


def _output_dir_of(checkpoint: Path) -> Path:
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def resolve_resume(cfg: DictConfig, output_dir: Path, tracking_uri: str | None) -> ResumePoint | None:
    """Where ``cfg.resume`` says to resume from (see the module docstring); None = from scratch."""

    value = cfg.get("resume")
    if not value:
        return None
    inherited = os.environ.get(ENV_CHECKPOINT)
    if inherited is not None and not _is_rank_zero():
        if not inherited:
            return None
        ckpt = Path(inherited)
        return ResumePoint(checkpoint=ckpt, output_dir=_output_dir_of(ckpt), step=_checkpoint_step(ckpt))
    if str(value) == "auto":
        point = _auto(cfg, output_dir, tracking_uri)
    else:
        path = Path(str(value)).expanduser().resolve()
        if path.is_dir():
            ckpt = latest_checkpoint(path / "checkpoints") if (path / "checkpoints").is_dir() else latest_checkpoint(path)
        else:
            ckpt = path if path.is_file() else None
        if ckpt is None:
            raise ConfigError(
                f"resume={value}: no checkpoint at '{path}' (expected a .ckpt file or a job's output dir with "
                "checkpoints/; a job writes them when checkpoint.every_n_steps is set). "
                "resume=auto resumes when there is one and starts from scratch otherwise"
            )
        point = _point(ckpt, _output_dir_of(ckpt), tracking_uri)
    return point


def _auto(cfg: DictConfig, output_dir: Path, tracking_uri: str | None) -> ResumePoint | None:

    ckpt = latest_checkpoint(output_dir / "checkpoints")
    if ckpt is not None:
        return _point(ckpt, output_dir, tracking_uri)
    if tracking_uri:
        for run_dir in _unfinished_run_dirs(cfg, tracking_uri):
            ckpt = latest_checkpoint(run_dir / "checkpoints")
            if ckpt is not None:
                return _point(ckpt, run_dir, tracking_uri)
    log.info("resume=auto: no checkpoint of this job found; starting from scratch")
    return None


def _unfinished_run_dirs(cfg: DictConfig, tracking_uri: str) -> list[Path]:
    """Output dirs of this config's unfinished runs, newest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        experiment = client.get_experiment_by_name(str(cfg.tracking.experiment))
        if experiment is None:
            return []
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`alignx.fingerprint` = '{fingerprint(cfg)}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
    except Exception as exc:  # noqa: BLE001 - a store we cannot search is a store with nothing to resume
        log.warning("resume=auto: could not search MLflow (%s); looking in the output dir only", str(exc).splitlines()[0])
        return []
    return [Path(r.data.tags["alignx.output_dir"]) for r in runs if r.data.tags.get("alignx.output_dir")]


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import _get_rank

    return (_get_rank() or 0) == 0
