"""MLflow tracking: runs, sweeps, the Lightning logger bridge, param flattening/scrubbing.

Import-light on purpose: commands that train nothing (``alignx compare``) use the run helpers
without paying for Lightning, which only :class:`TrackerLogger` needs.
"""

from typing import Any

from alignx.tracking.params import config_params, flatten, is_secret_key
from alignx.tracking.run import (
    MlflowTracker,
    Tracker,
    default_tracking_uri,
    finishing,
    ui_command,
)

__all__ = [
    "MlflowTracker",
    "Tracker",
    "TrackerLogger",
    "config_params",
    "default_tracking_uri",
    "finishing",
    "flatten",
    "is_secret_key",
    "ui_command",
]


def __getattr__(name: str) -> Any:
    if name == "TrackerLogger":
        from alignx.tracking.logger import TrackerLogger

        return TrackerLogger
    raise AttributeError(name)
