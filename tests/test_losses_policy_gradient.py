"""Policy-gradient losses (alignx.losses.policy_gradient) against hand-computed tensors.

Expected values are literals (or math-module expressions of literals) with the arithmetic in a
comment; none is produced by the code under test or a re-implementation of it.
"""

import math

import pytest
import torch
from conftest import approx, t

from alignx.losses.policy_gradient import (
    clipped_policy_loss,
    clipped_surrogate,
    clipped_value_loss,
    group_advantages,
    grpo_token_loss,
    nonconstant_groups,
    ratio_surrogate,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_clipped_loss,
)
from alignx.ops.rl import overlong_penalty, sequence_log_ratio

# ---------------------------------------------------------------- clipped policy loss, ε = 0.2
#
# ratios ρ and advantages A per token (row 1, column 2 is padding):
#   tok  ρ     A    -Aρ    -A·clip(ρ)   max    clipped active?
#   a    1.5   1    -1.5   -1.2         -1.2   yes (A>0, ρ above 1+ε)
#   b    0.5   1    -0.5   -0.8         -0.5   no  (A>0, ρ below: pessimistic term is unclipped)
#   c    1.1  -2     2.2    2.2          2.2   no  (inside the clip range)
#   d    0.5  -1     0.5    0.8          0.8   yes (A<0, ρ below 1-ε)
#   e    1.5  -1     1.5    1.2          1.5   no  (A<0, ρ above: unclipped)
# loss = (-1.2 - 0.5 + 2.2 + 0.8 + 1.5) / 5 = 2.8 / 5 = 0.56; clipfrac = 2/5; mean ρ = 5.1/5 = 1.02
RHO = [[1.5, 0.5, 1.1], [0.5, 1.5, 3.0]]
ADV = [[1.0, 1.0, -2.0], [-1.0, -1.0, 50.0]]
PMASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def _policy_inputs():
    old = t([[-1.0, -2.0, -0.5], [-3.0, -1.0, -0.2]])
    logp = (old + torch.log(t(RHO))).detach().requires_grad_(True)
    old.requires_grad_(True)
    adv = t(ADV).requires_grad_(True)
    return logp, old, adv


def test_clipped_policy_loss_hand_computed():
    logp, old, adv = _policy_inputs()
    loss, stats = clipped_policy_loss(logp, old, adv, PMASK, clip_range=0.2)
    assert loss.item() == pytest.approx(0.56, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(0.4)
    assert stats["ratio"].item() == pytest.approx(1.02, rel=1e-12)
    # approxkl = 0.5 * mean(log ρ)² = 0.5 * (2 ln²1.5 + 2 ln²0.5 + ln²1.1) / 5 = 0.0652497...
    kl = 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2 + math.log(1.1) ** 2) / 5
    assert stats["approxkl"].item() == pytest.approx(kl, rel=1e-12)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())

    loss.backward()
    # d/dlogp of -Aρ/5 is -Aρ/5 on unclipped tokens, 0 on clipped or padded ones:
    #   a: 0, b: -1 * 0.5 / 5 = -0.1, c: 2 * 1.1 / 5 = 0.44 | d: 0, e: 1 * 1.5 / 5 = 0.3, pad: 0
    approx(logp.grad, [[0.0, -0.1, 0.44], [0.0, 0.3, 0.0]], rel=1e-12)
    # no gradient into the rollout-time tensors
    assert old.grad is None and adv.grad is None


def test_clipped_policy_loss_no_clipping_at_ratio_one():
    # logp == old: ρ = 1, loss = -mean(A) over valid tokens = -(1 + 1 - 2 - 1 - 1) / 5 = 0.4
    old = t([[-1.0, -2.0, -0.5], [-3.0, -1.0, -0.2]])
    loss, stats = clipped_policy_loss(old.clone(), old, t(ADV), PMASK)
    assert loss.item() == pytest.approx(0.4)
    assert stats["clipfrac"].item() == 0.0
    assert stats["ratio"].item() == pytest.approx(1.0)
    assert stats["approxkl"].item() == 0.0


def test_clipped_policy_loss_sequence_advantages_broadcast():
    # one advantage per row (GRPO): A = [1, -1]; tokens a, b, c see 1 and d, e see -1
    #   a: max(-1.5, -1.2) = -1.2 (clipped), b: max(-0.5, -0.8) = -0.5, c: max(-1.1, -1.1) = -1.1
    #   d: max(0.5, 0.8) = 0.8 (clipped),    e: max(1.5, 1.2) = 1.5
    # mean = (-1.2 - 0.5 - 1.1 + 0.8 + 1.5) / 5 = -0.5 / 5 = -0.1
    logp, old, _ = _policy_inputs()
    loss, stats = clipped_policy_loss(logp, old, t([1.0, -1.0]), PMASK)
    assert loss.item() == pytest.approx(-0.1, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(0.4)
    per_token, clipped = clipped_surrogate(logp, old, t([1.0, -1.0]))
    approx(per_token[0], [-1.2, -0.5, -1.1], rel=1e-12)
    assert clipped.tolist() == [[True, False, False], [True, False, False]]  # pad: ρ 3, A -1 -> 3 vs 1.2


def test_clipped_policy_loss_shape_errors():
    logp, old, _ = _policy_inputs()
    with pytest.raises(ValueError, match=r"logp \(2, 3\), old_logp \(2, 2\)"):
        clipped_policy_loss(logp, old[:, :2], t(ADV), PMASK)
    with pytest.raises(ValueError, match=r"advantages \(3,\)"):
        clipped_policy_loss(logp, old, t([1.0, 2.0, 3.0]), PMASK)
    with pytest.raises(ValueError, match=r"mask \(2, 2\)"):
        clipped_policy_loss(logp, old, t(ADV), PMASK[:, :2])


# ---------------------------------------------------------------- clipped value loss, ε = 0.2
#
#   tok  V_old  V     R     clip(V)  (V-R)²  (clip-R)²  max    clipped active?
#   a    1.0    1.5   2.0   1.2      0.25    0.64       0.64   yes
#   b    1.0    1.5   1.0   1.2      0.25    0.04       0.25   no
#   c    0.0    0.1   1.0   0.1      0.81    0.81       0.81   no (inside the range)
#   d    0.0   -0.5   0.5  -0.2      1.00    0.49       1.00   no
#   e    0.0   -0.5  -1.0  -0.2      0.25    0.64       0.64   yes
# loss = 0.5 * (0.64 + 0.25 + 0.81 + 1.0 + 0.64) / 5 = 0.5 * 3.34 / 5 = 0.334; clipfrac 2/5


def test_clipped_value_loss_hand_computed():
    values = t([[1.5, 1.5, 0.1], [-0.5, -0.5, 9.0]]).requires_grad_(True)
    old = t([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).requires_grad_(True)
    returns = t([[2.0, 1.0, 1.0], [0.5, -1.0, -9.0]]).requires_grad_(True)
    loss, stats = clipped_value_loss(values, old, returns, PMASK, clip_range=0.2)
    assert loss.item() == pytest.approx(0.334, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(0.4)
    assert stats["clipfrac"].dim() == 0 and not stats["clipfrac"].requires_grad
    loss.backward()
    # d/dV of 0.5 (V-R)² / 5 = (V - R) / 5 on unclipped tokens: b 0.5/5, c -0.9/5, d -1/5; a, e, pad 0
    approx(values.grad, [[0.0, 0.1, -0.18], [-0.2, 0.0, 0.0]], rel=1e-12)
    assert old.grad is None and returns.grad is None


def test_clipped_value_loss_unclipped_is_half_mse():
    # V within ε of V_old everywhere: 0.5 * mean((V - R)²) = 0.5 * (1 + 4) / 2 = 1.25
    v = t([[0.1, -0.1]])
    loss, stats = clipped_value_loss(v, t([[0.0, 0.0]]), t([[1.1, 1.9]]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(1.25)
    assert stats["clipfrac"].item() == 0.0
    with pytest.raises(ValueError, match=r"returns \(1, 1\)"):
        clipped_value_loss(v, t([[0.0, 0.0]]), t([[1.0]]), torch.ones(1, 2))


def test_nan_padding_reaches_neither_loss_nor_gradient():
    # padded slot (row 1, col 2) holds inf/NaN; every loss and gradient stays as in the clean cases
    logp, old, adv = _policy_inputs()
    with torch.no_grad():
        logp[1, 2], old[1, 2], adv[1, 2] = math.inf, -math.inf, math.nan
    loss, stats = clipped_policy_loss(logp, old, adv, PMASK)
    assert loss.item() == pytest.approx(0.56, rel=1e-12) and stats["ratio"].item() == pytest.approx(1.02)
    loss.backward()
    approx(logp.grad, [[0.0, -0.1, 0.44], [0.0, 0.3, 0.0]], rel=1e-12)
    values = t([[1.5, 1.5, 0.1], [-0.5, -0.5, math.nan]]).requires_grad_(True)
    old_v = t([[1.0, 1.0, 0.0], [0.0, 0.0, math.inf]])
    loss, _ = clipped_value_loss(values, old_v, t([[2.0, 1.0, 1.0], [0.5, -1.0, math.nan]]), PMASK)
    assert loss.item() == pytest.approx(0.334, rel=1e-12)
    loss.backward()
    assert torch.isfinite(values.grad).all()
    assert grpo_token_loss(t([[1.0, 2.0, 3.0], [4.0, math.nan, math.inf]]), LMASK, "bnpo").item() == 2.5


# ---------------------------------------------------------------- GRPO group advantages, G = 4


def test_group_advantages_g4_with_zero_std_group():
    # group 0: 0, 0, 0, 4 -> mean 1, deviations -1, -1, -1, 3, Σdev² = 12,
    #          unbiased std sqrt(12 / 3) = 2 (the biased one would be sqrt(3))
    # group 1: 5, 5, 5, 5 -> std 0 -> advantages 0 / (0 + 1e-4) = 0, no NaN
    rewards = t([0.0, 0.0, 0.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    adv, std = group_advantages(rewards, group_size=4)
    d = 2.0 + 1e-4
    approx(adv, [-1 / d, -1 / d, -1 / d, 3 / d, 0.0, 0.0, 0.0, 0.0], rel=1e-12)
    approx(std, [2.0, 0.0])
    assert not torch.isnan(adv).any()
    assert (std == 0).float().mean().item() == 0.5  # frac_reward_zero_std
    # scale="none": only centred
    adv, _ = group_advantages(rewards, group_size=4, scale="none")
    approx(adv, [-1.0, -1.0, -1.0, 3.0, 0.0, 0.0, 0.0, 0.0])


def test_group_advantages_g2_and_eps():
    # [1, 3]: mean 2, unbiased std sqrt((1 + 1) / 1) = sqrt 2; eps 0.5 -> ±1 / (1.4142135623730951 + 0.5)
    adv, std = group_advantages(t([1.0, 3.0]), group_size=2, eps=0.5)
    d = math.sqrt(2) + 0.5
    approx(adv, [-1 / d, 1 / d], rel=1e-12)
    approx(std, [math.sqrt(2)], rel=1e-12)


def test_group_advantages_validation():
    with pytest.raises(ValueError, match="std, batch, none"):
        group_advantages(t([1.0, 2.0]), 2, scale="mad")
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(t([1.0, 2.0, 3.0]), 4)
    with pytest.raises(ValueError, match=">= 2"):
        group_advantages(t([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match=r"\[B\]"):
        group_advantages(t([[1.0, 2.0]]), 2)


# ---------------------------------------------------------------- RLOO


def test_rloo_advantages_literals():
    # group 0 [1, 2, 6]: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5
    # group 1 [0, 0, 3]: 0 - 1.5 = -1.5, 0 - 1.5 = -1.5, 3 - 0 = 3
    adv = rloo_advantages(t([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), group_size=3)
    approx(adv, [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    # G = 2: r_i - r_other
    approx(rloo_advantages(t([1.0, 4.0]), 2), [-3.0, 3.0])


def test_rloo_rejects_small_groups_and_ragged_batches():
    with pytest.raises(ValueError, match=">= 2"):
        rloo_advantages(t([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="groups of 2"):
        rloo_advantages(t([1.0, 2.0, 3.0]), 2)


# ---------------------------------------------------------------- RLOO gradient: sequence vs token mean
#
# One prompt, group of G = 2 completions of lengths 2 and 3 (row 0's third column is padding),
# scores s = [1, 3] -> RLOO advantages A = [1 - 3, 3 - 1] = [-2, +2]; B = 2 sequences; ε = 0.2.
# The padding log-probs are garbage (+inf) that must reach neither loss nor gradient.
RL_MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
RL_SCORES = t([1.0, 3.0])
INF = float("inf")


def _rloo_grad(delta, normalization):
    """d loss / d logp for log-probs ``old + delta`` (old = -1 on every valid token)."""
    adv = rloo_advantages(RL_SCORES, 2)
    approx(adv, [-2.0, 2.0])
    old = t([[-1.0, -1.0, INF], [-1.0, -1.0, -1.0]])
    logp = (t([[-1.0, -1.0, INF], [-1.0, -1.0, -1.0]]) + t(delta)).requires_grad_(True)
    if normalization == "sequence":
        loss, stats = sequence_clipped_loss(logp, old, adv, RL_MASK, 0.2)
    else:
        per_token, _ = clipped_surrogate(torch.where(RL_MASK.bool(), logp, 0.0), torch.where(RL_MASK.bool(), old, 0.0), adv, 0.2)
        loss, stats = grpo_token_loss(per_token, RL_MASK, normalization), {}
    loss.backward()
    return loss, logp.grad, stats


def test_rloo_sequence_gradient_is_the_papers_reinforce_on_policy():
    # on-policy (ρ = 1): loss = mean_i (-A_i) = (2 - 2) / 2 = 0, and d loss / d logp_it = -A_i / B:
    #   sequence 0 (A = -2): +2 / 2 = +1 on each of its 2 tokens
    #   sequence 1 (A = +2): -2 / 2 = -1 on each of its 3 tokens
    loss, grad, stats = _rloo_grad([[0.0] * 3] * 2, "sequence")
    assert loss.item() == 0.0
    approx(grad, [[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]])
    assert stats["clipfrac"].item() == 0.0


def test_rloo_token_mean_gradient_is_one_over_length_of_the_papers():
    # token-mean variant (loss_normalization=grpo): d loss / d logp_it = -A_i / (B · |y_i|):
    #   sequence 0: +2 / (2 · 2) = +0.5;  sequence 1: -2 / (2 · 3) = -1/3
    loss, grad, _ = _rloo_grad([[0.0] * 3] * 2, "grpo")
    assert loss.item() == 0.0
    approx(grad, [[0.5, 0.5, 0.0], [-1 / 3, -1 / 3, -1 / 3]])


def test_rloo_sequence_and_token_clipping_off_policy():
    # logp - old = [[-0.05, +0.05], [+0.1, +0.2, 0.0]]
    delta = [[-0.05, 0.05, 0.0], [0.1, 0.2, 0.0]]
    # sequence: ρ_0 = exp(-0.05 + 0.05) = 1 (inside), ρ_1 = exp(0.3) = 1.3499 > 1.2 with A = +2: clipped,
    # loss = (2·1 + (-2·1.2)) / 2 = -0.2; gradient -A_0·ρ_0/B = +1 on sequence 0, 0 on sequence 1
    loss, grad, stats = _rloo_grad(delta, "sequence")
    assert loss.item() == pytest.approx(-0.2, rel=1e-12)
    approx(grad, [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert stats["clipfrac"].item() == 0.5  # one sequence of two
    # token mean: each token has its own ratio; only exp(0.2) = 1.2214 > 1.2 (A = +2) is clipped
    #   sequence 0: -A·ρ_t / (B·2) = 0.5·ρ_t -> 0.5·e^-0.05, 0.5·e^0.05
    #   sequence 1: -A·ρ_t / (B·3) = -ρ_t/3 -> -e^0.1/3, 0 (clipped), -1/3
    loss, grad, _ = _rloo_grad(delta, "grpo")
    approx(grad, [[0.5 * math.exp(-0.05), 0.5 * math.exp(0.05), 0.0], [-math.exp(0.1) / 3, 0.0, -1 / 3]])
    # loss: (2·(e^-0.05 + e^0.05)/2 + (-2)·(e^0.1 + 1.2 + 1)/3) / 2
    assert loss.item() == pytest.approx(((math.exp(-0.05) + math.exp(0.05)) - 2 * (math.exp(0.1) + 2.2) / 3) / 2, rel=1e-12)


def test_sequence_clipped_loss_validation():
    with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
        sequence_clipped_loss(t([[0.0, 0.0]]), t([[0.0, 0.0]]), t([[1.0, 1.0]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="shape mismatch"):
        sequence_clipped_loss(t([[0.0, 0.0]]), t([[0.0]]), t([1.0]), torch.ones(1, 2))


# ---------------------------------------------------------------- GRPO loss normalisations (2 x 3)

LOSS = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
LMASK = torch.tensor([[1, 1, 1], [1, 0, 0]])  # row 1 has one valid token; its 5 and 6 are padding


@pytest.mark.parametrize(
    ("normalization", "max_len", "expected"),
    [
        ("grpo", None, 3.0),  # row means (1+2+3)/3 = 2 and 4/1 = 4 -> (2 + 4) / 2
        ("bnpo", None, 2.5),  # (1+2+3+4) / 4 valid tokens
        ("dr_grpo", None, 10.0 / 6.0),  # 10 / (B=2 · T=3)
        ("dr_grpo", 5, 1.0),  # 10 / (2 · 5)
    ],
)
def test_grpo_token_loss_normalisations(normalization, max_len, expected):
    got = grpo_token_loss(LOSS, LMASK, normalization, max_len=max_len)
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_grpo_token_loss_gradient_weights():
    # d/dl_ij is the token's weight: grpo 1/(B·n_i) -> 1/6 on row 0, 1/2 on row 1's token;
    # bnpo 1/4 everywhere valid; padding gets 0
    x = LOSS.clone().requires_grad_(True)
    grpo_token_loss(x, LMASK, "grpo").backward()
    approx(x.grad, [[1 / 6, 1 / 6, 1 / 6], [0.5, 0.0, 0.0]])
    x.grad = None
    grpo_token_loss(x, LMASK, "bnpo").backward()
    approx(x.grad, [[0.25, 0.25, 0.25], [0.25, 0.0, 0.0]])


def test_grpo_token_loss_validation():
    with pytest.raises(ValueError, match="grpo, bnpo, dr_grpo"):
        grpo_token_loss(LOSS, LMASK, "dapo_v2")
    with pytest.raises(ValueError, match=r"per_token_loss \(2, 3\), mask \(2, 2\)"):
        grpo_token_loss(LOSS, LMASK[:, :2])


# ---------------------------------------------------------------- the GRPO family (DAPO, GSPO, REINFORCE++)
def test_clip_higher_decouples_the_upper_clip_from_the_lower():
    """DAPO clip-higher, ε_low = 0.2, ε_high = 0.28:
      ρ     A    -Aρ     -A·clip(ρ, 0.8, 1.28)   max     clipped?   (symmetric ε = 0.2: max, clipped?)
      1.25  1   -1.25   -1.25                   -1.25   no          -1.2, yes
      1.5   1   -1.5    -1.28                   -1.28   yes         -1.2, yes
      0.7  -1    0.7     0.8                     0.8    yes          0.8, yes
      0.7   1   -0.7    -0.8                    -0.7    no          -0.7, no
    """
    old = t([[-1.0, -2.0], [-0.5, -3.0]])
    logp = old + torch.log(t([[1.25, 1.5], [0.7, 0.7]]))
    adv = t([[1.0, 1.0], [-1.0, 1.0]])
    loss, clipped = clipped_surrogate(logp, old, adv, 0.2, 0.28)
    approx(loss, [[-1.25, -1.28], [0.8, -0.7]], rel=1e-12)
    assert clipped.tolist() == [[False, True], [True, False]]
    loss, clipped = clipped_surrogate(logp, old, adv, 0.2)  # clip_range_high None: symmetric
    approx(loss, [[-1.2, -1.2], [0.8, -0.7]], rel=1e-12)
    assert clipped.tolist() == [[True, True], [True, False]]


def test_gspo_sequence_ratio_is_the_mean_token_log_ratio_clipped_per_completion():
    """log ρ_t = logp - old: row 0 [0.3, -0.1, 0.4] (mean 0.2), row 1 [0.2, 0.4, pad] (mean 0.3).
    s_0 = e^0.2 = 1.2214 > 1 + 0.1 with A = 1: clipped, loss -1.1, no gradient.
    s_1 = e^0.3 = 1.3499 with A = -1: max(1.3499, 1.1) = e^0.3, unclipped.
    grpo reduction (token mean per row, then mean of rows): (-1.1 + e^0.3) / 2.
    ∂/∂logp_1t = (1/2) · e^0.3 · (1/|y_1| = 1/2) = e^0.3 / 4 at both valid tokens of row 1."""
    old = t([[-1.0, -2.0, -0.5], [-3.0, -1.0, 0.0]])
    logp = (old + t([[0.3, -0.1, 0.4], [0.2, 0.4, 7.0]])).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    seq = sequence_log_ratio(logp, old, mask)
    approx(seq.detach(), [0.2, 0.3], rel=1e-12)
    per_token, clipped = ratio_surrogate(seq.unsqueeze(-1).expand_as(logp), t([1.0, -1.0]), 0.1, 0.1)
    assert clipped[:, 0].tolist() == [True, False]
    loss = grpo_token_loss(per_token, mask, "grpo")
    assert float(loss.detach()) == pytest.approx((-1.1 + math.exp(0.3)) / 2, rel=1e-12)
    loss.backward()
    approx(logp.grad, [[0.0, 0.0, 0.0], [math.exp(0.3) / 4, math.exp(0.3) / 4, 0.0]], rel=1e-12)


def test_scale_rewards_batch_divides_group_centred_rewards_by_the_batch_std():
    """rewards [1, 0, 0, 0 | 1, 1, 0, 0], G = 4: group means 0.25 and 0.5; batch mean 3/8,
    batch unbiased variance (3 · 0.625² + 5 · 0.375²) / 7 = 1.875 / 7."""
    adv, std = group_advantages(t([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]), 4, "batch")
    d = math.sqrt(1.875 / 7) + 1e-4
    approx(adv, [0.75 / d, -0.25 / d, -0.25 / d, -0.25 / d, 0.5 / d, 0.5 / d, -0.5 / d, -0.5 / d], rel=1e-12)
    approx(std, [0.5, math.sqrt(1 / 3)], rel=1e-12)  # the per-group std is still returned for logging


def test_nonconstant_groups_finds_the_groups_with_a_gradient():
    # groups of 3: [1, 1, 1] constant, [0, 1, 0] not, [2, 2, 2] constant
    assert nonconstant_groups(t([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0]), 3).tolist() == [False, True, False]


def test_reinforce_pp_advantages_whiten_the_kl_penalised_returns_over_the_batch():
    """β = 0.5; scores [1, 0]; KL row 0 [0.1, 0.2, 0.3], row 1 [0.5, pad, pad].
    rewards: row 0 [-0.05, -0.1, -0.15 + 1] = [-0.05, -0.1, 0.85]; row 1 [-0.25 + 0].
    returns (sum to the end): row 0 [0.7, 0.75, 0.85]; row 1 [-0.25].
    mean of the 4 valid returns 2.05 / 4 = 0.5125; deviations 0.1875, 0.2375, 0.3375, -0.7625;
    unbiased variance (0.03515625 + 0.05640625 + 0.11390625 + 0.58140625) / 3 = 0.786875 / 3."""
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv, returns = reinforce_pp_advantages(t([1.0, 0.0]), t([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]]), mask, 0.5)
    approx(returns, [[0.7, 0.75, 0.85], [-0.25, 0.0, 0.0]], rel=1e-12, abs=1e-15)
    s = math.sqrt(0.786875 / 3 + 1e-8)
    approx(adv, [[0.1875 / s, 0.2375 / s, 0.3375 / s], [-0.7625 / s, 0.0, 0.0]], rel=1e-9, abs=1e-12)


def test_overlong_penalty_is_linear_over_the_buffer_before_the_limit():
    """L = 10, buffer C = 4 (penalty starts after L - C = 6 tokens), factor 0.5:
    |y| 3 -> 0; 6 -> 0; 7 -> (6 - 7) / 4 = -0.25; 9 -> -0.75; 10 -> -1; times 0.5."""
    approx(overlong_penalty(torch.tensor([3, 6, 7, 9, 10]), 10, 4, 0.5).double(), [0.0, 0.0, -0.125, -0.375, -0.5])
    approx(overlong_penalty(torch.tensor([3, 10]), 10, 0).double(), [0.0, 0.0])  # buffer 0: off
    with pytest.raises(ValueError, match="buffer_len must be in"):
        overlong_penalty(torch.tensor([3]), 10, 11)
