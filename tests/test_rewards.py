"""Scoring: gold rewards, a trained RM, plugin functions, weighted sums, the missing-EOS score,
per-component metrics, and clear errors for rewards that return the wrong thing. (The config side,
components and options, is tests/test_reward_config.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.models.heads import add_reward_head
from alignx.models.loading import build_llama, save_pretrained_atomic
from alignx.registry import Registry, load_plugins
from alignx.rewards import RewardError, reward_factory
from alignx.rewards.combine import Reward, build_reward
from alignx.rewards.model import RewardModelScorer
from alignx.tasks import BUILTIN_TASKS
from conftest import FAST, require_example_plugin

PROMPTS = ["The film was", "The plot was"]
COMPLETIONS = [" great and warm.", " dull."]


def test_default_reward_is_the_dataset_tasks_gold_reward():
    cfg = compose(["dataset=sentiment"])
    reward = build_reward(cfg.reward)
    assert reward.names == ["gold"] and cfg.reward.components.gold.name == "sentiment"
    expected = BUILTIN_TASKS["sentiment"]().gold_reward(PROMPTS, COMPLETIONS)
    assert reward(PROMPTS, COMPLETIONS) == pytest.approx(expected)


def _registry_with(**fns):
    registry = Registry()
    for name, fn in fns.items():
        registry.register("reward", name, fn)
    return registry


def test_weighted_sum_and_missing_eos_score_hand_computed():
    registry = _registry_with(
        length=lambda p, c: [float(len(x)) for x in c],  # 3, 1
        const=lambda p, c: [0.5] * len(c),
    )
    cfg = {"components": {"length": {"weight": 2.0}, "half": {"name": "const", "weight": -1.0}}, "missing_eos_penalty": -1.0}
    reward = build_reward(cfg, registry)
    total, parts = reward.score(["a", "b"], ["abc", "d"])
    assert total.tolist() == pytest.approx([2 * 3 - 0.5, 2 * 1 - 0.5])  # 5.5, 1.5
    # parts are unweighted, keyed by component name (not the registered name)
    assert parts["length"].tolist() == [3.0, 1.0] and parts["half"].tolist() == [0.5, 0.5]
    assert reward.metrics(parts) == {"reward/length": 2.0, "reward/half": 0.5}
    # the second completion never emitted EOS: it scores the penalty instead
    total, _ = reward.score(["a", "b"], ["abc", "d"], has_eos=torch.tensor([True, False]))
    assert total.tolist() == pytest.approx([5.5, -1.0])


@pytest.mark.parametrize(
    "returned, message",
    [
        ([1.0], r"reward 'bad' returned shape \(1,\) for 2 completions"),
        ([[1.0, 2.0], [3.0, 4.0]], r"reward 'bad' returned shape \(2, 2\)"),
        ([1.0, float("nan")], r"reward 'bad' returned nan \(not finite\) for completion 1"),
        ([math.inf, 0.0], r"reward 'bad' returned inf \(not finite\) for completion 0"),
        (["high", "low"], r"reward 'bad' must return one number per completion"),
    ],
)
def test_a_reward_returning_the_wrong_thing_is_named(returned, message):
    reward = build_reward({"components": {"bad": {"weight": 1.0}}}, _registry_with(bad=lambda p, c: returned))
    with pytest.raises(RewardError, match=message):
        reward(PROMPTS, COMPLETIONS)


def test_unknown_reward_lists_the_registered_ones():
    with pytest.raises(Exception, match="unknown reward 'sentimnet'.*Did you mean 'sentiment'"):
        build_reward({"components": {"gold": {"name": "sentimnet"}}}, load_plugins())


def test_options_to_a_plain_reward_function_are_an_error():
    with pytest.raises(ConfigError, match=r"^reward.components.gold.path: reward 'sentiment' is a plain reward function and takes no options"):
        build_reward(compose(["+reward.components.gold.path=x"]).reward, load_plugins())


def test_plugin_reward_from_an_installed_package():
    require_example_plugin()
    reward = build_reward(compose(["~reward.components.gold", "+reward.components.brevity.weight=2.0"]).reward)
    # brevity = 1 - len/40: " dull." has 6 characters -> 2 * 0.85
    assert reward(["p"], [" dull."]) == pytest.approx([2 * (1 - 6 / 40)])


def test_reward_rm_scores_with_a_saved_reward_model(tmp_path):
    cfg = compose([*FAST])
    model, tok = build_llama(cfg.model)
    rm = add_reward_head(model, tok).eval()
    save_pretrained_atomic(tmp_path / "rm", rm, tok)
    reward = build_reward(compose(["reward=rm", f"reward.path={tmp_path / 'rm'}"]).reward)
    assert reward.names == ["rm"]
    expected = RewardModelScorer(tmp_path / "rm")(PROMPTS, COMPLETIONS)
    assert reward(PROMPTS, COMPLETIONS) == pytest.approx(expected)
    # the shipped mix (gold + 0.5 x length penalty) plus the RM, added as one more component
    mix = build_reward(compose(["reward=mix", "dataset=sentiment", f"+reward.components.rm.path={tmp_path / 'rm'}",
                                "+reward.components.rm.weight=0.5", "+reward.components.rm.batch_size=1"]).reward)
    assert mix.names == ["gold", "length_penalty", "rm"]
    gold = BUILTIN_TASKS["sentiment"]().gold_reward(PROMPTS, COMPLETIONS)
    # both completions are under the length penalty's 64 characters: it adds 0
    assert mix(PROMPTS, COMPLETIONS) == pytest.approx([g + 0.5 * e for g, e in zip(gold, expected)], abs=1e-5)
    assert mix.components[2][2].batch_size == 1  # the option reached the scorer


def test_reward_rm_without_a_path_says_what_to_set():
    with pytest.raises(ConfigError, match=r"^reward.path is required: component 'rm' \(reward 'rm'\) needs option 'path' "
                       r"\(the directory of a saved objective=rm model\); set reward.path=<value>$"):
        build_reward(compose(["reward=rm"]).reward)


def test_reward_factory_receives_the_component_options():
    seen = {}

    @reward_factory
    def scaled(factor: float):
        seen["factor"] = factor
        return lambda p, c: [factor] * len(c)

    reward = build_reward({"components": {"scaled": {"factor": 3.0}}}, _registry_with(scaled=scaled))
    assert seen == {"factor": 3.0} and reward(["a"], ["b"]) == [3.0]
    assert isinstance(reward, Reward)
