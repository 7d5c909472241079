"""Preference labels made by a model: relabel a dataset's pairs with a reward (a ``label`` pipeline stage).

The stage reads the training pairs of ``cfg.dataset``, scores both sides of each with the
``reward`` config group (a learned reward model: ``reward=rm reward.path=stage:<rm stage>``; or a
gold reward, a weighted mix) and writes, in its stage directory:

* ``data.jsonl``: the labelled rows ``{prompt, chosen, rejected, confidence}``, ``chosen`` being
  the side the labeller scores higher (ties keep the dataset's order) and ``confidence`` =
  ``σ(r_chosen - r_rejected)`` in [0.5, 1]: the Bradley–Terry probability of that preference
  under a reward model (a loader ignores the extra column; it is there to read);
* ``gold.jsonl``: the same rows as the dataset labels them (what the labeller is compared with);
* ``test.jsonl``: the dataset's held-out test pairs, so that models trained on either file are
  evaluated (``dataset.test_path=stage:<name>/test.jsonl``) on the pairs the labeller's own
  training job was evaluated on.

``skip_rows`` leaves out the first rows of the train split (those the labeller was trained on:
weak-to-strong labels held-out rows), ``num_prompts`` caps how many are labelled (null = all the
rest). Metrics: ``data/rows``, ``label/agreement`` (share of rows where the labeller prefers the
dataset's chosen side, ties half: its accuracy on them) and ``label/mean_confidence``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from alignx.data.rows import load_rows
from alignx.datagen import write_jsonl
from alignx.errors import ConfigError, DataError
from alignx.registry import load_plugins
from alignx.rewards.combine import build_reward

#: the files a label stage writes in its directory
LABELLED, GOLD, TEST = "data.jsonl", "gold.jsonl", "test.jsonl"


def relabel_pairs(
    rows: Sequence[Mapping[str, Any]], reward: Callable[[Sequence[str], Sequence[str]], Sequence[float]],
) -> tuple[list[dict], dict[str, float]]:
    """Each pair oriented by ``reward`` (the higher-scored side becomes ``chosen``), with its confidence.

    Returns ``(rows, metrics)``: rows ``{prompt, chosen, rejected, confidence}`` in input order and
    the metrics ``label/agreement`` and ``label/mean_confidence`` (see the module docstring).
    """
    prompts = [str(r["prompt"]) for r in rows]
    chosen = list(reward(prompts, [r["chosen"] for r in rows]))
    rejected = list(reward(prompts, [r["rejected"] for r in rows]))
    out, agree = [], 0.0
    for row, c, r in zip(rows, chosen, rejected):
        keep = c >= r
        agree += 1.0 if c > r else 0.5 if c == r else 0.0
        first, second = (row["chosen"], row["rejected"]) if keep else (row["rejected"], row["chosen"])
        out.append({"prompt": row["prompt"], "chosen": first, "rejected": second,
                    # σ(|d|): exp(-|d|) never overflows
                    "confidence": 1.0 / (1.0 + math.exp(-abs(float(c) - float(r))))})
    n = max(len(out), 1)
    return out, {"label/agreement": agree / n, "label/mean_confidence": sum(o["confidence"] for o in out) / n}


def label_dataset(cfg: Any, options: Mapping[str, Any], out_dir: Path) -> tuple[Path, dict[str, float]]:
    """Label the training pairs of ``cfg.dataset`` with ``cfg.reward`` and write the stage's files
    into ``out_dir``; returns (the labelled rows file, metrics)."""
    registry = load_plugins()
    skip = int(options.get("skip_rows") or 0)
    if skip < 0:
        raise ConfigError(f"skip_rows must be >= 0 (training rows to leave out), got {skip}")
    limit = options.get("num_prompts")
    rows = load_rows(cfg, registry, "pairs", "pairs")
    train = rows["train"]
    picked = list(train[skip:] if limit is None else train[skip : skip + int(limit)])
    source = str(cfg.dataset.get("path") or cfg.dataset.name)
    if not picked:
        raise DataError(f"the label stage has no rows: skip_rows={skip} leaves none of the {len(train)} training pairs "
                        "(raise dataset.n_train or lower skip_rows)", source=source)
    bad = next((i for i, r in enumerate(picked) if not isinstance(r["prompt"], str)), None)
    if bad is not None:
        raise DataError("the label stage scores plain-text prompts; this row's prompt is a conversation",
                        source=source, row=skip + bad + 1)
    labelled, metrics = relabel_pairs(picked, build_reward(cfg.reward, registry))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / GOLD, [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in picked])
    if rows["test"]:
        write_jsonl(out_dir / TEST, [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows["test"]])
    path = write_jsonl(out_dir / LABELLED, labelled)
    return path, {"data/rows": float(len(labelled)), **metrics}
