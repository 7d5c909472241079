"""Per-source evaluation of a dataset mixture (docs/data.md, "Dataset mixtures").

The held-out rows of ``dataset=mixture`` carry ``source`` (:data:`alignx.data.mixture.SOURCE_COLUMN`).
The evaluation suite (:func:`alignx.evaluation.suite.evaluate`) asks this module for:

* :func:`source_reward`: the gold reward of each prompt's own source's task, so a mixture of
  different builtin tasks (sentiment + arithmetic) is gold-scored row by row and the overall
  ``eval/gold_reward_*`` are means over all its rows;
* :func:`row_sources`: each evaluated prompt's source, from which
  :func:`alignx.evaluation.metrics.evaluate_policy` adds ``eval/<source>/gold_reward_*``;
* :func:`source_perplexity`: ``eval/<source>/perplexity``, over that source's held-out rows alone.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import torch
from omegaconf import DictConfig

from alignx.data.mixture import SOURCE_COLUMN
from alignx.data.tokenize import prompt_text
from alignx.errors import ConfigError
from alignx.evaluation.metrics import RewardFn, perplexity
from alignx.registry import Registry

log = logging.getLogger("alignx")


def row_sources(rows: Sequence[Mapping[str, Any]], n: int | None = None) -> list[str] | None:
    """The ``source`` of each of the first ``n`` rows (all rows when None), or None when no row has one."""
    rows = list(rows)[:n]
    if not any(SOURCE_COLUMN in r for r in rows):
        return None
    return [str(r.get(SOURCE_COLUMN)) for r in rows]


def source_tasks(dataset: DictConfig, sources: Sequence[str]) -> dict[str, str | None]:
    """The builtin task that scores each source's rows: its own ``dataset.sources.<name>.task``,
    else ``dataset.task`` (None: no gold reward)."""
    nodes = dataset.get("sources") or {}
    default = dataset.get("task")
    out: dict[str, str | None] = {}
    for name in sources:
        node = nodes.get(name) if name in nodes else None
        task = node.get("task") if node is not None else None
        task = task if task is not None else default
        out[name] = None if task is None else str(task)
    return out


class SourceReward:
    """A reward function that scores each prompt with its own source's gold reward.

    Routed by prompt text (the rendered prompt the suite passes as the reward's prompt), so it
    serves every call the suite makes: greedy and sampled completions, the reference's samples,
    best-of-N's repeated prompts. Each task's reward is called once per call, on its prompts only.
    """

    def __init__(self, task_of_prompt: Mapping[str, str], rewards: Mapping[str, RewardFn]) -> None:
        self.task_of_prompt = dict(task_of_prompt)
        self.rewards = dict(rewards)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        by_task: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            if prompt not in self.task_of_prompt:
                raise ValueError(f"prompt {prompt[:60]!r} is not one of the held-out rows' prompts; no task is known for it")
            by_task.setdefault(self.task_of_prompt[prompt], []).append(i)
        out = [0.0] * len(prompts)
        for task, idx in by_task.items():
            scores = list(self.rewards[task]([prompts[i] for i in idx], [completions[i] for i in idx]))
            for i, score in zip(idx, scores):
                out[i] = float(score)
        return out


def source_reward(
    cfg: DictConfig, registry: Registry, rows: Sequence[Mapping[str, Any]], tokenizer: Any,
) -> Callable[[Sequence[str], Sequence[str]], list[float]] | None:
    """The gold reward of held-out ``rows`` that carry ``source``: each row scored by its source's task
    (:func:`source_tasks`), or None when no row has a source, or when a source has no task with a
    registered reward (a warning names it: the mixture is then evaluated without gold reward).

    Two sources of different tasks with the same prompt text cannot be told apart by the reward:
    a :class:`ConfigError` names both.
    """
    sources = row_sources(rows)
    if sources is None:
        return None
    tasks = source_tasks(cfg.dataset, sorted(set(sources)))
    missing = sorted(name for name, task in tasks.items() if task is None or ("reward", task) not in registry)
    if missing:
        if len(missing) < len(tasks):
            log.warning(
                "held-out rows of the sources %s have no builtin task (dataset.sources.<name>.task) whose gold reward "
                "could score them: the mixture is evaluated without gold reward (perplexity per source only)",
                ", ".join(missing),
            )
        return None
    chat = bool(cfg.data.chat_template)
    task_of_prompt: dict[str, str] = {}
    source_of_prompt: dict[str, str] = {}
    for row, name in zip(rows, sources):
        text = prompt_text(row, tokenizer, chat)
        task = tasks[name]
        if task_of_prompt.setdefault(text, task) != task:
            raise ConfigError(
                f"dataset.sources.{source_of_prompt[text]} (task {task_of_prompt[text]}) and dataset.sources.{name} "
                f"(task {task}) share the held-out prompt {text[:60]!r}: its gold reward would be ambiguous"
            )
        source_of_prompt.setdefault(text, name)
    rewards = {task: registry.get("reward", task) for task in set(tasks.values())}
    return SourceReward(task_of_prompt, rewards)


def source_perplexity(
    model: torch.nn.Module, items: Sequence[Mapping[str, Any]], collate: Callable[[Sequence[dict]], dict], batch_size: int,
) -> dict[str, float]:
    """``eval/<source>/perplexity`` for each source of encoded held-out ``items`` (those carrying
    ``source``), each over that source's items alone, batched as ``eval/perplexity`` is; {} for none."""
    names = sorted({str(it[SOURCE_COLUMN]) for it in items if SOURCE_COLUMN in it})
    out = {}
    for name in names:
        own = [dict(it) for it in items if str(it.get(SOURCE_COLUMN)) == name]
        batches = [collate(own[i : i + batch_size]) for i in range(0, len(own), batch_size)]
        out[f"eval/{name}/perplexity"] = perplexity(model, batches)
    return out
