"""End-of-training evaluation: gold reward of greedy and sampled completions, perplexity."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

from alignx.generation import generate
from alignx.losses.sft import sft_loss

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


@torch.no_grad()
def perplexity(model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """exp(mean NLL per completion token) over encoded, collated held-out batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            loss, n = sft_loss(out.logits, batch["labels"])
            total += float(loss) * int(n)
            count += int(n)
    finally:
        model.train(was_training)
    return math.exp(total / count) if count else float("nan")


def evaluate_policy(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    cfg: Mapping[str, Any],
    *,
    reward_fn: RewardFn | None = None,
    ppl_batches: Sequence[Mapping[str, torch.Tensor]] = (),
    seed: int = 0,
    prompt_is_templated: bool = False,
) -> tuple[dict[str, float], list[dict]]:
    """Gold reward of greedy and sampled completions, and perplexity; returns (metrics, samples).

    ``samples`` is a table (list of row dicts) of prompts, completions and their gold reward,
    for logging as an artifact.
    """
    metrics: dict[str, float] = {}
    samples: list[dict] = []
    gen = dict(
        max_new_tokens=int(cfg["max_new_tokens"]),
        seed=seed,
        prompt_is_templated=prompt_is_templated,
    )
    if prompts:
        # repeated prompts get independent samples, but their greedy completion is computed once
        unique = list(dict.fromkeys(prompts))
        by_prompt = dict(zip(unique, generate(model, tokenizer, unique, greedy=True, **gen)))
        greedy = [by_prompt[p] for p in prompts]
        sampled = generate(
            model,
            tokenizer,
            prompts,
            temperature=float(cfg["temperature"]),
            top_k=int(cfg["top_k"]),
            top_p=float(cfg["top_p"]),
            **gen,
        )
        g_scores = list(reward_fn(prompts, greedy)) if reward_fn else [None] * len(prompts)
        s_scores = list(reward_fn(prompts, sampled)) if reward_fn else [None] * len(prompts)
        if reward_fn:
            metrics["eval/gold_reward_greedy"] = sum(g_scores) / len(g_scores)
            metrics["eval/gold_reward_sampled"] = sum(s_scores) / len(s_scores)
        n_log = int(cfg.get("num_logged_samples", 16))
        for p, g, gs, s, ss in list(zip(prompts, greedy, g_scores, sampled, s_scores))[:n_log]:
            samples.append({"prompt": p, "greedy": g, "greedy_reward": gs, "sampled": s, "sampled_reward": ss})
    if ppl_batches:
        metrics["eval/perplexity"] = perplexity(model, ppl_batches)
    return metrics, samples
