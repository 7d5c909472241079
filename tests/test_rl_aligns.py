"""Proof in miniature that online RL aligns: from an SFT checkpoint of model=tiny on CPU, PPO and
GRPO raise the mean gold reward of the policy's samples on builtin ``sentiment`` and
``arithmetic``, with the KL from the SFT model reported; PPO against a *learned* reward model
(value model initialised from it) runs end to end and raises both the RM's score and the gold one.

Evaluation is paired: the SFT fixture and every RL job evaluate the same held-out prompts with the
same sampling seed, so the differences below are the policies', not the sampler's.
"""

import math

import mlflow
import pytest

from alignx.config import compose
from alignx.train import train

COMMON = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "scheduler=linear",
          "scheduler.num_warmup_steps=0", "eval.num_prompts=64", "objective.log_samples_every_n_steps=0"]


def _from_sft(sft, tmp_path, dataset, *overrides):
    return train(compose([*COMMON, f"dataset={dataset}", "model=hf", f"model.name_or_path={sft.model_dir}",
                          f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", *overrides]))


def _history(job, key):
    client = mlflow.tracking.MlflowClient(job.tracking_uri)
    return [m.value for m in sorted(client.get_metric_history(job.run_id, key), key=lambda m: m.step)]


def _check(name, sft, job, score_key, *, min_gain, training_curve=True):
    before, after = sft.metrics, job.metrics
    scores, kl = _history(job, score_key), _history(job, "objective/kl")
    print(name, {k: round(v, 3) for k, v in after.items() if k.startswith("eval/")},
          "SFT", {k: round(v, 3) for k, v in before.items() if k.startswith("eval/")},
          "train scores first/last 5", [round(sum(s) / 5, 3) for s in (scores[:5], scores[-5:])],
          "objective/kl last", round(kl[-1], 2))
    # the rollouts the policy trains on get better ...
    if training_curve:
        assert sum(scores[-5:]) / 5 > sum(scores[:5]) / 5
    # ... and so do its samples on held-out prompts (None: a proof whose sampled gain did not hold at every seed)
    if min_gain is not None:
        assert after["eval/gold_reward_sampled"] > before["eval/gold_reward_sampled"] + min_gain
    # at a price: the KL from the SFT model, reported every step and measured again at the end
    assert kl[0] == pytest.approx(0.0, abs=1e-4) and len(kl) == len(scores)
    assert math.isfinite(after["eval/kl_to_reference"]) and after["eval/kl_to_reference"] > 0.05


@pytest.mark.slow
def test_ppo_from_sft_raises_gold_reward_on_sentiment(sentiment_sft, tmp_path):
    """PPO at its defaults (scores centred over the batch, ``objective.score_norm=center``), 20
    iterations of 16 prompts (8 rollouts per optimizer step) at lr 1e-4 and beta 0.03.

    Measured margin (one intra-op thread; ``seed=`` on the SFT fixture and on the PPO job, each seed
    a full replicate as in benchmarks/proof_margins.py), seeds 0/1/2: held-out sampled gold 0.563 /
    0.538 / 0.541 against SFT 0.412 / 0.377 / 0.290 (gain +0.151 / +0.161 / +0.250, 0.1 required:
    margin +0.051, at seed 0); greedy 0.881 in all three against SFT 0.530 / 0.500 / 0.375 (gain
    +0.351 / +0.381 / +0.506, 0.15 required: margin +0.20); training score, last 5 minus first 5
    iterations, +0.167 / +0.169 / +0.298; KL from the SFT model 3.1 / 6.2 / 4.9 nats. 42-46 s of
    process CPU time per seed; the earlier 32 prompts per iteration (16 per optimizer step) took 71 s
    at seed 0 for gains of +0.17 to +0.24 (benchmarks/results/ppo-beta-cpu.md). At lr 3e-4 the
    first iteration alone moves the policy 6-7 nats and one run in three fell below the SFT model at
    beta 0.3, with raw or centred scores (docs/online_rl.md, "Why PPO centres its scores").
    """
    job = _from_sft(sentiment_sft, tmp_path, "sentiment", "objective=ppo", "trainer.max_steps=20", "optim.lr=1e-4",
                    "objective.beta=0.03", "data.batch_size=16", "objective.mini_batch_size=8")
    _check("PPO sentiment", sentiment_sft, job, "objective/scores", min_gain=0.1)
    assert job.metrics["eval/gold_reward_greedy"] > sentiment_sft.metrics["eval/gold_reward_greedy"] + 0.15


@pytest.mark.slow
def test_grpo_from_sft_raises_gold_reward_on_sentiment(sentiment_sft, tmp_path):
    """GRPO, 20 iterations of 16 prompts at lr 3e-4 from the quickstart SFT model, reward = gold.

    Measured margin (benchmarks/results/proof-margins-cpu.md, ``OMP_NUM_THREADS=1 python
    benchmarks/proof_margins.py``; ``seed=`` on the SFT fixture and on the GRPO job), seeds 0/1/2:
    held-out sampled gold 0.676 / 0.764 / 0.605 against SFT 0.412 / 0.377 / 0.290 (gain +0.26 / +0.39
    / +0.32, 0.1 required: margin +0.16); greedy gold 0.982 / 1.000 / 0.973 against SFT 0.530 / 0.500
    / 0.375 (gain +0.45 at least, 0.15 required: margin +0.30); training reward, last 5 minus first 5
    iterations, +0.29 / +0.48 / +0.35; KL from the SFT model 8.9 / 16.0 / 11.7 nats.
    """
    job = _from_sft(sentiment_sft, tmp_path, "sentiment", "objective=grpo", "trainer.max_steps=20", "optim.lr=3e-4",
                    "data.batch_size=16", "objective.mini_batch_size=16")
    _check("GRPO sentiment", sentiment_sft, job, "reward", min_gain=0.1)
    assert job.metrics["eval/gold_reward_greedy"] > sentiment_sft.metrics["eval/gold_reward_greedy"] + 0.15


# 50 iterations: GRPO's sampled gold reward gains 0.05-0.09 over seeds 0-2 (0.180 -> 0.227 at seed 0).
# PPO needs ~80 for a stable gain here (README); its proofs in the suite are on sentiment, against the
# gold reward and a learned RM.
ARITHMETIC = ("trainer.max_steps=50", "optim.lr=1e-3", "data.batch_size=32", "objective.mini_batch_size=32",
              "objective.max_new_tokens=6")


@pytest.mark.slow
def test_grpo_from_sft_raises_gold_reward_on_arithmetic(arithmetic_sft, tmp_path):
    """GRPO, 50 iterations of 32 prompts at lr 1e-3 from the arithmetic SFT model, reward = gold.

    Measured margin (benchmarks/results/proof-margins-cpu.md, ``OMP_NUM_THREADS=1 python
    benchmarks/proof_margins.py``; ``seed=`` on the SFT fixture and on the GRPO job), seeds 0/1/2:
    held-out sampled gold 0.227 / 0.245 / 0.172 against SFT 0.180 / 0.154 / 0.091 (gain +0.047 / +0.091
    / +0.081; the bar is 0.02, so the smallest margin is +0.027 at seed 0, the suite's; it was 0.04,
    +0.007); training reward, last 5 minus first 5 iterations, +0.062 / +0.040 / +0.004: too thin to
    assert (a 0/1 reward over 32 prompts moves more than that between iterations), so this proof
    asserts the held-out gain and the KL only; KL from the SFT model 0.72 / 0.60 / 0.86 nats.
    """
    job = _from_sft(arithmetic_sft, tmp_path, "arithmetic", "objective=grpo", *ARITHMETIC)
    _check("GRPO arithmetic", arithmetic_sft, job, "reward", min_gain=0.02, training_curve=False)


@pytest.mark.slow
def test_ppo_against_a_learned_reward_model_end_to_end(sentiment_sft, sentiment_rm, tmp_path):
    """SFT -> RM -> PPO, the InstructGPT recipe: the reward is the saved RM (its value model too).

    With per-batch reward scaling (``objective.whiten_rewards=true``). Measured over full replicates
    (``seed=`` on the SFT and RM fixtures and on the PPO job, as in benchmarks/proof_margins.py; one
    intra-op thread), seeds 0/1/2: held-out greedy gold gain over the SFT model +0.35 / +0.34 / +0.51
    (0.1 required: margin +0.24); the RM's score of held-out samples ends above the first
    iteration's training score by 0.58-0.73. The sampled gold gain is not asserted: +0.065 / -0.047 /
    +0.134. At seed 1 sampled gold fell while the RM's score rose, the proxy being exploited (an
    earlier docstring claimed +0.038 at least, measured by re-seeding only the PPO job from the seed-0
    fixtures). ``objective.score_norm=none`` keeps exactly the measured configuration (the scores were
    not centred then).
    """
    rm = str(sentiment_rm.model_dir)
    job = _from_sft(sentiment_sft, tmp_path, "sentiment", "objective=ppo", "reward=rm", f"reward.path={rm}",
                    f"eval.reward_model={rm}", "trainer.max_steps=20", "optim.lr=1e-4", "objective.beta=0.2",
                    "objective.whiten_rewards=true", "objective.score_norm=none")
    # the proxy reward is what PPO optimises ...
    _check("PPO vs learned RM", sentiment_sft, job, "objective/scores", min_gain=None)
    assert job.metrics["eval/rm_reward_sampled"] > _history(job, "objective/scores")[0]
    # ... and the gold reward, which PPO never saw, rose with it at this KL (a weaker penalty or more
    # steps lets the policy exploit the RM instead: Gao et al.'s over-optimisation, see the README)
    assert job.metrics["eval/gold_reward_greedy"] > sentiment_sft.metrics["eval/gold_reward_greedy"] + 0.1
