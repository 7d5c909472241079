"""Quality filtering (``data.filter``, ``data.keep_fraction``) and injected low-quality rows (``dataset.low_quality_fraction``)."""

from __future__ import annotations

import pytest

from alignx.config import compose, validate
from alignx.data.quality import (
    filter_rows,
    inject_low_quality,
    keep_top,
    quality_scores,
)
from alignx.data.rows import load_rows
from alignx.errors import ConfigError
from alignx.registry import load_plugins
from alignx.tasks.sentiment import SentimentTask, lexicon_sentiment


def gold(prompts, completions):
    return [lexicon_sentiment(c) for c in completions]


def test_keep_top_keeps_the_best_in_their_order():
    assert keep_top([0.1, 0.9, 0.5, 0.7, 0.3], 0.4, 0) == [1, 3]
    assert keep_top([0.1, 0.9, 0.5], 0.01, 0) == [1]  # at least one row
    assert keep_top([0.2, 0.2, 0.2, 0.2], 0.5, 0) == keep_top([0.2, 0.2, 0.2, 0.2], 0.5, 0)  # ties: seeded
    assert len({tuple(keep_top([0.0] * 8, 0.5, s)) for s in range(6)}) > 1
    with pytest.raises(ConfigError, match=r"data\.keep_fraction must be in \(0, 1\], got 0\.0"):
        keep_top([1.0], 0.0, 0)


def test_quality_scores_are_gold_rewards_and_gold_margins():
    rows = [{"prompt": "p", "completion": " great."}, {"prompt": "p", "chosen": " great.", "rejected": " long."}]
    # sigmoid(2) = 0.881; 0.881 - 0.5 = 0.381
    assert [round(s, 3) for s in quality_scores(rows, [gold, gold])] == [0.881, 0.381]


def _no_reward():
    raise AssertionError("the job's reward is built only by data.filter=reward")


def test_gold_filter_keeps_the_best_fifth():
    cfg = compose(["dataset=sentiment", "data.filter=gold", "data.keep_fraction=0.4"])
    rows = [{"prompt": "p", "completion": c} for c in (" dull.", " great and superb.", " long.", " great.", " bad and awful.")]
    out = filter_rows(rows, "gold", 0.4, cfg, load_plugins(), 0, _no_reward)
    assert [r["completion"] for r in out] == [" great and superb.", " great."]
    assert filter_rows(rows, "none", 0.4, cfg, load_plugins(), 0, _no_reward) is rows


def test_injected_rows_are_low_quality_and_seeded():
    task = SentimentTask()
    rows = task.rows("sft", "train", 50, seed=0)
    out = inject_low_quality(rows, 0.6, "sentiment", load_plugins(), 0)
    changed = [i for i, (a, b) in enumerate(zip(rows, out)) if a != b]
    assert len(out) == 50 and 0.5 * 50 <= len(changed) <= 30  # 30 picked; a pick may redraw its own bad text
    assert all(lexicon_sentiment(out[i]["completion"]) < task.good_threshold for i in changed)
    assert all(out[i]["prompt"] == rows[i]["prompt"] for i in range(50))
    assert inject_low_quality(rows, 0.6, "sentiment", load_plugins(), 0) == out
    assert inject_low_quality(rows, 0.0, "sentiment", load_plugins(), 0) is rows


def test_the_job_filters_the_injected_train_split_only():
    base = ["dataset=sentiment", "dataset.n_train=100", "dataset.n_val=10", "dataset.n_test=10",
            "dataset.low_quality_fraction=0.8"]
    registry = load_plugins()
    dirty = load_rows(compose(base), registry, "sft", "sft")
    cfg = compose([*base, "data.filter=gold", "data.keep_fraction=0.2"])
    validate(cfg)
    clean = load_rows(cfg, registry, "sft", "sft")
    assert len(dirty["train"]) == 100 and len(clean["train"]) == 20
    mean = lambda rows: sum(lexicon_sentiment(r["completion"]) for r in rows) / len(rows)
    assert mean(clean["train"]) > mean(dirty["train"]) + 0.3
    assert min(lexicon_sentiment(r["completion"]) for r in clean["train"]) >= 0.5
    assert clean["val"] == dirty["val"] and clean["test"] == dirty["test"]


@pytest.mark.parametrize("overrides,needle", [
    (["data.keep_fraction=0"], r"data\.keep_fraction"),
    (["data.keep_fraction=1.5"], r"data\.keep_fraction"),
    (["data.filter=judge"], r"data\.filter.*none.*gold.*reward"),
])
def test_bad_filter_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(compose(overrides))


def test_low_quality_rows_need_sft_rows_and_a_valid_fraction():
    registry = load_plugins()
    with pytest.raises(ConfigError, match=r"dataset\.low_quality_fraction replaces demonstrations: it applies to sft rows"):
        load_rows(compose(["dataset.n_train=8", "dataset.low_quality_fraction=0.5"]), registry, "unpaired", None)
    with pytest.raises(ConfigError, match=r"dataset\.low_quality_fraction must be in \[0, 1\], got 1\.5"):
        load_rows(compose(["dataset.n_train=8", "dataset.low_quality_fraction=1.5"]), registry, "sft", None)
    with pytest.raises(ConfigError, match=r"data\.filter=judge is not a quality filter; valid: none, gold, reward"):
        filter_rows([], "judge", 0.5, compose([]), registry, 0, _no_reward)
