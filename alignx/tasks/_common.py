"""Machinery shared by the builtin synthetic tasks.

:class:`SyntheticTask` implements :meth:`Task.rows` once for every task, on top of a handful of
per-task hooks (the prompt space, a demonstration, a candidate of varying quality and a
single-example gold score). Everything here is stdlib-only and deterministic across processes:
randomness comes from :class:`random.Random` seeded through SHA-256, never from ``hash()``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from abc import abstractmethod
from numbers import Real
from typing import Sequence

from alignx.errors import ConfigError
from alignx.tasks.base import ROW_KINDS, SPLITS, Task

#: ``label_noise`` above one half would turn the preference signal upside down
MAX_LABEL_NOISE = 0.5

_WORD_RE = re.compile(r"[A-Za-z]+")


class TaskArgumentError(ConfigError, ValueError):
    """A bad argument to a task (unknown kind or split, bad ``n``, ``seed`` or ``label_noise``).

    It is a :class:`ValueError` for callers that validate programmatically and a
    :class:`~alignx.errors.ConfigError` so the CLI prints it as a user error, since these values
    come straight from the dataset config.
    """


def split_of(prompt: str) -> str:
    """Return the split (``train``/``val``/``test``) that owns ``prompt``.

    A stable hash of the prompt text decides, so the splits' prompt sets are disjoint whatever
    the seed or ``n``: digit 0 -> test, 1 -> val, else train (about 10/10/80 per cent).
    """
    bucket = int.from_bytes(hashlib.sha1(prompt.encode("utf-8")).digest()[:8], "big") % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def derive_rng(*parts: object) -> random.Random:
    """Return a :class:`random.Random` seeded from ``parts`` (reproducible across processes)."""
    key = "\x1f".join(repr(p) for p in parts).encode("utf-8")
    return random.Random(int.from_bytes(hashlib.sha256(key).digest(), "big"))


def sigmoid(x: float) -> float:
    """The logistic function, safe for large ``|x|``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def words_of(text: str) -> list[str]:
    """The ASCII-alphabetic tokens of ``text``, in order, case preserved."""
    return _WORD_RE.findall(text)


def check_rows_args(task: str, kind: str, split: str, n: int, seed: int, label_noise: float) -> None:
    """Validate the arguments of :meth:`Task.rows`; raise :class:`TaskArgumentError` naming the fix."""
    if kind not in ROW_KINDS:
        raise TaskArgumentError(f"task '{task}': unknown row kind {kind!r}; valid kinds: {', '.join(ROW_KINDS)}")
    if split not in SPLITS:
        raise TaskArgumentError(f"task '{task}': unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TaskArgumentError(f"task '{task}': n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskArgumentError(f"task '{task}': seed must be an integer, got {seed!r}")
    if (
        isinstance(label_noise, bool)
        or not isinstance(label_noise, Real)
        or not 0.0 <= float(label_noise) <= MAX_LABEL_NOISE  # also rejects NaN
    ):
        raise TaskArgumentError(
            f"task '{task}': label_noise must be a number in [0, {MAX_LABEL_NOISE}], got {label_noise!r}"
        )


def check_rating_noise(task: str, rating_noise: float) -> None:
    """Raise :class:`TaskArgumentError` unless ``rating_noise`` (a standard deviation) is a finite number >= 0."""
    if (
        isinstance(rating_noise, bool)
        or not isinstance(rating_noise, Real)
        or not 0.0 <= float(rating_noise) < math.inf  # also rejects NaN
    ):
        raise TaskArgumentError(
            f"task '{task}': rating_noise (the std of the noise added to the gold reward) must be a finite number >= 0, "
            f"got {rating_noise!r}"
        )


def check_same_length(prompts: Sequence[str], completions: Sequence[str]) -> None:
    """Raise :class:`ValueError` unless there is exactly one prompt per completion."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"gold_reward needs one prompt per completion, got {len(prompts)} prompts "
            f"and {len(completions)} completions"
        )


def _swap_adjacent_ranks(ranks: list[int], u: float) -> list[int]:
    """Swap the ranks of one pair of completions adjacent in rank order (with different ranks),
    picked by ``u`` in [0, 1)."""
    order = sorted(range(len(ranks)), key=lambda i: ranks[i])
    pairs = [(a, b) for a, b in itertools.pairwise(order) if ranks[a] != ranks[b]]
    a, b = pairs[min(int(u * len(pairs)), len(pairs) - 1)]
    out = list(ranks)
    out[a], out[b] = out[b], out[a]
    return out


class SyntheticTask(Task):
    """A :class:`Task` whose rows are generated from a few per-task hooks.

    Subclasses implement :meth:`prompt_space`, :meth:`good_completion`, :meth:`candidate` and
    :meth:`score`, and may override :meth:`demonstration` (the SFT completion) and
    :meth:`prompt_weight`. Three independent random streams keep related outputs aligned:

    * prompts depend only on (task, split, seed), so every kind sees the same prompts in the
      same order, and ``rows(n=10)`` is a prefix of ``rows(n=100)``;
    * completions depend on (task, kind, split, seed);
    * label noise has its own stream and one draw per row, so changing ``label_noise`` only
      swaps labels of otherwise identical rows (and changing ``rating_noise`` only rescales the
      noise of otherwise identical rated rows).
    """

    #: unpaired rows: label is True iff gold >= this
    good_threshold: float = 0.5
    #: True: a split's rows use distinct prompts (n is capped by the split's prompt count);
    #: False: prompts are drawn with replacement (for tasks with few prompts)
    unique_prompts: bool = True
    #: rejection-sampling budget per row; generators are built so this is never reached
    max_attempts: int = 1000

    # -- hooks ---------------------------------------------------------------------------
    @abstractmethod
    def prompt_space(self) -> Sequence[str]:
        """Every prompt the task can produce, in a fixed order (all splits together)."""

    def prompt_weight(self, prompt: str) -> float:
        """Relative sampling weight of ``prompt`` (default uniform)."""
        return 1.0

    @abstractmethod
    def good_completion(self, prompt: str, rng: random.Random) -> str:
        """A completion whose gold reward is at least :attr:`good_threshold`."""

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        """The SFT completion for ``prompt`` (default: :meth:`good_completion`)."""
        return self.good_completion(prompt, rng)

    @abstractmethod
    def candidate(self, prompt: str, rng: random.Random) -> str:
        """A completion of random quality: the pool preference pairs and bad examples come from."""

    @abstractmethod
    def score(self, prompt: str, completion: str) -> float:
        """Gold reward of one (prompt, completion) in [0, 1]."""

    # -- Task API ------------------------------------------------------------------------
    def gold_reward(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Score each (prompt, completion) in [0, 1] with :meth:`score`."""
        check_same_length(prompts, completions)
        return [float(self.score(p, c)) for p, c in zip(prompts, completions)]

    def split_prompts(self, split: str) -> list[str]:
        """The prompts of ``split``, in :meth:`prompt_space` order (cached)."""
        cache = self.__dict__.setdefault("_split_cache", {})
        if split not in cache:
            if split not in SPLITS:
                raise TaskArgumentError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
            cache[split] = [p for p in self.prompt_space() if split_of(p) == split]
        return cache[split]

    def rows(
        self, kind: str, split: str, n: int, seed: int = 0, label_noise: float = 0.0, k: int = 4,
        rating_noise: float = 0.0,
    ) -> list[dict]:
        """Return ``n`` rows of ``kind`` for ``split``; see :class:`Task` and the class docstring.

        ``pairs``: two distinct-quality candidates, chosen = higher gold reward, then swapped with
        probability ``label_noise``. ``ranked``: ``k`` distinct candidates in drawn order, ranked
        by gold reward (0 = best; equal gold, equal rank; never all tied); with probability
        ``label_noise`` the ranks of one random pair adjacent in rank order are swapped.
        ``unpaired``: about half good (gold >= :attr:`good_threshold`, label True) and half bad
        (label False), each label flipped with probability ``label_noise``. ``rated``: one
        candidate of random quality (as in pairs) with ``rating`` = its gold reward plus Gaussian
        noise of standard deviation ``rating_noise`` (not clipped to [0, 1]).
        """
        check_rows_args(self.name, kind, split, n, seed, label_noise)
        check_rating_noise(self.name, rating_noise)
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise TaskArgumentError(f"task '{self.name}': k (completions per ranked row) must be an integer >= 2, got {k!r}")
        prompts = self._draw_prompts(split, n, seed)
        gen = derive_rng(self.name, "completions", kind, split, seed)
        noise = derive_rng(self.name, "noise", kind, split, seed)
        out: list[dict] = []
        for prompt in prompts:
            if kind == "prompt":
                out.append({"prompt": prompt})
            elif kind == "sft":
                out.append({"prompt": prompt, "completion": self.demonstration(prompt, gen)})
            elif kind == "pairs":
                chosen, rejected = self._pair(prompt, gen)
                if noise.random() < label_noise:
                    chosen, rejected = rejected, chosen
                out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
            elif kind == "ranked":
                completions, ranks = self._ranked(prompt, gen, k)
                # two draws per row whatever label_noise is, so the noise stream stays aligned
                flip, which = noise.random(), noise.random()
                if flip < label_noise:
                    ranks = _swap_adjacent_ranks(ranks, which)
                out.append({"prompt": prompt, "completions": completions, "ranks": ranks})
            elif kind == "rated":
                completion = self.candidate(prompt, gen)
                # one standard-normal draw per row whatever rating_noise is: the noise stream stays
                # aligned and rating_noise only scales it
                rating = self.score(prompt, completion) + rating_noise * noise.gauss(0.0, 1.0)
                out.append({"prompt": prompt, "completion": completion, "rating": rating})
            else:
                completion, label = self._unpaired(prompt, gen)
                if noise.random() < label_noise:
                    label = not label
                out.append({"prompt": prompt, "completion": completion, "label": label})
        return out

    # -- internals -----------------------------------------------------------------------
    def _draw_prompts(self, split: str, n: int, seed: int) -> list[str]:
        pool = self.split_prompts(split)
        rng = derive_rng(self.name, "prompts", split, seed)
        if not pool:
            raise TaskArgumentError(f"task '{self.name}' has no prompts in split '{split}'")
        if not self.unique_prompts:
            weights = [self.prompt_weight(p) for p in pool]
            return rng.choices(pool, weights=weights, k=n)
        if n > len(pool):
            raise TaskArgumentError(
                f"task '{self.name}': n={n} exceeds the {len(pool)} distinct prompts of split "
                f"'{split}'; ask for at most {len(pool)} rows"
            )
        # Weighted sampling without replacement (Efraimidis-Spirakis, in log space so tiny
        # weights do not underflow): the full order is fixed by the seed, hence prefix-stable in n.
        keys = [math.log(1.0 - rng.random()) / self.prompt_weight(p) for p in pool]
        order = sorted(range(len(pool)), key=lambda i: keys[i], reverse=True)
        return [pool[i] for i in order[:n]]

    def _pair(self, prompt: str, rng: random.Random) -> tuple[str, str]:
        for _ in range(self.max_attempts):
            a, b = self.candidate(prompt, rng), self.candidate(prompt, rng)
            ga, gb = self.score(prompt, a), self.score(prompt, b)
            if abs(ga - gb) > 1e-9:
                return (a, b) if ga > gb else (b, a)
        raise RuntimeError(f"task '{self.name}': no pair of distinct gold reward found for {prompt!r}")

    def _ranked(self, prompt: str, rng: random.Random, k: int) -> tuple[list[str], list[int]]:
        """``k`` distinct candidates and their dense gold ranks (0 = best), not all tied."""
        for _ in range(self.max_attempts):
            completions: list[str] = []
            for _ in range(self.max_attempts):
                c = self.candidate(prompt, rng)
                if c not in completions:
                    completions.append(c)
                    if len(completions) == k:
                        break
            else:
                raise RuntimeError(f"task '{self.name}': fewer than k={k} distinct candidates for {prompt!r}")
            # rounding makes gold values equal up to float noise share a rank
            gold = [round(self.score(prompt, c), 9) for c in completions]
            levels = sorted(set(gold), reverse=True)
            if len(levels) > 1:
                return completions, [levels.index(g) for g in gold]
        raise RuntimeError(f"task '{self.name}': every draw of {k} candidates tied in gold reward for {prompt!r}")

    def _unpaired(self, prompt: str, rng: random.Random) -> tuple[str, bool]:
        want_good = rng.random() < 0.5
        if want_good:
            completion = self.good_completion(prompt, rng)
            if self.score(prompt, completion) >= self.good_threshold:
                return completion, True
        for _ in range(self.max_attempts):
            completion = self.candidate(prompt, rng)
            if (self.score(prompt, completion) >= self.good_threshold) == want_good:
                return completion, want_good
        raise RuntimeError(f"task '{self.name}': no {'good' if want_good else 'bad'} completion for {prompt!r}")
