"""The embedded MLflow store (an sqlite file): created and migrated exactly once, whoever comes first.

MLflow creates an sqlite store's tables on the first client that opens it, running its alembic
migrations. Two processes opening a fresh file at once both see "no tables" and both migrate:
one fails (``table latest_metrics already exists``) and the file can be left half-migrated for
every later job. A file lock next to the database serialises that first opening, and the
creation of an experiment (which has the same check-then-create race).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

from alignx.store import file_lock


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///...`` URI; None for other stores and in-memory sqlite."""
    if not uri.startswith("sqlite:"):
        return None
    # sqlite:///rel.db is the relative path rel.db, sqlite:////abs.db the absolute /abs.db
    path = unquote(urlsplit(uri).path)[1:]
    if not path or path == ":memory:":
        return None
    return Path(path)


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold ``<db file>.lock`` for an sqlite store; no lock for any other store (a server serialises itself)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    with file_lock(db.with_name(db.name + ".lock")):
        yield


def ensure_store(uri: str) -> None:
    """Open (and on first use create and migrate) the store at ``uri``, under :func:`store_lock`.

    After this, MLflow's per-process store cache holds a store whose tables exist, so later
    clients in this process never migrate. Cheap when the store already exists.
    """
    from mlflow import MlflowClient

    with store_lock(uri):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
