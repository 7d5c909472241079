"""Knowledge-distillation losses: a per-token divergence between teacher and student next-token
distributions (``docs/losses.md``, "Knowledge distillation").

The divergence is GKD's generalised Jensen-Shannon divergence (Agarwal et al. 2024) with
coefficient ``beta`` in [0, 1], teacher ``T`` and student ``S`` (both softmaxes of logits / τ):

* ``beta = 0``: forward KL, ``KL(T || S) = Σ_v T_v (log T_v - log S_v)`` (mass-covering: classic
  word-level KD);
* ``beta = 1``: reverse KL, ``KL(S || T)`` (mode-seeking);
* ``0 < beta < 1``: with the mixture ``M = beta · T + (1 - beta) · S``,
  ``JSD_beta = beta · KL(T || M) + (1 - beta) · KL(S || M)``.

This is the convention of the GKD paper and of TRL's ``generalized_jsd_loss``. The two endpoints
are the limits of the *normalised* mixture divergence: ``JSD_beta / beta -> KL(T || S)`` as
``beta -> 0`` and ``JSD_beta / (1 - beta) -> KL(S || T)`` as ``beta -> 1`` (the unnormalised
``JSD_beta`` itself tends to 0 at both ends, so the loss's scale changes with ``beta``; it is not
rescaled, as in the paper). ``temperature`` divides both models' logits; the loss is not
multiplied by τ² (Hinton et al.'s gradient-scale correction), matching GKD.

Every function reduces over the vocabulary in float32 (float64 stays float64) and averages over
the labelled (completion) positions of the batch: a token mean, like :func:`~alignx.losses.sft_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from alignx.ops.logprobs import IGNORE_INDEX, shift_for_next_token


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return beta


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, temperature: float = 1.0
) -> torch.Tensor:
    """Per-position generalised JSD between teacher and student: [..., V] logits -> [...] divergences.

    ``beta=0`` is the forward KL(teacher || student), ``beta=1`` the reverse KL(student || teacher),
    anything between the mixture divergence of the module docstring. Both logits are divided by
    ``temperature`` before the softmax. Gradients flow into whichever input requires them (the
    teacher's normally does not).
    """
    beta = _check_beta(beta)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    acc = torch.promote_types(student_logits.dtype, torch.float32)
    s = F.log_softmax(student_logits.to(acc) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.to(acc) / temperature, dim=-1)
    if beta == 0.0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1.0:
        return (s.exp() * (s - t)).sum(-1)
    # log M = log(beta · T + (1 - beta) · S), computed in log space
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log1p(-beta)]), dim=0)
    return beta * (t.exp() * (t - m)).sum(-1) + (1.0 - beta) * (s.exp() * (s - m)).sum(-1)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean generalised JSD over the labelled positions: ``(loss, n_tokens)``.

    ``student_logits`` and ``teacher_logits`` are [B, T, V] over the same input ids; ``labels``
    [B, T] are those ids with every position not trained on (prompt, padding) set to IGNORE_INDEX,
    unshifted: the logits at position t are compared where the label at t + 1 is set. Only those
    positions are softmaxed (never the whole [B, T, V]). An all-masked batch gives loss 0.
    """
    student_logits, shifted = shift_for_next_token(student_logits, labels)
    teacher_logits = teacher_logits[:, :-1, :]
    mask = shifted != IGNORE_INDEX
    n_tokens = mask.sum()
    per_token = generalized_jsd(student_logits[mask], teacher_logits[mask], beta, temperature)
    return per_token.sum() / n_tokens.clamp(min=1), n_tokens


def _chunk_divergence_sum(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    teacher_bias: torch.Tensor | None,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    s = F.linear(student_hidden, student_weight, student_bias)
    t = F.linear(teacher_hidden, teacher_weight, teacher_bias)
    return generalized_jsd(s, t, beta, temperature).sum()


def distill_loss_from_hidden(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    teacher_bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    beta: float,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`distill_loss` from both models' final hidden states and output heads, ``chunk_size``
    labelled positions at a time: ``(loss, n_tokens)``, equal up to float rounding.

    ``*_hidden`` are [B, T, H_student] and [B, T, H_teacher] over the same ids (the hidden sizes may
    differ; the heads' vocabularies must match), ``*_weight`` [V, H] and ``*_bias`` [V] or None.
    The labelled positions are selected first, so only they are projected to the vocabulary; each
    chunk's two [chunk, V] logit tensors are rebuilt in the backward pass instead of being kept
    (activation checkpointing), so the extra memory is O(chunk_size · V) rather than O(N · V).
    ``chunk_size`` None: all labelled positions in one chunk.
    """
    if student_weight.size(0) != teacher_weight.size(0):
        raise ValueError(
            f"student and teacher heads score different vocabularies ({student_weight.size(0)} vs {teacher_weight.size(0)} ids)"
        )
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    n_tokens = mask.sum()
    s_h = student_hidden[:, :-1][mask]
    t_h = teacher_hidden[:, :-1][mask]
    n = s_h.size(0)
    size = n if chunk_size is None else int(chunk_size)
    total = s_h.new_zeros((), dtype=torch.promote_types(s_h.dtype, torch.float32))
    for start in range(0, n, max(size, 1)):
        args = (s_h[start : start + size], student_weight, student_bias, t_h[start : start + size], teacher_weight,
                teacher_bias, beta, temperature)
        if torch.is_grad_enabled() and s_h.requires_grad:
            total = total + checkpoint(_chunk_divergence_sum, *args, use_reentrant=False)
        else:
            total = total + _chunk_divergence_sum(*args)
    return total / n_tokens.clamp(min=1), n_tokens


__all__ = ["distill_loss", "distill_loss_from_hidden", "generalized_jsd"]
