"""The ``arithmetic`` task: two-digit addition and subtraction, with digit-level partial credit."""

from __future__ import annotations

import random
import re
from typing import Sequence

from alignx.tasks._common import SyntheticTask

_PROMPT_RE = re.compile(r"What is\s*(\d+)\s*([+-])\s*(\d+)\s*\?")
_INT_RE = re.compile(r"(-?)(\d+)")


def parse_problem(prompt: str) -> int:
    """Return the answer to an arithmetic prompt such as ``"What is 37+45?"``.

    Raises ValueError if ``prompt`` is not of that form.
    """
    m = _PROMPT_RE.fullmatch(prompt.strip())
    if m is None:
        raise ValueError(f"not an arithmetic-task prompt (expected 'What is A+B?' or 'What is A-B?'): {prompt!r}")
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return a + b if op == "+" else a - b


def digit_credit(gold: int, completion: str) -> float:
    """Gold reward of ``completion`` as an answer to a problem whose answer is ``gold``.

    The first integer in the completion is the answer: exactly ``gold`` -> 1.0, none -> 0.0,
    otherwise the fraction of right-aligned character positions (digits and sign) that match,
    over the longer of the two numbers. E.g. gold 82: ``" 85"`` -> 0.5, ``" 182"`` -> 2/3.
    """
    m = _INT_RE.search(completion)
    if m is None:
        return 0.0
    # Compare canonical strings rather than ints: no leading zeros, and no int() on a huge
    # digit run (which would hit Python's int-string conversion limit).
    digits = m.group(2).lstrip("0") or "0"
    answer = digits if digits == "0" else m.group(1) + digits
    target = str(gold)
    if answer == target:
        return 1.0
    width = max(len(answer), len(target))
    hits = sum(x == y for x, y in zip(answer.rjust(width), target.rjust(width)))
    return hits / width


class ArithmeticTask(SyntheticTask):
    """``"What is 37+45?"`` -> ``" 82"``: two-digit operands, ``+`` and ``-`` (never negative).

    About 12,200 distinct prompts (train ~9,800, val and test ~1,200 each); a split's rows never
    repeat a prompt, so ``n`` is capped by the split's prompt count.
    """

    name = "arithmetic"
    #: operand range, inclusive
    low: int = 10
    high: int = 99
    ops: tuple[str, ...] = ("+", "-")
    #: only the exact answer counts as a good unpaired example
    good_threshold = 1.0

    def prompt_space(self) -> Sequence[str]:
        """Every ``"What is A<op>B?"`` with operands in [low, high] and a non-negative answer."""
        span = range(self.low, self.high + 1)
        return [
            f"What is {a}{op}{b}?" for op in self.ops for a in span for b in span if op == "+" or a >= b
        ]

    def good_completion(self, prompt: str, rng: random.Random) -> str:
        """The exact answer, with a leading space."""
        return f" {parse_problem(prompt)}"

    def candidate(self, prompt: str, rng: random.Random) -> str:
        """The exact answer (30%) or a plausible mistake: near miss, one wrong digit, random."""
        gold = parse_problem(prompt)
        if rng.random() < 0.3:
            return f" {gold}"
        while True:
            r = rng.random()
            if r < 0.3:
                wrong = gold + rng.choice((-1, 1)) * rng.randint(1, 9)
            elif r < 0.6:
                digits = list(str(gold))
                i = rng.randrange(len(digits))
                digits[i] = rng.choice([d for d in "0123456789" if d != digits[i]])
                wrong = int("".join(digits))
            elif r < 0.75:
                wrong = int(str(gold)[::-1])
            else:
                wrong = rng.randint(0, 2 * self.high)
            if wrong >= 0 and wrong != gold:
                return f" {wrong}"

    def score(self, prompt: str, completion: str) -> float:
        """:func:`digit_credit` of the completion against the prompt's answer."""
        return digit_credit(parse_problem(prompt), completion)
