"""alignx-example's objective and reward: ``sft_ls`` (SFT with label smoothing) and ``brevity``."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from alignx.data.batching import IGNORE_INDEX
from alignx.objectives import Objective
from alignx.ops import shift_for_next_token


def label_smoothed_nll(logits: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Mean token NLL with label smoothing ``epsilon`` over labelled (non -100) positions."""
    logits, labels = shift_for_next_token(logits, labels)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=epsilon,
    )


class LabelSmoothedSFT(Objective):
    """SFT whose targets are smoothed towards uniform by ``objective.epsilon``."""

    name = "sft_ls"
    data_kind = "sft"
    config_keys = frozenset({"epsilon"})

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = label_smoothed_nll(out.logits, batch["labels"], float(self.cfg["epsilon"]))
        return loss, {}


def brevity(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """1 for an empty completion, falling linearly to 0 at 40 characters."""
    return [max(0.0, 1.0 - len(c) / 40.0) for c in completions]
