"""What a job leaves on disk and in its MLflow run: the resolved config, the model (HF format), data counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from alignx.models.adapters import is_peft
from alignx.models.loading import save_pretrained_atomic
from alignx.paths import abs_if_local
from alignx.secrets import redact
from alignx.tracking import Tracker, config_params


def record_config(cfg: DictConfig, tracker: Tracker, output_dir: Path, *, write_file: bool) -> None:
    """The resolved config as MLflow params and a ``config/resolved.yaml`` artifact (and
    ``<output_dir>/config.yaml``), secrets masked everywhere."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # how a job was resumed is not a parameter of the experiment (it is in the run's tags)
    tracker.log_params(config_params({k: v for k, v in resolved.items() if k != "resume"}))
    text = redacted_yaml(resolved)
    if write_file:
        (output_dir / "config.yaml").write_text(text)
    tracker.log_text(text, "config/resolved.yaml")


def redacted_yaml(resolved: Mapping[str, Any]) -> str:
    """YAML of a resolved config with every secret-looking value masked."""
    return OmegaConf.to_yaml(OmegaConf.create(redact(dict(resolved))))


def data_metrics(stats: Mapping[str, Any], hits: Mapping[str, bool], rows: Mapping[str, Any]) -> dict[str, float]:
    """The one-off data counters of a job: kept/truncated/dropped/... per split, cache hits, invalid rows dropped.

    Keyed ``data/<split>/<counter>`` in the job's metrics; handed to the tracker, they become tags
    ``data.<split>.<counter>`` and the ``data/summary.json`` artifact, not MLflow metrics
    (:mod:`alignx.tracking.summary` says why).
    """
    out: dict[str, float] = {}
    for split, st in stats.items():
        out.update(st.as_metrics(f"data/{split}"))
        out[f"data/{split}/cache_hit"] = float(hits[split])
    # rows left out by data.invalid_rows=drop (0 under error: the job stops instead)
    out.update({f"data/{split}/invalid_dropped": float(r.invalid_dropped) for split, r in rows.items()})
    return out


def save_outputs(
    cfg: DictConfig, model: Any, tokenizer: Any, output_dir: Path, base_dir: Path | None, *, merge: bool = False
) -> Path | None:
    """Save the model (or adapter) with its tokenizer in HF format; a merged copy when
    ``save.merge_adapter`` or ``merge`` (objectives whose artifact must be one model) ask."""
    if not cfg.save.model:
        return None
    model_dir = output_dir / "model"
    if is_peft(model):
        base_ref = str(base_dir) if base_dir else abs_if_local(str(cfg.model.get("name_or_path") or ""))
        for peft_cfg in model.peft_config.values():
            peft_cfg.base_model_name_or_path = base_ref
        save_pretrained_atomic(model_dir, model, tokenizer)
        if cfg.save.merge_adapter or merge:
            save_pretrained_atomic(output_dir / "merged", model.merge_and_unload(), tokenizer)
    else:
        save_pretrained_atomic(model_dir, model, tokenizer)
    return model_dir
