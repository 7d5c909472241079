"""Supervised fine-tuning loss (``docs/losses.md``, "Supervised fine-tuning")."""

from __future__ import annotations

import torch

from alignx.ops.logprobs import IGNORE_INDEX, shift_for_next_token


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token negative log-likelihood over labelled tokens.

    ``labels`` [B, T] hold the input ids with every position not trained on (prompt, padding)
    set to IGNORE_INDEX. Returns (loss, number of tokens that contributed). The mean is over
    tokens, not sequences, so long completions are not down-weighted.
    """
    logits, labels = shift_for_next_token(logits, labels)
    n_tokens = (labels != IGNORE_INDEX).sum()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    ) / n_tokens.clamp(min=1)
    return loss, n_tokens
