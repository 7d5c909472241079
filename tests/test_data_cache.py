"""Tokenised data is cached: identical work is shared across runs and sweep jobs."""

from mlflow import MlflowClient

from alignx.config import compose
from alignx.data.cache import cached_encode
from alignx.data.tokenize import EncodeStats
from alignx.train import train
from conftest import FAST, fast, run_cli


def _job(tmp_path, name, *extra):
    cfg = compose([*FAST, "tracking=none", "trainer.max_steps=1", "eval.enabled=false",
                   f"output_dir={tmp_path / name}", f"outputs_root={tmp_path}", *extra])
    return train(cfg).metrics


def test_second_identical_run_hits_and_a_changed_encoding_misses(tmp_path):
    first = _job(tmp_path, "a")
    assert first["data/train/cache_hit"] == 0.0 and first["data/val/cache_hit"] == 0.0
    # a different learning rate does not change the tokenised data
    second = _job(tmp_path, "b", "optim.lr=5e-3")
    assert second["data/train/cache_hit"] == 1.0 and second["data/val/cache_hit"] == 1.0
    assert second["data/train/kept"] == first["data/train/kept"]
    # the formatting config is part of the key
    third = _job(tmp_path, "c", "data.max_length=24")
    assert third["data/train/cache_hit"] == 0.0
    # and so are the rows
    fourth = _job(tmp_path, "d", "dataset.n_train=80")
    assert fourth["data/train/cache_hit"] == 0.0
    # entries: a (train, val), c (train, val), d (train only: its val rows are unchanged, so val hit)
    assert len(list((tmp_path / "cache" / "tokenized").glob("*.json"))) == 5
    # disabled: neither read nor written
    off = _job(tmp_path, "e", "data.cache=false")
    assert off["data/train/cache_hit"] == 0.0


def test_cached_encode_encodes_once(tmp_path):
    calls = []

    def encode():
        calls.append(1)
        stats = EncodeStats()
        stats.add("kept")
        return [{"input_ids": [1, 2], "labels": [-100, 2]}], stats

    a = cached_encode(tmp_path, "k", encode)
    b = cached_encode(tmp_path, "k", encode)
    assert len(calls) == 1
    assert a[0] == b[0] and a[1].counts == b[1].counts and (a[2], b[2]) == (False, True)
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically, nothing left behind


def test_parallel_sweep_tokenises_once(tmp_path):
    proc = run_cli(
        ["-m", *fast("optim.lr=1e-3,2e-3,3e-3", "trainer.max_steps=1", "eval.enabled=false"),
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         f"hydra.sweep.dir={tmp_path / 'sweep'}", f"outputs_root={tmp_path}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3
    assert sorted(r.data.metrics["data/train/cache_hit"] for r in children) == [0.0, 1.0, 1.0]
    assert "tokenised-data cache hit" in proc.stdout + proc.stderr
