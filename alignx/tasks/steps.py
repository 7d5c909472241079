"""The ``steps`` task: multi-step arithmetic whose completion shows every step (process supervision).

A prompt is a chain of one-digit operands joined by ``+``/``-``, evaluated left to right (no
precedence, so each step is one operation on the running value)::

    prompt      "3+4-1+2="
    completion  "3+4=7; 7-1=6; 6+2=8. Answer: 8"
    steps       ["3+4=7", "7-1=6", "6+2=8"]

The gold reward is final-answer correctness (1 or 0, no partial credit). :func:`verify_steps` says
which steps are correct (pure). Besides the usual kinds (sft, prompt, pairs, ranked, unpaired,
rated: their bad completions are corrupted solutions), the task emits ``steps`` rows
``{prompt, steps, step_labels}`` for a process reward model: correct solutions, and with
probability ``corruption_rate`` a corrupted one (one step's result made wrong, later steps carried
on consistently from the wrong value; that step and every later one labelled 0).
"""

from __future__ import annotations

import random
import re
from numbers import Real
from typing import Sequence

from alignx.tasks._common import (
    SyntheticTask,
    TaskArgumentError,
    check_rows_args,
    derive_rng,
)

#: the row kind of step-labelled rows (prompt, steps, step_labels); validated by alignx.data.formats
STEPS_KIND = "steps"
#: what joins the steps of a completion (a process reward model reads a score at each step's last token)
STEP_SEPARATOR = "; "
#: what follows the last step
ANSWER_PREFIX = ". Answer: "

_PROMPT_RE = re.compile(r"(\d)((?:[+-]\d)+)=")
_STEP_RE = re.compile(r"(-?\d+)([+-])(\d)=(-?\d+)")
_ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)")


def parse_prompt(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    """(first operand, [(op, operand), ...]) of a steps prompt such as ``"3+4-1="``.

    Raises ValueError if ``prompt`` is not of that form.
    """
    m = _PROMPT_RE.fullmatch(prompt.strip())
    if m is None:
        raise ValueError(f"not a steps-task prompt (expected one-digit operands joined by + or -, then '='): {prompt!r}")
    rest = m.group(2)
    return int(m.group(1)), [(rest[i], int(rest[i + 1])) for i in range(0, len(rest), 2)]


def gold_steps(prompt: str) -> list[str]:
    """The correct steps of ``prompt``, left to right: ``"3+4-1="`` -> ``["3+4=7", "7-1=6"]``."""
    value, ops = parse_prompt(prompt)
    out = []
    for op, b in ops:
        result = value + b if op == "+" else value - b
        out.append(f"{value}{op}{b}={result}")
        value = result
    return out


def answer_of(prompt: str) -> int:
    """The prompt's value, evaluated left to right."""
    value, ops = parse_prompt(prompt)
    for op, b in ops:
        value = value + b if op == "+" else value - b
    return value


def render(steps: Sequence[str]) -> str:
    """A completion showing ``steps``, its answer the last step's result: ``"3+4=7; 7-1=6. Answer: 6"``."""
    return STEP_SEPARATOR.join(steps) + ANSWER_PREFIX + steps[-1].rsplit("=", 1)[1]


def split_steps(completion: str) -> list[str]:
    """The steps of a completion (the text before ``". Answer:"``, split at the separator, stripped)."""
    body = completion.split(ANSWER_PREFIX.strip(), 1)[0].strip()
    body = body.removesuffix(".")
    return [s.strip() for s in body.split(STEP_SEPARATOR.strip()) if s.strip()]


def step_spans(completion: str) -> list[tuple[str, int]]:
    """The steps of a completion with where each ends: ``(step, offset just past its last character)``.

    The steps are exactly :func:`split_steps`'s; the offsets index ``completion``, so a reward can
    be placed on the token that closes each step: ``"3+4=7; 7-1=6. Answer: 6"`` ->
    ``[("3+4=7", 5), ("7-1=6", 12)]``.
    """
    cut = completion.find(ANSWER_PREFIX.strip())
    body = completion if cut < 0 else completion[:cut]
    pieces = body.split(STEP_SEPARATOR.strip())
    out: list[tuple[str, int]] = []
    start = 0
    for i, piece in enumerate(pieces):
        text = piece.rstrip()
        if i == len(pieces) - 1:
            text = text.removesuffix(".")  # the full stop before "Answer:" (split_steps drops it too)
        step = text.strip()
        if step:
            out.append((step, start + len(text.rstrip())))
        start += len(piece) + len(STEP_SEPARATOR.strip())
    return out


def process_rewards(prompt: str, completion: str) -> list[tuple[int, float]]:
    """The gold process reward of a completion: ``(offset, reward)`` per step and for the answer.

    Each step of :func:`step_spans` scores 1.0 if :func:`verify_steps` accepts it, else 0.0, at the
    offset where it ends; the final answer (:func:`final_answer_reward`) scores at the end of the
    completion (offset ``len(completion)``), so a solution with right steps and a wrong answer is
    not rewarded as a right one. A completion with no step gets only the answer's entry.
    """
    spans = step_spans(completion)
    ok = verify_steps(prompt, [s for s, _ in spans])
    return [(end, float(good)) for (_, end), good in zip(spans, ok)] + [
        (len(completion), final_answer_reward(prompt, completion))
    ]


def verify_steps(prompt: str, steps: Sequence[str]) -> list[bool]:
    """Which of ``steps`` are correct, one bool per step (pure).

    Step i is correct iff every earlier step is and it is well formed (``a<op>b=c``, spaces
    ignored), ``a`` is the running value (the first operand, then the previous step's result),
    ``op``/``b`` are the prompt's i-th operation and ``c`` its right result. Once one step is
    wrong, every later one is too (first-error semantics: a later step built on a wrong value is
    not progress, even if its own arithmetic holds). Steps beyond the prompt's operations are wrong.
    """
    value, ops = parse_prompt(prompt)
    out: list[bool] = []
    ok = True
    for i, step in enumerate(steps):
        if ok:
            m = _STEP_RE.fullmatch(step.replace(" ", ""))
            if m is None or i >= len(ops):
                ok = False
            else:
                a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                result = value + b if op == "+" else value - b
                ok = a == value and (op, b) == ops[i] and c == result
                value = result
        out.append(ok)
    return out


def final_answer_reward(prompt: str, completion: str) -> float:
    """1.0 if the completion's ``Answer: <int>`` is the prompt's value, else 0.0 (also when absent)."""
    m = _ANSWER_RE.search(completion)
    return 1.0 if m is not None and int(m.group(1)) == answer_of(prompt) else 0.0


def corrupt(prompt: str, rng: random.Random) -> tuple[list[str], list[int]]:
    """A solution with one wrong step, and its step labels.

    A step ``j`` is drawn uniformly and its result moved by ±1..3; later steps carry on correctly
    from the wrong value (so the final answer is wrong too). Labels: 1 before ``j``, 0 from ``j`` on.
    """
    value, ops = parse_prompt(prompt)
    j = rng.randrange(len(ops))
    delta = rng.choice((-3, -2, -1, 1, 2, 3))
    steps = []
    for i, (op, b) in enumerate(ops):
        result = (value + b if op == "+" else value - b) + (delta if i == j else 0)
        steps.append(f"{value}{op}{b}={result}")
        value = result
    return steps, [1] * j + [0] * (len(ops) - j)


class StepsTask(SyntheticTask):
    """``"3+4-1="`` -> ``"3+4=7; 7-1=6. Answer: 6"``: 2 or 3 steps on one-digit operands.

    31,935 prompts whose running value stays >= 0 (train ~25,500, val and test ~3,200 each).
    """

    name = "steps"
    #: how many operations a prompt holds
    n_ops: tuple[int, ...] = (2, 3)
    good_threshold = 1.0

    def prompt_space(self) -> Sequence[str]:
        """Every chain of one-digit operands (1..9) with ``n_ops`` operations whose running value
        never drops below 0 (short steps: a completion stays under 40 bytes)."""
        chains = [(f"{a}", a) for a in range(1, 10)]
        out: list[str] = []
        for n in range(1, max(self.n_ops) + 1):
            chains = [
                (f"{text}{op}{b}", v + b if op == "+" else v - b)
                for text, v in chains for op in "+-" for b in range(1, 10) if op == "+" or v >= b
            ]
            if n in self.n_ops:
                out.extend(f"{text}=" for text, _ in chains)
        return out

    def good_completion(self, prompt: str, rng: random.Random) -> str:
        """The worked solution."""
        return render(gold_steps(prompt))

    def candidate(self, prompt: str, rng: random.Random) -> str:
        """The worked solution (30%) or a corrupted one (:func:`corrupt`)."""
        if rng.random() < 0.3:
            return render(gold_steps(prompt))
        return render(corrupt(prompt, rng)[0])

    def score(self, prompt: str, completion: str) -> float:
        """:func:`final_answer_reward`."""
        return final_answer_reward(prompt, completion)

    def rows(
        self, kind: str, split: str, n: int, seed: int = 0, label_noise: float = 0.0, k: int = 4,
        rating_noise: float = 0.0, corruption_rate: float = 0.5,
    ) -> list[dict]:
        """As :meth:`SyntheticTask.rows`, plus kind ``steps``: ``{prompt, steps, step_labels}`` rows,
        each corrupted (:func:`corrupt`) with probability ``corruption_rate``, else the correct
        solution labelled all 1. Deterministic in (split, n, seed, corruption_rate); the prompts are
        those of every other kind."""
        if kind != STEPS_KIND:
            return super().rows(kind, split, n, seed, label_noise, k=k, rating_noise=rating_noise)
        check_rows_args(self.name, "sft", split, n, seed, label_noise)
        if isinstance(corruption_rate, bool) or not isinstance(corruption_rate, Real) or not 0.0 <= corruption_rate <= 1.0:
            raise TaskArgumentError(f"task '{self.name}': corruption_rate must be a number in [0, 1], got {corruption_rate!r}")
        prompts = self._draw_prompts(split, n, seed)
        gen = derive_rng(self.name, "completions", kind, split, seed)
        out = []
        for prompt in prompts:
            # one draw for the coin and one corruption per row whatever the rate: rows stay aligned
            coin = gen.random()
            bad_steps, bad_labels = corrupt(prompt, gen)
            if coin < corruption_rate:
                out.append({"prompt": prompt, "steps": bad_steps, "step_labels": bad_labels})
            else:
                steps = gold_steps(prompt)
                out.append({"prompt": prompt, "steps": steps, "step_labels": [1] * len(steps)})
        return out
