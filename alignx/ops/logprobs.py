"""Token log-probabilities and masked reductions (pure functions, tensors in and out)."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1 (causal LM convention)."""
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(label_t) for every position; positions with IGNORE_INDEX get 0.

    ``logits`` [B, T, V] and ``labels`` [B, T] must already be aligned (see
    :func:`shift_for_next_token`). Uses gather - logsumexp rather than a full log_softmax so only
    one [B, T] tensor is materialised besides the logits.
    """
    if temperature != 1.0:
        logits = logits / temperature
    mask = labels != IGNORE_INDEX
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    picked = torch.gather(logits, -1, safe.unsqueeze(-1)).squeeze(-1)
    lp = picked.float() - torch.logsumexp(logits.float(), dim=-1)
    return lp * mask


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is true (over ``dim``, or everything)."""
    x = x * mask
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is true; an all-false mask gives 0 rather than NaN."""
    mask = mask.to(x.dtype)
    denom = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / denom.clamp(min=1)
