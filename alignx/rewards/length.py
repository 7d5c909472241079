"""``length_penalty``: a builtin reward with options, for mixing with a task's reward."""

from __future__ import annotations

from typing import Sequence

from alignx.rewards.factory import RewardFn, reward_factory


@reward_factory(help={
    "target": "characters a completion may have without penalty (an int >= 0)",
    "scale": "characters beyond target that cost 1.0 (a number > 0)",
})
def length_penalty(target: int = 64, scale: float = 64.0) -> RewardFn:
    """Penalise long completions: ``-max(0, len(completion) - target) / scale``, with ``len`` in
    characters. 0 up to ``target`` characters, then -1 per ``scale`` characters beyond it, so a
    weighted sum with a task reward in [0, 1] prefers the shorter of two equally good completions."""
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"target must be an int >= 0, got {target!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a number > 0, got {scale!r}")

    def score(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [-max(0, len(c) - target) / scale for c in completions]

    return score
