"""PRM-guided best-of-N at evaluation (``eval.prm=<saved objective=prm dir>`` with ``eval.best_of_n=N``).

For every held-out prompt the policy samples ``N`` completions (the same candidates, seed and
sampling settings as ``eval/gold_reward_best_of_<N>``, which picks by the gold reward itself); a
saved process reward model scores every step of each (:class:`~alignx.rewards.steps.PRMScorer`),
a completion's score is the **minimum** over its steps (a solution is as good as its worst step;
one with no step scores 0), and the completion with the highest score is kept (the first on ties).
Metrics:

* ``eval/best_of_n/gold_reward``: mean gold reward (the task's final-answer correctness) of the chosen ones;
* ``eval/best_of_n/sampled_gold_reward``: mean gold reward of all ``N`` candidates (plain sampling);
* ``eval/best_of_n/prm_score``: mean PRM score (minimum step probability) of the chosen ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from alignx.errors import ConfigError
from alignx.generation import generate
from alignx.paths import abs_if_local
from alignx.rewards.factory import RewardFn
from alignx.rewards.steps import PRMScorer, aggregate_min


def check_prm_eval(eval_cfg: Mapping[str, Any]) -> None:
    """Fail before any work on an ``eval.prm`` that cannot be used: not a model directory, or
    ``eval.best_of_n`` below 2 (nothing to choose between). ConfigError naming the key."""
    path = eval_cfg["prm"]
    if not path:
        return
    local = Path(abs_if_local(str(path))).expanduser()
    if not (local / "config.json").is_file():
        what = "does not exist" if not local.exists() else "has no config.json"
        raise ConfigError(f"eval.prm='{path}' {what}: give the directory of a saved objective=prm model")
    if int(eval_cfg["best_of_n"]) < 2:
        raise ConfigError(
            f"eval.prm picks the best of eval.best_of_n samples per prompt by the PRM; eval.best_of_n is "
            f"{eval_cfg['best_of_n']}: set it to 2 or more"
        )


def choose_best(scores: Sequence[float], n: int) -> list[int]:
    """Index of the highest score in each consecutive group of ``n`` (the first on ties)."""
    if n < 1 or len(scores) % n:
        raise ValueError(f"{len(scores)} scores are not whole groups of n={n}")
    return [start + max(range(n), key=lambda j: (scores[start + j], -j)) for start in range(0, len(scores), n)]


@torch.no_grad()
def prm_best_of_n(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], eval_cfg: Mapping[str, Any], *,
    reward_fn: RewardFn | None, seed: int, prompt_is_templated: bool = False, task_prompts: Sequence[str] | None = None,
) -> dict[str, float]:
    """The ``eval/best_of_n/*`` metrics of the module docstring for ``prompts`` (what the policy is
    asked); the PRM and the gold reward read ``task_prompts`` (default: ``prompts``)."""
    check_prm_eval(eval_cfg)
    task_prompts = list(prompts if task_prompts is None else task_prompts)
    n = int(eval_cfg["best_of_n"])
    device = next(model.parameters()).device
    scorer = PRMScorer(abs_if_local(str(eval_cfg["prm"])), device=str(device))
    many = [p for p in prompts for _ in range(n)]
    candidates = generate(
        model, tokenizer, many, max_new_tokens=int(eval_cfg["max_new_tokens"]), temperature=float(eval_cfg["temperature"]),
        top_k=int(eval_cfg["top_k"]), top_p=float(eval_cfg["top_p"]), seed=seed + 1, prompt_is_templated=prompt_is_templated,
    )
    asked = [p for p in task_prompts for _ in range(n)]
    scores = aggregate_min(scorer.score_steps(asked, candidates))
    chosen = choose_best(scores, n)
    metrics = {"eval/best_of_n/prm_score": sum(scores[i] for i in chosen) / len(chosen)}
    if reward_fn is not None:
        gold = [float(x) for x in reward_fn(asked, candidates)]
        metrics["eval/best_of_n/gold_reward"] = sum(gold[i] for i in chosen) / len(chosen)
        metrics["eval/best_of_n/sampled_gold_reward"] = sum(gold) / len(gold)
    return metrics
