"""Data made by a policy: RLAIF preference pairs and RAFT best-of-N demonstrations.

Both sample ``num_samples`` completions per training prompt from a policy and score them with the
``reward`` config group (a gold reward, a learned RM, a weighted mix):

* ``rlaif``: the best and the worst completion of each prompt become a preference pair
  (``prompt``, ``chosen``, ``rejected``), skipped when their scores differ by ``min_margin`` or
  less: rows an RM or DPO stage reads directly;
* ``raft``: the best completion of each prompt becomes a demonstration (``prompt``,
  ``completion``), skipped below ``min_score``: rows an SFT stage reads (RAFT = sample, keep the
  best, fine-tune; repeat).

A pipeline runs them as stages (``kind: rlaif | raft``); the rows land in
``<stage dir>/data.jsonl``, written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from alignx.data.rows import load_rows
from alignx.data.tokenize import prompt_is_templated, prompt_text
from alignx.errors import ConfigError, DataError
from alignx.generation import generate
from alignx.registry import load_plugins
from alignx.rewards.combine import build_reward

DATAGEN_KINDS = ("rlaif", "raft")


def sample_groups(
    model: Any, tokenizer: Any, prompts: Sequence[str], n: int, gen: Mapping[str, Any], *, seed: int = 0,
    prompt_is_templated: bool = False,
) -> list[list[str]]:
    """``n`` sampled completions per prompt, [[c_1 .. c_n] per prompt]."""
    many = [p for p in prompts for _ in range(n)]
    texts = generate(model, tokenizer, many, max_new_tokens=int(gen["max_new_tokens"]), temperature=float(gen["temperature"]),
                     top_k=int(gen["top_k"]), top_p=float(gen["top_p"]), seed=seed, prompt_is_templated=prompt_is_templated)
    return [texts[i : i + n] for i in range(0, len(texts), n)]


def score_groups(reward: Callable[[Sequence[str], Sequence[str]], Sequence[float]], prompts: Sequence[str],
                 groups: Sequence[Sequence[str]]) -> list[list[float]]:
    """The reward of every completion, grouped like ``groups``."""
    flat_p = [p for p, g in zip(prompts, groups) for _ in g]
    flat_c = [c for g in groups for c in g]
    scores = list(reward(flat_p, flat_c))
    out, i = [], 0
    for g in groups:
        out.append([float(s) for s in scores[i : i + len(g)]])
        i += len(g)
    return out


def preference_rows(prompts: Sequence[str], groups: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
                    min_margin: float = 0.0) -> list[dict]:
    """Best vs worst completion of each prompt as a pair; prompts whose spread is <= ``min_margin`` are skipped."""
    rows = []
    for prompt, group, s in zip(prompts, groups, scores):
        best = max(range(len(group)), key=lambda i: s[i])
        worst = min(range(len(group)), key=lambda i: s[i])
        if s[best] - s[worst] <= min_margin or group[best] == group[worst]:
            continue
        rows.append({"prompt": prompt, "chosen": group[best], "rejected": group[worst]})
    return rows


def best_rows(prompts: Sequence[str], groups: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
              min_score: float | None = None) -> list[dict]:
    """The best completion of each prompt as a demonstration; below ``min_score`` (if set) skipped."""
    rows = []
    for prompt, group, s in zip(prompts, groups, scores):
        best = max(range(len(group)), key=lambda i: s[i])
        if (min_score is not None and s[best] < min_score) or not group[best].strip():
            continue
        rows.append({"prompt": prompt, "completion": group[best]})
    return rows


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows as JSON lines atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return path


def generate_dataset(cfg: Any, kind: str, options: Mapping[str, Any], out_path: Path) -> tuple[Path, dict[str, float]]:
    """Sample from ``cfg.model`` on the training prompts of ``cfg.dataset``, score with ``cfg.reward``,
    and write ``kind`` rows to ``out_path``; returns (path, metrics)."""
    if kind not in DATAGEN_KINDS:
        raise ConfigError(f"unknown data stage kind '{kind}'. Valid: {', '.join(DATAGEN_KINDS)}")
    registry = load_plugins()
    n = int(options.get("num_samples", 4))
    if n < 2:
        raise ConfigError(f"num_samples must be >= 2 (a prompt's samples are compared), got {n}")
    model, tokenizer = registry.get("model", str(cfg.model.kind))(cfg.model)
    rows = load_rows(cfg, registry, "prompt", None)["train"][: int(options.get("num_prompts", 256))]
    chat = bool(cfg.data.chat_template)
    prompts = [prompt_text(r, tokenizer, chat) for r in rows]
    templated = any(prompt_is_templated(r, chat) for r in rows)
    if torch.cuda.is_available():
        model = model.cuda()
    reward = build_reward(cfg.reward, registry)
    groups = sample_groups(model, tokenizer, prompts, n, cfg.eval, seed=int(cfg.seed), prompt_is_templated=templated)
    scores = score_groups(reward, prompts, groups)
    if kind == "rlaif":
        out = preference_rows(prompts, groups, scores, float(options.get("min_margin", 0.0)))
    else:
        out = best_rows(prompts, groups, scores, options.get("min_score"))
    if not out:
        raise DataError(f"the {kind} stage kept no rows out of {len(prompts)} prompts (every group tied, or below min_score)",
                        source=str(cfg.model.get("name_or_path", cfg.model.name)))
    write_jsonl(out_path, out)
    flat = [x for s in scores for x in s]
    metrics = {"data/rows": float(len(out)), "data/prompts": float(len(prompts)),
               "data/mean_score": sum(flat) / len(flat),
               "data/mean_best_score": sum(max(s) for s in scores) / len(scores)}
    return out_path, metrics
