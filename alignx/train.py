"""``alignx.train``: the public names of the job, kept where the README and existing code import them.

The job itself lives in :mod:`alignx.job` (read its module docstring for the data path).
"""

from alignx.data.rows import encode_split, load_auxiliary_rows, load_rows
from alignx.evaluation.suite import evaluate
from alignx.job import Job, build_policy, build_strategy, build_trainer, run_job, train
from alignx.paths import resolve_outputs_root, resolve_paths
from alignx.tracking.start import start_tracking, tracking_uri

__all__ = [
    "Job",
    "build_policy",
    "build_strategy",
    "build_trainer",
    "encode_split",
    "evaluate",
    "load_auxiliary_rows",
    "load_rows",
    "resolve_outputs_root",
    "resolve_paths",
    "run_job",
    "start_tracking",
    "tracking_uri",
    "train",
]
