"""Pairwise evaluation by a local judge LM, with the order swapped to cancel position bias (``eval.judge``).

For each held-out prompt the judge (any saved causal LM) reads ``eval.judge_template`` filled
with the prompt and two answers — the policy's sampled completion and the test row's reference
completion (the baseline every dataset has, with or without a reference model) — and picks the
answer whose label (``eval.judge_labels``, e.g. ``" A"`` / ``" B"``) it gives the higher
log-likelihood right after the text. It is asked twice, the policy's answer first then second:

* **win**: it prefers the policy's answer in both orders; **loss**: the baseline's in both;
* **tie**: the orders disagree, or either order is an exact tie of the two labels;
* **position-biased**: it picked the same position (first or second) in both orders, whichever
  answer stood there — a verdict decided by where the answer is, not what it says.

Reported: ``eval/judge_win_rate`` = (wins + ties / 2) / prompts (0.5 = parity, like
``eval/win_rate``), ``eval/judge_tie_rate`` = ties / prompts and ``eval/judge_position_bias`` =
position-biased prompts / prompts. Judges (as LLM judges are known to) that prefer one position
push prompts into ties rather than into either side's wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from alignx.errors import ConfigError, ModelLoadError
from alignx.evaluation.benchmarks import continuation_logps
from alignx.models.loading import build_hf
from alignx.paths import abs_if_local

#: the judge's choice in one order: the answer shown first, the one shown second, or neither
FIRST, SECOND, TIE = "first", "second", "tie"
#: placeholders ``eval.judge_template`` must hold
TEMPLATE_FIELDS = ("prompt", "first", "second")


def choice(logp_first: float, logp_second: float) -> str:
    """The position a judge picks from its two labels' log-likelihoods (:data:`TIE` when equal)."""
    return FIRST if logp_first > logp_second else SECOND if logp_second > logp_first else TIE


def aggregate_verdicts(policy_first: Sequence[str], policy_second: Sequence[str]) -> dict[str, float]:
    """Win, tie and position-bias rates from a judge's choices in both orders (see the module docstring).

    ``policy_first[i]``: the position chosen for prompt ``i`` with the policy's answer shown
    first; ``policy_second[i]``: with it shown second. Each is :data:`FIRST`, :data:`SECOND` or :data:`TIE`.
    """
    if len(policy_first) != len(policy_second):
        raise ValueError(f"one verdict per order and prompt expected, got {len(policy_first)} and {len(policy_second)}")
    n = len(policy_first)
    if not n:
        return {"eval/judge_win_rate": float("nan"), "eval/judge_tie_rate": float("nan"),
                "eval/judge_position_bias": float("nan")}
    wins = ties = biased = 0
    for a, b in zip(policy_first, policy_second):
        for v in (a, b):
            if v not in (FIRST, SECOND, TIE):
                raise ValueError(f"a verdict is one of {FIRST!r}, {SECOND!r}, {TIE!r}, got {v!r}")
        if a == FIRST and b == SECOND:
            wins += 1
        elif not (a == SECOND and b == FIRST):
            ties += 1
        biased += a == b != TIE
    return {"eval/judge_win_rate": (wins + ties / 2) / n, "eval/judge_tie_rate": ties / n,
            "eval/judge_position_bias": biased / n}


class PairwiseJudge:
    """A causal LM that picks the better of two answers by the log-likelihood of their labels."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, template: str, labels: Sequence[str], *, batch_size: int = 32) -> None:
        """``template`` holds ``{prompt}``, ``{first}`` and ``{second}``; ``labels`` name the first and second answer."""
        check_template(template)
        if len(labels) != 2 or labels[0] == labels[1]:
            raise ConfigError(f"eval.judge_labels must be two different labels (first answer, second answer), got {list(labels)}")
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.template, self.labels, self.batch_size = template, tuple(str(x) for x in labels), batch_size
        #: longer judge texts keep their end (the answers and the question the labels follow); not
        #: every transformers config declares a position limit (e.g. rotary-only models), hence the lookup
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def load(cls, path: str, template: str, labels: Sequence[str], *, device: torch.device | str = "cpu",
             batch_size: int = 32) -> PairwiseJudge:
        """The judge saved at ``path`` (a causal LM directory, as alignx or ``save_pretrained`` writes)."""
        local = judge_dir(path)
        try:
            model, tokenizer = build_hf({"name_or_path": str(local), "dtype": None})
        except ModelLoadError as exc:
            raise ModelLoadError(f"eval.judge: {exc}") from None
        return cls(model.to(device), tokenizer, template, labels, batch_size=batch_size)

    def text(self, prompt: str, first: str, second: str) -> str:
        """The judge's input for one order (answers stripped of surrounding whitespace)."""
        return self.template.format(prompt=prompt.strip(), first=first.strip(), second=second.strip())

    def choose(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[str]:
        """The position the judge picks for each (prompt, first answer, second answer)."""
        texts = [self.text(p, a, b) for p, a, b in zip(prompts, first, second, strict=True)]
        contexts = [t for t in texts for _ in self.labels]
        labels = [label for _ in texts for label in self.labels]
        logps, _ = continuation_logps(self.model, self.tokenizer, contexts, labels,
                                      batch_size=self.batch_size, max_positions=self.max_positions)
        pairs = logps.view(-1, 2).tolist()
        return [choice(a, b) for a, b in pairs]

    def compare(self, prompts: Sequence[str], policy: Sequence[str], baseline: Sequence[str]) -> dict[str, float]:
        """:func:`aggregate_verdicts` of the judge's choices with the policy's answer first, then second."""
        return aggregate_verdicts(self.choose(prompts, policy, baseline), self.choose(prompts, baseline, policy))


def check_template(template: str) -> None:
    """Raise ConfigError unless ``template`` formats with exactly the fields in :data:`TEMPLATE_FIELDS`."""
    try:
        template.format(**{f: "" for f in TEMPLATE_FIELDS})
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"eval.judge_template must use only the placeholders {{prompt}}, {{first}}, {{second}} "
            f"(write a literal brace as {{{{ or }}}}): {type(exc).__name__}: {exc}"
        ) from None
    missing = [f for f in TEMPLATE_FIELDS if "{" + f + "}" not in template]
    if missing:
        raise ConfigError(f"eval.judge_template lacks the placeholder(s) {', '.join('{' + f + '}' for f in missing)}")


def judge_from_config(eval_cfg: Mapping[str, Any], *, device: torch.device | str = "cpu", batch_size: int = 32) -> PairwiseJudge | None:
    """The judge ``eval.judge`` names (None when it is null)."""
    path = eval_cfg["judge"]
    if not path:
        return None
    return PairwiseJudge.load(str(path), str(eval_cfg["judge_template"]), list(eval_cfg["judge_labels"]),
                              device=device, batch_size=batch_size)


def check_judge(eval_cfg: Mapping[str, Any]) -> None:
    """Fail before any work on a judge that cannot be used: ``eval.judge`` not a model directory, a bad template."""
    path = eval_cfg["judge"]
    if not path:
        return
    check_template(str(eval_cfg["judge_template"]))
    judge_dir(str(path))


def judge_dir(path: str) -> Path:
    """The local directory of the judge ``eval.judge`` names; ConfigError naming the key when it holds no model."""
    local = Path(abs_if_local(str(path))).expanduser()
    if not (local / "config.json").is_file():
        what = "does not exist" if not local.exists() else "has no config.json"
        raise ConfigError(f"eval.judge='{path}' {what}: give the directory of a saved causal LM (config.json, weights, tokenizer)")
    return local
