"""Dataset mixtures: mixing rates against hand-computed values, seeded draws, config errors, a tracked run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import FAST, write_jsonl
from mlflow import MlflowClient

from alignx.config import compose, validate
from alignx.data.mixture import (
    draw,
    load_mixture,
    mixing_rates,
    mixture_counts,
    source_counts,
)
from alignx.errors import ConfigError
from alignx.train import train

SMALL = ["dataset=mixture", "+dataset@dataset.sources.sent=sentiment", "+dataset@dataset.sources.math=arithmetic",
         "dataset.sources.sent.n_train=40", "dataset.sources.math.n_train=120",
         "dataset.sources.sent.n_val=8", "dataset.sources.math.n_val=8",
         "dataset.sources.sent.n_test=8", "dataset.sources.math.n_test=8"]


def test_temperature_one_is_examples_proportional():
    assert mixing_rates({"a": 100, "b": 300}, {"a": 1.0, "b": 1.0}) == pytest.approx({"a": 0.25, "b": 0.75})


def test_the_cap_bounds_a_large_source():
    # min(100, 200) = 100, min(1000, 200) = 200, min(50, 200) = 50 -> 100/350, 200/350, 50/350
    rates = mixing_rates({"a": 100, "b": 1000, "c": 50}, {"a": 1.0, "b": 1.0, "c": 1.0}, cap=200)
    assert rates == pytest.approx({"a": 100 / 350, "b": 200 / 350, "c": 50 / 350})


def test_weights_multiply_the_capped_size():
    # e = (2 * 100, 1 * min(400, 300)) = (200, 300)
    assert mixing_rates({"a": 100, "b": 400}, {"a": 2.0, "b": 1.0}, cap=300) == pytest.approx({"a": 0.4, "b": 0.6})


def test_temperature_two_takes_square_roots():
    # (100^(1/2), 400^(1/2)) = (10, 20) -> 1/3, 2/3
    assert mixing_rates({"a": 100, "b": 400}, {"a": 1.0, "b": 1.0}, temperature=2.0) == pytest.approx({"a": 1 / 3, "b": 2 / 3})


def test_high_temperature_tends_to_uniform_over_sources_with_rows():
    sizes, weights = {"a": 10, "b": 10_000, "c": 0}, {"a": 1.0, "b": 1.0, "c": 1.0}
    assert mixing_rates(sizes, weights, temperature=math.inf) == {"a": 0.5, "b": 0.5, "c": 0.0}
    rates = mixing_rates(sizes, weights, temperature=1000.0)
    # 10^(1/1000) / (10^(1/1000) + 10000^(1/1000))
    assert rates["a"] == pytest.approx(10 ** 0.001 / (10 ** 0.001 + 10_000 ** 0.001)) and rates["a"] > 0.498
    # a tiny temperature in log space does not overflow: the larger source takes everything
    assert mixing_rates({"a": 10, "b": 20}, {"a": 1.0, "b": 1.0}, temperature=1e-3)["b"] == pytest.approx(1.0)


def test_zero_weight_gets_nothing():
    assert mixing_rates({"a": 5, "b": 5}, {"a": 0.0, "b": 3.0}) == {"a": 0.0, "b": 1.0}


@pytest.mark.parametrize("args,needle", [
    (({"a": 5}, {"a": -1.0}), r"dataset\.sources\.a\.weight must be a finite number >= 0, got -1\.0"),
    (({"a": 5}, {"a": 1.0}, 0), r"dataset\.mixing_cap must be >= 1"),
    (({"a": 5}, {"a": 1.0}, None, 0.0), r"dataset\.mixing_temperature must be > 0"),
    (({"a": 5, "b": 0}, {"a": 0.0, "b": 1.0}), r"every source has no rows or weight 0"),
])
def test_bad_mixing_values_name_the_key(args, needle):
    with pytest.raises(ConfigError, match=needle):
        mixing_rates(*args)


def test_counts_by_largest_remainder():
    # 10 * (0.25, 0.35, 0.4) = (2.5, 3.5, 4.0): floors 2, 3, 4, one row short -> the first 0.5 remainder
    assert mixture_counts({"a": 0.25, "b": 0.35, "c": 0.4}, 10) == {"a": 3, "b": 3, "c": 4}
    assert mixture_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 7) == {"a": 3, "b": 2, "c": 2}
    assert mixture_counts({"a": 0.0, "b": 1.0}, 5) == {"a": 0, "b": 5}


def test_draw_repeats_a_small_source_in_fresh_permutations():
    import random

    idx = draw(3, 7, random.Random(0))
    assert len(idx) == 7 and sorted(idx[:3]) == [0, 1, 2] and sorted(idx[3:6]) == [0, 1, 2]
    assert draw(3, 7, random.Random(0)) == idx


def test_mixed_rows_carry_their_source_in_the_computed_proportions():
    cfg = compose([*SMALL, "+dataset.sources.math.weight=3", "dataset.mixing_temperature=2"])
    validate(cfg)
    rows = load_mixture(cfg.dataset, "sft", "train", 0)
    # e = (40, 3 * 120) = (40, 360); T = 2 -> sqrt: (6.32, 18.97); N = 40 + 120 = 160 -> 40.0, 120.0
    assert source_counts(rows) == {"math": 120, "sent": 40} and len(rows) == 160
    assert {r["source"] for r in rows[:20]} == {"math", "sent"}  # shuffled together, not one block then the other
    math_rows = [r for r in rows if r["source"] == "math"]
    assert all(r["prompt"].startswith("What is") for r in math_rows)
    assert rows.location(0)[0].startswith("builtin task")
    # deterministic in the seed, different across seeds
    assert load_mixture(cfg.dataset, "sft", "train", 0) == rows
    assert load_mixture(cfg.dataset, "sft", "train", 1) != rows


def test_cap_and_total_rows():
    cfg = compose([*SMALL, "dataset.mixing_cap=40", "dataset.n_train=100"])
    rows = load_mixture(cfg.dataset, "sft", "train", 0)
    # min(40, 40) = 40, min(120, 40) = 40 -> equal rates; 100 rows
    assert source_counts(rows) == {"math": 50, "sent": 50}
    # without n_train: the capped sizes' sum, 80
    cfg = compose([*SMALL, "dataset.mixing_cap=40"])
    assert source_counts(load_mixture(cfg.dataset, "sft", "train", 0)) == {"math": 40, "sent": 40}


def test_file_and_builtin_sources_mix(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": f"Q{i}?", "completion": f" A{i}"} for i in range(10)])
    cfg = compose([*SMALL, "+dataset@dataset.sources.qa=jsonl", f"dataset.sources.qa.path={path}",
                   "dataset.sources.qa.val_fraction=0.2"])
    rows = load_mixture(cfg.dataset, "sft", "train", 0)
    assert source_counts(rows) == {"math": 120, "qa": 8, "sent": 40}
    assert sorted(r["prompt"] for r in rows if r["source"] == "qa") == sorted({r["prompt"] for r in rows if r["source"] == "qa"})
    assert any(loc[0] == str(path) for loc in rows.locations)


@pytest.mark.parametrize("overrides,needle", [
    (["dataset=mixture"], r"dataset\.sources is empty"),
    ([*SMALL, "+dataset.sources.math.weight=-1"], r"dataset\.sources\.math\.weight must be a finite number >= 0, got -1"),
    ([*SMALL, "+dataset.sources.math.weight=lots"], r"dataset\.sources\.math\.weight must be a number >= 0, got 'lots'"),
    ([*SMALL, "dataset.sources.math.source=csv"], r"dataset\.sources\.math\.source='csv' is not a dataset source; valid: .*builtin.*jsonl"),
    ([*SMALL, "+dataset@dataset.sources.qa=jsonl"], r"dataset\.sources\.qa\.path must be set"),
    ([*SMALL, "dataset.mixing_temperature=0"], r"dataset\.mixing_temperature must be > 0"),
])
def test_bad_mixture_config_names_the_key(overrides, needle):
    cfg = compose(overrides)
    with pytest.raises(ConfigError, match=needle):
        load_mixture(cfg.dataset, "sft", "train", 0)


def test_a_mixture_run_records_rows_per_source(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose([*FAST, *SMALL, "trainer.max_steps=2", f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}",
                   f"tracking.uri={uri}"])
    job = train(cfg)
    # FAST sets dataset.n_train=96: 96 * (40/160, 120/160) = 24, 72; val 16 = 8 + 8
    assert job.metrics["data/train/source.sent"] == 24 and job.metrics["data/train/source.math"] == 72
    assert job.metrics["data/val/source.sent"] == 8 and job.metrics["data/val/source.math"] == 8
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(job.run_id)
    assert run.data.tags["data.train.source.math"] == "72" and run.data.tags["alignx.dataset"] == "mixture"
    summary = json.loads(Path(client.download_artifacts(job.run_id, "data/summary.json", str(tmp_path))).read_text())
    assert summary["train"]["source.sent"] == 24 and summary["val"]["source.math"] == 8
    # dataset.task=null: each source's rows are gold-scored by its own task (tests/test_mixture_metrics.py)
    assert "eval/perplexity" in job.metrics and "eval/gold_reward_greedy" in job.metrics
    assert "eval/math/gold_reward_greedy" in job.metrics and "eval/sent/perplexity" in job.metrics


def test_a_task_that_would_score_another_sources_samples_is_refused():
    cfg = compose([*SMALL, "dataset.task=arithmetic"])
    with pytest.raises(ConfigError, match=r"dataset\.task=arithmetic .* \{'sent': 'sentiment'\} are other tasks"):
        load_mixture(cfg.dataset, "sft", "train", 0)
