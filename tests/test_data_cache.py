"""Tokenised data and reference log-probs are cached: identical work is shared across runs and
sweep jobs, and a damaged entry is named, discarded and rebuilt."""

import logging
import os

import pytest
from mlflow import MlflowClient

import alignx.store
from alignx.config import compose
from alignx.data.cache import cached_encode, file_lock
from alignx.data.tokenize import EncodeStats
from alignx.errors import ConfigError
from alignx.train import train
from conftest import FAST, fast, run_cli


def _job(tmp_path, name, *extra, steps=1):
    cfg = compose([*FAST, "tracking=none", f"trainer.max_steps={steps}", "eval.enabled=false",
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
    assert sorted(r.data.tags["data.train.cache_hit"] for r in children) == ["0", "1", "1"]  # tags, not metrics
    assert "tokenised-data cache hit" in proc.stdout + proc.stderr


def test_file_lock_is_still_importable_from_the_data_cache():
    assert file_lock is alignx.store.file_lock


# -- damaged entries, through whole jobs -------------------------------------------------------------


def _result(metrics):
    """What a job computed: everything but timings and where the data came from."""
    return {k: v for k, v in metrics.items() if not k.startswith("time/") and not k.endswith("cache_hit")}


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path):
    path.write_bytes(os.urandom(200))


def _delete(path):
    path.unlink()


def _old_schema(path):
    path.write_text('{"items": [], "counts": {}}')  # what alignx wrote before the store existed


def _damaged_runs(tmp_path, caplog, cache, damages, *extra):
    """Run clean, then for each damage: damage every entry of ``cache``, rerun, check; finally a hit."""
    clean = _job(tmp_path, "clean", *extra, steps=2)
    records = sorted((tmp_path / "cache" / cache).glob("*.json"))
    assert len(records) == 2  # train and val
    for damage, target, says in damages:
        for record in records:
            damage(record.with_suffix(target))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="alignx"):
            rebuilt = _job(tmp_path, damage.__name__ + target, *extra, steps=2)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for record in records:
            assert any(str(record) in w and says in w for w in warnings), (damage.__name__, target, warnings)
            assert record.is_file()  # rebuilt
        assert _result(rebuilt) == _result(clean), (damage.__name__, target)
    hit = _job(tmp_path, "hit", *extra, steps=2)
    assert _result(hit) == _result(clean)
    return clean, rebuilt, hit


def test_damaged_tokenised_cache_entries_are_named_discarded_and_rebuilt(tmp_path, caplog):
    clean, rebuilt, hit = _damaged_runs(tmp_path, caplog, "tokenized", [
        (_truncate, ".json", "not valid JSON"),
        (_garbage, ".json", "not valid JSON"),
        (_old_schema, ".json", "not a tokenised-data cache entry"),
    ])
    assert clean["data/train/cache_hit"] == rebuilt["data/train/cache_hit"] == rebuilt["data/val/cache_hit"] == 0.0
    assert hit["data/train/cache_hit"] == hit["data/val/cache_hit"] == 1.0


def test_damaged_reference_logp_cache_entries_are_named_discarded_and_rebuilt(tmp_path, caplog):
    clean, rebuilt, hit = _damaged_runs(tmp_path, caplog, "ref_logps", [
        (_truncate, ".json", "not valid JSON"),
        (_garbage, ".json", "not valid JSON"),
        (_delete, ".safetensors", "is missing"),
        (_garbage, ".safetensors", "is unreadable"),
    ], "objective=dpo", "objective.precompute_ref_logps=true")
    assert clean["data/train/ref_logps_cache_hit"] == rebuilt["data/train/ref_logps_cache_hit"] == 0.0
    assert hit["data/train/ref_logps_cache_hit"] == hit["data/val/ref_logps_cache_hit"] == 1.0
    assert hit["data/train/cache_hit"] == 1.0  # the tokenised data was never damaged


def test_an_unwritable_cache_location_is_one_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"is not writable: .*afile is a file, not a directory$"):
        _job(tmp_path, "run", f"outputs_root={tmp_path / 'afile' / 'outputs'}")
