"""Proof in miniature that quality filtering pays: on builtin ``sentiment`` with 80% of the train
demonstrations replaced by low-gold completions, SFT on the gold-filtered best 20% beats SFT on all rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignx.config import compose
from alignx.train import train

#: 40 steps of 16 rows at lr 1e-3 from the quickstart SFT model, on 400 rows of which 80% are junk
DIRTY = ["dataset=sentiment", "dataset.n_train=400", "dataset.n_val=16", "dataset.low_quality_fraction=0.8",
         "data.batch_size=16", "trainer.max_steps=40", "optim.lr=1e-3", "tracking=none",
         "trainer.enable_progress_bar=false", "save.model=false"]
FILTERED = ["data.filter=gold", "data.keep_fraction=0.2"]


def gold_after_sft(model_dir: Path, extra: list[str], out: Path, seed: int = 0) -> dict[str, float]:
    """The evaluation metrics of SFT from ``model_dir`` on the dirty dataset, with ``extra`` overrides."""
    job = train(compose([*DIRTY, *extra, "model=hf", f"model.name_or_path={model_dir}", f"seed={seed}",
                         f"output_dir={out / 'job'}", f"outputs_root={out}"]))
    return job.metrics


@pytest.mark.slow
def test_sft_on_the_filtered_fifth_beats_sft_on_all_rows(sentiment_sft, tmp_path):
    """SFT on the 80 rows ``data.filter=gold data.keep_fraction=0.2`` keeps vs on all 400 rows.

    Measured (the quickstart SFT fixture, seed 0; the job at ``seed=<s>``; CPU, one thread), seeds
    0/1/2: sampled gold 0.500 / 0.459 / 0.380 filtered against 0.136 / 0.130 / 0.175 on all rows
    (gain +0.364 / +0.329 / +0.205; 0.1 required: margin +0.105, at seed 2); greedy gold 0.423 /
    0.653 / 0.627 against 0.470 / 0.106 / 0.471 (difference -0.047 / +0.547 / +0.156: greedy only
    "matches" at seed 0, so the bar is -0.1: margin +0.053, at seed 0). The kept rows' mean gold
    is 0.75 against 0.32 for all rows. About 45 s per run, 90 s for the test, on the shared 2-core
    machine at load 10.
    """
    everything = gold_after_sft(sentiment_sft.model_dir, [], tmp_path / "all")
    filtered = gold_after_sft(sentiment_sft.model_dir, FILTERED, tmp_path / "filtered")
    print("all", {k: round(v, 3) for k, v in everything.items() if k.startswith("eval/gold")},
          "filtered", {k: round(v, 3) for k, v in filtered.items() if k.startswith("eval/gold")})
    assert filtered["data/train/kept"] == 80 and everything["data/train/kept"] == 400
    assert filtered["eval/gold_reward_sampled"] > everything["eval/gold_reward_sampled"] + 0.1
    assert filtered["eval/gold_reward_greedy"] > everything["eval/gold_reward_greedy"] - 0.1
