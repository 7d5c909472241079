"""Links a person can open: the MLflow UI's runs view of an experiment, one run, a sweep's jobs.

MLflow 3 opens an experiment on its GenAI (traces) view unless the URL asks for the training-runs
view: ``#/experiments/<id>/runs?workflowType=machine_learning`` (the UI's route for the Runs tab;
``searchFilter`` in the same query pre-fills the runs search box). A local store has no UI until
``mlflow ui`` starts one, on http://127.0.0.1:5000 by default, so its links come with that command.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlencode

from alignx.secrets import strip_url_credentials
from alignx.tracking.connection import is_remote, ui_command

#: where ``mlflow ui`` serves by default
LOCAL_UI = "http://127.0.0.1:5000"


def ui_base(uri: str) -> str:
    """The UI serving the store ``uri``: the tracking server itself, or ``mlflow ui``'s default address."""
    if is_remote(uri):
        return strip_url_credentials(uri)[0].rstrip("/")
    return LOCAL_UI


def runs_view_url(uri: str, experiment_id: str, search: str | None = None) -> str:
    """The runs table of an experiment (the training-runs view, not MLflow 3's traces view),
    optionally filtered by an MLflow search expression."""
    query = {"workflowType": "machine_learning"}
    if search:
        query["searchFilter"] = search
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """One run's page."""
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def _start_ui(uri: str) -> list[str]:
    # a server already serves its UI; a local store needs one started before the links below open
    return [] if is_remote(uri) else [f"start the UI:  {ui_command(uri)}"]


def job_links(uri: str, experiment_id: str, run_id: str) -> list[str]:
    """Lines printed at the end of a job: how to start the UI (a local store), the run, the experiment's runs."""
    return [
        *_start_ui(uri),
        f"open the run:  {run_url(uri, experiment_id, run_id)}",
        f"all the runs:  {runs_view_url(uri, experiment_id)}",
    ]


def sweep_links(uri: str, experiment_id: str, parent_run_id: str, sweep_dir: str | Path | None) -> list[str]:
    """Lines printed at the end of a sweep: how to start the UI, its jobs side by side, its parent run
    (best job, table of jobs), and ``alignx compare`` for the table and plots."""
    lines = [
        *_start_ui(uri),
        f"sweep's jobs:  {runs_view_url(uri, experiment_id, f'tags.`mlflow.parentRunId` = {parent_run_id!r}')}",
        f"sweep run:     {run_url(uri, experiment_id, parent_run_id)}",
    ]
    if sweep_dir is not None:
        lines.append(f"compare:       alignx compare {sweep_dir}")
    return lines
