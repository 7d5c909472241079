"""``alignx.pipeline``: the public names of multi-stage jobs; they live in :mod:`alignx.job.pipeline`."""

from alignx.job.pipeline import StageCache, StageResult, compose_stage, run_pipeline, stage_key, stage_specs
from alignx.tracking.start import resolve_model_reference

__all__ = ["StageCache", "StageResult", "compose_stage", "resolve_model_reference", "run_pipeline", "stage_key", "stage_specs"]
