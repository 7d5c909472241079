"""Reward-model losses: Bradley–Terry pairwise and InstructGPT K-wise ranking (pure functions).

Formulas and conventions: ``docs/losses.md`` ("Reward model").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    *,
    margin: float | torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise Bradley–Terry loss on scalar rewards ``r_w``, ``r_l`` [B].

    ``loss = mean(-log σ(r_w - r_l - m)) + c · mean((r_w + r_l)²)`` where ``m`` is the optional
    margin (a float or a per-pair [B] tensor, Llama 2 style; None means 0) and ``c = center_coef``
    the optional centring term that keeps rewards near 0. Returns ``(loss scalar, metrics)`` with
    detached 0-dim metrics ``accuracy`` = mean(r_w > r_l), ``margin`` = mean(r_w - r_l) and
    ``reward_mean`` / ``reward_min`` / ``reward_max`` over both columns.
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} differ in shape")
    diff = r_chosen - r_rejected
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    both = torch.cat([r_chosen.detach().reshape(-1), r_rejected.detach().reshape(-1)]).float()
    metrics = {
        "accuracy": (r_chosen.detach() > r_rejected.detach()).float().mean(),
        "margin": diff.detach().float().mean(),
        "reward_mean": both.mean(),
        "reward_min": both.min(),
        "reward_max": both.max(),
    }
    return loss, metrics


def kwise_ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """InstructGPT K-wise ranking loss for one prompt: mean over comparable pairs of ``-log σ(r_i - r_j)``.

    ``rewards`` [K] are the scalar rewards of K responses to the same prompt, ``ranks`` [K] their
    labelled ranks (0 = best, lower is better; any numbers, only their order matters). Every pair
    (i, j) with ``ranks[i] < ranks[j]`` contributes once, so a strict ranking gives all C(K, 2)
    pairs. Tied ranks are allowed and their pairs are skipped (they carry no preference), so the
    mean is over the untied pairs only. Raises ValueError if the inputs are not 1-D of equal length,
    if K < 2, or if every rank is tied (no comparison left). Returns a 0-dim tensor.
    """
    if rewards.dim() != 1 or ranks.dim() != 1 or rewards.shape != ranks.shape:
        raise ValueError(
            f"rewards and ranks must be 1-D of equal length, got {tuple(rewards.shape)} and {tuple(ranks.shape)}"
        )
    k = rewards.numel()
    if k < 2:
        raise ValueError(f"K-wise ranking needs K >= 2 responses, got K={k}")
    better = ranks.unsqueeze(1) < ranks.unsqueeze(0)  # better[i, j]: i ranked above j
    if not bool(better.any()):
        raise ValueError("all ranks are tied; K-wise ranking has no pair to compare")
    diff = rewards.unsqueeze(1) - rewards.unsqueeze(0)  # r_i - r_j
    return -F.logsigmoid(diff[better]).mean()


def ranking_pairs(ranks: list[list[float]]) -> tuple[list[int], list[int], list[int]]:
    """Every ordered comparison in a batch of ranked groups: ``(better, worse, group)`` flat indices.

    ``ranks[g]`` are the ranks of group ``g``'s responses (lower is better), which sit at
    consecutive flat positions across groups. Tied responses give no pair.
    """
    better, worse, group = [], [], []
    offset = 0
    for g, rk in enumerate(ranks):
        for i in range(len(rk)):
            for j in range(len(rk)):
                if rk[i] < rk[j]:
                    better.append(offset + i)
                    worse.append(offset + j)
                    group.append(g)
        offset += len(rk)
    return better, worse, group


def auxiliary_confidence_loss(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-comparison loss with the auxiliary confidence term of weak-to-strong training (Burns et al. 2023).

    ``logits`` [P] are ``r_b - r_w (- m)`` for comparisons whose label (possibly a weak
    supervisor's) says ``b`` beats ``w``. The target is the label mixed with the student's own
    hardened prediction ``h = 1[logit > 0]`` (detached, no gradient through it)::

        y = (1 - alpha) * 1 + alpha * h
        loss = -(y * log σ(logit) + (1 - y) * log σ(-logit))

    Where the student agrees with the label (``h = 1``) this is plain Bradley–Terry; where it
    disagrees it is pulled towards ``1 - alpha`` only, so with ``alpha > 0.5`` a confident student
    may keep overruling a label it believes wrong. ``alpha = 0`` is exactly ``-log σ(logit)``.
    Burns et al. harden at an adaptive threshold to match the weak labels' class balance; a
    comparison has no class balance (swapping its sides flips the label), so 0 is the threshold.
    Raises ValueError unless ``0 <= alpha <= 1``. Returns [P].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        return -F.logsigmoid(logits)
    target = 1.0 - alpha * (logits.detach() <= 0).to(logits.dtype)
    return -(target * F.logsigmoid(logits) + (1.0 - target) * F.logsigmoid(-logits))


def grouped_ranking_loss(
    rewards: torch.Tensor,
    better: torch.Tensor,
    worse: torch.Tensor,
    group: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
    aux_confidence: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry over a batch of ranked groups, each group one batch element.

    ``rewards`` [N] are the scalar rewards of every response; ``better``/``worse``/``group`` [P]
    index the comparisons (see :func:`ranking_pairs`); ``margin`` [P] an optional per-pair margin
    (Llama 2). Per pair ``-log σ(r_b - r_w - m)``; averaged within each group (InstructGPT: the
    C(K, 2) pairs of one prompt are one element, not C(K, 2) elements) and then over groups; plus
    ``c · mean_pairs((r_b + r_w)²)``. With one pair per group this is
    :func:`bradley_terry_loss`; with one group, :func:`kwise_ranking_loss`. ``aux_confidence``
    (alpha) replaces the per-pair term by :func:`auxiliary_confidence_loss` (0 = plain
    Bradley–Terry). Metrics as in :func:`bradley_terry_loss`, over all pairs and all responses.
    """
    if better.numel() == 0:
        raise ValueError("no comparison in the batch: every group's ranks are tied")
    diff = rewards[better] - rewards[worse]
    logits = diff if margin is None else diff - margin.to(diff.dtype)
    per_pair = auxiliary_confidence_loss(logits, aux_confidence)
    n_groups = int(group.max()) + 1
    sums = torch.zeros(n_groups, dtype=per_pair.dtype, device=per_pair.device).index_add(0, group, per_pair)
    counts = torch.zeros(n_groups, dtype=per_pair.dtype, device=per_pair.device).index_add(
        0, group, torch.ones_like(per_pair)
    )
    present = counts > 0
    loss = (sums[present] / counts[present]).mean()
    if center_coef:
        loss = loss + center_coef * ((rewards[better] + rewards[worse]) ** 2).mean()
    r = rewards.detach().float()
    metrics = {
        "accuracy": (diff.detach() > 0).float().mean(),
        "margin": diff.detach().float().mean(),
        "reward_mean": r.mean(),
        "reward_min": r.min(),
        "reward_max": r.max(),
    }
    return loss, metrics
