"""Rows -> token ids: chat-template formatting, completion masks and the truncation policy.

The public encoders (building blocks for plugin objectives' ``encode``; see ``docs/data.md``),
each ``(row, tokenizer, ...) -> (item or None, status)`` with ``status`` one of :data:`STATUSES`:

* :func:`encode_sft_row`: an sft row -> ``input_ids``, ``labels`` (collate with
  :func:`alignx.data.batching.collate_sft`);
* :func:`encode_pair`: a pairs row -> ``chosen_input_ids``/``chosen_labels``/
  ``rejected_input_ids``/``rejected_labels`` (:func:`alignx.data.batching.collate_pairs`);
* :func:`encode_ranked`: a pairs or ranked row -> ``seqs``, ``ranks``, ``input_ids``
  (:func:`alignx.data.batching.collate_ranked`);
* :func:`encode_ranked_lm`: a pairs or ranked row -> ``seqs``, ``seq_labels``, ``ranks``,
  ``input_ids``: K completion-masked sequences for a policy's listwise loss (PRO, RRHF;
  :func:`alignx.data.batching.collate_ranked_lm`);
* :func:`encode_prompt_completions`: one prompt with several completions, the piece the others
  are built from.

Labels mask the prompt with :data:`IGNORE_INDEX` (-100), which the losses skip.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from alignx.data.mixture import SOURCE_COLUMN
from alignx.data.sources import SplitRows
from alignx.errors import DataError
from alignx.ops.logprobs import IGNORE_INDEX

__all__ = [
    "IDENTICAL", "IGNORE_INDEX", "STATUSES", "EncodeStats", "RowTooLongError", "collapsed", "compared_sequences",
    "encode_pair", "encode_prompt", "encode_prompt_completions", "encode_ranked", "encode_ranked_lm", "encode_rows", "encode_sft_row",
    "fit_to_length", "prompt_and_completion", "prompt_is_templated", "prompt_text",
]

log = logging.getLogger("alignx")

#: the status of a comparison row whose completions became the same token ids under the
#: truncation policy (see :func:`encode_rows`)
IDENTICAL = "identical_after_truncation"
#: every status a row can end with; each row has exactly one, so the counts add up to the rows seen
STATUSES = ("kept", "truncated", "dropped", IDENTICAL)


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
        split = rows.split if isinstance(rows, SplitRows) else ""
        where = f"{split} split row {index + 1}" if split else f"row {index + 1}"
        source, number = rows.location(index) if isinstance(rows, SplitRows) else ("data", index + 1)
        return RowTooLongError(self.prompt_len, self.completion_len, self.max_length, source=source, row=number, where=where)


@dataclass
class EncodeStats:
    """What the truncation policy did to a split's rows, one status per row (:data:`STATUSES`).

    ``kept``: whole; ``truncated``: shortened and trained on; ``dropped``: could not fit;
    ``identical_after_truncation``: a comparison row (a preference pair, a ranking) whose
    completions became the same token ids once truncated, dropped because it carries no signal.
    The four counts add up to the rows encoded. ``sources``: rows per source of a dataset
    mixture (:func:`alignx.data.mixture.source_counts`; empty for other datasets).
    """

    counts: Counter = field(default_factory=Counter)
    sources: dict[str, int] = field(default_factory=dict)

    def add(self, status: str) -> None:
        self.counts[status] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """``{prefix}/<status>`` for every status (0 when no row had it), e.g. ``data/train/kept``, and
        ``{prefix}/source.<name>`` for every source of a mixture, e.g. ``data/train/source.math``."""
        out = {f"{prefix}/{k}": float(self.counts[k]) for k in STATUSES}
        out.update({f"{prefix}/source.{name}": float(n) for name, n in self.sources.items()})
        return out

    def warn_identical(self, split: str) -> None:
        """Log a warning naming ``split`` and how many comparison rows collapsed (nothing when none did)."""
        n = self.counts[IDENTICAL]
        if n:
            log.warning(
                "%s split: %d of %d rows compare completions that are identical after truncation to data.max_length "
                "(the tokens that told them apart were cut); they are dropped, as they carry no preference signal "
                "(DPO would train on them at a constant loss ln 2 with zero gradient). Raise data.max_length or use "
                "data.truncation=truncate_prompt to keep them",
                split or "a", n, self.total,
            )


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
    """The token ids of a prompt's text; ``templated`` (from :func:`prompt_is_templated`): the
    text came from the chat template, which usually writes BOS itself, so no special tokens are
    added (they would double it)."""
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


def encode_prompt_completions(
    row: Mapping[str, Any], completions: Sequence[str], tokenizer: Any, data_cfg: Mapping[str, Any]
) -> tuple[list[tuple[list[int], list[int]]] | None, str]:
    """Tokenise one prompt with several completions (each closed by EOS) under the truncation policy.

    The prompt is ``row``'s (see :func:`prompt_text`; ``data_cfg["chat_template"]``), fitted
    with each completion to ``data_cfg["max_length"]`` under ``data_cfg["truncation"]`` (see
    :func:`fit_to_length`). Returns ``([(prompt_ids, completion_ids), ...], status)``, status
    "truncated" if any completion was, or ``(None, "dropped")`` when any completion cannot fit
    (a row is kept or dropped whole).
    """
    chat = bool(data_cfg["chat_template"])
    p_ids = encode_prompt(prompt_text(row, tokenizer, chat), tokenizer, templated=prompt_is_templated(row, chat))
    keep = 1 if p_ids and p_ids[0] == tokenizer.bos_token_id else 0
    out, status = [], "kept"
    for text in completions:
        c_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
        fitted = fit_to_length(p_ids, c_ids, int(data_cfg["max_length"]), str(data_cfg["truncation"]), keep)
        if fitted is None:
            return None, "dropped"
        sp, sc, st = fitted
        status = "truncated" if st == "truncated" else status
        out.append((sp, sc))
    return out, status


def encode_pair(
    row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any]
) -> tuple[dict[str, list[int]] | None, str]:
    """Tokenise a prompt/chosen/rejected row into two completion-masked sequences.

    The item: ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids``,
    ``rejected_labels`` (prompt positions of the labels are :data:`IGNORE_INDEX`). It has no
    ``input_ids``: an objective that batches pairs by length adds one (DPO uses the chosen side).
    """
    seqs, status = encode_prompt_completions(row, [row["chosen"], row["rejected"]], tokenizer, data_cfg)
    if seqs is None:
        return None, status
    out = {}
    for side, (sp, sc) in zip(("chosen", "rejected"), seqs):
        out[f"{side}_input_ids"] = sp + sc
        out[f"{side}_labels"] = [IGNORE_INDEX] * len(sp) + sc
    return out, status


def ranked_completions(row: Mapping[str, Any]) -> tuple[list[str], list[float]]:
    """(completions, ranks) of a K-wise ranked row, or of a pairs row read as K=2 (ranks ``[0.0, 1.0]``)."""
    if "completions" in row:
        return list(row["completions"]), [float(r) for r in row["ranks"]]
    return [row["chosen"], row["rejected"]], [0.0, 1.0]


def encode_ranked(row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any]) -> tuple[dict | None, str]:
    """A pairs row (chosen ranked above rejected) or a K-wise ranked row -> K sequences and their ranks.

    The item: ``seqs`` (K token-id lists, each prompt + completion + EOS, so a scalar head reads
    the sequence at its EOS token), ``ranks`` (K floats, lower = better; a pair is ``[0.0, 1.0]``),
    ``input_ids`` (the longest sequence, for length bucketing) and ``margin`` (float) when the row
    has one. Truncation never cuts the EOS: it replaces the last completion token.
    """
    completions, ranks = ranked_completions(row)
    seqs, status = encode_prompt_completions(row, completions, tokenizer, data_cfg)
    if seqs is None:
        return None, status
    ids = []
    for p, c in seqs:
        if c[-1] != tokenizer.eos_token_id:  # truncate_completion cut the EOS the reward is read at
            c = c[:-1] + [tokenizer.eos_token_id]
        ids.append(p + c)
    item: dict[str, Any] = {"seqs": ids, "ranks": ranks, "input_ids": max(ids, key=len)}
    if row.get("margin") is not None:
        item["margin"] = float(row["margin"])
    return item, status


def encode_ranked_lm(row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any]) -> tuple[dict | None, str]:
    """A pairs row (chosen ranked above rejected) or a K-wise ranked row -> K completion-masked sequences.

    For a policy scored on its own completions (listwise losses: PRO, RRHF). The item: ``seqs``
    (K token-id lists, prompt + completion + EOS), ``seq_labels`` (the same with the prompt set to
    :data:`IGNORE_INDEX`), ``ranks`` (K floats, lower = better; a pair is ``[0.0, 1.0]``) and
    ``input_ids`` (the longest sequence, for length bucketing). Unlike :func:`encode_ranked`,
    ``truncate_completion`` cuts the EOS with the rest: the labels are what the policy is scored on.
    """
    completions, ranks = ranked_completions(row)
    seqs, status = encode_prompt_completions(row, completions, tokenizer, data_cfg)
    if seqs is None:
        return None, status
    ids = [p + c for p, c in seqs]
    labels = [[IGNORE_INDEX] * len(p) + c for p, c in seqs]
    return {"seqs": ids, "seq_labels": labels, "ranks": ranks, "input_ids": max(ids, key=len)}, status


def compared_sequences(item: Mapping[str, Any]) -> list[list[int]]:
    """The token sequences an encoded comparison item ranks against each other ([] for other items).

    Two layouts are comparisons: a preference pair (``chosen_input_ids``/``rejected_input_ids``,
    the DPO family) and a ranking (``seqs``, reward modelling's pairs and K-wise rows).
    """
    if "seqs" in item:
        return [list(s) for s in item["seqs"]]
    if "chosen_input_ids" in item and "rejected_input_ids" in item:
        return [list(item["chosen_input_ids"]), list(item["rejected_input_ids"])]
    return []


def collapsed(sequences: Sequence[Sequence[int]]) -> bool:
    """Whether two of ``sequences`` are the same token ids (a comparison between them has no signal)."""
    seen = {tuple(s) for s in sequences}
    return len(seen) < len(sequences)


def encode_rows(
    rows: Iterable[Mapping[str, Any]], encode: Callable[[Mapping[str, Any]], tuple[Any, str]], *, split: str = ""
) -> tuple[list[dict], EncodeStats]:
    """Encode every row, counting each row's status (see :class:`EncodeStats`).

    A comparison row (a preference pair or a ranking) that the truncation policy shortened until
    two of its completions are the same token ids is dropped and counted as
    ``identical_after_truncation``, with a warning naming the split (``split``, else the rows'
    own :class:`~alignx.data.sources.SplitRows` name): such a pair trains at a constant loss
    (DPO: ln 2) with zero gradient, so keeping it would only dilute every batch it lands in.

    A row with a ``source`` (a dataset mixture's, :data:`alignx.data.mixture.SOURCE_COLUMN`) passes it
    on to its item.

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
        if item is not None and status == "truncated" and collapsed(compared_sequences(item)):
            item, status = None, IDENTICAL
        stats.add(status)
        if item is not None:
            if SOURCE_COLUMN in row:  # a mixture's row: per-source training loss and evaluation group by it
                item[SOURCE_COLUMN] = row[SOURCE_COLUMN]
            out.append(item)
    stats.warn_identical(split or (rows.split if isinstance(rows, SplitRows) else ""))
    return out, stats
