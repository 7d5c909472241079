"""The builtin-task interface: synthetic tasks whose gold reward is a known function."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

#: Row kinds a task (or any dataset source) can produce, with their columns.
#:   sft:      prompt (str), completion (str)
#:   prompt:   prompt (str)
#:   pairs:    prompt (str), chosen (str), rejected (str)
#:   ranked:   prompt (str), completions (list[str], K >= 2), ranks (list of numbers, lower = better)
#:   unpaired: prompt (str), completion (str), label (bool: True = desirable)
#:   rated:    prompt (str), completion (str), rating (float: higher = better)
ROW_KINDS = ("sft", "prompt", "pairs", "ranked", "unpaired", "rated")
SPLITS = ("train", "val", "test")


class Task(ABC):
    """A synthetic task generated deterministically from a seed, with a gold reward."""

    #: registry name, also the config-group option (dataset/<name>.yaml) and MLflow tag value
    name: str = ""

    @abstractmethod
    def rows(self, kind: str, split: str, n: int, seed: int = 0, label_noise: float = 0.0) -> list[dict]:
        """Return ``n`` rows of ``kind`` (see ROW_KINDS) for ``split`` (see SPLITS).

        Deterministic in (kind, split, n, seed, label_noise). Prompts of different splits are disjoint.
        ``label_noise`` is the probability that a preference pair's chosen/rejected are swapped
        (only meaningful for ``pairs``; unpaired labels may be flipped likewise). A task that
        generates ``ranked`` rows takes the number of completions per row as a keyword ``k``; one
        that generates ``rated`` rows takes the standard deviation of the Gaussian noise added to
        the gold reward as a keyword ``rating_noise``.
        """

    @abstractmethod
    def gold_reward(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Score each (prompt, completion) in [0, 1]; higher is better. Pure and deterministic."""
