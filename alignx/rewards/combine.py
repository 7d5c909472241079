"""The ``reward`` config group -> one checked reward: a weighted sum of registered reward functions.

A registry ``reward`` entry is either a reward function ``(prompts, completions) -> scores`` (the
builtin tasks' gold rewards, plugin functions) or a *factory* (marked with :func:`reward_factory`)
that takes the component's options and returns one, e.g. ``rm`` with ``path`` builds a
:class:`~alignx.rewards.model.RewardModelScorer`. Config::

    reward:
      name: mix
      components:                      # summed with their weights
        - {name: sentiment, weight: 1.0}
        - {name: rm, weight: 0.5, path: outputs/rm/model}
      missing_eos_penalty: -1.0        # score of a completion that never emitted EOS (null = off)

Every score is checked: one finite number per completion, else a :class:`RewardError` naming the
reward. RL objectives call :meth:`Reward.score`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from alignx.errors import AlignxError, ConfigError
from alignx.registry import load_plugins

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
FACTORY_MARK = "__alignx_reward_factory__"


class RewardError(AlignxError):
    """A reward function returned something that is not one finite score per completion."""


def reward_factory(obj: Any) -> Any:
    """Mark a registered reward as a factory: alignx calls it with the component's options
    (every key but ``name`` and ``weight``) to get the reward function."""
    setattr(obj, FACTORY_MARK, True)
    return obj


def is_reward_factory(obj: Any) -> bool:
    return bool(getattr(obj, FACTORY_MARK, False))


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


@dataclass
class Reward:
    """A weighted sum of reward functions, checked, with an optional missing-EOS score."""

    #: (name, weight, function)
    components: list[tuple[str, float, RewardFn]] = field(default_factory=list)
    #: score given instead of the reward to a completion that never emitted EOS (None: off)
    missing_eos_penalty: float | None = None

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.components]

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], *, has_eos: Sequence[bool] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total [N], {component name: its unweighted scores [N]})`` on CPU."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"one prompt per completion expected, got {len(prompts)} prompts and {n} completions")
        total = torch.zeros(n)
        parts: dict[str, torch.Tensor] = {}
        for name, weight, fn in self.components:
            parts[name] = check_scores(name, fn(list(prompts), list(completions)), n)
            total = total + weight * parts[name]
        if self.missing_eos_penalty is not None and has_eos is not None:
            eos = torch.as_tensor(has_eos, dtype=torch.bool).cpu()
            total = torch.where(eos, total, torch.full_like(total, float(self.missing_eos_penalty)))
        return total, parts

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The plain reward-function interface (no EOS information)."""
        return self.score(prompts, completions)[0].tolist()


def build_reward(cfg: Mapping[str, Any], registry: Any = None) -> Reward:
    """Build the :class:`Reward` described by the ``reward`` config node."""
    from omegaconf import OmegaConf


    registry = registry or load_plugins()
    node = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    components = node.get("components") or []
    if not components:
        raise ConfigError("reward.components is empty: name at least one reward, e.g. reward.components=[{name: sentiment}]")
    built = []
    for i, comp in enumerate(components):
        if not isinstance(comp, Mapping) or not comp.get("name"):
            raise ConfigError(f"reward.components[{i}] must be a mapping with a 'name' (a registered reward), got {comp!r}")
        comp = dict(comp)
        name = str(comp.pop("name"))
        weight = float(comp.pop("weight", 1.0))
        if not math.isfinite(weight):
            raise ConfigError(f"reward.components[{i}].weight must be a finite number, got {weight}")
        entry = registry.get("reward", name)
        if is_reward_factory(entry):
            fn = entry(**comp)
        elif comp:
            raise ConfigError(
                f"reward '{name}' is a plain reward function and takes no options, but reward.components[{i}] "
                f"gives {sorted(comp)}"
            )
        else:
            fn = entry
        built.append((name, weight, fn))
    penalty = node.get("missing_eos_penalty")
    return Reward(built, None if penalty is None else float(penalty))
