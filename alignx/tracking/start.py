"""Starting a job's MLflow run from its config: the tracking service the job, stages, sweeps and
``alignx eval`` share (none of them imports another to get it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from alignx.errors import ConfigError
from alignx.tracking.base import Tracker
from alignx.tracking.connection import default_tracking_uri
from alignx.tracking.params import overrides_tag
from alignx.tracking.run import MlflowTracker
from alignx.tracking.sweep_state import read_parent


def tracking_uri(cfg: Any, outputs_root: Path) -> str | None:
    """The job's MLflow tracking URI (``tracking.uri``, else the embedded store); None for ``tracking=none``."""
    if cfg.tracking.name == "none":
        return None
    return cfg.tracking.get("uri") or default_tracking_uri(outputs_root)


def run_tags(cfg: Any, overrides: Sequence[str]) -> dict[str, str]:
    """The tags every alignx run carries: one per config group that names the experiment, and the overrides."""
    return {
        "alignx.objective": str(cfg.objective.name),
        "alignx.model": str(cfg.model.name),
        "alignx.adapter": str(cfg.adapter.name),
        "alignx.dataset": str(cfg.dataset.name),
        "alignx.overrides": overrides_tag(overrides),
    }


def default_run_name(cfg: Any) -> str:
    """``<objective>-<model>-<adapter>-<dataset>``, unless ``tracking.run_name`` says otherwise."""
    return cfg.tracking.get("run_name") or "-".join(
        [str(cfg.objective.name), str(cfg.model.name).split("/")[-1], str(cfg.adapter.name), str(cfg.dataset.name).split("/")[-1]]
    )


def start_tracking(
    cfg: Any,
    outputs_root: Path,
    overrides: Sequence[str],
    *,
    run_name: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
) -> Tracker:
    """Create the job's MLflow run (or a no-op tracker for ``tracking=none``); with
    ``resume_run_id``, continue that run instead."""
    uri = tracking_uri(cfg, outputs_root)
    if uri is None:
        return Tracker()
    local = uri.startswith(("sqlite:", "file:"))
    outputs_root.mkdir(parents=True, exist_ok=True)
    return MlflowTracker(
        uri,
        str(cfg.tracking.experiment),
        run_name=run_name or default_run_name(cfg),
        tags={**run_tags(cfg, overrides), **(extra_tags or {})},
        artifact_location=(outputs_root / "mlartifacts").as_uri() if local else None,
        parent_run_id=parent_run_id,
        resume_run_id=resume_run_id,
        # a run whose final status could not be set (server down) is finished by the next job here
        pending_dir=outputs_root,
    )


def sweep_job(overrides: Sequence[str]) -> tuple[str | None, str | None, dict[str, str]]:
    """For a job of a multirun: (parent run id, readable unique run name, extra tags); else (None, None, {})."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None, None, {}
    hc = HydraConfig.get()
    record = read_parent(Path(hc.sweep.dir).resolve()) or {}
    name, note = sweep_job_name(hc.job.num, overrides, record.get("swept_keys", []))
    tags = {"alignx.job_num": str(hc.job.num), "mlflow.note.content": note}
    return record.get("parent_run_id"), name, tags


def sweep_job_name(num: int | str, overrides: Sequence[str], swept_keys: Sequence[str]) -> tuple[str, str]:
    """A sweep job's run name and description.

    The name leads with what tells jobs apart and fits MLflow's runs table: the job number, then
    the swept values only (``3 kto lora``). The description (MLflow's ``mlflow.note.content``)
    spells out every override; the ``alignx.overrides`` tag holds them too.
    """
    swept = {k.lstrip("+~") for k in swept_keys}
    values = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") in swept]
    name = " ".join([str(num), *values])
    note = f"Job {num} of the sweep: `{overrides_tag(overrides)}`" if overrides else f"Job {num} of the sweep (no overrides)"
    return name, note


def resolve_model_reference(value: str, tracking_uri: str | None, download_dir: Path) -> str:
    """A model given as an MLflow ``runs:/<run_id>/<path>`` URI -> a local directory; anything else unchanged."""
    if not value.startswith("runs:/"):
        return value
    import mlflow  # seconds to import: only when a runs:/ reference is used

    download_dir.mkdir(parents=True, exist_ok=True)
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=value, dst_path=str(download_dir), tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 - any failure is an unreachable or wrong URI
        raise ConfigError(f"cannot fetch '{value}' from MLflow ({tracking_uri}): {str(exc).splitlines()[0]}") from None
