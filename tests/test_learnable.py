"""The builtin tasks are learnable: a short SFT of model=tiny raises the gold reward of samples.

This is the property every later experiment (DPO, PPO, RAFT) relies on, so it trains for real:
about 300 optimizer steps of the default tiny model per task (tens of CPU seconds).
"""

import pytest

from alignx.config import compose
from alignx.data.sources import load_builtin
from alignx.models.loading import build_llama
from alignx.objectives.sft import SFT
from alignx.registry import load_plugins
from alignx.train import evaluate, train

STEPS = 300
#: format trains in the test itself (the others are session fixtures): half the steps at twice the lr
#: keep its gain well clear of its bar at half the CPU (~75 s instead of ~160 s, one thread)
FORMAT = {"trainer.max_steps": 150, "optim.lr": 2e-3}
# gold reward is in [0, 1]; an untrained byte-level model emits noise that scores ~0
# (arithmetic's bar was 0.08 until seed 2 measured 0.052; 0.03 holds over the three seeds measured)
MIN_GAIN = {"sentiment": 0.2, "arithmetic": 0.03, "format": 0.05}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sentiment", "arithmetic", "format"])
def test_sft_raises_gold_reward_of_samples(tmp_path, task, request):
    """300 SFT steps of model=tiny (150 at lr 2e-3 for format) raise the held-out sampled gold reward by ``MIN_GAIN[task]`` over the
    untrained model, raise the greedy one, and cut the perplexity of held-out targets at least 4-fold.

    Measured margin (benchmarks/results/proof-margins-cpu.md, ``OMP_NUM_THREADS=1 python
    benchmarks/proof_margins.py``: ``seed=`` on the untrained model's evaluation and on the SFT run),
    sampled gold gain for seeds 0/1/2 (the suite runs seed 0):
    sentiment 0.401 / 0.358 / 0.267 (+0.067 at least against the 0.2 required);
    arithmetic 0.112 / 0.138 / 0.052 (+0.022 at least against 0.03; seed 2's SFT model samples 0.091
    against the untrained model's 0.039, and the untrained baseline itself varies 0.016-0.068 over
    seeds, so the bar is set by the weakest seed rather than by seed 0's +0.112);
    format (150 steps at lr 2e-3, measured with the test's own settings) 0.078 / 0.086 / 0.102 (+0.028
    at least against 0.05; at 300 steps of lr 1e-3 it was 0.258 / 0.297 / 0.367 at twice the CPU).
    Greedy gain +0.15 at least (bar 0); perplexity after / before 0.007-0.013 (bar 0.25).
    """
    cfg = compose(
        [
            f"dataset={task}",
            "model=tiny",
            *([f"{k}={v}" for k, v in FORMAT.items()] if task == "format" else [f"trainer.max_steps={STEPS}"]),
            "trainer.enable_progress_bar=false",
            "tracking=none",
            "eval.num_prompts=64",
            f"output_dir={tmp_path}",
            f"outputs_root={tmp_path}",
        ]
    )
    registry = load_plugins()
    untrained, tok = build_llama(cfg.model)
    test_rows = load_builtin(cfg.dataset, "sft", "test", int(cfg.seed))
    before, _ = evaluate(cfg, registry, untrained, tok, SFT, test_rows)

    # sentiment's run is exactly experiment=quickstart, which the preference proofs share; arithmetic's
    # is this cfg, shared with the online-RL proofs (conftest)
    shared = {"sentiment": "sentiment_sft", "arithmetic": "arithmetic_sft"}
    after = request.getfixturevalue(shared[task]).metrics if task in shared else train(cfg).metrics
    gain = after["eval/gold_reward_sampled"] - before["eval/gold_reward_sampled"]
    print(task, "before", before, "after", {k: v for k, v in after.items() if k.startswith("eval/")})
    assert gain >= MIN_GAIN[task], (before, after)
    assert after["eval/gold_reward_greedy"] > before["eval/gold_reward_greedy"]
    assert after["eval/perplexity"] < before["eval/perplexity"] / 4
