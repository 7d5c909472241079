"""Where the runs go: tracking URIs, the server's health check with credentials, the unreachable-server error."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from alignx.errors import AlignxError
from alignx.secrets import redact_text, strip_url_credentials


class TrackingUnavailable(AlignxError):
    """The MLflow tracking server cannot be reached when a job starts."""


def is_remote(uri: str) -> bool:
    """True for a tracking server (http/https), False for a local store."""
    return uri.startswith(("http://", "https://"))


def _auth_header(username: str | None, password: str | None) -> dict[str, str]:
    """HTTP basic auth from the arguments, else MLflow's own credential variables (a token as Bearer)."""
    username = username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if username or password:
        pair = f"{username or ''}:{password or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingUnavailable unless a remote tracking server answers its health check.

    Credentials in ``uri`` (or MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD) are sent as HTTP
    basic auth; the message names the server without them.
    """
    import urllib.error
    import urllib.request

    clean, username, password = strip_url_credentials(uri)
    request = urllib.request.Request(f"{clean.rstrip('/')}/health", headers=_auth_header(username, password))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if resp.status == 200:
                return
            reason = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise TrackingUnavailable(redact_text(
        f"MLflow tracking server {clean} is unreachable ({reason}). Start one, e.g. "
        f"`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`, "
        f"or drop tracking.uri to use the embedded store under outputs/ (nothing to start), or set tracking=none."
    ))


def default_tracking_uri(outputs_root: str | os.PathLike) -> str:
    """The embedded store: an sqlite file under ``outputs_root``, as an absolute URI."""
    return f"sqlite:///{Path(outputs_root).resolve() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """How to look at the runs stored at ``uri``."""
    if is_remote(uri):
        return f"open {redact_text(uri)} in a browser (the tracking server's UI)"
    return f"mlflow ui --backend-store-uri {redact_text(uri)}"
