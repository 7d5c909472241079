"""``ensemble``: K saved reward models scored together and aggregated into one conservative reward.

Coste et al. (2023, "Reward Model Ensembles Help Mitigate Overoptimization") optimise the policy
against an ensemble of reward models instead of one: the mean, the worst case (``min``, their WCO)
or the mean penalised by the members' disagreement (``uncertainty``: mean - k * std, their UWO
with the standard deviation in place of the variance, so ``k`` is in reward units).

The members are K independently trained reward models (``reward.paths=[<rm dir>, ...]``), not K
heads on one backbone: ``objective=rm`` trains them unchanged (``alignx -m objective=rm seed=0,1,2``;
on a builtin task each seed also draws its own training pairs and label noise), each member is a
plain saved reward model that ``reward=rm`` or ``eval.reward_model`` can read alone, and members
that share no weights disagree more where the data says less, which is what the penalty needs.
The price is K forwards per scored batch instead of one.

The aggregation functions are pure (tensors in, tensors out); :class:`RewardEnsemble` is the
registered reward, which also reports the members' standard deviation per completion (logged by
online RL as ``reward/<component>/std``: the ensemble's disagreement).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch

from alignx.errors import ModelLoadError
from alignx.rewards.factory import reward_factory
from alignx.rewards.model import RewardModelScorer

__all__ = ["AGGREGATES", "RewardEnsemble", "aggregate", "ensemble_reward", "ensemble_std"]

#: how the members' scores become one: their mean, their minimum (worst case), mean - k * std
AGGREGATES = ("mean", "min", "uncertainty")
Aggregate = Literal["mean", "min", "uncertainty"]


def ensemble_std(scores: torch.Tensor) -> torch.Tensor:
    """The members' disagreement: the population standard deviation over the K members (dim 0) of
    ``scores`` [K, N], one value per completion [N].

    Population (divide by K), not sample (K - 1): the K members are the whole ensemble the policy
    is optimised against, not a sample from which to estimate some larger population's spread;
    it also matches Coste et al.'s intra-ensemble variance (1/K sum of squared deviations) and
    is 0, not undefined, for a single member.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [members, completions], got shape {tuple(scores.shape)}")
    return scores.std(dim=0, correction=0)


def aggregate(scores: torch.Tensor, how: str, k: float = 1.0) -> torch.Tensor:
    """One score per completion [N] from the members' scores [K, N].

    ``mean``: the members' mean. ``min``: the lowest member's score (worst-case optimisation).
    ``uncertainty``: mean - ``k`` * :func:`ensemble_std` (population std), which needs K >= 2.
    """
    if scores.dim() != 2 or scores.size(0) < 1:
        raise ValueError(f"scores must be [members >= 1, completions], got shape {tuple(scores.shape)}")
    if how == "mean":
        return scores.mean(dim=0)
    if how == "min":
        return scores.min(dim=0).values
    if how == "uncertainty":
        if scores.size(0) < 2:
            raise ValueError("aggregate 'uncertainty' needs at least 2 members: one member has no disagreement to penalise")
        return scores.mean(dim=0) - k * ensemble_std(scores)
    raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {how!r}")


class RewardEnsemble:
    """K saved reward models (``objective=rm`` outputs) as one reward function.

    Each member scores every completion as :class:`~alignx.rewards.model.RewardModelScorer` does
    (its saved normalisation offset included); :func:`aggregate` makes one score of them.
    :meth:`score_with_details` also returns the members' standard deviation per completion.
    """

    def __init__(
        self,
        paths: list[str],
        aggregate: Aggregate = "mean",
        k: float = 1.0,
        device: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> None:
        # messages start with the option's name: the reward config reports them under its key
        if isinstance(paths, (str, Path)) or not isinstance(paths, Sequence):
            raise ValueError(f"paths must be a list of saved objective=rm model directories, got {paths!r}: "
                             "e.g. reward.paths=[rm0,rm1,rm2]")
        if not paths:
            raise ValueError("paths is empty: give the directories of K >= 1 saved objective=rm models, "
                             "e.g. reward.paths=[rm0,rm1,rm2]")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        if aggregate == "uncertainty" and len(paths) < 2:
            raise ValueError(f"aggregate 'uncertainty' (mean - k * std) needs at least 2 reward models in paths, "
                             f"got 1 ({paths[0]}): one model has no disagreement to penalise; use mean, or add models")
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k >= 0:
            raise ValueError(f"k must be a number >= 0 (the weight of the std penalty), got {k!r}")
        self.aggregate = str(aggregate)
        self.k = float(k)
        self.paths = [str(p) for p in paths]
        self.members: list[RewardModelScorer] = []
        for i, path in enumerate(self.paths):
            try:
                self.members.append(RewardModelScorer(path, device=device, batch_size=batch_size, max_length=max_length))
            except (ModelLoadError, ValueError, OSError) as exc:
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise ValueError(f"paths item {i} ({path}) is not a saved reward model: {reason}") from None

    def member_scores(
        self, prompts: Sequence[str], completions: Sequence[str], *, prompt_is_templated: bool = False
    ) -> torch.Tensor:
        """Every member's scores: [K, N]."""
        return torch.tensor([m(prompts, completions, prompt_is_templated=prompt_is_templated) for m in self.members],
                            dtype=torch.float32).reshape(len(self.members), len(completions))

    def score_with_details(
        self, prompts: Sequence[str], completions: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(aggregated scores [N], {"std": the members' population std [N]})``."""
        scores = self.member_scores(prompts, completions)
        return aggregate(scores, self.aggregate, self.k), {"std": ensemble_std(scores)}

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], *, prompt_is_templated: bool = False
    ) -> list[float]:
        scores = self.member_scores(prompts, completions, prompt_is_templated=prompt_is_templated)
        return aggregate(scores, self.aggregate, self.k).tolist()


#: the registered reward ``ensemble``: its options are the ensemble's arguments
ensemble_reward = reward_factory(RewardEnsemble, help={
    "paths": "a list of K saved objective=rm model directories",
    "aggregate": f"how the K scores become one: {', '.join(AGGREGATES)} (mean - k * std)",
    "k": "the weight of the members' std in aggregate=uncertainty (a number >= 0)",
    "device": "where to run them: cpu, cuda, cuda:1 (null: cuda when available)",
    "batch_size": "completions scored per forward",
    "max_length": "keep at most this many tokens of prompt + completion, from the end (null: all)",
})
