"""Chain of Hindsight sequences: a preference pair written as one text with feedback phrases.

A pairs row (prompt, chosen, rejected) becomes, in one order or the other,

    <prompt><positive phrase><chosen><EOS><negative phrase><rejected><EOS>
    <prompt><negative phrase><rejected><EOS><positive phrase><chosen><EOS>

and the labels are the two responses with their EOS (the model's outputs); the prompt and the
phrases are :data:`~alignx.data.tokenize.IGNORE_INDEX`. Each response ends with EOS so that a
policy prompted with ``<prompt><positive phrase>`` stops after its answer, as the SFT model does.
The prompt and the phrase that follows it are tokenised as one text, exactly as generation
tokenises ``prompt + positive phrase`` (:meth:`alignx.objectives.Objective.generation_prompt`).

:func:`encode_hindsight` encodes both orders; :func:`pick_orders` keeps one per item, drawn from
a seed (the tokenised-data cache then holds both, and the draw is the job's).
"""

from __future__ import annotations

import random
from typing import Any, Mapping

from alignx.data.tokenize import IGNORE_INDEX, encode_prompt, fit_to_length, prompt_is_templated, prompt_text

#: the two orders of an encoded item, in the order of its ``orders`` list
ORDERS = ("good_first", "bad_first")


def encode_hindsight(
    row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], positive_phrase: str, negative_phrase: str
) -> tuple[dict | None, str]:
    """A pairs row -> both hindsight sequences (see the module docstring).

    The item: ``orders``, a list of two ``{"input_ids", "labels"}`` (good answer first, then bad
    answer first), and ``input_ids`` (the first order's, for length bucketing). Each order is fitted to
    ``data_cfg["max_length"]`` under ``data_cfg["truncation"]`` with the prompt and its phrase as the
    prompt part (``truncate_prompt`` keeps the phrase, the end nearest the answers; ``truncate_completion``
    cuts the second answer first). The row is dropped when either order cannot fit; its status is
    "truncated" when either was.
    """
    chat = bool(data_cfg["chat_template"])
    templated = prompt_is_templated(row, chat)
    prompt = prompt_text(row, tokenizer, chat)
    answers = {"good": (positive_phrase, row["chosen"]), "bad": (negative_phrase, row["rejected"])}
    orders, status = [], "kept"
    for first, second in (("good", "bad"), ("bad", "good")):
        lead_phrase, lead_answer = answers[first]
        p_ids = encode_prompt(prompt + lead_phrase, tokenizer, templated)
        rest, mask = _answer(lead_answer, tokenizer)
        phrase, answer = answers[second]
        phrase_ids = list(tokenizer(phrase, add_special_tokens=False)["input_ids"])
        ids, labelled = _answer(answer, tokenizer)
        rest, mask = rest + phrase_ids + ids, mask + [False] * len(phrase_ids) + labelled
        keep = 1 if p_ids and p_ids[0] == tokenizer.bos_token_id else 0
        fitted = fit_to_length(p_ids, rest, int(data_cfg["max_length"]), str(data_cfg["truncation"]), keep)
        if fitted is None:
            return None, "dropped"
        sp, sc, st = fitted
        status = "truncated" if st == "truncated" else status
        labels = [IGNORE_INDEX] * len(sp) + [t if m else IGNORE_INDEX for t, m in zip(sc, mask)]
        orders.append({"input_ids": sp + sc, "labels": labels})
    return {"orders": orders, "input_ids": orders[0]["input_ids"]}, status


def _answer(text: str, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """A response's token ids closed by EOS, and its loss mask (all True: every one is a model output)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return ids, [True] * len(ids)


def pick_orders(items: list[dict], seed: int) -> list[dict]:
    """One SFT item (``input_ids``, ``labels``) per hindsight item: its good-first or bad-first
    sequence, each with probability 1/2, drawn by a ``random.Random(seed)`` in item order."""
    rng = random.Random(seed)
    return [dict(item["orders"][rng.randrange(len(ORDERS))]) for item in items]
