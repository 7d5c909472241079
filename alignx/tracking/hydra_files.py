"""Hydra's own record of a job, with secrets masked: ``.hydra/*.yaml`` and a sweep's ``multirun.yaml``.

Hydra writes ``<run dir>/.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` in
``run_job`` just before it calls the callbacks' ``on_job_start`` (hydra/core/utils.py), and
the basic sweeper writes ``<sweep dir>/multirun.yaml`` after ``on_multirun_start``, before the
first job. :class:`MaskSecretsCallback` rewrites each of them with every secret masked
(:func:`alignx.secrets.redact`) as soon as it exists, and installs the logging
:class:`~alignx.secrets.SecretFilter` each time Hydra has (re)configured logging.
"""

from __future__ import annotations

import atexit
import os
import re
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from alignx.secrets import install_secret_filter, redact

HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def mask_yaml_file(path: str | os.PathLike) -> bool:
    """Rewrite a YAML file with its secrets masked (atomically); True if anything changed.

    Read and written as plain YAML: interpolations (``${now:...}``) stay text, exactly as Hydra wrote them.
    """
    path = Path(path)
    if not path.is_file():
        return False
    data = yaml.safe_load(path.read_text())
    masked = redact(data)
    _remake_override_dirname(data, masked)
    if masked == data:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(masked, sort_keys=False, allow_unicode=True, default_flow_style=False))
    os.replace(tmp, path)
    return True


def _remake_override_dirname(original: Any, masked: Any) -> None:
    """In hydra.yaml, rebuild ``hydra.job.override_dirname`` from the masked overrides, as Hydra builds it.

    Masked as free text, ``+a.password=x,seed=1`` would lose everything after the secret; rebuilt
    from the masked override list it reads ``+a.password=***,seed=1``.
    """
    job = masked.get("hydra", {}).get("job", {}) if isinstance(masked, dict) else {}
    task = masked.get("hydra", {}).get("overrides", {}).get("task") if isinstance(masked, dict) else None
    if "override_dirname" not in job or not isinstance(task, list):
        return
    if job["override_dirname"] == original["hydra"]["job"]["override_dirname"]:
        return  # nothing secret in it
    conf = job.get("config", {}).get("override_dirname", {})
    exclude = set(conf.get("exclude_keys") or [])
    lines = sorted(o for o in task if re.split(r"[=@]", o.lstrip("+~"), maxsplit=1)[0] not in exclude)
    job["override_dirname"] = conf.get("item_sep", ",").join(lines).replace("=", conf.get("kv_sep", "="))


def mask_job_files(config: DictConfig) -> list[Path]:
    """Mask the job's ``.hydra/`` files (and in a multirun, the sweep's ``multirun.yaml``); the files changed."""
    changed = []
    subdir = OmegaConf.select(config, "hydra.output_subdir")
    output_dir = OmegaConf.select(config, "hydra.runtime.output_dir")
    if subdir is not None and output_dir:
        for name in HYDRA_FILES:
            path = Path(str(output_dir)) / str(subdir) / name
            if mask_yaml_file(path):
                changed.append(path)
    if OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN and output_dir:
        # the job's dir is <sweep dir>/<subdir>; hydra.sweep.dir itself is not resolved again here
        # (alignx.unique_dir would claim a new directory in a launcher's worker process)
        depth = len(Path(str(OmegaConf.select(config, "hydra.sweep.subdir"))).parts)
        path = Path(str(output_dir)).parents[depth - 1] / "multirun.yaml"
        if mask_yaml_file(path):
            changed.append(path)
    return changed


class MaskSecretsCallback(Callback):
    """Hydra callback (``hydra.callbacks``) that keeps secrets out of Hydra's files and alignx's logs."""

    def __init__(self) -> None:
        self._multirun_file: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_secret_filter()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra configured its own logging just before: the launcher logs each job's overrides
        install_secret_filter()
        self._multirun_file = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        mask_yaml_file(self._multirun_file)
        # Hydra skips on_multirun_end when a job fails
        atexit.register(self._mask_multirun_file)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_secret_filter()  # run_job has just reconfigured logging for the job
        mask_job_files(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._mask_multirun_file()

    def _mask_multirun_file(self) -> None:
        if self._multirun_file is not None:
            mask_yaml_file(self._multirun_file)
