"""alignx's own registrations, loaded through the ``alignx.plugins`` entry point like any plugin."""

from __future__ import annotations

from alignx.data.presets import register as register_formats
from alignx.data.sources import SOURCES
from alignx.losses.dpo_family import BUILTIN_PREFERENCE_LOSSES
from alignx.models.adapters import lora, no_adapter
from alignx.models.loading import build_hf, build_llama
from alignx.objectives.dpo import DPO
from alignx.objectives.grpo import GRPO, RLOO
from alignx.objectives.kto import KTO
from alignx.objectives.ppo import PPO
from alignx.objectives.rm import RewardModel
from alignx.objectives.sft import SFT
from alignx.registry import Registry
from alignx.rewards.combine import reward_factory
from alignx.rewards.model import RewardModelScorer
from alignx.tasks import BUILTIN_TASKS


def register(registry: Registry) -> None:
    """Register the built-in objectives, tasks, dataset sources, models, adapters, rewards and preference losses."""
    registry.register("objective", SFT.name, SFT)
    registry.register("objective", DPO.name, DPO)
    registry.register("objective", KTO.name, KTO)
    # the DPO family: objective=dpo objective.loss=<name> looks these up
    for loss in BUILTIN_PREFERENCE_LOSSES:
        registry.register("preference_loss", loss.name, loss)
    registry.register("objective", RewardModel.name, RewardModel)
    for online in (PPO, GRPO, RLOO):
        registry.register("objective", online.name, online)
    for name, task in BUILTIN_TASKS.items():
        registry.register("task", name, task)
        # each task's gold reward is also a reward function under the task's name
        registry.register("reward", name, task().gold_reward)
    for name, loader in SOURCES.items():
        registry.register("dataset", name, loader)
    # a trained reward model: a factory, configured with its path (reward=rm reward.path=...)
    registry.register("reward", "rm", reward_factory(RewardModelScorer))
    registry.register("model", "llama", build_llama)
    registry.register("model", "hf", build_hf)
    registry.register("adapter", "none", no_adapter)
    registry.register("adapter", "lora", lora)
    registry.register("adapter", "dora", lora)  # DoRA is LoRA with use_dora=true in its config
    register_formats(registry)
