"""Prompt templates (the ``template`` config group): how a row's prompt is phrased before tokenisation.

Styles (:data:`STYLES`), each a format string of the ``template`` node named like the style:

* ``none``: the prompt as it is;
* ``zero_shot``: an instruction before the prompt (``{instruction}``, ``{prompt}``);
* ``few_shot``: ``k`` worked exemplars before the prompt (``{instruction}``, ``{exemplars}``,
  ``{prompt}``); each exemplar is ``template.exemplar`` (``{prompt}``, ``{completion}``) filled from
  a row of the train split, never the row itself nor a row with the same prompt, and from the same
  source in a mixture. Which exemplars a row gets is seeded by (seed, split, row index);
* ``chain_of_thought``: the prompt followed by a step-by-step cue (``{instruction}``, ``{prompt}``).

``template.mix`` ({style: weight}) draws a style per row (seeded by seed and split); null gives
every row the style ``template.name``. The rendered prompt replaces ``prompt`` (or, in a
conversation, the content of the last user turn); the prompt it replaced stays in the column
``task_prompt``. Templates apply to the splits in ``template.splits``. They run before
tokenisation, so the tokenised-data cache key (which covers the rows) covers them.
"""

from __future__ import annotations

import random
import string
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from alignx.data.mixture import SOURCE_COLUMN
from alignx.data.sources import SPLITS, SplitRows
from alignx.errors import ConfigError, DataError

#: the template styles (``template.mix`` keys; ``template.name`` when ``mix`` is null)
STYLES = ("none", "zero_shot", "few_shot", "chain_of_thought")
#: the column that keeps a templated row's original prompt
ORIGINAL_PROMPT = "task_prompt"
#: the placeholders each format string may use
PLACEHOLDERS = {
    "zero_shot": ("instruction", "prompt"),
    "few_shot": ("instruction", "exemplars", "prompt"),
    "exemplar": ("prompt", "completion"),
    "chain_of_thought": ("instruction", "prompt"),
}


def _plain(node: Any) -> dict:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def check_template(tcfg: Mapping[str, Any]) -> dict[str, float]:
    """The per-row style weights ``tcfg`` asks for ({style: weight}), after checking every value.

    Errors are :class:`ConfigError` naming the key: an unknown style (listing :data:`STYLES`), a
    negative weight, ``k`` < 1 with few-shot rows, an unknown split or a format string using a
    placeholder it cannot have.
    """
    mix = tcfg.get("mix")
    if mix is None:
        name = str(tcfg["name"])
        if name not in STYLES:
            raise ConfigError(f"template.name={name} is not a template style and template.mix is null; "
                              f"valid styles: {', '.join(STYLES)} (or set template.mix)")
        weights = {name: 1.0}
    else:
        weights = {}
        for style, w in _plain(mix).items():
            if style not in STYLES:
                raise ConfigError(f"template.mix.{style}: unknown template style; valid: {', '.join(STYLES)}")
            try:
                weights[str(style)] = float(w)
            except (TypeError, ValueError):
                raise ConfigError(f"template.mix.{style} must be a number >= 0, got {w!r}") from None
            if not weights[style] >= 0:
                raise ConfigError(f"template.mix.{style} must be a number >= 0, got {w!r}")
        if not any(weights.values()):
            raise ConfigError(f"template.mix must give some style a weight > 0, got {weights}")
    for split in tcfg["splits"]:
        if split not in SPLITS:
            raise ConfigError(f"template.splits: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    used = {s for s, w in weights.items() if w > 0}
    if "few_shot" in used and int(tcfg["k"]) < 1:
        raise ConfigError(f"template.k (exemplars per few-shot prompt) must be >= 1, got {tcfg['k']}")
    for key, allowed in PLACEHOLDERS.items():
        if key != "exemplar" and key not in used or key == "exemplar" and "few_shot" not in used:
            continue
        fields = [f for _, f, _, _ in string.Formatter().parse(str(tcfg[key])) if f is not None]
        bad = [f for f in fields if f not in allowed]
        if bad:
            raise ConfigError(f"template.{key} uses {{{bad[0]}}}; it may use {', '.join('{' + a + '}' for a in allowed)}")
    return weights


def render(style: str, prompt: str, tcfg: Mapping[str, Any], exemplars: Sequence[tuple[str, str]] = ()) -> str:
    """``prompt`` in ``style``; ``exemplars`` are the (prompt, completion) pairs of a few-shot prompt."""
    if style == "none":
        return prompt
    instruction = str(tcfg["instruction"])
    if style == "few_shot":
        shots = "".join(str(tcfg["exemplar"]).format(prompt=p, completion=c) for p, c in exemplars)
        return str(tcfg["few_shot"]).format(instruction=instruction, exemplars=shots, prompt=prompt)
    return str(tcfg[style]).format(instruction=instruction, prompt=prompt)


def _last_user(messages: Sequence[Mapping[str, Any]]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return None


def prompt_of(row: Mapping[str, Any]) -> str | None:
    """The text a template rewrites: a string ``prompt``, else the last user turn of a message-list
    ``prompt`` or of ``messages`` (before its final assistant turn); None when there is none."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    turns = prompt if isinstance(prompt, list) else (row.get("messages") or [])[:-1] if row.get("messages") else []
    i = _last_user(turns)
    return None if i is None else str(turns[i]["content"])


def with_prompt(row: Mapping[str, Any], text: str) -> dict:
    """``row`` with its prompt (see :func:`prompt_of`) replaced by ``text`` and the original kept in ``task_prompt``."""
    out = {**row, ORIGINAL_PROMPT: prompt_of(row)}
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = text
        return out
    key = "prompt" if isinstance(prompt, list) else "messages"
    turns = [dict(m) for m in row[key]]
    last = len(turns) if key == "prompt" else len(turns) - 1
    i = _last_user(turns[:last])
    turns[i]["content"] = text
    out[key] = turns
    return out


def demonstration(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """(prompt, good completion) of a row, for a few-shot exemplar; None when it has none.

    The completion: ``completion`` (sft; unpaired only when labelled desirable), ``chosen``
    (pairs), the best-ranked of ``completions`` (ranked), the final assistant turn of ``messages``.
    """
    prompt = prompt_of(row)
    if prompt is None:
        return None
    if isinstance(row.get("chosen"), str):
        return prompt, row["chosen"]
    if row.get("completions") and row.get("ranks"):
        ranks = list(row["ranks"])
        return prompt, str(row["completions"][ranks.index(min(ranks))])
    if isinstance(row.get("completion"), str) and row.get("label", True) is True:
        return prompt, row["completion"]
    messages = row.get("messages")
    if messages and messages[-1].get("role") == "assistant":
        return prompt, str(messages[-1]["content"])
    return None


def _exemplars(pool: Sequence[tuple[str, str]], k: int, prompt: str, rng: random.Random, where: str) -> list[tuple[str, str]]:
    """``k`` distinct exemplars of ``pool`` whose prompt is not ``prompt`` (rejection sampling, then a scan)."""
    chosen: list[int] = []
    for _ in range(20 * k):
        i = rng.randrange(len(pool))
        if i not in chosen and pool[i][0] != prompt:
            chosen.append(i)
            if len(chosen) == k:
                return [pool[i] for i in chosen]
    eligible = [i for i in range(len(pool)) if pool[i][0] != prompt and i not in chosen]
    if len(chosen) + len(eligible) < k:
        raise DataError(f"template.k={k} exemplars are asked for, but the train split has only {len(chosen) + len(eligible)} "
                        "rows with a completion and another prompt; lower template.k", source=where)
    return [pool[i] for i in chosen + rng.sample(eligible, k - len(chosen))]


def apply_template(rows: Mapping[str, Sequence[dict]], tcfg: Mapping[str, Any] | None, seed: int) -> dict[str, Sequence[dict]]:
    """Every split of ``rows`` (split -> rows) with the template ``tcfg`` applied to the splits in
    ``template.splits`` (see the module docstring); None or style ``none`` leaves rows as they are."""
    if tcfg is None:
        return dict(rows)
    weights = check_template(tcfg)
    if not any(w for style, w in weights.items() if style != "none"):
        return dict(rows)
    styles, probs = zip(*weights.items())
    pools: dict[Any, list[tuple[str, str]]] = {}
    if weights.get("few_shot", 0) > 0:
        for row in rows.get("train", []):
            demo = demonstration(row)
            if demo is not None:
                pools.setdefault(row.get(SOURCE_COLUMN), []).append(demo)
    out = dict(rows)
    for split in tcfg["splits"]:
        if split not in rows:
            continue
        pick = random.Random(f"{seed}/{split}/template")
        rendered = []
        for index, row in enumerate(rows[split]):
            style = pick.choices(styles, weights=probs)[0]
            prompt = prompt_of(row)
            if style == "none" or prompt is None:
                rendered.append(row)
                continue
            shots: list[tuple[str, str]] = []
            if style == "few_shot":
                source = row.get(SOURCE_COLUMN)
                pool = pools.get(source, [])
                where = f"template=few_shot ({split} split row {index + 1}" + (f", source {source})" if source else ")")
                if not pool:
                    raise DataError("few-shot exemplars come from train rows with a completion, and the train split "
                                    "has none (prompt-only rows?): use another template style", source=where)
                shots = _exemplars(pool, int(tcfg["k"]), prompt, random.Random(f"{seed}/{split}/{index}/exemplars"), where)
            rendered.append(with_prompt(row, render(style, prompt, tcfg, shots)))
        old = rows[split]
        out[split] = (SplitRows(rendered, locations=old.locations, split=old.split, invalid_dropped=old.invalid_dropped)
                      if isinstance(old, SplitRows) else rendered)
    return out

