"""alignx's own registrations, loaded through the ``alignx.plugins`` entry point like any plugin.

Everything that needs torch, Lightning or transformers is registered by its import path
(``"module:attr"``) and imported when a job uses it; only the stdlib-light tables (tasks, dataset
sources, row formats) are imported here. This is what lets ``alignx plugins``, ``alignx --help``
and every config error answer without importing the training stack.
"""

from __future__ import annotations

from alignx.data.presets import register as register_formats
from alignx.data.sources import SOURCES
from alignx.registry import Registry
from alignx.tasks import BUILTIN_TASKS

#: objective name -> "module:class"
OBJECTIVES = {
    "sft": "alignx.objectives.sft:SFT",
    "dpo": "alignx.objectives.dpo:DPO",
    "kto": "alignx.objectives.kto:KTO",
    "rm": "alignx.objectives.rm:RewardModel",
    "prm": "alignx.objectives.prm:ProcessRewardModel",
    "pro": "alignx.objectives.listwise:PRO",
    "rrhf": "alignx.objectives.listwise:RRHF",
    "coh": "alignx.objectives.coh:CoH",
    "rwr": "alignx.objectives.rated:RWR",
    "steerlm": "alignx.objectives.rated:SteerLM",
    "ppo": "alignx.objectives.ppo:PPO",
    "grpo": "alignx.objectives.grpo:GRPO",
    "rloo": "alignx.objectives.grpo:RLOO",
    "dapo": "alignx.objectives.grpo:DAPO",
    "gspo": "alignx.objectives.grpo:GSPO",
    "reinforce_pp": "alignx.objectives.grpo:ReinforcePP",
    "online_dpo": "alignx.objectives.online_dpo:OnlineDPO",
    "distill": "alignx.objectives.distill:Distill",
    "gkd": "alignx.objectives.distill:GKD",
}
#: the DPO family: objective=dpo objective.loss=<name> looks these up
PREFERENCE_LOSSES = {
    name: f"alignx.losses.dpo_family:{name.upper()}"
    for name in ("sigmoid", "cdpo", "robust", "hinge", "ipo", "simpo", "orpo")
}
MODELS = {"llama": "alignx.models.loading:build_llama", "hf": "alignx.models.loading:build_hf"}
# DoRA is LoRA with use_dora=true in its config
ADAPTERS = {"none": "alignx.models.adapters:no_adapter", "lora": "alignx.models.adapters:lora",
            "dora": "alignx.models.adapters:lora", "probe": "alignx.models.adapters:probe"}
#: rewards beyond each task's gold reward: a trained reward model (reward=rm reward.path=...) and a length penalty
REWARDS = {"rm": "alignx.rewards.model:rm_reward", "length_penalty": "alignx.rewards.length:length_penalty",
           "ensemble": "alignx.rewards.ensemble:ensemble_reward",
           "process_gold": "alignx.rewards.steps:process_gold", "prm": "alignx.rewards.steps:prm_reward"}

#: closed-set benchmarks for eval.benchmarks (held-out arithmetic problems: multiple choice, exact match)
BENCHMARKS = {name: f"alignx.evaluation.benchmarks:{name}" for name in ("arithmetic_choice", "arithmetic_exact")}


def register(registry: Registry) -> None:
    """Register the built-in objectives, tasks, dataset sources, models, adapters, rewards and preference losses."""
    for kind, table in (("objective", OBJECTIVES), ("preference_loss", PREFERENCE_LOSSES), ("model", MODELS),
                        ("adapter", ADAPTERS), ("reward", REWARDS), ("benchmark", BENCHMARKS)):
        for name, path in table.items():
            registry.register(kind, name, path)
    for name, task in BUILTIN_TASKS.items():
        registry.register("task", name, task)
        # each task's gold reward is also a reward function under the task's name
        registry.register("reward", name, task().gold_reward)
    for name, loader in SOURCES.items():
        registry.register("dataset", name, loader)
    # several of the sources above mixed by rate (dataset=mixture)
    registry.register("dataset", "mixture", "alignx.data.mixture:load_mixture")
    register_formats(registry)
