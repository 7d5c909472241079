"""MLflow tracking: runs, the Lightning logger bridge, and param flattening/scrubbing."""

from alignx.tracking.logger import TrackerLogger
from alignx.tracking.params import config_params, flatten, is_secret_key
from alignx.tracking.run import MlflowTracker, Tracker, default_tracking_uri, ui_command

__all__ = [
    "MlflowTracker",
    "Tracker",
    "TrackerLogger",
    "config_params",
    "default_tracking_uri",
    "flatten",
    "is_secret_key",
    "ui_command",
]
