"""Supervised fine-tuning."""

from __future__ import annotations

from typing import Mapping

import torch

from alignx.objectives.base import Objective


class SFT(Objective):
    """Next-token NLL on completion tokens (the prompt is masked unless configured otherwise)."""

    name = "sft"
    data_kind = "sft"
    #: SFT takes no options: ``+objective.anything`` is a typo, named before any run
    config_keys = frozenset()

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, n_tokens = self.completion_cross_entropy(self.model, batch)
        return loss, {"tokens": n_tokens.float(), "ppl": torch.exp(loss.detach())}

    def loss_weight(self, batch: Mapping[str, torch.Tensor], metrics: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return metrics["tokens"]
