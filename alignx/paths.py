"""Where a job's things go: its output dir, the shared ``outputs_root``, and where it was launched.

The bottom layer of the job path: depends on Hydra's runtime (when there is one) and nothing
else in alignx, so tracking, evaluation and the job all ask here instead of each other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from alignx.errors import ConfigError

#: environment variable naming the outputs root when the config leaves it null
OUTPUTS_ENV = "ALIGNX_OUTPUTS"
#: the resolver conf/train.yaml wraps hydra.run.dir and hydra.sweep.dir in
UNIQUE_DIR_RESOLVER = "alignx.unique_dir"

_claimed: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """``path``, or ``path_1``, ``path_2``, ... if another job already has it; claimed by creating it.

    Hydra names run dirs by the second (``outputs/runs/<date>/<time>``): two jobs started in the
    same second would share one dir and overwrite each other's model. ``mkdir`` without
    ``exist_ok`` is atomic across processes, so exactly one job wins each name. Memoised per
    process: Hydra resolves the run dir more than once.
    """
    if path not in _claimed:
        base = candidate = Path(path)
        n = 0
        while True:
            try:
                candidate.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                n += 1
                candidate = base.with_name(f"{base.name}_{n}")
        _claimed[path] = str(candidate)
    return _claimed[path]


def register_resolvers() -> None:
    """Make ``${alignx.unique_dir:...}`` available to config composition (idempotent)."""
    OmegaConf.register_new_resolver(UNIQUE_DIR_RESOLVER, unique_dir, use_cache=True, replace=True)


register_resolvers()


def launch_dir() -> Path:
    """The directory the job was launched from (Hydra's original cwd, else the process cwd)."""
    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def resolve_outputs_root(cfg: Any) -> Path:
    """Where the embedded MLflow store and caches live: ``outputs_root``, $ALIGNX_OUTPUTS or ./outputs."""
    root = cfg.get("outputs_root") or os.environ.get(OUTPUTS_ENV) or (launch_dir() / "outputs")
    return Path(root).expanduser().resolve()


def resolve_output_dir(cfg: Any) -> Path:
    """This job's own directory: ``output_dir`` if set, else Hydra's run (or sweep job) dir."""
    output_dir = cfg.get("output_dir")
    if not output_dir:
        if not HydraConfig.initialized():
            raise ConfigError("output_dir is not set and no Hydra run dir exists; pass output_dir=/some/dir")
        output_dir = HydraConfig.get().runtime.output_dir
    return Path(output_dir).expanduser().resolve()


def resolve_paths(cfg: Any) -> tuple[Path, Path]:
    """(output_dir, outputs_root) of a job."""
    return resolve_output_dir(cfg), resolve_outputs_root(cfg)


def hydra_overrides() -> list[str]:
    """The running Hydra job's own command-line overrides ([] outside Hydra)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def abs_if_local(name: str) -> str:
    """A local directory as an absolute path (so a saved config still finds it); a hub id unchanged."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.is_dir() else name
