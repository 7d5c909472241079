"""The ``format`` task: follow 1-2 checkable formatting constraints; gold = fraction satisfied.

Prompts are generated from, and parsed back into, a :class:`FormatSpec`, e.g.
``"Write words in all caps ending with CAT:"`` -> ``" RED SUN CAT."``. The constraints are case
(all caps / lowercase), an exact word count (2-5), and a first, last or contained word; generated
prompts carry one or two, but any consistent combination parses and scores.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, fields
from typing import Sequence

from alignx.tasks._common import SyntheticTask, words_of

#: the words of prompts and completions: short, so a whole completion stays under ~30 bytes
WORDS = (
    "cat", "dog", "sun", "moon", "tree", "fish", "bird", "star", "rain", "snow", "red", "blue",
    "big", "small", "hot", "cold", "fast", "car", "boat", "ship", "road", "book", "lamp", "cup",
    "milk", "bread", "apple", "door", "key", "ring", "bell", "hat", "shoe", "sand", "rock", "leaf",
    "wind", "fire", "lake", "frog",
)  # fmt: skip
CONSTRAINTS = ("count", "case", "start", "end", "contains")
COUNTS = (2, 3, 4, 5)
CASES = ("upper", "lower")

_CASE_PHRASE = {"upper": "all caps", "lower": "lowercase"}
_PROMPT_RE = re.compile(
    r"Write (?:(?P<count>\d+) )?words"
    r"(?: in (?P<case>all caps|lowercase))?"
    r"(?: starting with (?P<start>[A-Za-z]+))?"
    r"(?: ending with (?P<end>[A-Za-z]+))?"
    r"(?: containing (?P<contains>[A-Za-z]+))?:"
)


@dataclass(frozen=True)
class FormatSpec:
    """A set of formatting constraints; ``None`` = not constrained. Words are stored lowercase."""

    count: int | None = None
    case: str | None = None  # "upper" | "lower"
    start: str | None = None
    end: str | None = None
    contains: str | None = None

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the constraints in force, in :data:`CONSTRAINTS` order."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def prompt(self) -> str:
        """The instruction text, e.g. ``"Write 3 words in all caps ending with CAT:"``."""
        show = str.upper if self.case == "upper" else str.lower
        parts = ["Write", f"{self.count} words" if self.count is not None else "words"]
        if self.case is not None:
            parts.append(f"in {_CASE_PHRASE[self.case]}")
        for key, phrase in (("start", "starting with"), ("end", "ending with"), ("contains", "containing")):
            word = getattr(self, key)
            if word is not None:
                parts.append(f"{phrase} {show(word)}")
        return " ".join(parts) + ":"

    @classmethod
    def parse(cls, prompt: str) -> FormatSpec:
        """Inverse of :meth:`prompt`; raises ValueError on any other text."""
        m = _PROMPT_RE.fullmatch(prompt.strip())
        spec = None
        if m is not None:
            g = m.groupdict()
            spec = cls(
                count=int(g["count"]) if g["count"] is not None else None,
                case={v: k for k, v in _CASE_PHRASE.items()}.get(g["case"]) if g["case"] else None,
                start=g["start"].lower() if g["start"] else None,
                end=g["end"].lower() if g["end"] else None,
                contains=g["contains"].lower() if g["contains"] else None,
            )
        if spec is None or not spec.active:
            raise ValueError(
                "not a format-task prompt (expected e.g. 'Write 3 words in all caps ending with CAT:'): "
                f"{prompt!r}"
            )
        return spec

    def check(self, completion: str) -> dict[str, bool]:
        """Whether ``completion`` meets each active constraint (words: ASCII-alphabetic tokens)."""
        words = words_of(completion)
        lowered = [w.lower() for w in words]
        letters = "".join(words)
        met = {
            "count": len(words) == self.count,
            # an empty answer is not "in all caps": it must contain letters to qualify
            "case": bool(letters) and (letters.isupper() if self.case == "upper" else letters.islower()),
            "start": bool(words) and lowered[0] == self.start,
            "end": bool(words) and lowered[-1] == self.end,
            "contains": self.contains in lowered,
        }
        return {name: met[name] for name in self.active}

    def score(self, completion: str) -> float:
        """Fraction of the active constraints that ``completion`` meets."""
        met = self.check(completion)
        return sum(met.values()) / len(met)


def _values(constraint: str) -> Sequence[object]:
    return {"count": COUNTS, "case": CASES}.get(constraint, WORDS)


def all_specs(sizes: Sequence[int] = (1, 2)) -> list[tuple[tuple[str, ...], FormatSpec]]:
    """Every consistent spec with a number of constraints in ``sizes``, with its combination.

    Consistency: at most one case (a single field); distinct words for distinct word
    constraints; and a word count leaves a slot for every placed word.
    """
    out = []
    for size in sizes:
        for combo in itertools.combinations(CONSTRAINTS, size):
            for values in itertools.product(*(_values(c) for c in combo)):
                spec = FormatSpec(**dict(zip(combo, values)))
                placed = [w for w in (spec.start, spec.end, spec.contains) if w is not None]
                if len(set(placed)) == len(placed) and (spec.count is None or spec.count >= len(placed)):
                    out.append((combo, spec))
    return out


def render(words: Sequence[str], case: str) -> str:
    """Join ``words`` as a completion (`` "RED SUN CAT."``) in ``case``: upper, lower or title."""
    style = {"upper": str.upper, "lower": str.lower, "title": str.capitalize}[case]
    return " " + " ".join(style(w) for w in words) + "."


class FormatTask(SyntheticTask):
    """Instructions with 1-2 formatting constraints; gold reward = fraction of constraints met.

    About 5,500 distinct prompts (train ~4,400, val and test ~550 each); a split's rows never
    repeat a prompt. Sampling weights make each number of constraints equally likely and, within
    it, each combination of constraints (15 for 1-2), so the count and case constraints, which
    have few prompts, come first instead of being swamped by the thousands of word pairs; once
    a combination's prompts in the split are used up, large ``n`` is dominated by word pairs.
    """

    name = "format"
    #: only a completion meeting every constraint is a good unpaired example
    good_threshold = 1.0
    #: how many constraints a prompt may carry; (1, 2, 3) also works (e.g. 3 words, caps, end)
    constraint_counts: tuple[int, ...] = (1, 2)

    def _weights(self) -> dict[str, float]:
        cached = self.__dict__.get("_weight_cache")
        if cached is None:
            specs = all_specs(self.constraint_counts)
            per_combo: dict[tuple[str, ...], int] = {}
            for combo, _ in specs:
                per_combo[combo] = per_combo.get(combo, 0) + 1
            combos_of_size = {k: sum(len(c) == k for c in per_combo) for k in self.constraint_counts}
            share = 1.0 / len(self.constraint_counts)
            cached = {
                spec.prompt(): share / (combos_of_size[len(combo)] * per_combo[combo]) for combo, spec in specs
            }
            self.__dict__["_weight_cache"] = cached
        return cached

    def prompt_space(self) -> Sequence[str]:
        """Every prompt of :func:`all_specs`."""
        return list(self._weights())

    def prompt_weight(self, prompt: str) -> float:
        """Makes constraint combinations, not individual prompts, equally likely."""
        return self._weights()[prompt]

    def _good_words(self, spec: FormatSpec, rng: random.Random) -> list[str]:
        placed = [w for w in (spec.start, spec.end, spec.contains) if w is not None]
        length = spec.count if spec.count is not None else rng.randint(max(1, len(placed)), 4)
        fillers = [w for w in WORDS if w not in placed]
        words = [rng.choice(fillers) for _ in range(length)]
        if spec.start is not None:
            words[0] = spec.start
        if spec.end is not None:
            words[-1] = spec.end
        if spec.contains is not None:
            free = [i for i in range(length) if not (i == 0 and spec.start) and not (i == length - 1 and spec.end)]
            words[rng.choice(free)] = spec.contains
        return words

    def good_completion(self, prompt: str, rng: random.Random) -> str:
        """A completion meeting every constraint (lowercase unless all caps is asked for)."""
        spec = FormatSpec.parse(prompt)
        return render(self._good_words(spec, rng), "upper" if spec.case == "upper" else "lower")

    def candidate(self, prompt: str, rng: random.Random) -> str:
        """A good completion (35%) or one with 1-2 random edits that may break constraints."""
        spec = FormatSpec.parse(prompt)
        words = self._good_words(spec, rng)
        case = "upper" if spec.case == "upper" else "lower"
        if rng.random() < 0.35:
            return render(words, case)
        for _ in range(rng.randint(1, 2)):
            edit = rng.choice(("add", "drop", "first", "last", "contains", "case", "random"))
            if edit == "add":
                words.insert(rng.randint(0, len(words)), rng.choice(WORDS))
            elif edit == "drop" and len(words) > 1:
                del words[rng.randrange(len(words))]
            elif edit == "first":
                words[0] = rng.choice(WORDS)
            elif edit == "last":
                words[-1] = rng.choice(WORDS)
            elif edit == "contains" and spec.contains is not None:
                words = [rng.choice(WORDS) if w == spec.contains else w for w in words]
            elif edit == "case":
                case = rng.choice([c for c in ("upper", "lower", "title") if c != case])
            elif edit == "random":
                words = [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]
        return render(words, case)

    def score(self, prompt: str, completion: str) -> float:
        """Fraction of the prompt's constraints (parsed back from its text) the completion meets."""
        return FormatSpec.parse(prompt).score(completion)
