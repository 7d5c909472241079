"""The starting model's loss on each row's training target: the difficulty of ``data.curriculum=loss``.

Kept apart from :mod:`alignx.data.curriculum` because it runs a model (torch), and the config
schema reads the curriculum names without importing torch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from alignx.data.batching import collate_sft
from alignx.data.curriculum import training_target
from alignx.data.tokenize import encode_prompt_completions
from alignx.errors import ConfigError
from alignx.ops.logprobs import IGNORE_INDEX


@torch.no_grad()
def target_nll(
    rows: Sequence[Mapping[str, Any]], model: torch.nn.Module, tokenizer: Any, data_cfg: Mapping[str, Any],
    batch_size: int = 32,
) -> list[float]:
    """The mean NLL per token of each row's :func:`training_target` given its prompt under ``model``
    (a causal LM), tokenised and truncated as training does (``data_cfg``). A row whose target cannot
    be tokenised within ``data.max_length`` (training will drop it) scores ``inf``: last."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    items, where = [], []
    for i, row in enumerate(rows):
        target = training_target(row)
        if target is None:
            raise ConfigError("data.curriculum=loss scores a row's training target, and this row has none "
                              f"(columns {sorted(row)}); use data.curriculum=length or none")
        encoded, _ = encode_prompt_completions(row, [target], tokenizer, data_cfg)
        if encoded is not None:
            p_ids, c_ids = encoded[0]
            items.append({"input_ids": p_ids + c_ids, "labels": [IGNORE_INDEX] * len(p_ids) + c_ids})
            where.append(i)
    out = [float("inf")] * len(rows)
    try:
        for start in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in collate_sft(items[start : start + batch_size], tokenizer.pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                                    reduction="none")
            mask = labels != IGNORE_INDEX
            per_row = (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            for j, value in enumerate(per_row.tolist()):
                out[where[start + j]] = value
    finally:
        model.train(was_training)
    return out
