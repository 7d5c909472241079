"""The ``sentiment`` task: finish a short movie review; the gold reward is lexicon positivity.

A miniature of the IMDb experiment of the DPO paper: the SFT demonstrations mix positive,
neutral and negative reviews, so supervised fine-tuning alone does not make the model positive;
preference optimisation against the gold reward should.
"""

from __future__ import annotations

import random
from typing import Sequence

from alignx.tasks._common import SyntheticTask, sigmoid, words_of

POSITIVE = (
    "great", "good", "superb", "wonderful", "brilliant", "lovely", "fun", "moving", "charming",
    "clever", "delightful", "excellent", "fantastic", "funny", "gripping", "joyful", "beautiful",
    "stunning", "touching", "witty", "fresh", "vivid", "smart", "sweet", "warm", "bright",
    "magical", "rich", "bold", "perfect", "splendid", "terrific", "amazing", "engaging",
    "thrilling", "elegant", "heartfelt", "tender", "graceful", "inspired",
)  # fmt: skip
NEGATIVE = (
    "bad", "awful", "boring", "dull", "poor", "terrible", "weak", "slow", "bland", "flat",
    "messy", "silly", "stale", "tedious", "clumsy", "lame", "ugly", "sloppy", "tired", "empty",
    "cheap", "shallow", "painful", "dreary", "horrible", "dreadful", "forced", "hollow", "lazy",
    "awkward", "annoying", "pointless", "stiff", "grim", "wooden", "bleak", "sour", "trite",
    "clunky", "muddled",
)  # fmt: skip
NEUTRAL = (
    "long", "short", "quiet", "loud", "simple", "plain", "modern", "old", "new", "familiar",
    "typical", "ordinary", "average", "usual", "brief", "steady", "calm", "mild", "basic",
    "direct", "linear", "local", "recent", "early", "late", "formal", "literal", "subtle",
    "serious", "busy",
)  # fmt: skip
INTENSIFIERS = ("very", "really", "quite", "so", "truly", "fairly", "rather", "mostly")
SUBJECTS = (
    "film", "movie", "plot", "acting", "ending", "story", "cast", "script", "music", "dialogue",
    "pacing", "humor",
)  # fmt: skip
VERBS = ("was", "is", "felt", "seemed")
#: words that are fluent but carry no sentiment: templates, openings, common glue
FUNCTION_WORDS = (*INTENSIFIERS, "and", "but", "also", "a", "bit", "the", "review", *SUBJECTS, *VERBS)

#: every word the grammar can produce; other words count as gibberish in the gold reward
VOCABULARY = frozenset((*POSITIVE, *NEGATIVE, *NEUTRAL, *FUNCTION_WORDS))
_POS, _NEG = frozenset(POSITIVE), frozenset(NEGATIVE)
_LEXICON = {"positive": POSITIVE, "neutral": NEUTRAL, "negative": NEGATIVE}
_TEMPLATES = (" {w}.", " {i} {w}.", " {w} and {v}.", " {i} {w} and {v}.")


def lexicon_sentiment(completion: str) -> float:
    """Gold reward of a review ending: ``sigmoid(2 * (n_pos - n_neg)) * known / words``.

    ``words`` are the lowercased alphabetic tokens; ``known`` those in :data:`VOCABULARY`;
    no words -> 0.0. Fluent neutral text scores 0.5, gibberish about 0, one positive word
    about 0.88 and two about 0.98.
    """
    words = [w.lower() for w in words_of(completion)]
    if not words:
        return 0.0
    n_pos = sum(w in _POS for w in words)
    n_neg = sum(w in _NEG for w in words)
    known = sum(w in VOCABULARY for w in words)
    return sigmoid(2.0 * (n_pos - n_neg)) * known / len(words)


def review(sentiment: str, rng: random.Random) -> str:
    """A fluent review ending (`` "very dull and slow."``) with words of one ``sentiment``."""
    lexicon = _LEXICON[sentiment]
    w, v = rng.sample(lexicon, 2)
    return rng.choice(_TEMPLATES).format(w=w, v=v, i=rng.choice(INTENSIFIERS))


def _gibberish(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(2, 7)))


class SentimentTask(SyntheticTask):
    """Movie-review continuation scored by a word-list sentiment lexicon.

    Prompts are review openings (``"Review: The plot felt"``: 12 subjects x 4 verbs, so every
    split owns a few); completions are a few words ending with ``"."``. Prompts repeat within a
    split (:attr:`unique_prompts` is False), completions vary.
    """

    name = "sentiment"
    #: share of each sentiment among SFT demonstrations; deliberately not mostly positive
    sft_mix: dict[str, float] = {"positive": 0.4, "neutral": 0.3, "negative": 0.3}
    #: neutral (0.5) and mixed reviews are "bad"; one positive word (0.88) is "good"
    good_threshold = 0.6
    unique_prompts = False

    def prompt_space(self) -> Sequence[str]:
        """All review openings ``"Review: The {subject} {verb}"``."""
        return [f"Review: The {s} {v}" for s in SUBJECTS for v in VERBS]

    def good_completion(self, prompt: str, rng: random.Random) -> str:
        """A positive review ending."""
        return review("positive", rng)

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        """A review ending whose sentiment is drawn from :attr:`sft_mix`."""
        sentiment = rng.choices(list(self.sft_mix), weights=list(self.sft_mix.values()))[0]
        return review(sentiment, rng)

    def candidate(self, prompt: str, rng: random.Random) -> str:
        """Any-sentiment, mixed, partly garbled or gibberish endings, for pairs and bad examples."""
        r = rng.random()
        if r < 0.1:
            return " " + " ".join(_gibberish(rng) for _ in range(rng.randint(1, 3))) + "."
        if r < 0.25:  # mixed feelings: gold near 0.5
            return f" {rng.choice(POSITIVE)}, but {rng.choice(NEGATIVE)}."
        text = review(rng.choice(("positive", "neutral", "negative")), rng)
        if rng.random() < 0.2:  # garble one word: lowers the fluency factor only
            words = text[1:-1].split(" ")
            words[rng.randrange(len(words))] = _gibberish(rng)
            text = " " + " ".join(words) + "."
        return text

    def score(self, prompt: str, completion: str) -> float:
        """:func:`lexicon_sentiment` of the completion (the opening is neutral by construction)."""
        return lexicon_sentiment(completion)
