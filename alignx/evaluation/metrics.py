"""Evaluation metrics as plain functions: gold reward of greedy and sampled completions,
perplexity, KL from the reference policy, win rate, best-of-N, reward-model ranking accuracy."""

from __future__ import annotations

import math
from typing import Any, Callable, ContextManager, Mapping, Sequence

import torch

from alignx.data.batching import collate_sft
from alignx.data.mixture import SOURCE_COLUMN
from alignx.data.tokenize import encode_prompt
from alignx.generation import Rollout, generate, generate_rollouts, position_ids
from alignx.losses.preference import sequence_logps
from alignx.losses.sft import sft_loss
from alignx.ops.logprobs import IGNORE_INDEX, token_logprobs
from alignx.rewards.model import RewardModelScorer

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def reference_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Held-out rows of any kind as sft rows: a prompt and a good reference completion.

    pairs -> the chosen completion; ranked -> the best-ranked one; unpaired -> the desirable
    rows (all rows if none is); sft rows pass through. A message-list prompt becomes a
    ``messages`` conversation. Prompts feed generation, completions feed perplexity. A dataset
    mixture's ``source`` column is kept (per-source evaluation groups by it).
    """
    out = []
    desirable = [r for r in rows if r.get("label") is True]
    for row in desirable if desirable else rows:
        if "completion" not in row and "messages" in row:
            out.append(dict(row))
            continue
        if "chosen" in row:
            completion = row["chosen"]
        elif "completions" in row:
            ranks = list(row["ranks"])
            completion = row["completions"][ranks.index(min(ranks))]
        else:
            completion = row["completion"]
        prompt = row.get("prompt", "")
        if isinstance(prompt, list):
            out.append({"messages": [*prompt, {"role": "assistant", "content": completion}]})
        else:
            out.append({"prompt": prompt, "completion": completion})
        if SOURCE_COLUMN in row:
            out[-1][SOURCE_COLUMN] = row[SOURCE_COLUMN]
    return out


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


@torch.no_grad()
def completion_logps(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    prompt_is_templated: bool = False,
    batch_size: int = 32,
) -> torch.Tensor:
    """Summed log-probability of each completion given its prompt, [N] (on CPU)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        items = []
        for p, c in zip(prompts, completions):
            p_ids = encode_prompt(p, tokenizer, prompt_is_templated)
            c_ids = list(tokenizer(c, add_special_tokens=False)["input_ids"])
            items.append({"input_ids": p_ids + c_ids, "labels": [IGNORE_INDEX] * len(p_ids) + c_ids})
        for start in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in collate_sft(items[start : start + batch_size], tokenizer.pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            out.append(sequence_logps(logits, batch["labels"])[0].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def sample_rollouts(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    prompt_is_templated: bool = False,
    batch_size: int = 64,
) -> tuple[list[str], list[Rollout]]:
    """Sampled completions as text and as the token ids they were drawn as (a Rollout per batch):
    :func:`alignx.generation.generate_rollouts` without greedy decoding, so the texts equal what
    :func:`alignx.generation.generate` returns for the same arguments."""
    return generate_rollouts(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
        top_p=top_p, seed=seed, prompt_is_templated=prompt_is_templated, batch_size=batch_size,
    )


@torch.no_grad()
def rollout_logps(model: torch.nn.Module, rollouts: Sequence[Rollout], *, batch_size: int = 16) -> torch.Tensor:
    """Summed log-probability under ``model`` of each sampled response (its EOS included) given
    its prompt, [N] on CPU, in rollout order. Forwards ``batch_size`` rows at a time."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for rollout in rollouts:
            for idx in torch.arange(rollout.response_ids.size(0)).split(batch_size):
                r = rollout.select(idx.to(rollout.response_ids.device)).to(device)
                mask = r.attention_mask
                # positions over real tokens, as the sampler saw them (prompts are left-padded)
                logits = model(input_ids=r.input_ids, attention_mask=mask, position_ids=position_ids(mask)).logits
                labels = r.response_ids.masked_fill(~r.response_mask.bool(), IGNORE_INDEX)
                out.append(token_logprobs(logits[:, r.prompt_width - 1 : -1, :], labels).sum(-1).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def kl_to_reference(
    model: torch.nn.Module, reference: Callable[[], ContextManager[torch.nn.Module]], rollouts: Sequence[Rollout],
) -> float:
    """Monte-Carlo KL(π || π_ref) per sequence: mean over samples y ~ π of log π(y|x) - log π_ref(y|x).

    ``rollouts`` are the policy's samples as token ids (:func:`sample_rollouts`); log-probs are
    those of exactly these tokens, EOS included, so the estimate is unbiased (never negative in
    expectation) when they were sampled at temperature 1 without top-k/p truncation (evaluation's
    defaults); otherwise it is a KL-like distance on those samples. ``reference`` enters the
    reference policy (e.g. the same model with adapters disabled), so the policy's log-probs are
    taken first.
    """
    policy = rollout_logps(model, rollouts)
    with reference() as ref:
        ref_lp = rollout_logps(ref, rollouts)
    return _sequence_kl(policy, ref_lp)


def _sequence_kl(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> float:
    """Mean of log π(y|x) - log π_ref(y|x) over samples y ~ π (NaN for none)."""
    return float((policy_logps - reference_logps).mean()) if policy_logps.numel() else float("nan")


def win_rate(policy_scores: Sequence[float], reference_scores: Sequence[float]) -> float:
    """Share of prompts where the policy's completion scores higher than the reference's; a tie counts half."""
    if len(policy_scores) != len(reference_scores):
        raise ValueError(f"one reference score per policy score expected, got {len(reference_scores)} and {len(policy_scores)}")
    if not policy_scores:
        return float("nan")
    wins = sum(1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_scores, reference_scores))
    return wins / len(policy_scores)


def pair_accuracy(score: RewardFn, rows: Sequence[Mapping[str, Any]]) -> float:
    """Share of preference pairs whose chosen completion ``score`` rates above the rejected one (ties: half)."""
    prompts = [r["prompt"] for r in rows]
    chosen = list(score(prompts, [r["chosen"] for r in rows]))
    rejected = list(score(prompts, [r["rejected"] for r in rows]))
    return win_rate(chosen, rejected)


def best_of_n(scores: Sequence[float], n: int) -> list[float]:
    """The best of each consecutive group of ``n`` scores (``n`` samples per prompt, in prompt order)."""
    if n < 1 or len(scores) % n:
        raise ValueError(f"{len(scores)} scores are not whole groups of n={n}")
    return [max(scores[i : i + n]) for i in range(0, len(scores), n)]


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
    reference: Callable[[], ContextManager[torch.nn.Module]] | None = None,
    reward_models: Mapping[str, RewardFn] | None = None,
    judge: Callable[[Sequence[str]], Mapping[str, float]] | None = None,
    task_prompts: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Gold reward of greedy and sampled completions, and perplexity; returns (metrics, samples).

    Each gold reward mean comes with its standard error over prompts,
    ``eval/gold_reward_greedy_stderr`` and ``eval/gold_reward_sampled_stderr`` (:func:`standard_error`).

    With ``reference``, also ``eval/kl_to_reference`` on the sampled completions' token ids (see
    :func:`kl_to_reference`) and ``eval/win_rate``: how often the policy's sample beats the
    reference policy's sample for the same prompt by the gold reward (``eval/win_rate_<rm>`` by
    each reward model); ``cfg.best_of_n`` > 1 adds ``eval/gold_reward_best_of_<n>``; each of ``reward_models`` (name -> reward function, e.g. a
    :class:`~alignx.rewards.model.RewardModelScorer`) adds ``eval/<name>_reward_greedy|sampled``,
    the learned (proxy) reward next to the gold one. ``judge``, called with the sampled completions
    (one per prompt, in order), returns metrics to add (the suite's pairwise judge,
    :meth:`alignx.evaluation.judge.PairwiseJudge.compare`). ``samples`` is a table (list of row dicts)
    of prompts, completions and their gold reward, for logging as an artifact.

    ``task_prompts`` (default: ``prompts``) are the held-out prompts themselves when the policy is
    asked something else (``prompts``: an objective's :meth:`~alignx.objectives.base.Objective.generation_prompt`,
    e.g. with a feedback phrase appended): rewards, reward models and the samples table read them,
    and the reference answers them, as it was never taught the policy's conditioning. The KL is
    still measured on the policy's own samples, in the context the policy saw.

    ``groups`` (one name per prompt: a dataset mixture's sources) adds, for each group ``g``,
    ``eval/<g>/gold_reward_greedy|sampled`` (and their ``_stderr``) and, with ``reference``,
    ``eval/<g>/win_rate``: the same per-prompt values as the overall metrics, over that group's
    prompts only (:func:`group_metrics`); the samples table gets a ``source`` column.
    """
    metrics: dict[str, float] = {}
    samples: list[dict] = []
    task_prompts = list(prompts if task_prompts is None else task_prompts)
    if len(task_prompts) != len(prompts):
        raise ValueError(f"task_prompts has {len(task_prompts)} prompts for {len(prompts)} prompts")
    if groups is not None and len(groups) != len(prompts):
        raise ValueError(f"groups has {len(groups)} names for {len(prompts)} prompts")
    if prompts:
        gen = dict(max_new_tokens=int(cfg["max_new_tokens"]), seed=seed, prompt_is_templated=prompt_is_templated)
        sampling = dict(temperature=float(cfg["temperature"]), top_k=int(cfg["top_k"]), top_p=float(cfg["top_p"]))
        # repeated prompts get independent samples, but their greedy completion is computed once
        unique = list(dict.fromkeys(prompts))
        by_prompt = dict(zip(unique, generate(model, tokenizer, unique, greedy=True, **gen)))
        greedy = [by_prompt[p] for p in prompts]
        sampled, rollouts = sample_rollouts(model, tokenizer, prompts, **sampling, **gen)
        g_scores = list(reward_fn(task_prompts, greedy)) if reward_fn else [None] * len(prompts)
        s_scores = list(reward_fn(task_prompts, sampled)) if reward_fn else [None] * len(prompts)
        if reward_fn:
            metrics["eval/gold_reward_greedy"] = _mean(g_scores)
            metrics["eval/gold_reward_sampled"] = _mean(s_scores)
            # means over a few prompts: their standard errors say which gaps between jobs are noise
            metrics["eval/gold_reward_greedy_stderr"] = standard_error(g_scores)
            metrics["eval/gold_reward_sampled_stderr"] = standard_error(s_scores)
        ref_sampled: list[str] | None = None
        ref_scores: list[float] | None = None
        if reference is not None:
            # the policy's log-probs first: the reference may be the same module with adapters disabled
            policy_lp = rollout_logps(model, rollouts)
            # entered once: the KL's reference log-probs of the policy's samples, then the
            # reference's own samples for the same prompts with the same seed (the win rate's opponent)
            with reference() as ref:
                ref_lp = rollout_logps(ref, rollouts)
                ref_sampled = generate(ref, tokenizer, task_prompts, **sampling, **gen)
            metrics["eval/kl_to_reference"] = _sequence_kl(policy_lp, ref_lp)
            if reward_fn:
                ref_scores = list(reward_fn(task_prompts, ref_sampled))
                metrics["eval/win_rate"] = win_rate(s_scores, ref_scores)
        if judge is not None:
            metrics.update(judge(sampled))
        for name, fn in (reward_models or {}).items():
            metrics.update(_reward_model_metrics(name, fn, task_prompts, greedy, sampled, ref_sampled, prompt_is_templated))
        n = int(cfg["best_of_n"])
        if n > 1 and reward_fn:
            # inference-time alignment: sample n per prompt, keep the best by the gold reward
            many = [p for p in prompts for _ in range(n)]
            samples_n = generate(model, tokenizer, many, **sampling, **{**gen, "seed": seed + 1})
            scored = list(reward_fn([p for p in task_prompts for _ in range(n)], samples_n))
            metrics[f"eval/gold_reward_best_of_{n}"] = _mean(best_of_n(scored, n))
        if groups is not None and reward_fn:
            metrics.update(group_metrics(groups, g_scores, s_scores, ref_scores))
        rows = zip(task_prompts, greedy, g_scores, sampled, s_scores)
        samples = [{"prompt": p, "greedy": g, "greedy_reward": gs, "sampled": s, "sampled_reward": ss}
                   for p, g, gs, s, ss in list(rows)[: int(cfg["num_logged_samples"])]]
        if groups is not None:
            samples = [{**row, SOURCE_COLUMN: name} for row, name in zip(samples, groups)]
    if ppl_batches:
        metrics["eval/perplexity"] = perplexity(model, ppl_batches)
    return metrics, samples


def group_metrics(
    groups: Sequence[str], greedy: Sequence[float], sampled: Sequence[float], reference: Sequence[float] | None = None,
) -> dict[str, float]:
    """Per-group gold-reward metrics from per-prompt scores (``groups[i]`` names prompt ``i``'s group).

    For each group ``g``: ``eval/<g>/gold_reward_greedy`` and ``eval/<g>/gold_reward_sampled`` (the
    mean of its prompts' scores), their ``_stderr`` (:func:`standard_error`), ``eval/<g>/num_prompts``
    and, with the reference policy's sample scores, ``eval/<g>/win_rate`` (:func:`win_rate`).
    """
    out: dict[str, float] = {}
    for name in sorted(set(groups)):
        idx = [i for i, g in enumerate(groups) if g == name]
        g, s = [greedy[i] for i in idx], [sampled[i] for i in idx]
        out[f"eval/{name}/num_prompts"] = float(len(idx))
        out[f"eval/{name}/gold_reward_greedy"] = _mean(g)
        out[f"eval/{name}/gold_reward_sampled"] = _mean(s)
        out[f"eval/{name}/gold_reward_greedy_stderr"] = standard_error(g)
        out[f"eval/{name}/gold_reward_sampled_stderr"] = standard_error(s)
        if reference is not None:
            out[f"eval/{name}/win_rate"] = win_rate(s, [reference[i] for i in idx])
    return out


def _reward_model_metrics(
    name: str, fn: RewardFn, prompts: Sequence[str], greedy: Sequence[str], sampled: Sequence[str],
    ref_sampled: Sequence[str] | None, prompt_is_templated: bool,
) -> dict[str, float]:
    """A learned (proxy) reward's view of the same samples: ``eval/<name>_reward_greedy|sampled``, ``eval/win_rate_<name>``."""
    # a reward-model scorer encodes prompts itself and must know whether they are chat-templated
    kw = {"prompt_is_templated": prompt_is_templated} if isinstance(fn, RewardModelScorer) else {}
    rm_sampled = list(fn(prompts, sampled, **kw))
    out = {f"eval/{name}_reward_greedy": _mean(fn(prompts, greedy, **kw)), f"eval/{name}_reward_sampled": _mean(rm_sampled)}
    if ref_sampled is not None:
        out[f"eval/win_rate_{name}"] = win_rate(rm_sampled, list(fn(prompts, ref_sampled, **kw)))
    return out


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of ``values``: sample standard deviation (n - 1) / sqrt(n); NaN for fewer than 2."""
    values = [float(v) for v in values]
    n = len(values)
    if n < 2:
        return float("nan")
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def _mean(values: Sequence[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
