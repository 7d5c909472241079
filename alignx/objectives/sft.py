"""Supervised fine-tuning."""

from __future__ import annotations

from typing import Mapping

import torch

from alignx.data.batching import SOURCE_INDEX
from alignx.objectives.base import ROW_LOSS, Objective, RowLoss


class SFT(Objective):
    """Next-token NLL on completion tokens (the prompt is masked unless configured otherwise)."""

    name = "sft"
    data_kind = "sft"
    #: SFT takes no options: ``+objective.anything`` is a typo, named before any run
    config_keys = frozenset()
    per_row_loss = True

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if SOURCE_INDEX in batch:
            # a dataset mixture: the same token-mean NLL from per-sequence sums (one forward), which
            # train/loss/<source> needs; other datasets keep the plain batch cross-entropy
            out = self.completion_logps(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            n_tokens = out.n_tokens.sum()
            loss = -out.logps.sum() / n_tokens.clamp(min=1)
            return loss, {"tokens": n_tokens.float(), "ppl": torch.exp(loss.detach()),
                          ROW_LOSS: RowLoss(-out.logps.detach(), out.n_tokens)}
        loss, n_tokens = self.completion_cross_entropy(self.model, batch)
        return loss, {"tokens": n_tokens.float(), "ppl": torch.exp(loss.detach())}

    def loss_weight(self, batch: Mapping[str, torch.Tensor], metrics: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return metrics["tokens"]
