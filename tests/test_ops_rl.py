"""Online-RL ops (alignx.ops.rl) against hand-computed tensors.

Expected values are literals (or math-module expressions of literals) with the arithmetic in a
comment; none is produced by the code under test or a re-implementation of it.
"""

import math

import pytest
import torch
from conftest import approx, t

from alignx.ops.rl import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimate,
    last_token_index,
    logprob_mismatch,
    masked_var,
    masked_whiten,
    per_token_rewards,
    truncate_after_eos,
)

# ---------------------------------------------------------------- masked_var / masked_whiten

# selected entries 1, 3, 5 (the 9, -4, 0 are masked): mean 3, deviations -2, 0, 2, Σdev² = 8
X = t([[1.0, 9.0, 3.0], [5.0, -4.0, 0.0]])
M = torch.tensor([[True, False, True], [True, False, False]])


def test_masked_var_unbiased_and_biased():
    approx(masked_var(X, M), 4.0)  # 8 / (3 - 1)
    approx(masked_var(X, M, unbiased=False), 8.0 / 3.0)  # 8 / 3
    approx(masked_var(X, M.long()), 4.0)  # 0/1 masks of any dtype


def test_masked_whiten_tiny_literals():
    # unbiased var 4, eps 0: (x - 3) / 2 -> -1, 0 (masked), 0, 1, 0, 0 (masked)
    approx(masked_whiten(X, M, eps=0.0), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    # default eps 1e-8: (1 - 3) / sqrt(4 + 1e-8) = -0.9999999987500...
    s = math.sqrt(4.0 + 1e-8)
    approx(masked_whiten(X, M), [[-2.0 / s, 0.0, 0.0 / s], [2.0 / s, 0.0, 0.0]])
    # shift_mean=False adds the mean 3 back: -1 + 3, 0 + 3, 1 + 3; masked stays 0
    approx(masked_whiten(X, M, shift_mean=False, eps=0.0), [[2.0, 0.0, 3.0], [4.0, 0.0, 0.0]])
    # biased var 8/3: -2 / sqrt(8/3) = -sqrt(3/2) = -1.224744871391589
    r = math.sqrt(1.5)
    approx(masked_whiten(X, M, eps=0.0, unbiased=False), [[-r, 0.0, 0.0], [r, 0.0, 0.0]])


def test_masked_whiten_mean_zero_var_one_over_mask():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64) * 3.0 + 7.0
    lengths = torch.tensor([9, 1, 4, 7, 2, 5])
    mask = torch.arange(9) < lengths[:, None]
    w = masked_whiten(x, mask)
    sel = w[mask]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert sel.var().item() == pytest.approx(1.0, rel=1e-6)  # unbiased, like the whitening
    assert torch.all(w[~mask] == 0)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert kept[mask].mean().item() == pytest.approx(x[mask].mean().item(), rel=1e-12)


def test_masked_whiten_degenerate_masks_give_zeros_not_nan():
    x = t([[2.0, 5.0]])
    approx(masked_whiten(x, torch.tensor([[False, False]])), [[0.0, 0.0]])
    approx(masked_whiten(x, torch.tensor([[True, False]])), [[0.0, 0.0]])  # one entry: x - mean = 0
    approx(masked_var(x, torch.tensor([[True, False]])), 0.0)


def test_inf_and_nan_padding_never_leak():
    # the same tiny case with garbage in the masked slots: identical literals, no NaN
    bad = X.clone()
    bad[0, 1], bad[1, 1], bad[1, 2] = math.nan, math.inf, -math.inf
    approx(masked_whiten(bad, M, eps=0.0), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    approx(masked_var(bad, M), 4.0)
    r, v = R.clone(), V.clone()
    r[1, 2], v[1, 2] = math.nan, math.inf
    approx(gae(r, v, GM)[0], [[0.5475, 0.05, -1.0], [1.35, 3.0, 0.0]])  # as in the γ=1, λ=0.95 case
    _, non_score = per_token_rewards(t([0.0, 0.0]), t([[0.0, 0.0, 0.0], [0.0, 0.0, math.nan]]), GM, beta=0.1)
    assert not torch.isnan(non_score).any()


def test_whiten_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"x \(1, 2\).*mask \(2, 1\)"):
        masked_whiten(t([[1.0, 2.0]]), torch.ones(2, 1))


# ---------------------------------------------------------------- KL estimators

LOGP = t([-1.0, -2.0, -0.5])
REF = t([-1.5, -1.0, -0.5])


def test_kl_estimators_literals():
    # k1 = logp - ref: -1 + 1.5, -2 + 1, -0.5 + 0.5
    approx(kl_estimate(LOGP, REF, "k1"), [0.5, -1.0, 0.0])
    approx(kl_estimate(LOGP, REF), [0.5, -1.0, 0.0])  # k1 is the default
    # k2 = 0.5 * k1²: 0.5 * 0.25, 0.5 * 1, 0
    approx(kl_estimate(LOGP, REF, "k2"), [0.125, 0.5, 0.0])
    # k3 with d = ref - logp = -0.5, 1, 0: e^d - d - 1
    #   e^-0.5 + 0.5 - 1 = 0.6065306597126334 - 0.5 = 0.1065306597126334
    #   e - 1 - 1       = 2.718281828459045 - 2    = 0.718281828459045
    approx(kl_estimate(LOGP, REF, "k3"), [0.1065306597126334, 0.718281828459045, 0.0], rel=1e-12)


def test_k3_is_non_negative_and_zero_only_at_equality():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(1000, generator=g, dtype=torch.float64) * 10
    ref = -torch.rand(1000, generator=g, dtype=torch.float64) * 10
    k3 = kl_estimate(logp, ref, "k3")
    assert torch.all(k3 >= 0)
    assert torch.all(kl_estimate(logp, logp, "k3") == 0)
    # tiny differences stay accurate (expm1): d = 1e-9 -> d²/2 = 5e-19
    approx(kl_estimate(t([0.0]), t([1e-9]), "k3"), [5e-19], rel=1e-6, abs=0.0)


def test_kl_unknown_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(LOGP, REF, "k4")
    with pytest.raises(ValueError, match=r"logp \(3,\), ref_logp \(2,\)"):
        kl_estimate(LOGP, REF[:2])


# ---------------------------------------------------------------- truncate_after_eos

EOS, PAD = 2, 0


def test_truncate_after_eos_with_and_without_eos():
    tokens = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 0]])
    before = tokens.clone()
    out, mask, has_eos = truncate_after_eos(tokens, EOS, PAD)
    # row 0: EOS at 1 -> keep 5, 2; the 7 and the second EOS become pad
    # row 1: no EOS   -> untouched, all valid
    # row 2: EOS first -> only the EOS is valid
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True], [True, False, False, False]]
    assert has_eos.tolist() == [True, False, True]
    assert mask.dtype == torch.bool
    assert torch.equal(tokens, before)  # input not modified


def test_truncate_after_eos_rejects_non_2d():
    with pytest.raises(ValueError, match="B, T"):
        truncate_after_eos(torch.tensor([1, 2, 3]), EOS, PAD)


# ---------------------------------------------------------------- per-token rewards


def test_per_token_rewards_places_score_at_last_valid_token():
    scores = t([1.0, -2.0])
    kl = t([[0.1, 0.2, 0.3], [0.5, -0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, non_score = per_token_rewards(scores, kl, mask, beta=0.5)
    # non-score = -0.5 * kl on valid tokens: -0.05, -0.1, -0.15 | -0.25, +0.2, (masked 9.0 -> 0)
    approx(non_score, [[-0.05, -0.1, -0.15], [-0.25, 0.2, 0.0]])
    # + score at the last valid token: row 0 index 2 (-0.15 + 1), row 1 index 1 (0.2 - 2)
    approx(rewards, [[-0.05, -0.1, 0.85], [-0.25, -1.8, 0.0]])
    # rlhf_reward = score + Σ non-score: 1 - 0.3 = 0.7, -2 - 0.05 = -2.05
    approx(scores + non_score.sum(-1), [0.7, -2.05])


def test_per_token_rewards_validation():
    with pytest.raises(ValueError, match="no valid response token"):
        per_token_rewards(t([1.0]), t([[0.1, 0.2]]), torch.zeros(1, 2), beta=0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        per_token_rewards(t([1.0]), t([[0.1, 0.2]]), torch.ones(1, 3), beta=0.1)
    with pytest.raises(ValueError, match=r"scores \(2,\)"):
        per_token_rewards(t([1.0, 2.0]), t([[0.1, 0.2]]), torch.ones(1, 2), beta=0.1)


def test_last_token_index():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert last_token_index(mask).tolist() == [1, 2, -1]


# ---------------------------------------------------------------- GAE

# row 0 has 3 valid tokens, row 1 has 2 (its third reward 7 and value 5 are padding)
R = t([[0.0, 0.0, 1.0], [0.5, 2.0, 7.0]])
V = t([[0.5, 1.0, 2.0], [1.0, -1.0, 5.0]])
GM = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_gae_gamma_one_lambda_095_two_lengths():
    adv, ret = gae(R, V, GM, gamma=1.0, lam=0.95)
    # row 0:  t=2: δ = 1 + 0 - 2 = -1,             A = -1
    #         t=1: δ = 0 + 2 - 1 = 1,              A = 1 + 0.95 * -1 = 0.05
    #         t=0: δ = 0 + 1 - 0.5 = 0.5,          A = 0.5 + 0.95 * 0.05 = 0.5475
    # row 1:  t=1: δ = 2 + 0 (past the end) + 1 = 3, A = 3
    #         t=0: δ = 0.5 - 1 - 1 = -1.5,         A = -1.5 + 0.95 * 3 = 1.35
    approx(adv, [[0.5475, 0.05, -1.0], [1.35, 3.0, 0.0]])
    # returns = A + V: 1.0475, 1.05, 1.0 | 2.35, 2.0, (masked) 0
    approx(ret, [[1.0475, 1.05, 1.0], [2.35, 2.0, 0.0]])


def test_gae_discounted_gamma_09_lambda_05():
    adv, ret = gae(R, V, GM, gamma=0.9, lam=0.5)  # γλ = 0.45
    # row 0:  t=2: δ = 1 - 2 = -1,                 A = -1
    #         t=1: δ = 0.9 * 2 - 1 = 0.8,          A = 0.8 + 0.45 * -1 = 0.35
    #         t=0: δ = 0.9 * 1 - 0.5 = 0.4,        A = 0.4 + 0.45 * 0.35 = 0.5575
    # row 1:  t=1: δ = 2 + 0 + 1 = 3,              A = 3
    #         t=0: δ = 0.5 + 0.9 * -1 - 1 = -1.4,  A = -1.4 + 0.45 * 3 = -0.05
    approx(adv, [[0.5575, 0.35, -1.0], [-0.05, 3.0, 0.0]])
    # returns: 0.5575 + 0.5, 0.35 + 1, -1 + 2 | -0.05 + 1, 3 - 1, 0
    approx(ret, [[1.0575, 1.35, 1.0], [0.95, 2.0, 0.0]])


def test_gae_limits_monte_carlo_and_td0():
    # λ = γ = 1: A_t = Σ_{s>=t} r_s - V_t. row 0: 1 - 0.5, 1 - 1, 1 - 2; row 1: 2.5 - 1, 2 + 1
    adv, ret = gae(R, V, GM, gamma=1.0, lam=1.0)
    approx(adv, [[0.5, 0.0, -1.0], [1.5, 3.0, 0.0]])
    approx(ret, [[1.0, 1.0, 1.0], [2.5, 2.0, 0.0]])
    # λ = 0: A_t = δ_t = r_t + V_{t+1} - V_t: 0.5, 1, -1 | -1.5, 3
    adv, _ = gae(R, V, GM, gamma=1.0, lam=0.0)
    approx(adv, [[0.5, 1.0, -1.0], [-1.5, 3.0, 0.0]])


def test_gae_outputs_detached_empty_row_and_padding_ignored():
    values = V.clone().requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    adv, ret = gae(R, values, mask)
    assert not adv.requires_grad and not ret.requires_grad
    approx(adv[1], [0.0, 0.0, 0.0])
    # changing padded rewards/values changes nothing
    r2, v2 = R.clone(), V.clone()
    r2[1, 2], v2[1, 2] = -100.0, 100.0
    assert torch.equal(gae(r2, v2, GM)[0], gae(R, V, GM)[0])


def test_gae_rejects_bad_masks_and_shapes():
    with pytest.raises(ValueError, match="right-padded"):
        gae(R, V, torch.tensor([[0, 1, 1], [1, 1, 0]]))
    with pytest.raises(ValueError, match=r"values \(2, 2\)"):
        gae(R, V[:, :2], GM)


# ---------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_two_updates():
    ctl = AdaptiveKLController(init_kl_coef=0.15, target=6.0, horizon=10000)
    # KL 9: 9/6 - 1 = 0.5, clipped to +0.2; β = 0.15 * (1 + 0.2 * 512 / 10000) = 0.15 * 1.01024
    assert ctl.update(9.0, n_steps=512) == pytest.approx(0.151536, rel=1e-12)
    assert ctl.value == pytest.approx(0.151536, rel=1e-12)
    # KL 5.4: 5.4/6 - 1 = -0.1 (inside the clip); β = 0.151536 * (1 - 0.1 * 1000 / 10000) = * 0.99
    assert ctl.update(torch.tensor(5.4, dtype=torch.float64), n_steps=1000) == pytest.approx(0.15002064, rel=1e-12)
    # KL 0: 0/6 - 1 = -1, clipped to -0.2; β = 0.15002064 * (1 - 0.2 * 0.5) = * 0.9
    assert ctl.update(0.0, n_steps=5000) == pytest.approx(0.135018576, rel=1e-12)


def test_kl_controllers_state_dict_round_trip():
    ctl = AdaptiveKLController(0.15, 6.0, 10000)
    ctl.update(9.0, 512)
    state = ctl.state_dict()
    fresh = AdaptiveKLController(1.0, 1.0, 1.0)
    fresh.load_state_dict(state)
    assert (fresh.value, fresh.target, fresh.horizon) == (ctl.value, 6.0, 10000.0)
    # identical afterwards: the next update agrees exactly
    assert fresh.update(7.0, 64) == ctl.update(7.0, 64)

    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 512) == 0.05 and fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


def test_adaptive_kl_controller_rejects_bad_target():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, 0.0, 100)


# ---------------------------------------------------------------- entropy


def test_entropy_from_logits_literals_and_stability():
    logits = t(
        [
            [0.0, 0.0, 0.0, 0.0],  # uniform over 4: ln 4
            [0.0, math.log(3.0), -math.inf, -math.inf],  # p = 1/4, 3/4: ln 4 - (3/4) ln 3
            [1000.0, 1000.0, -math.inf, -math.inf],  # huge but equal: ln 2, no overflow
            [1000.0, 0.0, 0.0, 0.0],  # one-hot up to e^-1000: 0
        ]
    )
    h = entropy_from_logits(logits)
    approx(h, [math.log(4), math.log(4) - 0.75 * math.log(3), math.log(2), 0.0], abs=1e-12)
    # any leading shape; half precision is computed in float32
    h16 = entropy_from_logits(torch.zeros(2, 3, 8, dtype=torch.bfloat16))
    assert h16.shape == (2, 3) and h16.dtype == torch.float32
    approx(h16, [[math.log(8)] * 3] * 2, rel=1e-6)


# ---------------------------------------------------------------- diagnostics

# valid entries (mask) of returns R = [1, 2, 3, 4]: mean 2.5, Σ(R - 2.5)² = 2.25 + 0.25 + 0.25 + 2.25 = 5,
# Var(R) = 5 / 3. Padding holds garbage (99, NaN, inf, -7) that must not count.
EV_MASK = torch.tensor([[1, 1, 0], [1, 1, 0]])
EV_RETURNS = t([[1.0, 2.0, 99.0], [3.0, 4.0, float("nan")]])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # R - V = [0, 0, 0, 2]: mean 0.5, Σ dev² = 3 · 0.25 + 2.25 = 3, Var = 1 -> 1 - 1 / (5/3) = 0.4
        ([[1.0, 2.0, float("inf")], [3.0, 2.0, -7.0]], 0.4),
        ([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]], 1.0),  # a perfect value function
        ([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 0.0),  # V = 0 (PPO's zero head): R - V = R, no variance explained
        ([[2.5, 2.5, 0.0], [2.5, 2.5, 0.0]], 0.0),  # the returns' mean: as good as a constant can be
        ([[-1.0, -2.0, 0.0], [-3.0, -4.0, 0.0]], -3.0),  # V = -R: Var(2R) / Var(R) = 4 -> 1 - 4
    ],
)
def test_explained_variance_literals(values, expected):
    got = explained_variance(t(values), EV_RETURNS, EV_MASK)
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_explained_variance_of_constant_returns_is_zero_not_nan():
    assert explained_variance(t([[0.3, 0.1]]), t([[2.0, 2.0]]), torch.ones(1, 2)).item() == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        explained_variance(t([[0.3, 0.1]]), t([[2.0]]), torch.ones(1, 2))


def test_logprob_mismatch_is_the_mean_absolute_gap_over_valid_tokens():
    # valid gaps |-1 - -1.1| = 0.1, |-2 - -2| = 0, |-0.5 - -0.3| = 0.2 -> mean 0.3 / 3 = 0.1 (padding: 5, NaN)
    logp = t([[-1.0, -2.0, 5.0], [-0.5, 0.0, 0.0]]).requires_grad_(True)
    old = t([[-1.1, -2.0, float("nan")], [-0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    got = logprob_mismatch(logp, old, mask)
    assert got.item() == pytest.approx(0.1, rel=1e-12) and not got.requires_grad
    assert logprob_mismatch(logp, logp, mask).item() == 0.0
    assert logprob_mismatch(logp, old, torch.zeros(2, 3)).item() == 0.0  # empty mask: 0, not NaN
