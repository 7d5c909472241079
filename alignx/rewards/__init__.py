"""Rewards for online RL and data generation: what a plugin needs to write one, import-light (no torch).

A reward is a function ``(prompts, completions) -> one finite float per completion``; a reward
with options is a :func:`reward_factory` whose keyword parameters are read from the config
(``reward.components.<name>.<option>``). See ``docs/rewards.md``. The weighted sum the objectives
score with is :class:`alignx.rewards.combine.Reward` (built by ``alignx.rewards.combine.build_reward``).
"""

from alignx.rewards.factory import (
    Component,
    RewardError,
    RewardFactory,
    RewardFn,
    RewardOption,
    check_reward_config,
    is_reward_factory,
    read_components,
    reward_factory,
    reward_model_paths,
)
from alignx.rewards.length import length_penalty

__all__ = [
    "Component", "RewardError", "RewardFactory", "RewardFn", "RewardOption", "check_reward_config",
    "is_reward_factory", "length_penalty", "read_components", "reward_factory", "reward_model_paths",
]
