"""Step-level rewards for online RL (process supervision) and PRM-guided best-of-N at evaluation.

Hand-computed checks of the advantage math (GRPO: step rewards normalised over the group, a
token's advantage the sum over the steps ending at or after it; PPO: each step's reward at its
last token), of where a step reward lands (character offset -> response token), of the rewards
``process_gold`` and ``prm``, of the config errors, and short real grpo/ppo/prm/eval jobs.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fast, t
from mlflow import MlflowClient

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.evaluation.prm_best_of_n import check_prm_eval, choose_best
from alignx.losses.policy_gradient import per_token_step_rewards, process_advantages
from alignx.models.tokenizer import build_byte_tokenizer
from alignx.objectives.online import dense_step_rewards, step_token_positions
from alignx.rewards.steps import (
    SEPARATOR_ATTR,
    PRMScorer,
    StepReward,
    process_gold,
    step_rewards_of,
)
from alignx.tasks.steps import process_rewards, split_steps, step_spans
from alignx.train import train


# -- where the steps end ---------------------------------------------------------------------------
@pytest.mark.parametrize("completion", [
    "3+4=7; 7-1=6. Answer: 6", "3+4=7 ;  7-1=6 . Answer: 6", "3+4=7; 7-1=6.", "garbage", " 3+4=7;; 7-1=5. Answer: 5", "",
])
def test_step_spans_are_split_steps_with_their_end_offsets(completion):
    spans = step_spans(completion)
    assert [s for s, _ in spans] == split_steps(completion)
    for step, end in spans:
        assert completion[:end].endswith(step)


def test_process_rewards_score_each_step_and_the_answer_at_their_ends():
    assert step_spans("3+4=7; 7-1=6. Answer: 6") == [("3+4=7", 5), ("7-1=6", 12)]
    assert process_rewards("3+4-1=", "3+4=7; 7-1=6. Answer: 6") == [(5, 1.0), (12, 1.0), (23, 1.0)]
    assert process_rewards("3+4-1=", "3+4=7; 7-1=5. Answer: 5") == [(5, 1.0), (12, 0.0), (23, 0.0)]
    # right steps, wrong answer: the answer's entry is 0
    assert process_rewards("3+4-1=", "3+4=7; 7-1=6. Answer: 9") == [(5, 1.0), (12, 1.0), (23, 0.0)]
    assert process_rewards("3+4-1=", "") == [(0, 0.0)]
    assert isinstance(process_gold, StepReward)
    # as a plain reward: the minimum, 1 only when every step and the answer are right
    assert process_gold(["3+4-1="] * 3, ["3+4=7; 7-1=6. Answer: 6", "3+4=7; 7-1=5. Answer: 5", "3+4=7; 7-1=6. Answer: 9"]) == [
        1.0, 0.0, 0.0]


def test_step_rewards_of_sums_weighted_components_and_puts_outcome_rewards_at_the_end():
    def length(prompts, completions):  # an outcome reward: one score per completion
        return [float(len(c)) for c in completions]

    comps = [("process_gold", 2.0, process_gold), ("length", 0.5, length)]
    c = ["3+4=7; 7-1=5. Answer: 5", "x"]
    out = step_rewards_of(comps, ["3+4-1="] * 2, c)
    assert out[0] == [(5, 2.0), (12, 0.0), (23, 0.0 + 0.5 * 23)]
    assert out[1] == [(1, 0.0 + 0.0 + 0.5 * 1)]  # "x": one (wrong) step ending at 1, the answer (0) and the length there too
    # a completion without EOS gets only the missing-EOS score, at its end
    out = step_rewards_of(comps, ["3+4-1="] * 2, c, has_eos=[True, False], missing_eos_penalty=-1.0)
    assert out[1] == [(1, -1.0)] and out[0][0] == (5, 2.0)


def test_step_token_positions_map_offsets_to_the_token_that_closes_them():
    tok = build_byte_tokenizer()
    text = "3+4=7; 7-1=6"
    ids = list(tok(text, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
    # byte tokens: offset 5 is closed by token 4 ('7'), offset 12 by token 11; the end -> the EOS (12)
    assert step_token_positions(tok, ids, [5, 12, 99]) == [4, 12, 12]
    # the bisection finds, for every offset, the first token whose decoded prefix reaches it
    prefix = [len(tok.decode(ids[: k + 1], skip_special_tokens=True)) for k in range(len(ids))]
    scan = [next(k for k, n in enumerate(prefix) if n >= o) if o < prefix[-1] else len(ids) - 1 for o in range(14)]
    assert step_token_positions(tok, ids, list(range(14))) == scan
    rewards, ends = dense_step_rewards([[(4, 1.0), (12, 0.5)], [(2, -1.0), (2, 2.0)]], (2, 13), torch.device("cpu"))
    assert rewards[0, 4] == 1.0 and rewards[0, 12] == 0.5 and rewards[1, 2] == 1.0 and float(rewards.sum()) == 2.5
    assert ends.sum(-1).tolist() == [2, 1]


# -- the advantage math ------------------------------------------------------------------------------
def test_process_advantages_normalise_over_the_group_and_sum_the_steps_at_or_after_each_token():
    # one group of two completions, 5 tokens each; steps end at tokens 1 and 4 (row 0), 2 and 4 (row 1)
    r = t([[0, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
    ends = torch.tensor([[0, 1, 0, 0, 1], [0, 0, 1, 0, 1]], dtype=torch.bool)
    mask = torch.ones(2, 5)
    adv, std = process_advantages(r, ends, mask, group_size=2, eps=0.0)
    # the group's step rewards {1, 1, 0, 0}: mean 0.5, unbiased std sqrt(1/3); normalised ±0.5·sqrt(3)
    s = 0.5 * math.sqrt(3)
    expected = [[2 * s, 2 * s, s, s, s], [-2 * s, -2 * s, -2 * s, -s, -s]]
    assert torch.allclose(adv.double(), t(expected), atol=1e-6)
    assert float(std[0]) == pytest.approx(math.sqrt(1 / 3))
    # scale=none: centred only
    adv, _ = process_advantages(r, ends, mask, group_size=2, scale="none")
    assert torch.allclose(adv.double(), t([[1, 1, 0.5, 0.5, 0.5], [-1, -1, -1, -0.5, -0.5]]), atol=1e-6)


def test_process_advantages_are_zero_for_equal_rewards_padding_and_groups_of_one_step():
    r = t([[0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]])
    ends = torch.tensor([[0, 1, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    adv, std = process_advantages(r, ends, mask, group_size=2)
    # group 1: the step at token 3 of row 0 is padding (ignored): {1, 0} -> ±1/sqrt(0.5)·0.5 = ±0.7071
    a = 0.5 / math.sqrt(0.5)
    assert torch.allclose(adv[:2].double(), t([[a, a, 0, 0], [-a, -a, 0, 0]]), atol=1e-3)
    # group 2: a single step reward has no spread: advantages 0 (no NaN)
    assert torch.equal(adv[2:], torch.zeros(2, 4)) and float(std[1]) == 0.0


def test_process_advantages_batch_scale_and_shape_errors():
    r = t([[1, 0], [0, 0], [3, 0], [0, 0]])
    ends = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0]], dtype=torch.bool)
    adv, _ = process_advantages(r, ends, torch.ones(4, 2), group_size=2, scale="batch", eps=0.0)
    batch_std = float(torch.tensor([1.0, 0, 3, 0]).std())
    assert adv[:, 0].tolist() == pytest.approx([0.5 / batch_std, -0.5 / batch_std, 1.5 / batch_std, -1.5 / batch_std], abs=1e-6)
    with pytest.raises(ValueError, match="not a whole number of groups of 3"):
        process_advantages(r, ends, torch.ones(4, 2), group_size=3)
    with pytest.raises(ValueError, match="unknown advantage scale"):
        process_advantages(r, ends, torch.ones(4, 2), group_size=2, scale="mad")


def test_ppo_step_rewards_land_on_each_steps_last_token_after_normalisation():
    r = t([[0, 1, 0, 3], [2, 0, 0, 0]])
    ends = torch.tensor([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    kl = t([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    rewards, non_score = per_token_step_rewards(r, ends, kl, mask, beta=0.5, score_norm="center")
    # step rewards {1, 3, 2}: mean 2, centred {-1, 1, 0}; -β·KL everywhere valid
    assert torch.allclose(non_score, t([[-0.05, -0.1, -0.15, -0.2], [-0.5, -0.5, 0, 0]]))
    assert torch.allclose(rewards, t([[-0.05, -1.1, -0.15, 0.8], [-0.5, -0.5, 0, 0]]))
    raw, _ = per_token_step_rewards(r, ends, kl, mask, beta=0.0, score_norm="none")
    assert torch.equal(raw, r)


def test_choose_best_takes_the_highest_score_of_each_group_first_on_ties():
    assert choose_best([0.1, 0.9, 0.5, 0.7, 0.7, 0.2], 3) == [1, 3]
    with pytest.raises(ValueError, match="not whole groups"):
        choose_best([0.1, 0.2, 0.3], 2)


# -- config errors name the key, before any run ---------------------------------------------------------
def _steps(tmp_path, *overrides):
    return compose(fast("dataset=steps", "trainer.max_steps=2", "data.batch_size=4", "objective.max_new_tokens=16",
                        f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}",
                        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides))


@pytest.mark.parametrize("overrides, message", [
    (["objective=grpo", "objective.step_rewards=true"],
     r"objective.step_rewards=true needs a step-level reward among reward.components .*only outcome rewards \(gold\)"),
    (["objective=ppo", "objective.step_rewards=true"], r"objective.step_rewards=true needs a step-level reward"),
    (["objective=grpo", "reward=process_gold", "objective.step_rewards=true", "objective.overlong_buffer_len=4"],
     r"objective.overlong_buffer_len > 0 shapes the outcome score"),
    (["objective=dapo", "reward=process_gold", "objective.step_rewards=true"], r"objective.overlong_buffer_len > 0 shapes"),
    (["objective=rloo", "+objective.step_rewards=true"], r"unknown key 'objective.step_rewards'"),
])
def test_bad_step_reward_config_fails_before_any_run_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(_steps(tmp_path, *overrides))
    assert not (tmp_path / "job").exists()


# -- real jobs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["grpo", "ppo"])
def test_online_rl_learns_from_process_gold_step_rewards(tmp_path, objective):
    job = train(_steps(tmp_path, f"objective={objective}", "reward=process_gold", "objective.step_rewards=true"))
    m = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(job.run_id).data.metrics
    assert 0.0 <= m["reward/process_gold"] <= 1.0 and "eval/gold_reward_sampled" in m
    if objective == "grpo":
        assert 0.0 <= m["objective/step_reward"] <= 1.0 and m["objective/steps"] >= 1.0
    else:
        assert math.isfinite(m["loss/value_avg"])


@pytest.fixture(scope="module")
def saved_prm(tmp_path_factory):
    """A PRM trained for 4 steps (tiny): not a good one, but a real saved objective=prm model."""
    root = tmp_path_factory.mktemp("prm")
    return train(compose(fast("objective=prm", "dataset=steps", "trainer.max_steps=4", "tracking=none",
                              f"output_dir={root / 'job'}", f"outputs_root={root}")))


def test_saved_prm_records_its_separator_and_scores_steps_as_a_reward(saved_prm):
    scorer = PRMScorer(str(saved_prm.model_dir), device="cpu")
    assert getattr(scorer.model.config, SEPARATOR_ATTR) == "; "
    c = ["3+4=7; 7-1=6. Answer: 6", "no steps. Answer: 1", ""]
    out = scorer.score_steps(["3+4-1="] * 3, c)
    assert [o for o, _ in out[0]] == [5, 12] and all(0.0 < s < 1.0 for _, s in out[0])
    assert out[2] == [(0, 0.0)]  # nothing to score: 0 at the end
    assert scorer(["3+4-1="] * 3, c) == pytest.approx([min(s for _, s in e) for e in out])


def test_grpo_with_prm_step_rewards_and_prm_guided_best_of_n(saved_prm, tmp_path):
    job = train(_steps(tmp_path, "objective=grpo", "reward=prm", f"reward.path={saved_prm.model_dir}",
                       "objective.step_rewards=true", "eval.best_of_n=3", f"eval.prm={saved_prm.model_dir}"))
    m = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(job.run_id).data.metrics
    assert 0.0 < m["reward/prm"] < 1.0
    for name in ("gold_reward", "sampled_gold_reward", "prm_score"):
        assert 0.0 <= m[f"eval/best_of_n/{name}"] <= 1.0, name
    # the chosen sample's gold can never beat the oracle best of the same candidates
    assert m["eval/best_of_n/gold_reward"] <= m["eval/gold_reward_best_of_3"] + 1e-9


def test_eval_prm_errors_name_the_key(saved_prm, tmp_path):
    cfg = compose(fast("dataset=steps", "eval.best_of_n=2", "eval.prm=/nonexistent/prm"))
    with pytest.raises(ConfigError, match=r"eval.prm='/nonexistent/prm' does not exist: give the directory of a saved objective=prm"):
        check_prm_eval(cfg.eval)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"eval.prm='.*empty' has no config.json"):
        check_prm_eval({**cfg.eval, "prm": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match=r"eval.prm picks the best of eval.best_of_n samples .* set it to 2 or more"):
        check_prm_eval({**cfg.eval, "prm": str(saved_prm.model_dir), "best_of_n": 1})
    check_prm_eval({**cfg.eval, "prm": str(saved_prm.model_dir)})  # a saved PRM and two samples: fine
