"""Step-level rewards (process supervision): a score at the end of every step, not only at EOS.

A :class:`StepReward` is a reward function (one score per completion, so it serves wherever a
reward does) that can also return its **step rewards**: for each completion, a list of
``(offset, reward)`` pairs, ``offset`` the character position in the completion just past the step
the reward belongs to. Online RL with ``objective.step_rewards=true`` places each one on the
token that closes that character (:func:`step_rewards_of`; the objective maps offsets to tokens).

Two builtin ones, for completions in the ``steps`` task's layout (``"3+4=7; 7-1=6. Answer: 6"``):

* ``process_gold`` (:data:`process_gold`): the task's step verifier, 1/0 per step plus the final
  answer's correctness at the end (:func:`alignx.tasks.steps.process_rewards`);
* ``prm`` (:class:`PRMScorer`, option ``path``): a saved process reward model (``objective=prm``
  output), the probability ``σ(s)`` that each step is correct (:func:`step_scores`).

As a plain reward (one score per completion) both give the **minimum** over their step rewards:
a solution is as good as its worst step (the aggregation PRM-guided best-of-N ranks by too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

from alignx.data.tokenize import encode_prompt
from alignx.errors import ConfigError, ModelLoadError
from alignx.models.heads import token_values
from alignx.rewards.factory import is_reward_factory, reward_factory
from alignx.tasks.steps import process_rewards, step_spans

#: one completion's step rewards: (character offset just past the step, reward), in order
StepRewards = list[tuple[int, float]]
#: the attribute of a saved PRM's config that records the separator it was trained with
SEPARATOR_ATTR = "alignx_step_separator"


@runtime_checkable
class StepReward(Protocol):
    """A reward function that also scores each step of a completion (see the module docstring)."""

    def score_steps(self, prompts: Sequence[str], completions: Sequence[str]) -> list[StepRewards]:
        """For each completion, its ``(offset, reward)`` pairs in order (at least one)."""
        ...


def aggregate_min(step_rewards: Sequence[StepRewards]) -> list[float]:
    """One score per completion: the minimum of its step rewards (a solution is as good as its worst step)."""
    return [min(r for _, r in entries) for entries in step_rewards]


class ProcessGold:
    """The ``steps`` task's gold process reward: 1/0 per verified step, and the final answer's
    correctness at the end of the completion (:func:`alignx.tasks.steps.process_rewards`)."""

    def score_steps(self, prompts: Sequence[str], completions: Sequence[str]) -> list[StepRewards]:
        return [process_rewards(p, c) for p, c in zip(prompts, completions, strict=True)]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """1.0 when every step and the answer are right, else 0.0 (the minimum of the step rewards)."""
        return aggregate_min(self.score_steps(prompts, completions))


#: the registered reward ``process_gold``
process_gold = ProcessGold()


def encode_step_tokens(steps: Sequence[str], tokenizer: Any, separator: str) -> tuple[list[int], list[int]]:
    """(completion ids, index in them of each step's last token) for ``steps`` after a prompt.

    Each step is tokenised on its own (the separator before it, from the second step on), so a
    step's end is a token boundary whatever the tokenizer merges.
    """
    ids: list[int] = []
    ends: list[int] = []
    for i, step in enumerate(steps):
        piece = list(tokenizer((separator if i else "") + step, add_special_tokens=False)["input_ids"])
        if not piece:
            raise ValueError(f"step {i + 1} ({step!r}) tokenises to nothing")
        ids.extend(piece)
        ends.append(len(ids) - 1)
    return ids, ends


@torch.no_grad()
def step_scores(model: torch.nn.Module, tokenizer: Any, prompt: str, steps: Sequence[str], *, separator: str) -> list[float]:
    """The probability that each of ``steps`` is correct, per a trained PRM (a sequence classifier
    with one label, e.g. ``AutoModelForSequenceClassification.from_pretrained(<prm dir>)``).

    ``prompt`` is plain text (no chat template), encoded as training encoded it; ``separator`` must
    be the ``objective.step_separator`` the PRM was trained with. Returns ``σ(s)`` per step, in order.
    """
    p_ids = encode_prompt(prompt, tokenizer, templated=False)
    c_ids, ends = encode_step_tokens(steps, tokenizer, separator)
    device = next(model.parameters()).device
    ids = torch.tensor([p_ids + c_ids], device=device)
    values = token_values(model, ids, torch.ones_like(ids))[0].float()
    return torch.sigmoid(values[[len(p_ids) + e for e in ends]]).tolist()


class PRMScorer:
    """A saved process reward model (``objective=prm`` output) as a :class:`StepReward`.

    The steps of a completion are those of the ``steps`` task's layout
    (:func:`alignx.tasks.steps.step_spans`); each is scored with :func:`step_scores` under the
    separator the PRM was trained with (saved in its config). A completion with no step gets 0.0
    at its end. As a plain reward: the minimum step score.
    """

    def __init__(self, path: str, device: str | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not str(path):
            raise ValueError("path is empty: give the directory of a saved objective=prm model")
        local = Path(str(path)).expanduser()
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"process reward model directory '{path}' has no config.json (expected a saved objective=prm model)")
        self.tokenizer = AutoTokenizer.from_pretrained(local)
        self.model = AutoModelForSequenceClassification.from_pretrained(local).eval()
        self.separator = prm_separator(self.model.config, str(path))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)

    def score_steps(self, prompts: Sequence[str], completions: Sequence[str]) -> list[StepRewards]:
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            spans = step_spans(completion)
            if not spans:
                out.append([(len(completion), 0.0)])
                continue
            scores = step_scores(self.model, self.tokenizer, prompt, [s for s, _ in spans], separator=self.separator)
            out.append([(end, float(s)) for (_, end), s in zip(spans, scores)])
        return out

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The minimum step score of each completion."""
        return aggregate_min(self.score_steps(prompts, completions))


def prm_separator(config: Any, where: str) -> str:
    """The step separator a saved PRM was trained with (recorded in its config by ``objective=prm``)."""
    sep = config.to_dict().get(SEPARATOR_ATTR)
    if not isinstance(sep, str):
        raise ModelLoadError(
            f"'{where}' records no step separator ({SEPARATOR_ATTR} in config.json): it is not a model saved by objective=prm"
        )
    return sep


#: the registered reward ``prm``: a saved process reward model
prm_reward = reward_factory(PRMScorer, help={
    "path": "the directory of a saved objective=prm model",
    "device": "where to run it: cpu, cuda, cuda:1 (null: cuda when available)",
})


def step_rewards_of(
    components: Sequence[tuple[str, float, Any]], prompts: Sequence[str], completions: Sequence[str],
    *, has_eos: Sequence[bool] | None = None, missing_eos_penalty: float | None = None,
) -> list[StepRewards]:
    """The weighted step rewards of a reward's ``components`` (``(name, weight, function)``, as
    :class:`alignx.rewards.combine.Reward` holds them), per completion, sorted by offset.

    A :class:`StepReward` component adds ``weight · reward`` at each of its offsets; any other
    reward adds ``weight · score`` at the end of the completion (offset ``len(completion)``), as an
    outcome reward. Entries at the same offset are summed. A completion without EOS gets, when
    ``missing_eos_penalty`` is set, only that penalty at its end (as :class:`Reward` scores it).
    """
    n = len(completions)
    merged: list[dict[int, float]] = [{} for _ in range(n)]
    for name, weight, fn in components:
        if isinstance(fn, StepReward):
            per = fn.score_steps(list(prompts), list(completions))
        else:
            per = [[(len(c), float(s))] for c, s in zip(completions, fn(list(prompts), list(completions)), strict=True)]
        if len(per) != n:
            raise ValueError(f"reward '{name}' returned step rewards for {len(per)} of {n} completions")
        for i, entries in enumerate(per):
            for offset, r in entries:
                merged[i][int(offset)] = merged[i].get(int(offset), 0.0) + weight * float(r)
    out = [sorted(m.items()) for m in merged]
    if missing_eos_penalty is not None and has_eos is not None:
        out = [e if bool(eos) else [(len(c), float(missing_eos_penalty))] for e, eos, c in zip(out, has_eos, completions, strict=True)]
    return out


def is_step_reward_entry(entry: Any) -> bool:
    """Whether a reward function, or a registered reward factory, gives step rewards (:class:`StepReward`)."""
    if isinstance(entry, StepReward):
        return True
    return is_reward_factory(entry) and isinstance(entry.build, type) and issubclass(entry.build, StepReward)


def check_step_reward_components(components: Sequence[tuple[str, float, Any]], key: str) -> None:
    """ConfigError naming ``key`` when no component (``(name, weight, function or registry entry)``)
    of the reward scores steps."""
    if not any(is_step_reward_entry(fn) for _, _, fn in components):
        names = ", ".join(name for name, _, _ in components) or "none"
        raise ConfigError(
            f"{key}=true needs a step-level reward among reward.components (process_gold, or prm with path=<prm dir>); "
            f"this reward has only outcome rewards ({names})"
        )


__all__ = [
    "PRMScorer", "ProcessGold", "SEPARATOR_ATTR", "StepReward", "StepRewards", "aggregate_min", "check_step_reward_components",
    "encode_step_tokens", "is_step_reward_entry", "prm_reward", "prm_separator", "process_gold", "step_rewards_of", "step_scores",
]
