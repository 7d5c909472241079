"""Row schemas: check raw dataset rows against a row kind and normalise them.

Every row kind (see :data:`alignx.tasks.base.ROW_KINDS`) accepts a plain-text form and a
conversational form. The normalised row holds only canonical columns:

=========  ==================================================  =================================
kind       input                                               normalised row
=========  ==================================================  =================================
sft        ``prompt`` (str, may be empty) + ``completion``     unchanged (canonical columns only)
           (non-empty str); or ``messages``: a list ending
           with a non-empty assistant message
prompt     ``prompt`` (non-empty str); or ``messages``: a      unchanged
           list not ending with an assistant message
pairs      ``prompt`` (str, may be empty), ``chosen`` /        ``prompt`` (str | message list),
           ``rejected`` (non-empty str); or conversational:    ``chosen``, ``rejected`` (str:
           ``chosen`` / ``rejected`` message lists, each       the final assistant contents);
           ending with a non-empty assistant message;          ``margin`` (float) only if given
           optional ``margin`` (finite number)
ranked     ``prompt`` (str, may be empty), ``completions``     ``prompt``, ``completions``
           (K >= 2 distinct non-empty str, or message lists    (list[str]), ``ranks``
           ending with an assistant message), optional         (list[int | float])
           ``ranks`` (one real number per completion, lower
           = better, ties allowed, not all tied; absent =
           completions are ordered best first: 0..K-1)
unpaired   ``prompt`` (str, may be empty), ``completion``      ``prompt``, ``completion`` (str),
           (non-empty str, or a message list ending with an    ``label``
           assistant message), ``label`` (a real bool)
rated      ``prompt`` (str, may be empty), ``completion``      ``prompt``, ``completion`` (str),
           (non-empty str, or a message list ending with an    ``rating`` (float)
           assistant message), ``rating`` (a finite number,
           higher = better; not a bool)
=========  ==================================================  =================================

Conversational preference rows (``chosen``/``rejected``/``completions``/``completion`` given as
message lists) normalise to a shared **prompt** (a message list) and the final assistant
contents (strings):

* implicit prompt (no ``prompt`` column): the prompt is every turn before the final assistant
  message, which must be identical in every side (else a :class:`DataError`);
* explicit prompt (``prompt`` is a message list not ending with the assistant): the sides are its
  continuations. Turns before a side's final assistant message must be identical across sides;
  they are appended to the prompt -- unless they start with the whole prompt (the sides repeat
  the conversation), in which case they *are* the prompt;
* ``prompt`` as a plain string (UltraFeedback's schema): ignored when the sides already hold the
  user turn(s); if a side is only the assistant message, the string becomes one user turn.

``chosen == rejected`` (after normalisation) is invalid, as are duplicate ranked completions.
A message is ``{"role": "system"|"user"|"assistant", "content": str}``; other keys are dropped.
Which form applies is decided per row. Extra columns are ignored and not returned. "Non-empty"
means not blank: an all-whitespace completion is an error, never silently dropped.

Row formats (``dataset.format``, registry kind ``format``): a :data:`RowFormat` is a function
``(raw row: dict, dataset cfg) -> row dict`` that file-based sources apply to every raw row before
``dataset.columns`` and validation. To reject a row naming one of its columns, it raises
:class:`FormatError` (``raise FormatError("expected a number", column="score")``); the loader
turns that into a :class:`DataError` naming the file, the row and that column.

Invalid rows: by default the first one raises :class:`DataError` (source, row, column, what was
expected). Inside :func:`collect_invalid_rows` with policy ``"drop"`` (what ``data.invalid_rows``
sets around dataset loading), :func:`validate_rows` and the file loaders skip invalid rows and
record each with its reason instead; :func:`reject_row` lets a third-party loader do the same.
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Iterable, Iterator, Mapping

from alignx.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")
#: every canonical column name a row kind may use (the keys ``dataset.columns`` may map)
CANONICAL_COLUMNS = (
    "prompt", "completion", "chosen", "rejected", "margin", "completions", "ranks", "label", "messages", "rating",
    "steps", "step_labels",
)
_KINDS = ("sft", "prompt", "pairs", "ranked", "unpaired", "rated", "steps")
#: values of ``data.invalid_rows``
INVALID_ROW_POLICIES = ("error", "drop")


#: a row format: ``(raw row, dataset cfg) -> row`` (see the module docstring and :class:`FormatError`)
RowFormat = Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]]


class FormatError(ValueError):
    """What a row format raises for a raw row that does not fit it, naming the column at fault.

    ``column`` is the raw row's own column name (formats run before ``dataset.columns``), or
    None for the row as a whole; ``reason`` is a short phrase under which rows dropped by
    ``data.invalid_rows=drop`` are counted (default: ``format '<name>' failed``). The loader
    re-raises it as a :class:`DataError` ``<file>, row <n>, column '<column>': dataset.format=<name>:
    <message>``. (A ``KeyError`` from ``row[...]`` is reported the same way, as a missing column;
    any other exception is reported with its type, without a column.)
    """

    def __init__(self, message: str, *, column: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.reason = reason


class RowError(DataError):
    """A :class:`DataError` about one row, with a short ``reason`` used to count dropped rows."""

    def __init__(self, message: str, *, source: str, row: int | None = None, column: str | None = None, reason: str = "invalid row"):
        super().__init__(message, source=source, row=row, column=column)
        self.reason = reason


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True as a rank or margin is a data bug, not a number
    return not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)


class _Row:
    """One raw row plus where it came from, so every check can raise a precise DataError."""

    def __init__(self, row: Any, source: str, number: int, columns: Mapping[str, str]):
        self.raw, self.source, self.number, self.columns = row, source, number, columns

    def name(self, canonical: str) -> str:
        """The column's name in the source (what the user sees in their file)."""
        return self.columns.get(canonical, canonical)

    def has(self, canonical: str) -> bool:
        return self.name(canonical) in self.raw

    def error(self, canonical: str | None, message: str, reason: str) -> RowError:
        column = None if canonical is None else self.name(canonical)
        return RowError(message, source=self.source, row=self.number, column=column, reason=reason)

    def get(self, canonical: str, *, alternative: str | None = None) -> Any:
        if not self.has(canonical):
            also = f" (or give '{self.name(alternative)}' instead)" if alternative else ""
            raise self.error(canonical, f"missing column{also}; the row has columns {sorted(self.raw)}", "missing column")
        return self.raw[self.name(canonical)]

    def string(self, canonical: str, *, non_empty: bool, alternative: str | None = None) -> str:
        return self.check_string(self.get(canonical, alternative=alternative), canonical, non_empty=non_empty)

    def check_string(self, value: Any, canonical: str, *, non_empty: bool, label: str = "") -> str:
        if not isinstance(value, str):
            expected = "a non-empty string" if non_empty else "a string"
            raise self.error(canonical, f"{label}expected {expected}, got {_describe(value)}", "wrong type")
        if non_empty and not value.strip():
            raise self.error(canonical, f"{label}expected a non-empty string, got an empty string {value!r}", "empty text")
        return value

    def messages(self, canonical: str, *, last: str) -> list[dict]:
        """Check a message-list column; see :meth:`check_messages`."""
        return self.check_messages(self.get(canonical), canonical, last=last)

    def check_messages(self, value: Any, canonical: str, *, last: str, label: str = "") -> list[dict]:
        """Check a message list; ``last`` is "assistant" (must end with a non-empty assistant
        message) or "not assistant" (a prompt: must not end with the assistant). ``label``
        prefixes messages about one item of a list column ("completion 2: ")."""
        shape = f"{label}expected a non-empty list of {{role, content}} messages"
        if not isinstance(value, list) or not value:
            raise self.error(canonical, f"{shape}, got {_describe(value)}", "bad messages")
        out = []
        for i, msg in enumerate(value, 1):
            if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
                raise self.error(canonical, f"{shape}; message {i} is {_describe(msg)}", "bad messages")
            if msg["role"] not in ROLES:
                raise self.error(
                    canonical, f"{label}message {i}: role must be one of {list(ROLES)}, got {_describe(msg['role'])}", "bad messages"
                )
            if not isinstance(msg["content"], str):
                raise self.error(
                    canonical, f"{label}message {i}: content must be a string, got {_describe(msg['content'])}", "bad messages"
                )
            out.append({"role": msg["role"], "content": msg["content"]})
        if last == "assistant":
            if out[-1]["role"] != "assistant":
                raise self.error(
                    canonical, f"{label}the last message must be from the assistant, got role '{out[-1]['role']}'", "bad messages"
                )
            if not out[-1]["content"].strip():
                raise self.error(canonical, f"{label}the last (assistant) message has empty content", "empty text")
        elif out[-1]["role"] == "assistant":
            raise self.error(canonical, f"{label}a prompt must not end with an assistant message", "bad messages")
        return out


def _conversation(r: _Row, sides: list[tuple[str, str, Any]]) -> tuple[list[dict], list[str]]:
    """(shared prompt messages, final assistant contents) of conversational sides.

    ``sides`` holds (canonical column, label, message list); see the module docstring for how
    the prompt is found.
    """
    parsed = [(col, label, r.check_messages(value, col, last="assistant", label=label)) for col, label, value in sides]
    first_col, first_label, first = parsed[0]
    before = first[:-1]
    for col, label, msgs in parsed[1:]:
        if msgs[:-1] != before:
            this = f"{label.rstrip(': ')} of '{r.name(col)}'" if label else f"'{r.name(col)}'"
            that = f"{first_label.rstrip(': ')} of '{r.name(first_col)}'" if first_label else f"'{r.name(first_col)}'"
            earlier = msgs[:-1]
            at = next((i for i, (x, y) in enumerate(zip(earlier, before), 1) if x != y), min(len(earlier), len(before)) + 1)
            raise r.error(
                col,
                f"{this} and {that} differ before the final assistant turn (first at message {at}; "
                f"{len(earlier)} vs {len(before)} earlier messages); preference sides must share the same prompt turns",
                "sides differ before the final turn",
            )
    finals = [msgs[-1]["content"] for _, _, msgs in parsed]
    if not r.has("prompt"):
        return before, finals
    given = r.get("prompt")
    if isinstance(given, str):
        if before:  # the sides carry the conversation; the string repeats it (UltraFeedback)
            return before, finals
        return ([{"role": "user", "content": given}] if given.strip() else []), finals
    prompt = r.messages("prompt", last="not assistant")
    if before[: len(prompt)] == prompt:  # the sides repeat the whole prompt
        return before, finals
    return prompt + before, finals


def _sft(r: _Row) -> dict:
    if r.has("messages"):
        return {"messages": r.messages("messages", last="assistant")}
    return {
        "prompt": r.string("prompt", non_empty=False, alternative="messages"),
        "completion": r.string("completion", non_empty=True, alternative="messages"),
    }


def _prompt(r: _Row) -> dict:
    if r.has("messages"):
        return {"messages": r.messages("messages", last="not assistant")}
    return {"prompt": r.string("prompt", non_empty=True, alternative="messages")}


def _pairs(r: _Row) -> dict:
    conversational = [isinstance(r.raw.get(r.name(c)), list) for c in ("chosen", "rejected")]
    if any(conversational):
        if not all(conversational):
            col, other = ("rejected", "chosen") if conversational[0] else ("chosen", "rejected")
            raise r.error(
                col,
                f"'{r.name(other)}' is a message list, so '{r.name(col)}' must be one too; got {_describe(r.get(col))}",
                "wrong type",
            )
        prompt, (chosen, rejected) = _conversation(r, [("chosen", "", r.get("chosen")), ("rejected", "", r.get("rejected"))])
    else:
        prompt = r.string("prompt", non_empty=False)
        chosen = r.string("chosen", non_empty=True)
        rejected = r.string("rejected", non_empty=True)
    if chosen == rejected:
        raise r.error(
            "rejected",
            f"chosen and rejected are identical ({_describe(chosen)}); a pair must prefer one completion over another",
            "chosen == rejected",
        )
    out: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if r.has("margin"):
        margin = r.get("margin")
        if not _is_number(margin):
            raise r.error("margin", f"expected a finite number (the pair's preference margin), got {_describe(margin)}", "bad margin")
        out["margin"] = float(margin)
    return out


def _ranked(r: _Row) -> dict:
    items = r.get("completions")
    if not isinstance(items, list):
        raise r.error("completions", f"expected a list of completions, got {_describe(items)}", "wrong type")
    if len(items) < 2:
        raise r.error("completions", f"a ranked row needs at least 2 completions, got {len(items)}", "fewer than 2 completions")
    if any(isinstance(c, list) for c in items):
        for i, c in enumerate(items, 1):
            if not isinstance(c, list):
                raise r.error(
                    "completions", f"completion {i}: expected a message list like the others, got {_describe(c)}", "wrong type"
                )
        prompt, texts = _conversation(r, [("completions", f"completion {i}: ", c) for i, c in enumerate(items, 1)])
    else:
        prompt = r.string("prompt", non_empty=False)
        texts = [r.check_string(c, "completions", non_empty=True, label=f"completion {i}: ") for i, c in enumerate(items, 1)]
    first_seen: dict[str, int] = {}
    for i, text in enumerate(texts, 1):
        if text in first_seen:
            raise r.error(
                "completions", f"completions {first_seen[text]} and {i} are identical ({_describe(text)})", "duplicate completions"
            )
        first_seen[text] = i
    if not r.has("ranks"):  # no ranks: the completions are listed best first
        return {"prompt": prompt, "completions": texts, "ranks": list(range(len(texts)))}
    ranks = r.get("ranks")
    if not isinstance(ranks, list):
        raise r.error("ranks", f"expected a list of ranks (one per completion, lower = better), got {_describe(ranks)}", "ranks: not a list")
    if len(ranks) != len(texts):
        raise r.error("ranks", f"{len(ranks)} ranks for {len(texts)} completions; give one rank per completion", "ranks: length mismatch")
    for i, rank in enumerate(ranks, 1):
        if not _is_number(rank):
            raise r.error("ranks", f"rank {i} must be a finite number (lower = better), got {_describe(rank)}", "ranks: not a number")
    if len(set(ranks)) == 1:
        raise r.error("ranks", f"all ranks are tied ({ranks}); a ranked row must prefer some completion", "ranks: all tied")
    return {"prompt": prompt, "completions": texts, "ranks": [r_ if isinstance(r_, int) else float(r_) for r_ in ranks]}


def _prompt_and_completion(r: _Row) -> tuple[Any, str]:
    """(prompt, completion) of a one-completion row (unpaired, rated): plain strings or a
    conversational completion (a message list) whose earlier turns join the prompt."""
    if r.has("completion") and isinstance(r.get("completion"), list):
        prompt, (completion,) = _conversation(r, [("completion", "", r.get("completion"))])
        return prompt, completion
    return r.string("prompt", non_empty=False), r.string("completion", non_empty=True)


def _unpaired(r: _Row) -> dict:
    prompt, completion = _prompt_and_completion(r)
    label = r.get("label")
    if not isinstance(label, bool):  # a "true" string or a 1 is ambiguous data, not a label
        raise r.error("label", f"expected a bool (true = desirable, false = undesirable), got {_describe(label)}", "label not a bool")
    return {"prompt": prompt, "completion": completion, "label": label}


def _rated(r: _Row) -> dict:
    prompt, completion = _prompt_and_completion(r)
    rating = r.get("rating")
    if not _is_number(rating):  # a bool, a "4" string or a NaN is a data bug, not a rating
        raise r.error("rating", f"expected a finite number (the completion's rating, higher = better), got {_describe(rating)}",
                      "bad rating")
    return {"prompt": prompt, "completion": completion, "rating": float(rating)}



def _steps(r: _Row) -> dict:
    """A step-labelled row (process supervision): ``steps`` (non-empty strings, in order) and
    ``step_labels`` (one 0/1 per step, 1 = the step is correct)."""
    prompt = r.string("prompt", non_empty=False)
    steps = r.get("steps")
    if not isinstance(steps, list) or not steps:
        raise r.error("steps", f"expected a non-empty list of step texts, got {_describe(steps)}", "steps: not a non-empty list")
    texts = [r.check_string(s, "steps", non_empty=True, label=f"step {i}: ") for i, s in enumerate(steps, 1)]
    labels = r.get("step_labels")
    if not isinstance(labels, list):
        raise r.error("step_labels", f"expected a list of 0/1 labels (one per step, 1 = correct), got {_describe(labels)}",
                      "step_labels: not a list")
    if len(labels) != len(texts):
        raise r.error("step_labels", f"{len(labels)} labels for {len(texts)} steps; give one 0/1 label per step",
                      "step_labels: length mismatch")
    for i, label in enumerate(labels, 1):
        # a bool or 0.5 is ambiguous data: labels are the integers 0 and 1
        if isinstance(label, bool) or label not in (0, 1):
            raise r.error("step_labels", f"label {i} must be 0 or 1 (1 = the step is correct), got {_describe(label)}",
                          "step_labels: not 0/1")
    return {"prompt": prompt, "steps": texts, "step_labels": [int(x) for x in labels]}


_SCHEMAS = {
    "sft": _sft, "prompt": _prompt, "pairs": _pairs, "ranked": _ranked, "unpaired": _unpaired, "rated": _rated, "steps": _steps,
}


def check_kind(kind: str) -> None:
    """Raise ValueError if ``kind`` is not a known row kind."""
    if kind not in _SCHEMAS:
        raise ValueError(f"unknown row kind {kind!r}; valid kinds: {list(_KINDS)}")


def validate_row(
    row: Any, kind: str, source: str, row_number: int, *, columns: Mapping[str, str] | None = None
) -> dict:
    """Check one raw row against ``kind`` and return it normalised (canonical columns only).

    ``columns`` maps canonical column names to the names used in ``row`` (unmapped names map to
    themselves); errors name the row's own column names. Always raises on an invalid row, whatever
    the invalid-row policy (see :func:`validate_rows` and :func:`reject_row`).
    """
    check_kind(kind)
    if not isinstance(row, Mapping):
        raise RowError(f"expected a row object with named columns, got {_describe(row)}", source=source, row=row_number, reason="not an object")
    return _SCHEMAS[kind](_Row(row, source, row_number, columns or {}))


def validate_rows(
    rows: Iterable[Any],
    kind: str,
    source: str,
    *,
    first_row: int = 1,
    columns: Mapping[str, str] | None = None,
) -> list[dict]:
    """Check every row against the schema of ``kind`` and return the normalised rows.

    Rows are numbered from ``first_row``. An invalid row raises :class:`DataError` naming
    ``source``, the row number, the column and what was expected -- or, inside
    :func:`collect_invalid_rows` with policy ``"drop"``, is left out and recorded there.
    ``ValueError`` for an unknown ``kind``. See the module docstring for the schemas and
    :func:`validate_row` for ``columns``.
    """
    check_kind(kind)
    out = []
    for n, row in enumerate(rows, first_row):
        try:
            out.append(validate_row(row, kind, source, n, columns=columns))
        except DataError as err:
            reject_row(err, kind)
    return out


# ---------------------------------------------------------------- the invalid-row policy


@dataclass(frozen=True)
class DroppedRow:
    """One row left out under ``data.invalid_rows=drop``."""

    source: str
    row: int | None
    column: str | None
    reason: str
    message: str

    def location(self) -> str:
        where = [self.source] + ([f"row {self.row}"] if self.row is not None else [])
        return ", ".join(where + ([f"column '{self.column}'"] if self.column else []))


class InvalidRows:
    """The invalid-row policy in force and, under ``drop``, what it left out, by split.

    ``split`` names the split being loaded; whoever loads one sets it (``train.load_rows`` does).
    A row is counted once, under the first split that read it: when val rows are a held-out
    fraction of the train file, that file's invalid rows count under train only.
    """

    def __init__(self, policy: str = "error") -> None:
        if policy not in INVALID_ROW_POLICIES:
            raise ConfigError(f"data.invalid_rows='{policy}' is not a policy. Valid: {', '.join(INVALID_ROW_POLICIES)}")
        self.policy = policy
        self.split = ""
        self.dropped: dict[str, list[DroppedRow]] = {}
        self._seen: set[tuple[str, int, str | None]] = set()

    def reject(self, err: DataError, kind: str | None = None) -> None:
        """Raise ``err`` (policy ``error``) or record it as a dropped row (policy ``drop``)."""
        if self.policy == "error":
            raise err
        if err.row is not None:
            key = (err.source, err.row, kind)
            if key in self._seen:
                return
            self._seen.add(key)
        reason = err.reason if isinstance(err, RowError) else "invalid row"
        self.dropped.setdefault(self.split, []).append(DroppedRow(err.source, err.row, err.column, reason, err.detail))

    def count(self, split: str) -> int:
        """How many rows of ``split`` were dropped."""
        return len(self.dropped.get(split, []))

    def reasons(self, split: str) -> Counter:
        """Dropped rows of ``split`` by reason."""
        return Counter(d.reason for d in self.dropped.get(split, []))

    def summary(self, split: str, examples: int = 3) -> str:
        """One line: the count, the breakdown by reason and the first few locations."""
        dropped = self.dropped.get(split, [])
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.reasons(split).most_common())
        first = "; ".join(f"{d.location()}: {d.message}" for d in dropped[:examples])
        more = f" (and {len(dropped) - examples} more)" if len(dropped) > examples else ""
        return f"{len(dropped)} invalid {split} row(s) dropped ({reasons}); first: {first}{more}"


_ACTIVE: ContextVar[InvalidRows | None] = ContextVar("alignx_invalid_rows", default=None)


@contextmanager
def collect_invalid_rows(policy: str = "error") -> Iterator[InvalidRows]:
    """Apply the invalid-row ``policy`` ("error" | "drop") to all validation inside the block.

    A context variable rather than a parameter, so loaders from plugins that call the public
    :func:`validate_rows` (or :func:`reject_row`) honour ``data.invalid_rows`` unchanged. Yields
    the :class:`InvalidRows` that records what was dropped.
    """
    invalid = InvalidRows(policy)
    token = _ACTIVE.set(invalid)
    try:
        yield invalid
    finally:
        _ACTIVE.reset(token)


def reject_row(err: DataError, kind: str | None = None) -> None:
    """Handle one invalid row under the active policy: raise ``err``, or record and return.

    For loaders that validate row by row: ``try: validate_row(...) except DataError as e:
    reject_row(e, kind)``. Outside :func:`collect_invalid_rows` it always raises.
    """
    invalid = _ACTIVE.get()
    if invalid is None:
        raise err
    invalid.reject(err, kind)
