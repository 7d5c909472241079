"""The evaluation suite a job (and ``alignx eval``) runs on held-out rows after training.

What is measured depends only on the objective's declared contract
(:attr:`~alignx.objectives.Objective.generates_text`, :attr:`~alignx.objectives.Objective.eval_kind`):
a policy gets gold reward, perplexity, learned-RM scores, best-of-N and, with a reference,
KL and win rate; a reward model gets its ranking accuracy on held-out pairs.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterator

import torch
from omegaconf import DictConfig

from alignx.data.rows import encode_split
from alignx.data.tokenize import prompt_is_templated, prompt_text
from alignx.evaluation.metrics import evaluate_policy, pair_accuracy, reference_rows
from alignx.objectives.base import Objective, ReferenceObjective
from alignx.objectives.sft import SFT
from alignx.paths import abs_if_local
from alignx.registry import Registry
from alignx.rewards.model import RewardModelScorer

ReferenceFactory = Callable[[], ContextManager[torch.nn.Module]]


def evaluate(
    cfg: DictConfig, registry: Registry, model: Any, tokenizer: Any, objective_cls: type[Objective], test_rows: list[dict],
    *, reference: ReferenceFactory | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Evaluate ``model`` (trained by ``objective_cls``) on held-out rows; returns (metrics, samples).

    A policy: gold reward (when the dataset names a task), perplexity and, with ``reference`` (a
    factory of context managers yielding the reference policy), KL from it and win rate against
    it. A scorer (``generates_text`` false, ``eval_kind="pairs"``): ranking accuracy on pairs.
    """
    if not cfg.eval.enabled or not test_rows:
        return {}, []
    if not objective_cls.generates_text:
        return _evaluate_scorer(cfg, model, tokenizer, objective_cls, test_rows), []
    test_rows = reference_rows(test_rows)
    if not test_rows:
        return {}, []
    task = cfg.dataset.get("task")
    reward_fn = registry.get("reward", str(task)) if task and ("reward", str(task)) in registry else None
    chat = bool(cfg.data.chat_template)
    # held-out rows in order, repeats included: a task with few distinct prompts (sentiment has a
    # handful of review openings) still gets eval.num_prompts independent samples
    prompts = [prompt_text(r, tokenizer, chat) for r in test_rows][: int(cfg.eval.num_prompts)]
    items, _, _ = encode_split(SFT, test_rows, tokenizer, cfg.data)
    collate = SFT.collate_fn(tokenizer)
    bs = int(cfg.data.eval_batch_size)
    return evaluate_policy(
        model, tokenizer, prompts, cfg.eval,
        reward_fn=reward_fn,
        ppl_batches=[collate(items[i : i + bs]) for i in range(0, len(items), bs)],
        seed=int(cfg.seed),
        prompt_is_templated=any(prompt_is_templated(r, chat) for r in test_rows),
        reference=reference,
        reward_models=eval_reward_models(cfg),
    )


def _evaluate_scorer(cfg: DictConfig, model: Any, tokenizer: Any, objective_cls: type[Objective], rows: list[dict]) -> dict:
    if objective_cls.eval_kind != "pairs":
        return {}
    # a reward model: how often it ranks held-out chosen completions above rejected ones
    pairs = [r for r in rows if isinstance(r.get("prompt"), str)][: int(cfg.eval.num_prompts)]
    scorer = RewardModelScorer.from_model(model, tokenizer, batch_size=int(cfg.data.eval_batch_size))
    return {"eval/rm_accuracy": pair_accuracy(scorer, pairs)} if pairs else {}


def objective_reference(cfg: DictConfig, registry: Registry, objective: Objective) -> ReferenceFactory | None:
    """A factory of context managers yielding the objective's reference policy, or None if it has none.

    Full fine-tuning with precomputed reference log-probs keeps no reference in memory; it is
    rebuilt here (deterministically, from the same model config) only for the KL measurement.
    """
    if not isinstance(objective, ReferenceObjective) or not objective.needs_reference():
        return None

    @contextmanager
    def reference() -> Iterator[torch.nn.Module]:
        with objective.reference() as ref:
            if ref is not None:
                yield ref
                return
        rebuilt, tok = registry.get("model", str(cfg.model.kind))(cfg.model)
        rebuilt = type(objective).prepare_model(rebuilt, tok, cfg.objective)
        yield rebuilt.to(objective.device).eval()

    return reference


def eval_reward_models(cfg: DictConfig) -> dict[str, RewardModelScorer]:
    """Learned reward models that score evaluation samples next to the gold reward (eval.reward_model)."""
    path = cfg.eval.reward_model
    return {"rm": RewardModelScorer(abs_if_local(str(path)))} if path else {}
