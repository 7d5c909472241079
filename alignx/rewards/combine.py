"""The ``reward`` config group -> one checked reward: a weighted sum of registered rewards.

A registry ``reward`` entry is either a reward function ``(prompts, completions) -> scores`` (the
builtin tasks' gold rewards, plugin functions) or a :class:`~alignx.rewards.factory.RewardFactory`
(made by :func:`~alignx.rewards.reward_factory`) that takes a component's options and returns one,
e.g. ``rm`` with ``path`` builds a :class:`~alignx.rewards.model.RewardModelScorer`. Config::

    reward:
      name: mix
      components:                      # component name -> weight and options, summed
        gold: {name: ${dataset.task}, weight: 1.0}
        length_penalty: {weight: 0.5, target: 48}
      missing_eos_penalty: -1.0        # score of a completion that never emitted EOS (null = off)

Every score is checked: one finite number per completion, else a :class:`RewardError` naming the
component. RL objectives call :meth:`Reward.score` and log :meth:`Reward.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch
from omegaconf import OmegaConf

from alignx.errors import ConfigError
from alignx.registry import Registry, load_plugins
from alignx.rewards.factory import (
    RewardError,
    RewardFn,
    check_reward_config,
    is_reward_factory,
    reward_factory,
)

__all__ = ["DetailedReward", "Reward", "RewardError", "RewardFn", "build_reward", "check_scores", "is_reward_factory",
           "reward_factory"]


def check_scores(name: str, scores: Any, n: int) -> torch.Tensor:
    """``scores`` as a float tensor [n]; RewardError naming ``name`` unless it is n finite numbers."""
    try:
        t = torch.as_tensor(scores if isinstance(scores, torch.Tensor) else list(scores), dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise RewardError(
            f"reward '{name}' must return one number per completion, got {type(scores).__name__}: {exc}"
        ) from None
    t = t.detach().cpu()
    if t.dim() == 2 and t.size(-1) == 1:
        t = t.squeeze(-1)
    if t.dim() != 1 or t.numel() != n:
        raise RewardError(
            f"reward '{name}' returned shape {tuple(t.shape)} for {n} completions; expected ({n},): one score per completion"
        )
    bad = (~torch.isfinite(t)).nonzero().flatten().tolist()
    if bad:
        raise RewardError(
            f"reward '{name}' returned {t[bad[0]].item()} (not finite) for completion {bad[0]}"
            f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}; rewards must be finite numbers"
        )
    return t


@runtime_checkable
class DetailedReward(Protocol):
    """A reward function that also reports per-completion details next to its scores (not summed,
    only logged as ``reward/<component>/<detail>``), e.g. an ensemble's disagreement."""

    def score_with_details(
        self, prompts: Sequence[str], completions: Sequence[str]
    ) -> tuple[Any, Mapping[str, Any]]:
        """``(one score per completion, {detail name: one value per completion})``."""
        ...


@dataclass
class Reward:
    """A weighted sum of reward functions, checked, with an optional missing-EOS score."""

    #: (component name, weight, function)
    components: list[tuple[str, float, RewardFn]] = field(default_factory=list)
    #: score given instead of the reward to a completion that never emitted EOS (None: off)
    missing_eos_penalty: float | None = None

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.components]

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], *, has_eos: Sequence[bool] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total [N], {component name: its unweighted scores [N]})`` on CPU; a
        :class:`DetailedReward` component adds ``<name>/<detail>`` entries, not in the total."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"one prompt per completion expected, got {len(prompts)} prompts and {n} completions")
        total = torch.zeros(n)
        parts: dict[str, torch.Tensor] = {}
        for name, weight, fn in self.components:
            if isinstance(fn, DetailedReward):  # e.g. an ensemble: also its members' std, as <name>/std
                scores, details = fn.score_with_details(list(prompts), list(completions))
                parts[name] = check_scores(name, scores, n)
                for key, values in details.items():
                    parts[f"{name}/{key}"] = check_scores(f"{name}/{key}", values, n)
            else:
                parts[name] = check_scores(name, fn(list(prompts), list(completions)), n)
            total = total + weight * parts[name]
        if self.missing_eos_penalty is not None and has_eos is not None:
            eos = torch.as_tensor(has_eos, dtype=torch.bool).cpu()
            total = torch.where(eos, total, torch.full_like(total, float(self.missing_eos_penalty)))
        return total, parts

    @staticmethod
    def metrics(parts: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """``{"reward/<component>": mean unweighted score}`` of the ``parts`` :meth:`score` returned:
        what each component contributed, before its weight and the missing-EOS score."""
        return {f"reward/{name}": float(part.float().mean()) for name, part in parts.items()}

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The plain reward-function interface (no EOS information)."""
        return self.score(prompts, completions)[0].tolist()


def build_reward(cfg: Mapping[str, Any], registry: Registry | None = None) -> Reward:
    """Build the :class:`Reward` described by the ``reward`` config node: check it
    (:func:`~alignx.rewards.factory.check_reward_config`), then call each factory with its options."""
    registry = registry or load_plugins()
    built = []
    for comp in check_reward_config(cfg, registry):
        entry = registry.get("reward", comp.reward)
        if is_reward_factory(entry):
            try:
                fn = entry(**comp.options)
            except ValueError as exc:  # the factory refused an option's value
                message = (str(exc).splitlines() or [type(exc).__name__])[0]
                first = message.split(maxsplit=1)[0] if message.strip() else ""
                where = comp.source(first) if first in comp.options else comp.where
                raise ConfigError(f"{where}: {message} (reward '{comp.reward}')") from None
        else:
            fn = entry
        built.append((comp.key, comp.weight, fn))
    node = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    penalty = node.get("missing_eos_penalty")
    return Reward(built, None if penalty is None else float(penalty))
