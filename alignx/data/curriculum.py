"""Curriculum ordering (``data.curriculum``): the train split ordered from easy to hard by a difficulty score.

Scores (:data:`CURRICULA`; lower = easier):

* ``none``: no curriculum; batches come in the usual shuffled, length-bucketed order;
* ``length``: the characters of the row's text -- the prompt plus its longest completion
  (:func:`length_difficulty`): short rows first;
* ``loss``: the starting model's mean NLL per token of the row's training target
  (:func:`alignx.data.target_loss.target_nll`: the completion of a demonstration, the chosen side of a pair, the
  best-ranked completion, the final assistant turn), tokenised exactly as training will see it:
  what the model already predicts well comes first. It needs the starting model, so the job
  orders the train split after building it (one no-grad forward pass over the train rows), and
  only for objectives that train a policy (a reward model has no token loss to read);
* ``reward``: how clear the task's gold reward says the row is (:func:`reward_difficulty`):
  for a demonstration (sft, unpaired, rated rows) ``1 - gold(prompt, completion)``, so the best
  demonstrations come first; for a comparison (pairs, ranked) ``-(gold(best) - gold(worst))``, so
  comparisons the gold reward separates widely come first and near-ties last. The gold reward is
  the builtin task's (``dataset.task``; in a mixture, each row's source's ``task``), applied to the
  row's untemplated prompt.

Rows of equal score keep a seeded random order (a shuffle by ``seed`` before a stable sort), so
the order is deterministic in the seed. The order holds for training only: with a curriculum the
batch sampler cuts batches from the items in order, with neither shuffling nor length bucketing
(:class:`alignx.data.batching.BucketBatchSampler`, ``ordered``), and every epoch repeats it.
``length`` keeps most of bucketing's gain anyway, since neighbours have similar lengths.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

from alignx.data.mixture import SOURCE_COLUMN
from alignx.data.sources import SplitRows
from alignx.data.templates import ORIGINAL_PROMPT, prompt_of
from alignx.errors import ConfigError
from alignx.registry import Registry

#: values of ``data.curriculum``
CURRICULA = ("none", "length", "reward", "loss")
#: curricula scored by the starting model: the job applies them once the model is built
MODEL_CURRICULA = ("loss",)

#: (prompts, completions) -> gold rewards in [0, 1]
GoldReward = Callable[[Sequence[str], Sequence[str]], list[float]]
#: train rows -> the starting model's mean NLL per target token of each (``data.curriculum=loss``)
LossScorer = Callable[[Sequence[Mapping[str, Any]]], list[float]]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # a conversation
        return "".join(str(m.get("content", "")) for m in value if isinstance(m, Mapping))
    return ""


def completions_of(row: Mapping[str, Any]) -> list[str]:
    """The completions a row holds: ``completion``, ``chosen`` and ``rejected``, ``completions``, or
    the final assistant turn of ``messages``."""
    if isinstance(row.get("chosen"), str):
        return [row["chosen"], row["rejected"]]
    if row.get("completions"):
        return [str(c) for c in row["completions"]]
    if isinstance(row.get("completion"), str):
        return [row["completion"]]
    messages = row.get("messages")
    if messages and messages[-1].get("role") == "assistant":
        return [str(messages[-1]["content"])]
    return []


def length_difficulty(row: Mapping[str, Any]) -> float:
    """Characters of the prompt (or conversation before the answer) plus the longest completion."""
    messages = row.get("messages")
    prompt = _text(messages[:-1]) if messages and "prompt" not in row else _text(row.get("prompt"))
    return float(len(prompt) + max((len(c) for c in completions_of(row)), default=0))


def reward_difficulty(row: Mapping[str, Any], gold: GoldReward) -> float:
    """``1 - gold`` of a demonstration; ``-(gold(best) - gold(worst))`` of a comparison (see the module docstring)."""
    prompt = row.get(ORIGINAL_PROMPT) or prompt_of(row)
    completions = completions_of(row)
    if prompt is None or not completions:
        raise ConfigError("data.curriculum=reward scores a row's completions with the gold reward, and this row has "
                          f"none (columns {sorted(row)}); use data.curriculum=length or none")
    scores = gold([prompt] * len(completions), completions)
    if isinstance(row.get("chosen"), str):
        return -(scores[0] - scores[1])
    if row.get("completions"):
        ranks = list(row["ranks"])
        return -(scores[ranks.index(min(ranks))] - scores[ranks.index(max(ranks))])
    if row.get("label") is False:  # an undesirable example: the worse it is, the clearer
        return scores[0]
    return 1.0 - scores[0]


def training_target(row: Mapping[str, Any]) -> str | None:
    """The completion a row trains the policy towards: ``completion``, ``chosen``, the best-ranked of
    ``completions`` (rank 0 is best), or the final assistant turn of ``messages``."""
    if isinstance(row.get("chosen"), str):
        return row["chosen"]
    if row.get("completions"):
        ranks = list(row["ranks"])
        return str(row["completions"][ranks.index(min(ranks))])
    completions = completions_of(row)
    return completions[0] if completions else None


def curriculum_order(scores: Sequence[float], seed: int) -> list[int]:
    """Row indices from the lowest score to the highest; equal scores in a seeded random order."""
    order = list(range(len(scores)))
    random.Random(f"{seed}/curriculum").shuffle(order)
    return sorted(order, key=lambda i: scores[i])


def gold_rewards(rows: Sequence[Mapping[str, Any]], dataset_cfg: Mapping[str, Any], registry: Registry) -> list[GoldReward]:
    """The gold reward of each row: ``dataset.task``'s, or in a mixture the task of the row's source."""
    sources = dataset_cfg.get("sources") or {}
    cache: dict[str, GoldReward] = {}

    def reward(task: Any, where: str) -> GoldReward:
        if task is None:
            raise ConfigError(f"data.curriculum=reward scores rows with a builtin task's gold reward, and {where} names no "
                              "task; use data.curriculum=length or none")
        if ("reward", str(task)) not in registry:
            raise ConfigError(f"data.curriculum=reward: {where} names task {task!r}, which has no gold reward; valid: "
                              f"{', '.join(registry.names('task'))}")
        if str(task) not in cache:
            cache[str(task)] = registry.get("reward", str(task))
        return cache[str(task)]

    out = []
    for row in rows:
        source = row.get(SOURCE_COLUMN)
        if source is not None and source in sources:
            out.append(reward(sources[source].get("task"), f"dataset.sources.{source}.task"))
        else:
            out.append(reward(dataset_cfg.get("task"), "dataset.task"))
    return out


def apply_curriculum(
    rows: Sequence[dict], curriculum: str, dataset_cfg: Mapping[str, Any], registry: Registry, seed: int,
    loss_scores: LossScorer | None = None,
) -> Sequence[dict]:
    """The train ``rows`` in curriculum order (see the module docstring); ``none`` returns them as they are.
    ``loss_scores`` (the starting model's :func:`alignx.data.target_loss.target_nll`) is required by ``loss``."""
    if curriculum not in CURRICULA:
        raise ConfigError(f"data.curriculum={curriculum} is not a curriculum; valid: {', '.join(CURRICULA)}")
    if curriculum == "none":
        return rows
    if curriculum == "length":
        scores = [length_difficulty(r) for r in rows]
    elif curriculum == "loss":
        if loss_scores is None:
            raise ValueError("data.curriculum=loss needs the starting model's loss_scores")
        scores = loss_scores(rows)
    else:
        golds = gold_rewards(rows, dataset_cfg, registry)
        scores = [reward_difficulty(r, g) for r, g in zip(rows, golds)]
    order = curriculum_order(scores, seed)
    ordered = [rows[i] for i in order]
    if isinstance(rows, SplitRows):
        return SplitRows(ordered, locations=[rows.location(i) for i in order], split=rows.split,
                         invalid_dropped=rows.invalid_dropped)
    return ordered
