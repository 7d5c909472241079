"""Preference-optimisation losses: DPO family, SimPO, ORPO, KTO (pure functions).

Notation (``docs/losses.md``, "Notation"): for a preference pair (y_w chosen, y_l rejected) and a frozen
reference policy, ``a = logp(y_w) - ref_logp(y_w)``, ``b = logp(y_l) - ref_logp(y_l)``,
``h = a - b`` and ``σ`` is the logistic sigmoid. ``logp`` is the **sum** of completion-token
log-probabilities (see :func:`sequence_logps`), ``avg_logp`` that sum divided by the number of
completion tokens. Every loss returns per-example values; the batch loss is their mean.
All ``-log σ(x)`` terms use ``F.logsigmoid`` so they stay finite for large ``|x|``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignx.ops.logprobs import IGNORE_INDEX, shift_for_next_token, token_logprobs


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probability per sequence.

    ``logits`` [B, T, V] and ``labels`` [B, T] are *unshifted* (labels are the input ids with the
    prompt and padding set to IGNORE_INDEX); the causal shift is applied here. Returns
    ``(sum_logp [B], n_tokens [B])`` with ``sum_logp_i = Σ_t log p(label_{i,t+1} | x_{≤t})`` over
    labelled positions and ``n_tokens_i`` the number of such positions (long). The per-token
    average, needed by IPO/SimPO/ORPO, is ``sum_logp / n_tokens.clamp(min=1)``.
    """
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    # Log-softmax only over completion positions: prompt and padding rows are never normalised,
    # which saves the [B, T, V] float32 upcast a full log_softmax would make.
    rows, cols = mask.nonzero(as_tuple=True)
    picked = token_logprobs(logits[rows, cols].unsqueeze(0), labels[rows, cols].unsqueeze(0)).squeeze(0)
    sums = torch.zeros(labels.size(0), dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)
    return sums, mask.sum(-1)


def completion_logits_mean(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean logit (over the vocabulary and completion positions) per sequence, detached, [B].

    Uses the same causal shift and mask as :func:`sequence_logps`; feeds the ``logits/chosen``
    and ``logits/rejected`` metrics. A sequence with no completion token gives 0.
    """
    logits, labels = shift_for_next_token(logits.detach(), labels)
    mask = (labels != IGNORE_INDEX).to(torch.float32)
    per_pos = logits.float().mean(-1)
    return (per_pos * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def _smoothed_sigmoid(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """DPO / cDPO: ``-(1-ε) log σ(βh) - ε log σ(-βh)``, ε in [0, 0.5]."""
    if not 0.0 <= eps <= 0.5:
        raise ValueError(f"label_smoothing for 'sigmoid'/'cdpo' must be in [0, 0.5], got {eps}")
    return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def _robust(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """Robust DPO: ``(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1-2ε)``, ε in [0, 0.5)."""
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing for 'robust' must satisfy 0 <= eps < 0.5, got {eps}")
    return (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * eps)


def _unsmoothed(name: str, eps: float) -> None:
    if eps != 0.0:
        raise ValueError(f"label_smoothing is not used by {name!r}; pass 0.0, got {eps}")


def _hinge(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """Hinge (RSO/SLiC): ``max(0, 1 - βh)``."""
    _unsmoothed("hinge", eps)
    return F.relu(1.0 - beta * h)


def _ipo(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """IPO: ``(h - 1/(2β))²`` on per-token averaged log-probabilities."""
    _unsmoothed("ipo", eps)
    return (h - 1.0 / (2.0 * beta)) ** 2


#: reference-based pairwise losses of the margin h: name -> (h, β, ε) -> losses [B]
_MARGIN_LOSSES = {"sigmoid": _smoothed_sigmoid, "cdpo": _smoothed_sigmoid, "robust": _robust, "hinge": _hinge, "ipo": _ipo}
DPO_LOSS_TYPES: tuple[str, ...] = tuple(_MARGIN_LOSSES)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference-based pairwise preference losses, per example (formulas: ``docs/losses.md``).

    With ``h = (π_w - ref_w) - (π_l - ref_l)`` and ``ε = label_smoothing``:

    - ``sigmoid`` (DPO) / ``cdpo``: ``-(1-ε) log σ(βh) - ε log σ(-βh)``; ε = 0 is plain DPO,
      ε in [0, 0.5] assumes a fraction ε of flipped labels (the two names share the formula).
    - ``robust``: ``(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1-2ε)``, ε in [0, 0.5).
    - ``hinge`` (RSO/SLiC): ``max(0, 1 - βh)``.
    - ``ipo``: ``(h - 1/(2β))²``. IPO is defined on **per-token averaged** log-probabilities: the
      caller must pass ``avg_logp`` (sum / n_tokens) for all four inputs when ``loss_type="ipo"``.

    ``label_smoothing`` must be 0 for ``hinge`` and ``ipo`` (it would otherwise be silently
    ignored). Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` where the implicit
    rewards ``β(π_w - ref_w)`` and ``β(π_l - ref_l)`` are detached. Gradients flow only through
    the policy inputs; the reference log-probabilities are detached. The DPO objective picks its
    loss from the ``preference_loss`` registry (:mod:`alignx.losses.dpo_family`), whose built-in
    entries call this function.
    """
    if loss_type not in _MARGIN_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid types: {', '.join(DPO_LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps.detach()
    rejected_ratio = policy_rejected_logps - ref_rejected_logps.detach()
    losses = _MARGIN_LOSSES[loss_type](chosen_ratio - rejected_ratio, beta, float(label_smoothing))
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def simpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (reference-free), per example: ``-log σ(β (avg_w - avg_l) - γ)``.

    Inputs are per-token averaged log-probabilities; ``gamma`` is the target reward margin γ
    (not γ/β). Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` with the
    detached implicit rewards ``β·avg_w`` and ``β·avg_l``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    logits = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
    losses = -F.logsigmoid(logits)
    return losses, beta * chosen_avg_logps.detach(), beta * rejected_avg_logps.detach()


def log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    """``log odds(y) = p - log(1 - exp(p))`` with ``p = avg_logp(y)``, computed stably.

    ``p`` is clamped to at most ``-finfo.eps`` (probability 1 has infinite odds; the clamp also
    stops the gradient there). ``log(1 - exp(p))`` uses ``log(-expm1(p))`` for ``p > -ln 2`` and
    ``log1p(-exp(p))`` otherwise, each accurate in its range.
    """
    p = avg_logps.clamp(max=-torch.finfo(avg_logps.dtype).eps)
    log1m_exp = torch.where(p > -0.6931471805599453, torch.log(-torch.expm1(p)), torch.log1p(-torch.exp(p)))
    return p - log1m_exp


def orpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    *,
    lam: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO (reference-free), per example: ``NLL(y_w) - λ log σ(log odds(y_w) - log odds(y_l))``.

    ``chosen_avg_logps`` / ``rejected_avg_logps`` are per-token averaged log-probabilities;
    ``chosen_nll`` [B] is the SFT negative log-likelihood of the chosen completion (usually the
    per-token mean, i.e. ``-chosen_avg_logps``, but the caller decides). Log odds via
    :func:`log_odds`. Returns ``(losses [B], log_odds_ratio [B])``, the ratio detached.
    """
    ratio = log_odds(chosen_avg_logps) - log_odds(rejected_avg_logps)
    losses = chosen_nll - lam * F.logsigmoid(ratio)
    return losses, ratio.detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_ref_point: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (unpaired), per example, with ``r = logp - ref_logp`` and ``z0 = kl_ref_point``:

    - desirable (``desirable[i]`` true): ``λ_D · (1 - σ(β (r - z0)))``
    - undesirable: ``λ_U · (1 - σ(β (z0 - r)))``

    ``z0`` (a scalar, see :func:`kto_reference_point`) and the reference log-probabilities are
    detached here, so no gradient flows through them. Returns ``losses [B]``; the implicit reward
    of each example is ``β·r``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    z0 = kl_ref_point.detach()
    r = policy_logps - ref_logps.detach()
    desirable = desirable.to(torch.bool)
    loss_d = desirable_weight * (1.0 - torch.sigmoid(beta * (r - z0)))
    loss_u = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable, loss_d, loss_u)


def kto_reference_point(policy_mismatched_logps: torch.Tensor, ref_mismatched_logps: torch.Tensor) -> torch.Tensor:
    """KTO reference point ``z0 = max(0, mean(logp - ref_logp))`` over mismatched pairs, detached.

    The inputs are log-probabilities of mismatched (x_i, y_{i+1}) pairs. An empty batch gives 0.
    Returns a 0-dim tensor.
    """
    r = (policy_mismatched_logps - ref_mismatched_logps).detach()
    if r.numel() == 0:
        return torch.zeros((), dtype=r.dtype, device=r.device)
    return r.mean().clamp(min=0)


def preference_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_logits_mean: torch.Tensor,
    rejected_logits_mean: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Standard preference-training metrics (``docs/metrics.md``), batch means as detached 0-dim floats.

    ``rewards/chosen``, ``rewards/rejected`` (mean implicit rewards), ``rewards/accuracies``
    (fraction with chosen reward strictly greater), ``rewards/margins`` (mean chosen - rejected),
    ``logps/chosen``, ``logps/rejected``, ``logits/chosen``, ``logits/rejected`` (see
    :func:`completion_logits_mean`).
    """

    def mean(x: torch.Tensor) -> torch.Tensor:
        return x.detach().float().mean()

    return {
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "rewards/accuracies": mean((chosen_rewards > rejected_rewards)),
        "rewards/margins": mean(chosen_rewards - rejected_rewards),
        "logps/chosen": mean(policy_chosen_logps),
        "logps/rejected": mean(policy_rejected_logps),
        "logits/chosen": mean(chosen_logits_mean),
        "logits/rejected": mean(rejected_logits_mean),
    }
