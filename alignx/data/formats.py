"""Row schemas: check raw dataset rows against a row kind and normalise them.

Every row kind (see :data:`alignx.tasks.base.ROW_KINDS`) accepts a plain-text form and a
conversational form; the normalised row holds only the canonical columns of the form used:

=========  ==============================================  =====================================
kind       plain text                                      conversational
=========  ==============================================  =====================================
sft        ``prompt`` (str, may be empty),                 ``messages``: list ending with a
           ``completion`` (non-empty str)                  non-empty assistant message
prompt     ``prompt`` (non-empty str)                      ``messages``: list not ending with an
                                                           assistant message
pairs      ``prompt`` (str, may be empty),                 ``chosen``/``rejected``: message lists
           ``chosen``/``rejected`` (non-empty str)         each ending with a non-empty assistant
                                                           message; optional ``prompt``: a message
                                                           list not ending with the assistant
                                                           (normalised to ``[]`` when absent)
unpaired   ``prompt`` (str, may be empty), ``completion``  --
           (non-empty str), ``label`` (a real bool)
=========  ==============================================  =====================================

A message is ``{"role": "system"|"user"|"assistant", "content": str}``; other keys are dropped.
Which form applies is decided per row: ``messages`` present -> conversational (sft, prompt);
``chosen`` is a list -> conversational (pairs). Extra columns are ignored and not returned.
"Non-empty" means not blank: an all-whitespace completion is an error, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from alignx.errors import DataError

ROLES = ("system", "user", "assistant")
#: every canonical column name a row kind may use (the keys ``dataset.columns`` may map)
CANONICAL_COLUMNS = ("prompt", "completion", "chosen", "rejected", "label", "messages")
_KINDS = ("sft", "prompt", "pairs", "unpaired")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


class _Row:
    """One raw row plus where it came from, so every check can raise a precise DataError."""

    def __init__(self, row: Any, source: str, number: int, columns: Mapping[str, str]):
        self.raw, self.source, self.number, self.columns = row, source, number, columns

    def name(self, canonical: str) -> str:
        """The column's name in the source (what the user sees in their file)."""
        return self.columns.get(canonical, canonical)

    def has(self, canonical: str) -> bool:
        return self.name(canonical) in self.raw

    def error(self, canonical: str | None, message: str) -> DataError:
        column = None if canonical is None else self.name(canonical)
        return DataError(message, source=self.source, row=self.number, column=column)

    def get(self, canonical: str, *, alternative: str | None = None) -> Any:
        if not self.has(canonical):
            also = f" (or give '{self.name(alternative)}' instead)" if alternative else ""
            raise self.error(canonical, f"missing column{also}; the row has columns {sorted(self.raw)}")
        return self.raw[self.name(canonical)]

    def string(self, canonical: str, *, non_empty: bool, alternative: str | None = None) -> str:
        value = self.get(canonical, alternative=alternative)
        if not isinstance(value, str):
            expected = "a non-empty string" if non_empty else "a string"
            raise self.error(canonical, f"expected {expected}, got {_describe(value)}")
        if non_empty and not value.strip():
            raise self.error(canonical, f"expected a non-empty string, got an empty string {value!r}")
        return value

    def messages(self, canonical: str, *, last: str) -> list[dict]:
        """Check a message list; ``last`` is "assistant" (must end with a non-empty assistant
        message) or "not assistant" (a prompt: must not end with the assistant)."""
        value = self.get(canonical)
        shape = "expected a non-empty list of {role, content} messages"
        if not isinstance(value, list) or not value:
            raise self.error(canonical, f"{shape}, got {_describe(value)}")
        out = []
        for i, msg in enumerate(value, 1):
            if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
                raise self.error(canonical, f"{shape}; message {i} is {_describe(msg)}")
            if msg["role"] not in ROLES:
                raise self.error(canonical, f"message {i}: role must be one of {list(ROLES)}, got {_describe(msg['role'])}")
            if not isinstance(msg["content"], str):
                raise self.error(canonical, f"message {i}: content must be a string, got {_describe(msg['content'])}")
            out.append({"role": msg["role"], "content": msg["content"]})
        if last == "assistant":
            if out[-1]["role"] != "assistant":
                raise self.error(canonical, f"the last message must be from the assistant, got role '{out[-1]['role']}'")
            if not out[-1]["content"].strip():
                raise self.error(canonical, "the last (assistant) message has empty content")
        elif out[-1]["role"] == "assistant":
            raise self.error(canonical, "a prompt must not end with an assistant message")
        return out


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
    if isinstance(r.raw.get(r.name("chosen")), list):
        if not isinstance(r.get("rejected"), list):
            raise r.error("rejected", f"'chosen' is a message list, so 'rejected' must be one too; got {_describe(r.get('rejected'))}")
        prompt = r.messages("prompt", last="not assistant") if r.has("prompt") else []
        return {
            "prompt": prompt,
            "chosen": r.messages("chosen", last="assistant"),
            "rejected": r.messages("rejected", last="assistant"),
        }
    return {
        "prompt": r.string("prompt", non_empty=False),
        "chosen": r.string("chosen", non_empty=True),
        "rejected": r.string("rejected", non_empty=True),
    }


def _unpaired(r: _Row) -> dict:
    prompt = r.string("prompt", non_empty=False)
    completion = r.string("completion", non_empty=True)
    label = r.get("label")
    if not isinstance(label, bool):  # a "true" string or a 1 is ambiguous data, not a label
        raise r.error("label", f"expected a bool (true = desirable, false = undesirable), got {_describe(label)}")
    return {"prompt": prompt, "completion": completion, "label": label}


_SCHEMAS = {"sft": _sft, "prompt": _prompt, "pairs": _pairs, "unpaired": _unpaired}


def check_kind(kind: str) -> None:
    """Raise ValueError if ``kind`` is not a known row kind."""
    if kind not in _SCHEMAS:
        raise ValueError(f"unknown row kind {kind!r}; valid kinds: {list(_KINDS)}")


def validate_row(
    row: Any, kind: str, source: str, row_number: int, *, columns: Mapping[str, str] | None = None
) -> dict:
    """Check one raw row against ``kind`` and return it normalised (canonical columns only).

    ``columns`` maps canonical column names to the names used in ``row`` (unmapped names map to
    themselves); errors name the row's own column names.
    """
    check_kind(kind)
    if not isinstance(row, Mapping):
        raise DataError(f"expected a row object with named columns, got {_describe(row)}", source=source, row=row_number)
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

    Rows are numbered from ``first_row``. Raises :class:`DataError` naming ``source``, the row
    number, the column and what was expected at the first bad row; ``ValueError`` for an unknown
    ``kind``. See the module docstring for the schemas and :func:`validate_row` for ``columns``.
    """
    check_kind(kind)
    return [validate_row(row, kind, source, n, columns=columns) for n, row in enumerate(rows, first_row)]
