"""Policy-gradient losses for online RL: PPO clipped policy/value losses, GRPO/RLOO advantages and losses.

Pure functions (tensors in, tensors out); formulas in ``docs/online_rl.md`` ("PPO implementation
details", "GRPO", "RLOO"). Per-token tensors are ``[B, T]`` response positions with a ``mask``
(bool or 0/1) of the valid tokens; every reduction is masked, and inputs at padded positions
are zeroed before use, so ``inf``/``NaN`` padding reaches neither the loss nor the gradients. ``old_*`` tensors, advantages and
returns are detached here, so gradients flow only through ``logp`` and ``values``. Statistics are
detached 0-dim tensors. Shape mismatches raise ``ValueError`` naming the shapes.
"""

from __future__ import annotations

import torch

from alignx.ops.logprobs import masked_mean
from alignx.ops.rl import check_same_shape, masked_whiten, normalize_scores, per_token_rewards, zero_masked

GRPO_NORMALIZATIONS: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo")
#: ``std``: divide by the group's std; ``batch``: by the std of the whole batch; ``none``: no division
GROUP_SCALES: tuple[str, ...] = ("std", "batch", "none")
#: where GRPO takes the importance ratio: per token, or per completion (GSPO)
IMPORTANCE_LEVELS: tuple[str, ...] = ("token", "sequence")
#: RLOO's reductions: ``sequence`` (the paper's sequence-level REINFORCE, see
#: :func:`sequence_clipped_loss`) or one of GRPO's token-level ones
RLOO_NORMALIZATIONS: tuple[str, ...] = ("sequence", *GRPO_NORMALIZATIONS)


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 0.2,
    clip_range_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate loss, unreduced (for custom normalisation, e.g. GRPO).

    ``ρ = exp(logp - old_logp)``; per token ``max(-A·ρ, -A·clip(ρ, 1-ε_low, 1+ε_high))`` with
    ``ε_low = clip_range`` and ``ε_high = clip_range_high`` (``None``: the same as ``ε_low``; DAPO's
    clip-higher sets it larger). ``advantages`` is [B, T], or [B] (one advantage per sequence,
    broadcast over its tokens, as in GRPO/RLOO). Returns ``(per_token_loss [B, T], clipped [B, T]
    bool)`` where ``clipped`` marks tokens whose clipped term is the active one (strictly larger
    loss; those tokens get no gradient).
    """
    check_same_shape(logp=logp, old_logp=old_logp)
    return ratio_surrogate(logp - old_logp.detach(), advantages, clip_range, clip_range_high)


def ratio_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 0.2,
    clip_range_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`clipped_surrogate` from a log-ratio [B, T] (token-level, or GSPO's sequence log-ratio
    of :func:`alignx.ops.rl.sequence_log_ratio` broadcast over the tokens): per entry
    ``max(-A·ρ, -A·clip(ρ, 1-ε_low, 1+ε_high))`` with ``ρ = exp(log_ratio)``."""
    if advantages.shape != log_ratio.shape:
        if log_ratio.dim() != 2 or advantages.shape != log_ratio.shape[:1]:
            raise ValueError(
                f"advantages must be [B, T] or [B]; got advantages {tuple(advantages.shape)}, logp {tuple(log_ratio.shape)}"
            )
        advantages = advantages.unsqueeze(-1)
    high = clip_range if clip_range_high is None else clip_range_high
    adv = advantages.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped policy loss: the masked token mean of :func:`clipped_surrogate`.

    Returns ``(loss, stats)`` with stats ``clipfrac`` (fraction of valid tokens where the clipped
    term is active, i.e. the unclipped surrogate objective ``A·ρ`` was the larger one), ``approxkl``
    (``0.5 · mean (logp - old_logp)²``) and ``ratio`` (mean ρ), over valid tokens.
    """
    check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
    logp, old_logp = zero_masked(logp, mask), zero_masked(old_logp, mask)
    if advantages.shape == mask.shape:
        advantages = zero_masked(advantages, mask)
    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, clip_range)
    loss = masked_mean(zero_masked(per_token, mask), mask)
    with torch.no_grad():
        log_ratio = logp.detach() - old_logp.detach()
        stats = {
            "clipfrac": masked_mean(clipped.to(per_token.dtype), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(torch.exp(log_ratio), mask),
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped value loss ``0.5 · max((V - R)², (clip(V, V_old ± ε) - R)²)``, masked token mean.

    Returns ``(loss, stats)`` with ``clipfrac``: the fraction of valid tokens where the clipped
    error is the larger one (such tokens get no gradient).
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    values = zero_masked(values, mask)
    old = zero_masked(old_values.detach(), mask)
    target = zero_masked(returns.detach(), mask)
    v_clipped = old + torch.clamp(values - old, -clip_range, clip_range)
    err_unclipped = (values - target) ** 2
    err_clipped = (v_clipped - target) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask)
    return loss, {"clipfrac": clipfrac}


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (advantages compare samples of one prompt), got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"batch of {rewards.numel()} rewards is not a whole number of groups of {group_size}")
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: str = "std",
    eps: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages ``(r - mean_group) / (std_group + eps)`` (``scale="none"``: ``r - mean_group``;
    ``scale="batch"``: ``(r - mean_group) / (std_batch + eps)``, one std over all B rewards).

    ``rewards`` [B] hold ``B / G`` groups of ``G = group_size`` completions of one prompt each,
    stored contiguously (rows ``g·G … g·G + G - 1``). ``std_group`` is the **unbiased** standard
    deviation (``torch.std``'s default, as TRL). A group whose rewards are all equal gets
    advantage 0 (std 0, no NaN). Returns ``(advantages [B], std [B / G])``; the per-group std lets a
    caller log ``reward_std`` and ``frac_reward_zero_std``. Not detached (rewards rarely need grad).
    """
    if scale not in GROUP_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid scales: {', '.join(GROUP_SCALES)}")
    grouped = _grouped(rewards, group_size)
    mean = grouped.mean(-1, keepdim=True)
    std = grouped.std(-1)
    centred = grouped - mean
    if scale == "std":
        centred = centred / (std.unsqueeze(-1) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)
    return centred.reshape(-1), std


def nonconstant_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups [B / G] (bool) have rewards that are not all equal: the others have advantage 0
    under every group baseline and carry no policy gradient (DAPO's dynamic sampling drops them)."""
    grouped = _grouped(rewards, group_size)
    return grouped.amax(-1) > grouped.amin(-1)


def reinforce_pp_advantages(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ advantages (Hu 2025): per-token returns of the KL-penalised reward, whitened over the batch.

    The per-token reward is ``-β·KL_t`` plus the score at the last valid token
    (:func:`alignx.ops.rl.per_token_rewards`); the return is its sum from ``t`` to the end
    (``γ = 1``, no value model); the advantage is that return whitened over every valid token of
    the batch, ``(G_t - mean) / std`` (Bessel-corrected std). Returns ``(advantages [B, T],
    returns [B, T])``, 0 where masked; not detached.
    """
    rewards, _ = per_token_rewards(scores, kl, mask, beta)
    returns = zero_masked(rewards.flip(-1).cumsum(-1).flip(-1), mask)
    return masked_whiten(returns, mask), returns


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantages: ``r_i`` minus the mean of the other ``G - 1`` rewards of its group, [B].

    Same grouping as :func:`group_advantages`; ``G < 2`` raises ``ValueError`` (no other sample).
    Equals ``G / (G - 1) · (r_i - mean_group)``; each group's advantages sum to 0.
    """
    grouped = _grouped(rewards, group_size)
    others = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def sequence_clipped_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sequence-level clipped REINFORCE loss (RLOO, Ahmadian et al. 2024), mean over sequences.

    A completion's log-probability is the masked **sum** of its token log-probs,
    ``ρ_i = exp(Σ_t logp_it - Σ_t old_logp_it)``, and its loss is
    ``max(-A_i·ρ_i, -A_i·clip(ρ_i, 1-ε, 1+ε))``; the result is the mean over the B sequences.
    On-policy (``ρ_i = 1``) ``∂loss/∂logp_it = -A_i / B`` for every valid token of sequence ``i``:
    the paper's ``-(1/B) Σ_i A_i ∇ log π(y_i|x_i)``, with no ``1/|y_i|`` factor (compare
    :func:`grpo_token_loss` with ``"grpo"``, whose gradient is ``-A_i / (B·|y_i|)``).

    ``advantages`` is [B]. Returns ``(loss, stats)`` with ``clipfrac``: the share of sequences
    whose clipped term is active (they get no gradient), detached.
    """
    check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
    if logp.dim() != 2 or advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B] and logp [B, T]; got advantages {tuple(advantages.shape)}, logp {tuple(logp.shape)}")
    seq_logp = zero_masked(logp, mask).sum(-1)
    seq_old = zero_masked(old_logp.detach(), mask).sum(-1)
    adv = advantages.detach()
    ratio = torch.exp(seq_logp - seq_old)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        clipfrac = (clipped > unclipped).to(ratio.dtype).mean()
    return loss, {"clipfrac": clipfrac}


def grpo_token_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    normalization: str = "grpo",
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar with one of the GRPO-family normalisations.

    - ``"grpo"``: masked mean within each sequence, then mean over sequences (short and long
      completions weigh the same per sequence; an empty row counts as 0).
    - ``"bnpo"``: masked sum over the batch / number of valid tokens in the batch (every token
      weighs the same; DAPO's token-level loss, whose count the caller may gather across ranks).
    - ``"dr_grpo"``: masked sum / ``(B · max_len)``, ``max_len`` defaulting to the padded width T
      (Dr. GRPO: no length bias; pass the generation limit to make it constant across batches).
    """
    check_same_shape(per_token_loss=per_token_loss, mask=mask)
    if normalization not in GRPO_NORMALIZATIONS:
        raise ValueError(
            f"unknown loss normalization {normalization!r}; valid normalizations: {', '.join(GRPO_NORMALIZATIONS)}"
        )
    if per_token_loss.dim() != 2:
        raise ValueError(f"per_token_loss must be [B, T], got shape {tuple(per_token_loss.shape)}")
    m = mask.to(per_token_loss.dtype)
    summed = zero_masked(per_token_loss, mask)
    if normalization == "grpo":
        return (summed.sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if normalization == "bnpo":
        return summed.sum() / m.sum().clamp(min=1)
    width = per_token_loss.size(1) if max_len is None else max_len
    if width <= 0:
        raise ValueError(f"max_len must be > 0, got {width}")
    return summed.sum() / (per_token_loss.size(0) * width)


# -- process supervision: rewards at each step's last token ----------------------------------------
def process_advantages(
    step_rewards: torch.Tensor,
    step_ends: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    scale: str = "std",
    eps: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO with process supervision (Shao et al. 2024, section 4.1.3): per-token advantages [B, T].

    ``step_rewards`` [B, T] hold each step's reward at the step's last token (``step_ends`` [B, T]
    true there, and only at valid tokens of ``mask``). Within each group of ``group_size``
    completions (stored contiguously), every step reward of every completion is normalised with the
    mean and the **unbiased** std of all of them: ``r̃ = (r - mean) / (std + eps)`` (``scale="none"``:
    ``r - mean``; ``"batch"``: divided by the std of every step reward of the batch). The advantage
    of token ``t`` is the sum of the normalised rewards of the steps ending at or after ``t``:
    ``A_t = Σ_{j: end_j >= t} r̃_j`` (0 at padding). A group with fewer than two step rewards, or all
    equal, has std 0 and advantages 0. Returns ``(advantages [B, T], per-group std [B / G])``.
    """
    check_same_shape(step_rewards=step_rewards, step_ends=step_ends, mask=mask)
    if scale not in GROUP_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid scales: {', '.join(GROUP_SCALES)}")
    if step_rewards.dim() != 2:
        raise ValueError(f"step_rewards must be [B, T], got shape {tuple(step_rewards.shape)}")
    b = step_rewards.size(0)
    if group_size < 1 or b % group_size:
        raise ValueError(f"batch of {b} completions is not a whole number of groups of {group_size}")
    ends = step_ends.bool() & mask.bool()
    values = step_rewards.float()
    normalised = torch.zeros_like(values)
    stds = []
    batch_std = _spread(values[ends])
    for g in range(b // group_size):
        rows = slice(g * group_size, (g + 1) * group_size)
        group_ends = ends[rows]
        v = values[rows][group_ends]
        std = _spread(v)
        stds.append(std)
        if v.numel() == 0:
            continue
        centred = v - v.mean()
        if scale == "std":
            centred = centred / (std + eps)
        elif scale == "batch":
            centred = centred / (batch_std + eps)
        block = torch.zeros_like(values[rows])
        block[group_ends] = centred
        normalised[rows] = block
    # reverse cumulative sum over positions: the rewards of the steps ending at or after t
    advantages = normalised.flip(-1).cumsum(-1).flip(-1)
    return zero_masked(advantages, mask), torch.stack(stds)


def _spread(values: torch.Tensor) -> torch.Tensor:
    """The unbiased std of ``values`` (0 for fewer than two)."""
    return values.std() if values.numel() > 1 else torch.zeros((), dtype=values.dtype, device=values.device)


def per_token_step_rewards(
    step_rewards: torch.Tensor, step_ends: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float | torch.Tensor,
    score_norm: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token reward with process supervision: ``-β · KL_t`` at every response token plus
    each step's reward at that step's last token (``step_ends``), instead of one score at the last token.

    The step rewards are first normalised over the batch as one set of numbers, by
    :func:`alignx.ops.rl.normalize_scores` (``score_norm``: none | center | whiten), so ``center``
    subtracts the mean step reward. Returns ``(rewards, non_score_reward)``, both [B, T], 0 where
    masked; ``non_score_reward = -β · kl · mask`` as :func:`alignx.ops.rl.per_token_rewards`.
    """
    check_same_shape(step_rewards=step_rewards, step_ends=step_ends, kl=kl, mask=mask)
    ends = step_ends.bool() & mask.bool()
    placed = torch.zeros_like(kl)
    entries = step_rewards[ends].to(kl.dtype)
    if entries.numel():
        placed[ends] = normalize_scores(entries, score_norm)
    non_score = zero_masked(-beta * kl, mask)
    return non_score + placed, non_score
