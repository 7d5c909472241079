"""The job: one composed config in, a trained, evaluated, saved and tracked model out.

The data path of one job (:func:`alignx.job.single.train`), one function per arrow::

    cfg (composed by Hydra from conf/ + plugins' config packages)
      -> plan_job      load plugins; check every key, value, plugin name and output location;
                       find the checkpoint to resume from           (nothing created yet)
      -> load_rows     source rows per split, validated row by row  (alignx.data.rows)
      -> build_policy  tokenizer + model, adapted by the objective, then the adapter
      -> encode_data   objective.encode per row, through the shared tokenised-data cache
      -> open_run      the MLflow run (nested under its sweep or pipeline), run.json
      -> fit           objective (LightningModule) + Trainer(logger=tracker, checkpoints,
                       divergence guard, stop-on-signal)
      -> finish_outputs  evaluate on held-out rows, save in HF format, log artifacts
      -> Job           metrics (what a sweeper optimises), paths, run id

:func:`alignx.job.dispatch.run_job` (what the CLI calls) runs a ``pipeline`` — or an iterative
objective's stages — as nested jobs (:mod:`alignx.job.pipeline`), anything else as one job.

Layers import one way: ops -> losses -> data / models / rewards / tracking -> objectives ->
evaluation -> job -> cli (a test enforces it).
"""

from alignx.job.build import build_policy, build_strategy, build_trainer, instantiate_callbacks, total_optimizer_steps
from alignx.job.dispatch import run_job
from alignx.job.pipeline import StageResult, run_pipeline
from alignx.job.result import Job
from alignx.job.single import train

__all__ = [
    "Job",
    "StageResult",
    "build_policy",
    "build_strategy",
    "build_trainer",
    "instantiate_callbacks",
    "run_job",
    "run_pipeline",
    "total_optimizer_steps",
    "train",
]
