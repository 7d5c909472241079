"""What ``alignx [train]`` runs for a composed config: a pipeline, an iterative objective's stages, or one job."""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig, open_dict

from alignx.config import validate
from alignx.job.pipeline import run_pipeline
from alignx.job.result import Job
from alignx.job.single import train
from alignx.paths import hydra_overrides
from alignx.registry import load_plugins


def run_job(cfg: DictConfig, overrides: Sequence[str] | None = None) -> Job:
    """Run everything a composed config describes.

    A ``pipeline`` runs its stages; an objective whose :meth:`~alignx.objectives.Objective.stages`
    returns stages (an iterative method like SPIN) runs them as a pipeline; anything else is one
    :func:`~alignx.job.train` run. ``overrides`` are the job's own overrides (stages are composed
    from them; default: Hydra's command line).
    """
    overrides = list(overrides) if overrides is not None else hydra_overrides()
    if cfg.get("pipeline"):
        return run_pipeline(cfg, overrides)
    validate(cfg)
    objective_cls = load_plugins().get("objective", str(cfg.objective.name))
    objective_cls.check_config(cfg)
    stages = objective_cls.stages(cfg)
    if stages:
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.pipeline = {"name": str(cfg.objective.name), "stages": stages}
        return run_pipeline(cfg, overrides)
    return train(cfg, overrides)
