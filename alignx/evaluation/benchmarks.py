"""Closed-set benchmarks: fixed items with a known answer, scored by accuracy (``eval.benchmarks``).

A benchmark is registered under the ``benchmark`` registry kind as a function of no arguments
returning a :class:`Benchmark`: its items and how they are scored —

* ``mode="choice"`` (multiple choice by log-likelihood): each choice's log-probability given the
  prompt, summed over its tokens (or their mean with ``length_normalised``), with ``eos`` the
  end-of-sequence token after it included (a choice is then a whole completion: ``" 11"`` cannot
  win over ``" 112"`` by being its prefix); an item is right when its answer scores strictly
  above every other choice (a tie at the top is wrong);
* ``mode="exact"`` (exact-match generation): the greedy completion (``eval.max_new_tokens``),
  right when it equals the answer after :func:`normalize_answer`.

Each selected benchmark reports ``eval/benchmark/<name>/accuracy`` and its standard error over
items, ``eval/benchmark/<name>/accuracy_stderr``. Prompts are rendered as the job renders a
plain prompt (wrapped in the chat template when ``data.chat_template`` is set). The builtin
``arithmetic_choice`` and ``arithmetic_exact`` ask held-out (test split) problems of the
``arithmetic`` task.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping, Sequence

import torch

from alignx.data.batching import collate_sft
from alignx.data.tokenize import prompt_text
from alignx.evaluation.metrics import standard_error
from alignx.generation import generate
from alignx.losses.preference import sequence_logps
from alignx.ops.logprobs import IGNORE_INDEX
from alignx.registry import Registry
from alignx.tasks._common import derive_rng
from alignx.tasks.arithmetic import ArithmeticTask, parse_problem

#: scoring modes of a :class:`Benchmark`
MODES = ("choice", "exact")


@dataclass(frozen=True)
class BenchmarkItem:
    """One question: its ``prompt``, the right ``answer`` and, for multiple choice, every option
    (``choices``, the answer among them; empty for exact match)."""

    prompt: str
    answer: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Benchmark:
    """A closed-set benchmark: ``items`` scored by ``mode`` (``"choice"`` or ``"exact"``, see the
    module docstring); for multiple choice, ``length_normalised`` ranks choices by mean rather than
    summed log-prob and ``eos`` scores each choice followed by the end-of-sequence token."""

    mode: Literal["choice", "exact"]
    items: Sequence[BenchmarkItem]
    length_normalised: bool = False
    eos: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"benchmark mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for i, item in enumerate(self.items):
            if self.mode == "choice" and item.answer not in item.choices:
                raise ValueError(f"item {i} ({item.prompt!r}): answer {item.answer!r} is not one of its choices {item.choices}")


# -- scoring ---------------------------------------------------------------------------------------
@torch.no_grad()
def continuation_logps(
    model: torch.nn.Module, tokenizer: Any, contexts: Sequence[str], continuations: Sequence[str], *,
    templated: bool = False, eos: bool = False, batch_size: int = 32, max_positions: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each continuation given its context, its token count), both [N] on CPU.

    A context is encoded as a prompt (BOS added unless ``templated``), the continuation without
    special tokens, followed by EOS with ``eos`` (as SFT trains a completion). With ``max_positions`` a sequence longer than that keeps its end (the
    continuation and the last context tokens).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums, counts = [], []
    try:
        items = []
        for ctx, cont in zip(contexts, continuations, strict=True):
            c_ids = list(tokenizer(ctx, add_special_tokens=not templated)["input_ids"])
            n_ids = list(tokenizer(cont, add_special_tokens=False)["input_ids"]) + ([tokenizer.eos_token_id] if eos else [])
            ids, labels = c_ids + n_ids, [IGNORE_INDEX] * len(c_ids) + n_ids
            if max_positions and len(ids) > max_positions:
                ids, labels = ids[-max_positions:], labels[-max_positions:]
            items.append({"input_ids": ids, "labels": labels})
        for start in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in collate_sft(items[start : start + batch_size], tokenizer.pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            s, n = sequence_logps(logits, batch["labels"])
            sums.append(s.double().cpu())
            counts.append(n.cpu())
    finally:
        model.train(was_training)
    if not sums:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    return torch.cat(sums), torch.cat(counts)


def choice_correct(scores: Sequence[float], answer: int) -> bool:
    """Whether choice ``answer`` scores strictly above every other choice (a tie at the top is wrong)."""
    return all(scores[answer] > s for i, s in enumerate(scores) if i != answer)


_EDGE_PUNCT = ".,;:!?'\"`"


def normalize_answer(text: str) -> str:
    """The form two answers are compared in by exact match: Unicode NFKC, lower case, runs of
    whitespace as one space, and whitespace and ``.,;:!?'"``` stripped from both ends.
    E.g. ``"  The Answer:  82. "`` -> ``"the answer: 82"``."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" " + _EDGE_PUNCT)


def exact_match(prediction: str, answer: str) -> bool:
    """Whether ``prediction`` equals ``answer`` after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(answer)


def score_benchmark(
    benchmark: Benchmark, model: torch.nn.Module, tokenizer: Any, *, chat_template: bool = False,
    max_new_tokens: int = 32, batch_size: int = 32,
) -> list[bool]:
    """Whether ``model`` answers each item of ``benchmark`` right, in item order."""
    items = list(benchmark.items)
    prompts = [prompt_text({"prompt": it.prompt}, tokenizer, chat_template) for it in items]
    if benchmark.mode == "exact":
        # greedy: the benchmark's answer is the model's single best guess, not a sample
        outputs = generate(model, tokenizer, prompts, greedy=True, max_new_tokens=max_new_tokens,
                           prompt_is_templated=chat_template, batch_size=batch_size)
        return [exact_match(out, it.answer) for out, it in zip(outputs, items)]
    contexts = [p for p, it in zip(prompts, items) for _ in it.choices]
    choices = [c for it in items for c in it.choices]
    sums, counts = continuation_logps(model, tokenizer, contexts, choices, templated=chat_template, eos=benchmark.eos,
                                      batch_size=batch_size)
    scores = (sums / counts.clamp(min=1)) if benchmark.length_normalised else sums
    out, start = [], 0
    for it in items:
        k = len(it.choices)
        out.append(choice_correct(scores[start : start + k].tolist(), it.choices.index(it.answer)))
        start += k
    return out


def benchmark_metrics(
    eval_cfg: Mapping[str, Any], registry: Registry, model: torch.nn.Module, tokenizer: Any, *,
    chat_template: bool = False, batch_size: int = 32,
) -> dict[str, float]:
    """``eval/benchmark/<name>/accuracy`` (and ``accuracy_stderr``) for each name in ``eval.benchmarks``,
    on its first ``eval.benchmark_limit`` items (null: all)."""
    metrics: dict[str, float] = {}
    limit = eval_cfg["benchmark_limit"]
    for name in eval_cfg["benchmarks"] or ():
        benchmark = registry.get("benchmark", str(name))()
        items = list(benchmark.items)[: int(limit) if limit else None]
        right = score_benchmark(
            replace(benchmark, items=items), model, tokenizer,
            chat_template=chat_template, max_new_tokens=int(eval_cfg["max_new_tokens"]), batch_size=batch_size,
        )
        values = [1.0 if r else 0.0 for r in right]
        metrics[f"eval/benchmark/{name}/accuracy"] = sum(values) / len(values) if values else float("nan")
        metrics[f"eval/benchmark/{name}/accuracy_stderr"] = standard_error(values)
    return metrics


def check_benchmark_names(eval_cfg: Mapping[str, Any], registry: Registry) -> None:
    """Raise (naming the valid ones) for a name in ``eval.benchmarks`` that no one registered; imports nothing."""
    for name in eval_cfg["benchmarks"] or ():
        registry.check("benchmark", str(name))


# -- the builtin benchmarks ------------------------------------------------------------------------
#: problems in each builtin arithmetic benchmark (held-out: the task's test split)
ARITHMETIC_ITEMS = 200
#: wrong options next to the right one in ``arithmetic_choice`` (chance accuracy 1/4)
ARITHMETIC_DISTRACTORS = 3


def _arithmetic_problems() -> list[str]:
    # seed 0 always: a benchmark is the same questions whatever the job's seed
    return [r["prompt"] for r in ArithmeticTask().rows("prompt", "test", ARITHMETIC_ITEMS, seed=0)]


def arithmetic_choice() -> Benchmark:
    """Multiple choice on held-out ``arithmetic`` problems: the answer and 3 plausible mistakes
    (the task's own near misses, wrong digits, reversals), in a seeded order; scored by summed
    log-prob of the choice and the EOS after it."""
    task = ArithmeticTask()
    rng = derive_rng("benchmark", "arithmetic_choice")
    items = []
    for prompt in _arithmetic_problems():
        answer = f" {parse_problem(prompt)}"
        options = [answer]
        while len(options) < 1 + ARITHMETIC_DISTRACTORS:
            wrong = task.candidate(prompt, rng)
            if wrong not in options:
                options.append(wrong)
        rng.shuffle(options)
        items.append(BenchmarkItem(prompt, answer, tuple(options)))
    return Benchmark("choice", items, eos=True)


def arithmetic_exact() -> Benchmark:
    """Exact match on held-out ``arithmetic`` problems: the greedy completion must be the answer."""
    return Benchmark("exact", [BenchmarkItem(p, str(parse_problem(p))) for p in _arithmetic_problems()])


__all__ = [
    "MODES",
    "Benchmark",
    "BenchmarkItem",
    "arithmetic_choice",
    "arithmetic_exact",
    "benchmark_metrics",
    "check_benchmark_names",
    "choice_correct",
    "continuation_logps",
    "exact_match",
    "normalize_answer",
    "score_benchmark",
]
