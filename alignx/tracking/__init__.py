"""MLflow tracking: runs, sweeps, the Lightning logger bridge, params and records with secrets masked.

Import-light on purpose: commands that train nothing (``alignx compare``) use the run helpers
without paying for Lightning. The Lightning logger bridge, which needs Lightning, is therefore
not re-exported here: import it from :mod:`alignx.tracking.logger`.
"""

from alignx.secrets import install_secret_filter, redact, redact_overrides, redact_text
from alignx.tracking.base import Tracker, finishing
from alignx.tracking.connection import TrackingUnavailable, default_tracking_uri, ui_command
from alignx.tracking.local_store import ensure_store
from alignx.tracking.params import config_params, flatten, is_secret_key, overrides_tag, redacted_config_yaml
from alignx.tracking.run import MlflowTracker
from alignx.tracking.views import job_links, runs_view_url, sweep_links

__all__ = [
    "MlflowTracker",
    "Tracker",
    "TrackingUnavailable",
    "config_params",
    "default_tracking_uri",
    "ensure_store",
    "finishing",
    "flatten",
    "install_secret_filter",
    "is_secret_key",
    "job_links",
    "overrides_tag",
    "redact",
    "redact_overrides",
    "redact_text",
    "redacted_config_yaml",
    "runs_view_url",
    "sweep_links",
    "ui_command",
]

