"""Proof in miniature for Chain of Hindsight: trained from the untrained tiny model on builtin
``sentiment`` pairs written with feedback phrases, the policy prompted with the positive phrase gets a
higher gold reward than the model it started from.

What it does not show (measured, see the docstring): a gain over an SFT model, or a policy that
tells the two phrases apart at this scale.
"""

import pytest

from alignx.config import compose
from alignx.data.sources import load_builtin
from alignx.models.loading import build_hf, build_llama
from alignx.objectives.coh import CoH
from alignx.registry import load_plugins
from alignx.train import evaluate, train

#: 150 steps of 16 pairs at lr 1e-3 from the untrained model=tiny
COH = ["objective=coh", "dataset=sentiment", "model=tiny", "trainer.max_steps=150", "data.batch_size=16", "optim.lr=1e-3",
       "tracking=none", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_coh_from_the_untrained_model_raises_gold_reward(tmp_path):
    """Measured margin (``seed=<s>`` on the job; CPU, one thread, ~70 s of CPU), seeds 0/1/2: greedy
    gold 0.344 / 0.119 / 0.333 against the untrained model's 0.000 (gain +0.344 / +0.119 / +0.333;
    0.05 required: margin +0.069, at seed 1); sampled gold 0.079 / 0.096 / 0.052 against 0.012 / 0.016
    / 0.023 (gain +0.067 / +0.080 / +0.029; 0.01 required: margin +0.019, at seed 2).

    Not asserted, because it did not hold: prompted with the *negative* phrase instead, the same
    models sample gold 0.062 / 0.088 / 0.054 (positive minus negative +0.017 / +0.008 / -0.002), so
    the tiny model has not learnt what the feedback means within this budget. From the quickstart
    SFT model (100 steps, lr 2e-4, phrases " Good:"/" Bad:") CoH lowered sampled gold at every seed
    (-0.130 / -0.168 / -0.011; docs/losses.md, "Chain of Hindsight").
    """
    cfg = compose([*COH, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"])
    registry = load_plugins()
    untrained, tok = build_llama(cfg.model)
    test_rows = load_builtin(cfg.dataset, "sft", "test", int(cfg.seed))
    before, _ = evaluate(cfg, registry, untrained, tok, CoH, test_rows)
    job = train(cfg)
    after = job.metrics
    # the same model asked with the negative phrase: reported, not asserted (see the docstring)
    model, tok = build_hf(compose(["model=hf", f"model.name_or_path={job.model_dir}"]).model)
    swapped = compose([*COH, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"])
    swapped.objective.positive_phrase, swapped.objective.negative_phrase = (cfg.objective.negative_phrase,
                                                                            cfg.objective.positive_phrase)
    negative, _ = evaluate(swapped, registry, model, tok, CoH, test_rows)
    print("CoH", {k: round(v, 3) for k, v in after.items() if k.startswith("eval/gold")},
          "untrained", {k: round(v, 3) for k, v in before.items() if k.startswith("eval/gold")},
          "negative phrase", {k: round(v, 3) for k, v in negative.items() if k.startswith("eval/gold")})
    assert after["eval/gold_reward_greedy"] > before["eval/gold_reward_greedy"] + 0.05
    assert after["eval/gold_reward_sampled"] > before["eval/gold_reward_sampled"] + 0.01
