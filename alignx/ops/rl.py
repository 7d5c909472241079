"""Online-RL tensor ops: whitening, KL estimators, EOS truncation, per-token rewards, GAE, KL control, diagnostics.

Pure functions (tensors in, tensors out) for PPO/GRPO/RLOO; the formulas and where each is used:
``docs/online_rl.md`` ("KL estimators", "PPO implementation details"). Conventions shared by every
function here:

- Sequences are responses only, ``[B, T]``, **right-padded**; ``mask`` ``[B, T]`` (bool or 0/1 of
  any dtype) marks the valid response tokens, as returned by :func:`truncate_after_eos`.
- Masked-out positions of every ``[B, T]`` output are exactly 0, and whatever sits there in the
  inputs (garbage, ``inf``, ``NaN`` from padding) never reaches the valid positions.
- Shapes are checked; a mismatch raises ``ValueError`` naming the shapes.
"""

from __future__ import annotations

from typing import Any

import torch

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming every shape unless all ``tensors`` have the same shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}")


def zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with masked-out entries set to 0 via ``torch.where`` (unlike ``x * mask``, ``inf``/``NaN``
    padding cannot leak out as ``NaN``, in the values or in the gradient)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_right_padded(mask: torch.Tensor) -> None:
    m = mask.bool()
    if m.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    if bool((m[:, 1:] & ~m[:, :-1]).any()):
        raise ValueError("mask must be right-padded (each row a run of valid tokens, then padding)")


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the entries where ``mask`` is set, as a 0-dim tensor.

    ``unbiased=True`` applies Bessel's correction, ``Σ (x - mean)² / (n - 1)`` (as ``torch.var``
    and TRL's ``masked_var``); ``unbiased=False`` divides by ``n``. Degenerate masks give 0 rather
    than NaN: no selected entry, or a single one with ``unbiased=True``.
    """
    check_same_shape(x=x, mask=mask)
    x = zero_masked(x, mask)
    n = mask.to(x.dtype).sum()
    mean = x.sum() / n.clamp(min=1)
    sq = (zero_masked(x - mean, mask) ** 2).sum()
    denom = (n - 1) if unbiased else n
    return sq / denom.clamp(min=1)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    *,
    unbiased: bool = True,
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and variance over the masked entries of the whole tensor.

    The variance is the **unbiased** (Bessel-corrected) one by default, the choice TRL makes in
    ``masked_whiten`` (and ``torch.std``'s default), so advantages and rewards match the reference
    implementations people compare against; at PPO batch sizes (thousands of tokens) the two
    differ by a factor ``sqrt(n / (n - 1))`` that is negligible. Pass ``unbiased=False`` for the
    population variance. With ``shift_mean=False`` the mean is added back (only the scale changes),
    as done for reward whitening. Masked-out positions come back 0; degenerate masks follow
    :func:`masked_var` (no NaN).
    """
    check_same_shape(x=x, mask=mask)
    x = zero_masked(x, mask)
    mean = x.sum() / mask.to(x.dtype).sum().clamp(min=1)
    var = masked_var(x, mask, unbiased=unbiased)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return zero_masked(out, mask)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(π || π_ref)`` from the log-probabilities of sampled tokens.

    With ``d = ref_logp - logp`` (Schulman's "Approximating KL divergence" estimators):

    - ``k1 = logp - ref_logp = -d``: unbiased, can be negative (PPO's reward penalty);
    - ``k2 = 0.5 (logp - ref_logp)²``: biased, non-negative;
    - ``k3 = exp(d) - d - 1``: unbiased, non-negative (GRPO's loss penalty); computed as
      ``expm1(d) - d`` for accuracy near 0.

    No masking here: zero the padding with :func:`zero_masked` (or reduce with ``masked_mean``).
    """
    check_same_shape(logp=logp, ref_logp=ref_logp)
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "k3":
        d = ref_logp - logp
        return torch.expm1(d) - d
    raise ValueError(f"unknown KL estimator {kind!r}; valid kinds: {', '.join(KL_ESTIMATORS)}")


def truncate_after_eos(
    tokens: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut generated responses after their first EOS.

    ``tokens`` [B, T] are response ids (no prompt). Returns ``(tokens, mask, has_eos)``: a new
    tensor where every position strictly after the first EOS is ``pad_id`` (the input is not
    modified); ``mask`` [B, T] bool, true up to **and including** the first EOS (true everywhere
    for a row without EOS, i.e. one cut by the length limit); ``has_eos`` [B] bool, whether the row
    contains an EOS (for the "no EOS -> penalty score" trick and ``val/num_eos_tokens``).
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
    is_eos = tokens == eos_id
    seen = is_eos.long().cumsum(-1)
    after = (seen - is_eos.long()) > 0  # an EOS strictly earlier in the row
    out = tokens.masked_fill(after, pad_id)
    return out, ~after, is_eos.any(-1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index [B] (long) of the last set position of each row of ``mask`` [B, T]; -1 for an empty row."""
    m = mask.bool()
    t = m.size(-1)
    pos = torch.arange(t, device=m.device).expand_as(m)
    return torch.where(m, pos, torch.full_like(pos, -1)).amax(-1)


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO per-token reward: ``-β · KL_t`` at every response token plus the score at the last one.

    ``scores`` [B] are sequence-level rewards (reward model, gold function or EOS penalty),
    ``kl`` [B, T] a per-token estimate (see :func:`kl_estimate`), ``mask`` [B, T] the response mask.
    Returns ``(rewards, non_score_reward)``, both [B, T] and 0 where masked:
    ``non_score_reward = -β · kl · mask`` and ``rewards`` equal to it plus ``scores[b]`` at the last
    valid token of row ``b``. ``scores + non_score_reward.sum(-1)`` is the logged ``rlhf_reward``.
    A row with no valid token raises ``ValueError`` (its score would have nowhere to go).
    """
    check_same_shape(kl=kl, mask=mask)
    if kl.dim() != 2 or scores.shape != kl.shape[:1]:
        raise ValueError(f"scores must be [B] and kl [B, T]; got scores {tuple(scores.shape)}, kl {tuple(kl.shape)}")
    last = last_token_index(mask)
    if bool((last < 0).any()):
        empty = (last < 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no valid response token to receive the score")
    non_score = zero_masked(-beta * kl, mask)
    rewards = non_score.clone()
    rows = torch.arange(kl.size(0), device=kl.device)
    rewards[rows, last] = rewards[rows, last] + scores.to(rewards.dtype)
    return rewards, non_score


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

    ``δ_t = r_t + γ V_{t+1} - V_t`` and ``A_t = δ_t + γλ A_{t+1}``, scanned from the end of each
    row; ``returns = A + V``. Rewards and values at masked positions are treated as 0, so the
    bootstrap ``V_{t+1}`` past the last valid token is 0 (the episode ends there, with or without
    EOS) and rows of different lengths need no special casing. ``mask`` must be right-padded
    (ValueError otherwise). Returns ``(advantages, returns)`` [B, T], 0 at masked positions and
    **detached**: they are targets and weights, never differentiated through.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    _check_right_padded(mask)
    m = mask.to(rewards.dtype)
    r = zero_masked(rewards.detach(), mask)
    v = zero_masked(values.detach().to(rewards.dtype), mask)
    t_len = r.size(1)
    adv = [torch.zeros_like(r[:, 0])] * t_len
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    for t in reversed(range(t_len)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        adv[t] = next_adv
        next_value = v[:, t]
    advantages = torch.stack(adv, dim=1)
    return advantages, (advantages + v) * m


class FixedKLController:
    """Constant KL coefficient β with the :class:`AdaptiveKLController` interface."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """No-op; returns the (unchanged) coefficient."""
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019) steering the measured KL towards ``target``.

    After a rollout batch with mean sequence KL ``KL`` over ``n_steps`` samples:
    ``err = clip(KL / target - 1, -0.2, 0.2)`` and ``β ← β (1 + err · n_steps / horizon)``.
    Typical values: ``init_kl_coef=0.15``, ``target=6``, ``horizon=10000``. The whole state
    (β, target, horizon) round-trips through ``state_dict``/``load_state_dict`` for exact resume.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Apply one update from the measured KL; returns the new coefficient."""
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``H = logsumexp(z) - Σ softmax(z) · z`` of the distribution at every position, [...].

    ``logits`` [..., V] (already divided by the sampling temperature if one applies); computed in
    float32 or wider, finite for huge logits, and ``-inf`` logits (banned tokens) contribute 0.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    p = torch.softmax(z, dim=-1)
    pz = torch.where(p > 0, p * z, torch.zeros_like(z))
    return torch.logsumexp(z, dim=-1) - pz.sum(-1)


def logprob_mismatch(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``|logp - old_logp|`` over the valid tokens, a detached 0-dim tensor (0 for an empty mask).

    Logged as ``policy/logprob_mismatch`` on an iteration's first minibatch, before any update,
    where both are log-probabilities of the same tokens under the same weights: anything above
    floating-point noise (dropout left on, a padding or position-id difference, a different
    precision between the two forwards) means the ratio ``ρ`` does not start at 1.
    """
    check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
    diff = zero_masked((logp.detach() - old_logp.detach()).abs(), mask)
    return diff.sum() / mask.to(diff.dtype).sum().clamp(min=1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(returns - values) / Var(returns)`` over the valid entries, a detached 0-dim tensor.

    1: the value function predicts the returns exactly; 0: no better than predicting their mean;
    negative: worse than that (e.g. a value head far from the returns' scale). Both variances are
    Bessel-corrected over the same entries (the correction cancels). Returns with no variance
    leave nothing to explain: the result is then 0, not NaN.
    """
    check_same_shape(values=values, returns=returns, mask=mask)
    v, r = values.detach(), returns.detach()
    var_r = masked_var(r, mask)
    if float(var_r) == 0.0:
        return torch.zeros((), dtype=var_r.dtype, device=var_r.device)
    return 1.0 - masked_var(r - v, mask) / var_r


# -- the GRPO family (DAPO, GSPO, REINFORCE++): docs/online_rl.md ("The GRPO family") ----------
def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's length-normalised sequence log-ratio ``(1/|y_i|) Σ_t (logp_it - old_logp_it)``, [B].

    ``exp`` of it is the geometric mean of the token ratios of completion ``i``. ``old_logp`` is
    detached (gradients flow through ``logp`` only, each token getting ``1/|y_i|``); an empty row
    gives 0.
    """
    check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
    diff = zero_masked(logp - old_logp.detach(), mask)
    return diff.sum(-1) / mask.to(diff.dtype).sum(-1).clamp(min=1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment of completions of ``lengths`` tokens, [B] (0 or negative).

    With ``L = max_len`` (the generation limit) and ``C = buffer_len``: 0 while ``|y| <= L - C``,
    then ``((L - C) - |y|) / C`` falling linearly to -1 at ``|y| = L``, and -1 beyond; times
    ``factor``. ``buffer_len = 0`` turns it off (all 0). Added to the task reward before the
    advantages are computed.
    """
    if buffer_len < 0 or buffer_len > max_len:
        raise ValueError(f"buffer_len must be in [0, max_len={max_len}], got {buffer_len}")
    lengths = lengths.to(torch.float32)
    if buffer_len == 0:
        return torch.zeros_like(lengths)
    expected = max_len - buffer_len
    penalty = ((expected - lengths) / buffer_len).clamp(min=-1.0, max=0.0)
    return factor * penalty


SCORE_NORMS: tuple[str, ...] = ("none", "center", "whiten")


def normalize_scores(scores: torch.Tensor, kind: str = "center", eps: float = 1e-8) -> torch.Tensor:
    """Sequence scores [B] normalised over the batch before they enter PPO's per-token reward.

    - ``none``: unchanged;
    - ``center``: ``s - mean(s)``. With γ = 1 every completion receives its score exactly once, so
      subtracting one constant from all of them changes no policy's ranking (a baseline); what it
      changes is the start of training, where a value head initialised at 0 then already predicts
      the mean return instead of being ``mean(s)`` off on every token;
    - ``whiten``: ``(s - mean(s)) / sqrt(var(s) + eps)`` (Bessel-corrected variance, as
      :func:`masked_whiten`), which also puts the score in units of its batch standard deviation,
      so the KL coefficient β is then relative to that spread.

    A batch of one has no spread: ``center`` gives 0, ``whiten`` 0 too (never NaN).
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be [B], got shape {tuple(scores.shape)}")
    if kind == "none":
        return scores
    if kind not in SCORE_NORMS:
        raise ValueError(f"unknown score normalisation {kind!r}; valid: {', '.join(SCORE_NORMS)}")
    centred = scores - scores.mean()
    if kind == "center":
        return centred
    var = scores.var() if scores.numel() > 1 else torch.zeros((), dtype=scores.dtype, device=scores.device)
    return centred * torch.rsqrt(var + eps)
