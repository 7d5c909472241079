"""Quality filtering as a data stage (``data.filter``, ``data.keep_fraction``), and low-quality rows to filter.

Alpagasus-style selection: score every train row, keep the best ``data.keep_fraction`` of them.
The score (:data:`FILTERS`, higher = better):

* ``none``: no filtering;
* ``gold``: the builtin task's gold reward (``dataset.task``; in a mixture, each row's source's
  task): ``gold(prompt, completion)`` of a demonstration (``-gold`` of an undesirable unpaired
  one), ``gold(chosen) - gold(rejected)`` of a pair, best minus worst of a ranking -- the
  ``reward`` curriculum's difficulty (:func:`alignx.data.curriculum.reward_difficulty`), reversed;
* ``reward``: the same with the job's ``reward`` config instead of the gold reward, e.g. a trained
  reward model (``reward=rm reward.path=<dir>``).

``round(keep_fraction * n)`` rows are kept (at least one); rows of equal score are taken in a
seeded random order; kept rows keep their order. Only the train split is filtered.

``dataset.low_quality_fraction`` (builtin tasks, sft rows) replaces that fraction of the train
split's demonstrations with completions whose gold reward is below the task's "good" threshold
(:func:`inject_low_quality`): a dataset with known junk, for measuring a filter.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Mapping, Sequence

from alignx.data.curriculum import GoldReward, gold_rewards, reward_difficulty
from alignx.data.sources import SplitRows
from alignx.errors import ConfigError
from alignx.registry import Registry
from alignx.tasks import SyntheticTask

#: values of ``data.filter``
FILTERS = ("none", "gold", "reward")


def keep_top(scores: Sequence[float], keep_fraction: float, seed: int) -> list[int]:
    """Indices of the ``round(keep_fraction * n)`` (at least 1) highest ``scores``, in index order;
    among equal scores a seeded random choice."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ConfigError(f"data.keep_fraction must be in (0, 1], got {keep_fraction}")
    n = len(scores)
    keep = min(n, max(1, round(keep_fraction * n))) if n else 0
    order = list(range(n))
    random.Random(f"{seed}/filter").shuffle(order)
    best = sorted(order, key=lambda i: -scores[i])[:keep]
    return sorted(best)


def _subset(rows: Sequence[dict], indices: Sequence[int]) -> Sequence[dict]:
    if isinstance(rows, SplitRows):
        return SplitRows([rows[i] for i in indices], locations=[rows.location(i) for i in indices], split=rows.split,
                         invalid_dropped=rows.invalid_dropped)
    return [rows[i] for i in indices]


def quality_scores(rows: Sequence[Mapping[str, Any]], scorers: Sequence[GoldReward]) -> list[float]:
    """Each row's quality under its scorer (higher = better; see the module docstring): ``gold`` of a
    desirable demonstration, ``-gold`` of an undesirable one, the gold margin of a comparison."""
    out = []
    for row, fn in zip(rows, scorers):
        q = -reward_difficulty(row, fn)
        demonstration = not isinstance(row.get("chosen"), str) and not row.get("completions") and row.get("label") is not False
        out.append(q + 1.0 if demonstration else q)  # the difficulty of a demonstration is 1 - gold
    return out


def filter_rows(rows: Sequence[dict], method: str, keep_fraction: float, cfg: Any, registry: Registry, seed: int,
                job_reward: Callable[[], GoldReward]) -> Sequence[dict]:
    """The train ``rows`` reduced to the best ``keep_fraction`` by ``method`` (:data:`FILTERS`); ``cfg``
    is the job config; ``job_reward`` builds the job's ``reward`` (called only by ``method="reward"``:
    it may load reward models)."""
    if method not in FILTERS:
        raise ConfigError(f"data.filter={method} is not a quality filter; valid: {', '.join(FILTERS)}")
    if method == "none":
        return rows
    if not 0.0 < keep_fraction <= 1.0:
        raise ConfigError(f"data.keep_fraction must be in (0, 1], got {keep_fraction}")
    if method == "gold":
        scorers = gold_rewards(rows, cfg.dataset, registry)
    else:
        scorers = [job_reward()] * len(rows)
    return _subset(rows, keep_top(quality_scores(rows, scorers), keep_fraction, seed))


def inject_low_quality(rows: Sequence[dict], fraction: float, task_name: Any, registry: Registry, seed: int) -> Sequence[dict]:
    """``rows`` (sft rows of builtin task ``task_name``) with ``round(fraction * n)`` seeded rows' completions
    replaced by the task's candidates scoring below its ``good_threshold``."""
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise ConfigError(f"dataset.low_quality_fraction must be in [0, 1], got {fraction}")
    if not fraction:
        return rows
    if task_name is None or ("task", str(task_name)) not in registry:
        raise ConfigError(f"dataset.low_quality_fraction needs a builtin task (dataset.task={task_name}); valid: "
                          f"{', '.join(registry.names('task'))}")
    task = registry.get("task", str(task_name))()
    if not isinstance(task, SyntheticTask):
        raise ConfigError(f"dataset.low_quality_fraction: task '{task_name}' has no candidate completions to inject")
    if any(not isinstance(r.get("completion"), str) or "label" in r for r in rows):
        raise ConfigError("dataset.low_quality_fraction replaces demonstrations: it applies to sft rows (prompt, completion)")
    rng = random.Random(f"{seed}/low_quality")
    picked = set(rng.sample(range(len(rows)), round(fraction * len(rows))))
    out = []
    for i, row in enumerate(rows):
        if i not in picked:
            out.append(row)
            continue
        for _ in range(task.max_attempts):
            bad = task.candidate(row["prompt"], rng)
            if task.score(row["prompt"], bad) < task.good_threshold:
                break
        else:
            raise RuntimeError(f"task '{task_name}': no low-quality candidate for {row['prompt']!r}")
        out.append({**row, "completion": bad})
    if isinstance(rows, SplitRows):
        return SplitRows(out, locations=rows.locations, split=rows.split, invalid_dropped=rows.invalid_dropped)
    return out
