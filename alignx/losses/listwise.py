"""Listwise ranking losses over K responses to one prompt: PRO and RRHF (pure functions).

Conventions (``docs/losses.md``, "Listwise ranking: PRO and RRHF"): ``scores`` [B, K] are the
policy's scores of the K responses of each of B prompts (PRO and RRHF both use the
length-normalised completion log-probability), ``ranks`` [B, K] their labelled ranks (lower is
better, only the order matters, equal numbers are ties) and ``valid`` [B, K] (bool) marks the
responses that exist: a prompt with fewer than K responses is padded with invalid slots, which
take part in nothing. Every loss returns per-prompt values [B]; the batch loss is their mean.
"""

from __future__ import annotations

import torch

__all__ = ["best_response", "pro_loss", "ranking_accuracy", "rrhf_loss"]


def _check(scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``valid`` as a bool tensor of the scores' shape (all True when None); ValueError on bad shapes."""
    if scores.dim() != 2 or ranks.shape != scores.shape:
        raise ValueError(f"scores and ranks must both be [B, K], got {tuple(scores.shape)} and {tuple(ranks.shape)}")
    if valid is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if valid.shape != scores.shape:
        raise ValueError(f"valid must be [B, K] like scores {tuple(scores.shape)}, got {tuple(valid.shape)}")
    return valid.bool()


def _ordered_pairs(ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``better[b, i, j]``: in prompt b, response i is ranked strictly above response j, both valid."""
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    return (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & both


def pro_loss(
    scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor | None = None, *, temperature: float = 1.0
) -> torch.Tensor:
    """PRO's Plackett–Luce ranking loss, per prompt [B] (Song et al. 2023, without the SFT term).

    With ``z = scores / temperature`` and the responses taken best-first, each response i adds
    ``-log( exp(z_i) / (exp(z_i) + Σ_{j ranked strictly below i} exp(z_j)) )``: the probability
    that i is picked first among itself and every response it beats. For a strict ranking this is
    exactly ``-Σ_k log( exp(z_(k)) / Σ_{j>=k} exp(z_(j)) )``, the Plackett–Luce likelihood of
    the order (the last response's term is log 1 = 0). Ties: a response tied with i is not in
    i's denominator, so tied responses are never pushed apart, an all-tied prompt gives 0, and
    the value does not depend on how ties are ordered. For K = 2 with a strict ranking it is
    ``-log σ((z_best - z_worst))``, the Bradley–Terry loss. Invalid slots are dropped.
    """
    valid = _check(scores, ranks, valid)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = scores / temperature
    below = _ordered_pairs(ranks, valid)  # below[b, i, j]: j in i's denominator besides i itself
    # log(exp(z_i) + Σ_j below[i, j] exp(z_j)) as one logsumexp over j with the diagonal added
    eye = torch.eye(z.size(1), dtype=torch.bool, device=z.device).unsqueeze(0)
    terms = z.unsqueeze(1).expand(-1, z.size(1), -1).masked_fill(~(below | eye), float("-inf"))
    per_response = torch.logsumexp(terms, dim=-1) - z  # >= 0; exactly 0 for a response that beats none
    return per_response.masked_fill(~valid, 0.0).sum(-1)


def rrhf_loss(scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """RRHF's ranking loss, per prompt [B] (Yuan et al. 2023, without the SFT term).

    ``Σ_{i ranked strictly above j} max(0, p_j - p_i)`` over every ordered pair of valid responses,
    ``p`` the scores (RRHF: length-normalised log-probs). Tied pairs add nothing. For K = 2 with a
    strict ranking it is ``max(0, p_worst - p_best)``.
    """
    valid = _check(scores, ranks, valid)
    better = _ordered_pairs(ranks, valid)
    gap = scores.unsqueeze(1) - scores.unsqueeze(2)  # gap[b, i, j] = p_j - p_i
    return (gap.clamp(min=0) * better).sum((-2, -1))


def best_response(ranks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Index [B] (long) of each prompt's best valid response (lowest rank; among tied best, the first)."""
    valid = _check(ranks, ranks, valid)
    masked = ranks.float().masked_fill(~valid, float("inf"))
    return masked.argmin(-1)  # argmin returns the first of equal minima


def ranking_accuracy(scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Share (0-dim, detached) of the strictly ordered pairs of valid responses the scores order
    the same way (score of the better one strictly higher); 0 when there is no such pair."""
    valid = _check(scores, ranks, valid)
    better = _ordered_pairs(ranks, valid)
    s = scores.detach()
    right = (s.unsqueeze(2) > s.unsqueeze(1)) & better
    return right.sum().float() / better.sum().clamp(min=1).float()
