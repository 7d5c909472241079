"""Proof in miniature that listwise ranking aligns: PRO and RRHF on K=4 gold-ranked responses per prompt,
from the quickstart SFT model on builtin ``sentiment``, raise the gold reward of the policy's
completions above the SFT model's."""

import math

import pytest

from alignx.config import compose
from alignx.train import train

#: the proof's settings: 60 steps of 8 prompts x 4 ranked responses at lr 3e-4
LISTWISE = ["dataset=sentiment", "dataset.ranked_k=4", "data.batch_size=8", "dataset.n_train=512", "dataset.n_val=32",
            "optim.lr=3e-4", "trainer.max_steps=60", "tracking=none", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_sft_then_pro_raises_gold_reward(sentiment_sft, tmp_path):
    """PRO (Plackett-Luce over 4 gold-ranked responses + SFT on the best), from the quickstart SFT model.

    Measured margin (``seed=<s>`` on the SFT fixture, i.e. experiment=quickstart, and on the PRO job;
    CPU, one thread), seeds 0/1/2: greedy gold 0.772 / 0.593 / 0.881 against SFT 0.530 / 0.500 /
    0.375 (gain +0.242 / +0.093 / +0.506; 0.05 required: margin +0.043, at seed 1); sampled gold
    0.532 / 0.388 / 0.335 against SFT 0.412 / 0.377 / 0.290 (gain +0.120 / +0.011 / +0.044: too
    close to 0 at seed 1 to assert); val/ranking_accuracy 0.868 / 0.905 / 0.917 (> 0.75); KL from
    the SFT model 12.0 / 9.5 / 9.3 nats. About 140-230 s per run on the shared 2-core machine.
    """
    job = train(compose([*LISTWISE, "objective=pro", "model=hf", f"model.name_or_path={sentiment_sft.model_dir}",
                         f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"]))
    before, after = sentiment_sft.metrics, job.metrics
    print("PRO", {k: round(v, 3) for k, v in after.items() if k.startswith(("eval/", "val/"))},
          "SFT", {k: round(v, 3) for k, v in before.items() if k.startswith("eval/")})
    assert after["eval/gold_reward_greedy"] > before["eval/gold_reward_greedy"] + 0.05
    assert after["val/ranking_accuracy"] > 0.75  # the policy's own scores order held-out responses by gold rank
    assert math.isfinite(after["eval/kl_to_reference"]) and after["eval/kl_to_reference"] > 0.1


@pytest.mark.slow
def test_sft_then_rrhf_raises_gold_reward(sentiment_sft, tmp_path):
    """RRHF (hinge on misordered pairs of 4 gold-ranked responses + SFT on the best), from the
    quickstart SFT model, scoring responses by their summed log-probs
    (``objective.length_normalize=false``) at lr 1e-4.

    Measured margin (``seed=<s>`` on the SFT fixture and on the RRHF job; CPU, one thread), seeds
    0/1/2: greedy gold 0.689 / 0.810 / 0.703 against SFT 0.530 / 0.500 / 0.375 (gain +0.159 / +0.310 /
    +0.328; 0.1 required: margin +0.059, at seed 0); sampled gold 0.503 / 0.425 / 0.370 against SFT
    0.412 / 0.377 / 0.290 (gain +0.091 / +0.048 / +0.080; 0.02 required: margin +0.028, at seed 1);
    val/ranking_accuracy 0.704 / 0.810 / 0.796 (> 0.6); KL from the SFT model 19.9 / 11.0 / 25.1 nats.
    With the paper's length-normalised scores (the YAML default) the same 60 steps did not raise
    greedy gold at seed 0: -0.156 at lr 3e-4 and -0.038 at lr 1e-4 (sampled +0.036 and +0.070).
    About 120-230 s per run on the shared 2-core machine.
    """
    job = train(compose([*LISTWISE, "objective=rrhf", "objective.length_normalize=false", "optim.lr=1e-4",
                         "model=hf", f"model.name_or_path={sentiment_sft.model_dir}",
                         f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"]))
    before, after = sentiment_sft.metrics, job.metrics
    print("RRHF", {k: round(v, 3) for k, v in after.items() if k.startswith(("eval/", "val/"))},
          "SFT", {k: round(v, 3) for k, v in before.items() if k.startswith("eval/")})
    assert after["eval/gold_reward_greedy"] > before["eval/gold_reward_greedy"] + 0.1
    assert after["eval/gold_reward_sampled"] > before["eval/gold_reward_sampled"] + 0.02
    assert after["val/ranking_accuracy"] > 0.6
    assert math.isfinite(after["eval/kl_to_reference"]) and after["eval/kl_to_reference"] > 0.1
