"""Losses on rated rows: reward-weighted regression and its pieces (``docs/losses.md``, "Rating feedback")."""

from __future__ import annotations

import torch


def rwr_weights(ratings: torch.Tensor, beta: float) -> torch.Tensor:
    """Reward-weighted-regression weights of B rated rows, normalised to mean 1 in the batch.

    ``w_i = B · exp((r_i - b) / beta) / sum_j exp((r_j - b) / beta)`` = ``B · softmax(r / beta)_i``
    with ``b`` the batch's mean rating. Normalising makes any baseline cancel (it only keeps the
    exponent near 0) and bounds every weight by B, so no row's weight can blow up whatever the
    rating scale; a uniform batch gets weights 1 (plain SFT), ``beta -> inf`` too, and a small
    ``beta`` puts the whole batch's weight on its best-rated row. No gradient flows through them.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    r = ratings.detach().float()
    return torch.softmax((r - r.mean()) / beta, dim=0) * r.numel()


def weighted_nll(logps: torch.Tensor, n_tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Token-level NLL with per-row weights: ``-sum_i w_i · logp_i / sum_i n_i``.

    ``logps`` [B] are each row's summed completion log-probs, ``n_tokens`` [B] its labelled token
    counts, ``weights`` [B] its weights. With every weight 1 this is exactly the SFT loss (the mean
    next-token NLL over the batch's completion tokens, :func:`~alignx.losses.sft_loss`).
    """
    return -(weights.to(logps.dtype) * logps).sum() / n_tokens.sum().clamp(min=1).to(logps.dtype)

