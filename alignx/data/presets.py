"""Row formats of well-known Hub preference datasets (registry kind "format").

A row format is a function ``(raw row, dataset cfg) -> row in a canonical schema`` (see
:mod:`alignx.data.formats`), named by ``dataset.format``. File-based sources apply it to every
raw row before ``dataset.columns`` and validation; whatever it raises becomes a
:class:`~alignx.errors.DataError` naming the file, the row and, via
:class:`alignx.data.formats.FormatError`'s ``column`` (or a KeyError's key), the column. Plugins register their own the same way:
``registry.register("format", name, fn)``.

Besides the preference columns, each format returns ``messages`` (the preferred/whole
conversation), so that ``sft`` rows -- SFT on the chosen side, and the held-out rows evaluation
reads -- load from the same dataset.

=========================  ==============================================  ==================
format                     dataset (schema)                                row kind
=========================  ==============================================  ==================
``hh_rlhf``                Anthropic/hh-rlhf: ``chosen``/``rejected``      pairs (implicit
                           transcripts ``"\\n\\nHuman: ..\\n\\nAssistant: .."``  prompt)
``ultrafeedback_binarized``  HuggingFaceH4/ultrafeedback_binarized:        pairs (implicit
                           ``prompt`` str, ``chosen``/``rejected`` message  prompt); margin =
                           lists, ``score_chosen``/``score_rejected``      score difference
                                                                           with
                                                                           ``margin_from_scores``
``kto``                    trl-lib/kto-mix-14k: ``prompt`` and             unpaired
                           ``completion`` message lists, ``label`` bool
=========================  ==============================================  ==================
"""

from __future__ import annotations

import math
import re
from numbers import Real
from typing import Any, Mapping

from alignx.data.formats import FormatError

__all__ = ["FORMATS", "FormatError", "hh_rlhf", "kto", "parse_hh_transcript", "register", "ultrafeedback_binarized"]

#: a turn marker of an hh-rlhf transcript
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: Any, column: str) -> list[dict]:
    """Split an hh-rlhf transcript into user/assistant messages (contents stripped).

    Raises :class:`FormatError` unless it is a string that starts with a Human turn and ends
    with an Assistant turn.
    """
    if not isinstance(text, str):
        raise FormatError(f"expected an hh-rlhf transcript string, got {type(text).__name__}", column=column, reason="bad transcript")
    parts = _HH_TURN.split(text)
    # parts = [text before the first marker, role, content, role, content, ...]
    if len(parts) < 3 or parts[0].strip():
        raise FormatError(
            "the transcript must start with '\\n\\nHuman: ' (hh-rlhf's turn marker)", column=column, reason="bad transcript"
        )
    messages = [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]
    if messages[0]["role"] != "user":
        raise FormatError("the transcript must start with a Human turn", column=column, reason="bad transcript")
    if messages[-1]["role"] != "assistant":
        raise FormatError("the transcript must end with an Assistant turn", column=column, reason="bad transcript")
    return messages


def hh_rlhf(row: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict:
    """Anthropic/hh-rlhf: both transcripts as conversations; their shared turns are the prompt."""
    chosen = parse_hh_transcript(row["chosen"], "chosen")
    rejected = parse_hh_transcript(row["rejected"], "rejected")
    return {"chosen": chosen, "rejected": rejected, "messages": chosen}


def _score(row: Mapping[str, Any], column: str) -> float:
    value = row[column]
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise FormatError(f"expected a finite number, got {value!r}", column=column, reason="bad score")
    return float(value)


def ultrafeedback_binarized(row: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict:
    """HuggingFaceH4/ultrafeedback_binarized: conversational pairs (the ``prompt`` string repeats
    the user turn inside chosen/rejected and is ignored by validation). With
    ``dataset.margin_from_scores`` the pair's margin is ``score_chosen - score_rejected``."""
    out = {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
    out["messages"] = row.get("messages") or row["chosen"]
    if cfg.get("margin_from_scores"):
        out["margin"] = _score(row, "score_chosen") - _score(row, "score_rejected")
    return out


def kto(row: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict:
    """trl-lib/kto-mix-14k: already alignx's conversational unpaired schema (prompt and
    completion message lists, bool label); adds ``messages`` = prompt + completion."""
    out = {"prompt": row["prompt"], "completion": row["completion"], "label": row["label"]}
    if isinstance(row["prompt"], list) and isinstance(row["completion"], list):
        out["messages"] = list(row["prompt"]) + list(row["completion"])
    return out


#: format name -> function, registered by :func:`register`
FORMATS = {
    "hh_rlhf": hh_rlhf,
    "ultrafeedback_binarized": ultrafeedback_binarized,
    "kto": kto,
}


def register(registry: Any) -> None:
    """Register the preset row formats (called from :mod:`alignx.builtins`)."""
    for name, fn in FORMATS.items():
        registry.register("format", name, fn)
