"""Preference pairs from scored samples: the best and the worst of each prompt's K completions.

The row builder of on-policy preference methods (online / iterative DPO): a policy samples K >= 2
completions per prompt, a reward scores them, and each prompt whose samples are not all equally
good gives one ``pairs`` row (``prompt``, ``chosen`` = best, ``rejected`` = worst). A prompt
whose best and worst scores are equal (a tie: every sample equally good, so no preference), or
whose best and worst samples are the same text, gives no row and is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class SampledPairs:
    """What :func:`best_worst_pairs` built from one batch of scored groups."""

    #: ``{"prompt", "chosen", "rejected"}`` rows, in prompt order
    rows: list[dict] = field(default_factory=list)
    #: the scores of each row's chosen and rejected completion, aligned with :attr:`rows`
    chosen_scores: list[float] = field(default_factory=list)
    rejected_scores: list[float] = field(default_factory=list)
    #: prompts left out because their best and worst samples tie (equal score or equal text)
    ties: int = 0
    #: every sample's score, all groups flattened (the policy's mean reward before this round)
    all_scores: list[float] = field(default_factory=list)

    def metrics(self, prefix: str) -> dict[str, float]:
        """``<prefix>/pairs``, ``/ties_skipped``, ``/reward_chosen``, ``/reward_rejected`` (means over
        the pairs; NaN without pairs) and ``/reward_mean`` (over every sample)."""
        def mean(xs: Sequence[float]) -> float:
            return sum(xs) / len(xs) if xs else float("nan")

        return {
            f"{prefix}/pairs": float(len(self.rows)),
            f"{prefix}/ties_skipped": float(self.ties),
            f"{prefix}/reward_chosen": mean(self.chosen_scores),
            f"{prefix}/reward_rejected": mean(self.rejected_scores),
            f"{prefix}/reward_mean": mean(self.all_scores),
        }


def best_worst_pairs(prompts: Sequence[Any], groups: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]) -> SampledPairs:
    """One pair per prompt: its highest-scored completion as chosen, its lowest as rejected.

    ``groups[i]`` are the K completions sampled for ``prompts[i]`` (K may differ between prompts
    but must be at least 2) and ``scores[i]`` their scores. Among equal scores the earlier sample
    is taken as best and the later as worst, so the result does not depend on anything but the
    order given. Ties (best score == worst score, or best text == worst text) are skipped and
    counted in :attr:`SampledPairs.ties`. A prompt is passed through unchanged (a string or a
    message list), so the rows keep the source's prompt form.
    """
    if not len(prompts) == len(groups) == len(scores):
        raise ValueError(f"{len(prompts)} prompts, {len(groups)} groups and {len(scores)} score lists: one each per prompt")
    out = SampledPairs()
    for i, (prompt, group, s) in enumerate(zip(prompts, groups, scores)):
        if len(group) != len(s):
            raise ValueError(f"prompt {i}: {len(group)} completions but {len(s)} scores")
        if len(group) < 2:
            raise ValueError(f"prompt {i}: {len(group)} completion(s); a pair needs at least 2 samples per prompt")
        values = [float(x) for x in s]
        out.all_scores.extend(values)
        best = max(range(len(values)), key=lambda j: (values[j], -j))
        worst = min(range(len(values)), key=lambda j: (values[j], -j))
        if values[best] == values[worst] or group[best] == group[worst]:
            out.ties += 1
            continue
        out.rows.append({"prompt": prompt, "chosen": group[best], "rejected": group[worst]})
        out.chosen_scores.append(values[best])
        out.rejected_scores.append(values[worst])
    return out
