"""Shared fixtures: in-process config composition and tiny, fast training overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Before anything imports huggingface_hub: it reads these once, at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
ALIGNX = [sys.executable, "-m", "alignx.cli"]

# Settings that keep a training job to a few seconds on CPU.
FAST = [
    "trainer.max_steps=6",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "dataset.n_train=96",
    "dataset.n_val=16",
    "dataset.n_test=16",
    "data.batch_size=16",
    "eval.num_prompts=8",
    "eval.max_new_tokens=8",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_hidden_layers=1",
    "model.num_attention_heads=2",
    "model.num_key_value_heads=2",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (the multi-minute proofs) run first, the order otherwise unchanged.

    pytest-xdist hands tests to its workers in collection order: a proof collected last (the SPIN
    plugin's, after every file under tests/) would run alone on one worker at the end while the
    other sits idle. Started first, the proofs overlap and the short tests fill both queues' ends.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may touch the network: hub clients fail fast instead of hanging."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def run_alignx(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real ``alignx`` CLI in a subprocess (as a user would) and capture its output."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [*ALIGNX, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


# -- the installed console script, for end-to-end CLI tests ---------------------------------
#: the ``alignx`` console script of this interpreter's environment (what ``pip install`` made)
ALIGNX_BIN = Path(sys.executable).parent / "alignx"


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed ``alignx`` console script in a subprocess, as a user would.

    ``env`` entries are added to this process's environment; an entry whose value is None is
    removed from it instead.
    """
    assert ALIGNX_BIN.exists(), f"{ALIGNX_BIN} is missing: run `pip install -e .` (make test does)"
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    full_env = {**os.environ, **offline, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run(
        [str(ALIGNX_BIN), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def fast(*overrides: str) -> list[str]:
    """FAST with ``overrides`` appended, replacing FAST's own value of any key they set."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in FAST if o.split("=", 1)[0] not in keys] + list(overrides)


def require_example_plugin() -> None:
    """Fail (not skip) when the example plugin the tests rely on is not installed."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("alignx-example")
    except PackageNotFoundError:
        pytest.fail(
            "the example plugin is not installed: run `python -m pip install -e plugins/alignx-example` "
            "(`make test` does this)",
            pytrace=False,
        )


def start_background_fixtures(request: pytest.FixtureRequest, names: list[str]) -> None:
    """Set up, in the order given, those of the module fixtures ``names`` that a selected test uses.

    Used by an autouse module fixture so that slow subprocess runs (each fixture submits one to
    a thread pool and returns its Future) overlap instead of running one after the other. A
    fixture that fails here fails again, with its real error, in the test that uses it.
    """
    used = {
        name
        for item in request.session.items
        if getattr(item, "module", None) is request.module
        for name in getattr(item, "fixturenames", ())
    }
    for name in names:
        if name in used:
            try:
                request.getfixturevalue(name)
            except (Exception, pytest.fail.Exception, pytest.skip.Exception):
                pass


def sweep_runs(outputs_root: Path, experiment: str = "alignx") -> tuple[list, list]:
    """(sweep parent runs, child runs) in the embedded MLflow store under ``outputs_root``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{outputs_root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in found if r.data.tags.get("alignx.sweep") == "true"]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    return parents, children


@pytest.fixture(scope="module")
def pool():
    """A small thread pool for starting a module's slow subprocess runs together."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as executor:
        yield executor


def shared_training(tmp_path_factory: pytest.TempPathFactory, name: str, overrides: list[str]):
    """Train ``overrides`` once per test session, however many pytest-xdist workers ask for it.

    The first worker to take the lock trains and records the job in ``job.json``; the others wait
    and read that record, so ``pytest -n 2`` trains each shared model once, not once per worker.
    """
    import fcntl
    import json

    from alignx.config import compose
    from alignx.job.result import Job
    from alignx.train import train

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory, shared by its workers
    root = base / f"shared-{name}"
    record = root / "job.json"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.exists():
            data = json.loads(record.read_text())
            return Job(metrics=data["metrics"], output_dir=Path(data["output_dir"]),
                       model_dir=Path(data["model_dir"]), run_id=data["run_id"], tracking_uri=data["tracking_uri"])
        job = train(compose([*overrides, "tracking=none", "trainer.enable_progress_bar=false",
                             f"output_dir={root}", f"outputs_root={root}"]))
        record.write_text(json.dumps({"metrics": job.metrics, "output_dir": str(job.output_dir),
                                      "model_dir": str(job.model_dir), "run_id": job.run_id,
                                      "tracking_uri": job.tracking_uri}))
        return job


@pytest.fixture(scope="session")
def sentiment_sft(tmp_path_factory: pytest.TempPathFactory):
    """The README's main job (``experiment=quickstart``: 300 SFT steps of model=tiny on sentiment),
    trained once per session: the SFT-learnability check and the preference proofs start from it."""
    return shared_training(tmp_path_factory, "sentiment_sft", ["experiment=quickstart"])


@pytest.fixture(scope="session")
def arithmetic_sft(tmp_path_factory: pytest.TempPathFactory):
    """300 SFT steps of model=tiny on builtin arithmetic, trained once per session: the
    SFT-learnability check and the online-RL proofs start from it."""
    return shared_training(tmp_path_factory, "arithmetic_sft", ["dataset=arithmetic", "model=tiny", "trainer.max_steps=300",
                                                               "eval.num_prompts=64"])


@pytest.fixture(scope="session")
def sentiment_dpo(tmp_path_factory: pytest.TempPathFactory, sentiment_sft):
    """DPO from the quickstart SFT model (150 steps at lr 1e-4 on gold-labelled sentiment pairs), once
    per session: the DPO proof checks it, the distillation proof uses it as a teacher better than the data."""
    return shared_training(tmp_path_factory, "sentiment_dpo", ["dataset=sentiment", "model=hf",
                                                              f"model.name_or_path={sentiment_sft.model_dir}",
                                                              "optim.lr=1e-4", "objective=dpo", "trainer.max_steps=150"])


@pytest.fixture(scope="session")
def sentiment_rm(tmp_path_factory: pytest.TempPathFactory):
    """A reward model trained on sentiment pairs with 10% flipped labels (150 steps), once per session:
    the RM proof checks its accuracy, the PPO-against-a-learned-RM proof optimises it."""
    return shared_training(tmp_path_factory, "sentiment_rm", ["dataset=sentiment", "objective=rm", "dataset.label_noise=0.1",
                                                             "trainer.max_steps=150", "data.batch_size=16", "optim.lr=1e-3"])


# -- exact tensor checks for the pure-function tests ---------------------------------------------
def t(rows):
    """A float64 tensor from (nested) lists, for hand-computed test cases."""
    import torch

    return torch.tensor(rows, dtype=torch.float64)


def approx(x, expected, rel: float = 1e-9, abs: float = 1e-12) -> None:
    """Element-wise comparison of tensor ``x`` with a (possibly nested) list of expected numbers."""
    import torch

    want = torch.tensor(expected, dtype=torch.float64)
    assert tuple(x.shape) == tuple(want.shape)
    assert x.flatten().tolist() == pytest.approx(want.flatten().tolist(), rel=rel, abs=abs)


# -- dataset files written by tests -----------------------------------------------------------------
def write_jsonl(path: Path, rows: list) -> Path:
    """Write ``rows`` as JSON lines (a str row is written verbatim, e.g. a deliberately broken line)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# -- a ready-made embedded MLflow store, for tests whose subject is not the store's creation -------
@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow sqlite store, created once per worker.

    Creating a store runs MLflow's alembic migrations: about 2 s of CPU, most of what a few-step
    job costs. Tests that only read what a job logged start from a copy (:func:`seed_store`); the
    creation itself stays covered by the tests that start on a fresh ``outputs_root``
    (test_concurrency races it, test_store_lock repeats that race).
    """
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    return db


def seed_store(empty_store: Path, outputs_root: Path) -> Path:
    """Copy the migrated ``empty_store`` to ``<outputs_root>/mlflow.db`` (where a job's embedded store
    lives) and return that path; a real MLflow store, only its creation is skipped."""
    import shutil

    outputs_root.mkdir(parents=True, exist_ok=True)
    db = outputs_root / "mlflow.db"
    assert not db.exists(), f"{db} exists already"
    shutil.copyfile(empty_store, db)
    return db
