"""Rows -> token ids: chat-template formatting, completion masks and the truncation policy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from alignx.errors import DataError
from alignx.ops.logprobs import IGNORE_INDEX


class RowTooLongError(DataError):
    """A row longer than ``data.max_length`` under ``data.truncation=error``.

    :func:`fit_to_length` raises it without a location; :func:`encode_rows` re-raises it naming
    the split, the row's index and, when the rows know it, the file and row it came from.
    """

    def __init__(self, prompt_len: int, completion_len: int, max_length: int, *, source: str = "data", row: int | None = None, where: str = "row"):
        self.prompt_len, self.completion_len, self.max_length = prompt_len, completion_len, max_length
        super().__init__(
            f"{where} is too long: prompt {prompt_len} + completion {completion_len} = {prompt_len + completion_len} tokens "
            f"> data.max_length={max_length} (data.truncation=error). Set data.truncation=truncate_prompt, "
            "truncate_completion or drop, or raise data.max_length",
            source=source,
            row=row,
        )
        self.reason = "too long"

    def located(self, rows: Any, index: int) -> RowTooLongError:
        """The same error, naming row ``index`` (0-based) of ``rows`` (a :class:`~alignx.data.sources.SplitRows`
        or any sequence)."""
        split = getattr(rows, "split", "") or ""
        where = f"{split} split row {index + 1}" if split else f"row {index + 1}"
        location = getattr(rows, "location", None)
        source, number = location(index) if callable(location) else ("data", index + 1)
        return RowTooLongError(self.prompt_len, self.completion_len, self.max_length, source=source, row=number, where=where)


@dataclass
class EncodeStats:
    """How many rows were kept whole, truncated or dropped by the truncation policy."""

    counts: Counter = field(default_factory=Counter)

    def add(self, status: str) -> None:
        self.counts[status] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/{k}": float(self.counts.get(k, 0)) for k in ("kept", "truncated", "dropped")}


def prompt_and_completion(row: Mapping[str, Any], tokenizer: Any, chat_template: bool) -> tuple[str, str, bool]:
    """Return (prompt text, completion text, prompt_is_templated) for an sft row.

    ``messages`` rows always go through the tokenizer's chat template: every turn before the
    final assistant turn is the prompt, the final assistant content is the completion.
    prompt/completion rows use the template only when ``chat_template`` is set.
    """
    if "messages" in row and row["messages"] is not None:
        messages = list(row["messages"])
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return prompt, messages[-1]["content"], True
    if chat_template:
        messages = [{"role": "user", "content": row["prompt"]}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt, row["completion"], True
    return row["prompt"], row["completion"], False


def prompt_is_templated(row: Mapping[str, Any], chat_template: bool) -> bool:
    """Whether the row's prompt is rendered with the chat template (it then carries its own BOS)."""
    return bool(chat_template) or row.get("messages") is not None or isinstance(row.get("prompt"), list)


def prompt_text(row: Mapping[str, Any], tokenizer: Any, chat_template: bool) -> str:
    """The text a policy is prompted with, for any row kind.

    A ``messages`` row is prompted with every turn before its final assistant turn; a ``prompt``
    that is a message list (conversational pairs, ranked and unpaired rows) with all of it; a
    plain string prompt is used as is, or wrapped as one user turn when ``chat_template`` is set.
    """
    if "messages" in row and row["messages"] is not None:
        messages = list(row["messages"])
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(row.get("prompt"), list):
        return tokenizer.apply_chat_template(list(row["prompt"]), tokenize=False, add_generation_prompt=True)
    if chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True
        )
    return row["prompt"]


def encode_prompt(text: str, tokenizer: Any, templated: bool) -> list[int]:
    # A chat template usually writes BOS itself; adding special tokens again would double it.
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def fit_to_length(
    prompt_ids: list[int], completion_ids: list[int], max_length: int, policy: str, keep_prefix: int = 0
) -> tuple[list[int], list[int], str] | None:
    """Apply the truncation ``policy``; return (prompt, completion, status) or None to drop.

    ``truncate_prompt`` keeps the end of the prompt (the part nearest the completion) and its
    first ``keep_prefix`` tokens (BOS); ``truncate_completion`` cuts the completion's end;
    ``drop`` discards the row; ``error`` raises :class:`RowTooLongError` (which
    :func:`encode_rows` locates). A row that cannot fit even after truncation is dropped.
    """
    if len(prompt_ids) + len(completion_ids) <= max_length:
        return prompt_ids, completion_ids, "kept"
    if policy == "error":
        raise RowTooLongError(len(prompt_ids), len(completion_ids), max_length)
    if policy == "truncate_prompt":
        room = max_length - len(completion_ids) - keep_prefix
        if room < 1:
            return None
        return prompt_ids[:keep_prefix] + prompt_ids[len(prompt_ids) - room :], completion_ids, "truncated"
    if policy == "truncate_completion":
        room = max_length - len(prompt_ids)
        if room < 1:
            return None
        return prompt_ids, completion_ids[:room], "truncated"
    return None


def encode_sft_row(
    row: Mapping[str, Any],
    tokenizer: Any,
    *,
    max_length: int,
    truncation: str,
    completion_only: bool,
    chat_template: bool,
) -> tuple[dict[str, list[int]] | None, str]:
    """Tokenise one sft row into ``input_ids`` and ``labels`` (prompt masked when completion_only)."""
    prompt, completion, templated = prompt_and_completion(row, tokenizer, chat_template)
    p_ids = encode_prompt(prompt, tokenizer, templated)
    c_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    keep_prefix = 1 if p_ids and p_ids[0] == tokenizer.bos_token_id else 0
    fitted = fit_to_length(p_ids, c_ids, max_length, truncation, keep_prefix)
    if fitted is None:
        return None, "dropped"
    p_ids, c_ids, status = fitted
    labels = ([IGNORE_INDEX] * len(p_ids) if completion_only else list(p_ids)) + c_ids
    return {"input_ids": p_ids + c_ids, "labels": labels}, status


def encode_rows(
    rows: Iterable[Mapping[str, Any]], encode: Callable[[Mapping[str, Any]], tuple[Any, str]]
) -> tuple[list[dict], EncodeStats]:
    """Encode every row, counting kept/truncated/dropped.

    Under ``data.truncation=error`` the first over-long row raises a :class:`DataError` naming
    the split and the row's index (and its file and row, when ``rows`` is a
    :class:`~alignx.data.sources.SplitRows`) with its lengths.
    """
    out, stats = [], EncodeStats()
    for i, row in enumerate(rows):
        try:
            item, status = encode(row)
        except RowTooLongError as err:
            if err.row is not None:  # already located by the encoder
                raise
            raise err.located(rows, i) from None
        stats.add(status)
        if item is not None:
            out.append(item)
    return out, stats
