"""Preference and reward-model losses against hand-computed values.

Expected numbers are literals or math-module expressions of literals; ``sp(x) = -log σ(x) =
log(1 + e^{-x})`` is written out with math.log1p/math.exp, never via the code under test.
"""

import math

import pytest
import torch

from alignx.losses import (
    BUILTIN_PREFERENCE_LOSSES,
    DPO_LOSS_TYPES,
    PreferenceInputs,
    PreferenceLoss,
    bradley_terry_loss,
    completion_logits_mean,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    kwise_ranking_loss,
    log_odds,
    orpo_loss,
    preference_metrics,
    sequence_logps,
    simpo_loss,
)
from alignx.ops.logprobs import IGNORE_INDEX

LN2 = math.log(2)


def sp(x: float) -> float:
    """-log sigmoid(x) for the expected values."""
    return math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def approx(x: torch.Tensor, expected, rel: float = 1e-9, abs: float = 1e-12):
    got = x.tolist()
    assert got == pytest.approx(expected, rel=rel, abs=abs)


# ---------------------------------------------------------------- sequence_logps


def test_sequence_logps_hand_computed():
    # vocab 3, T = 4; the logits at position t predict labels[t + 1]
    logits = torch.zeros(2, 4, 3)
    logits[0, 1] = torch.tensor([math.log(2), 0.0, 0.0])  # p(0) = 2/4
    logits[0, 2:] = 9.0  # predicts an ignored label / nothing
    logits[1, 0] = torch.tensor([5.0, -3.0, 1.0])  # predicts an ignored label
    logits[1, 1] = torch.tensor([0.0, 0.0, math.log(2)])  # p(2) = 2/4
    logits[1, 2] = torch.tensor([0.0, math.log(1), math.log(6)])  # p(2) = 6/8
    logits[1, 3] = -7.0  # last position predicts nothing
    labels = torch.tensor([[IGNORE_INDEX, 1, 0, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 2, 2]])
    logits.requires_grad_(True)
    s, n = sequence_logps(logits, labels)
    approx(s, [math.log(1 / 3) + math.log(1 / 2), math.log(1 / 2) + math.log(3 / 4)], rel=1e-6)
    assert n.tolist() == [2, 2]
    s.sum().backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[0, 2:] == 0) and torch.all(logits.grad[1, 0] == 0)
    # mean logit over completion positions: ex 0 positions 0 (mean 0) and 1 (mean ln2/3)
    approx(completion_logits_mean(logits, labels)[:1], [math.log(2) / 6], rel=1e-6)


def test_sequence_logps_no_completion_tokens():
    logits = torch.randn(1, 3, 5)
    labels = torch.full((1, 3), IGNORE_INDEX)
    s, n = sequence_logps(logits, labels)
    assert s.tolist() == [0.0] and n.tolist() == [0]
    assert completion_logits_mean(logits, labels).tolist() == [0.0]


# ---------------------------------------------------------------- DPO family


@pytest.mark.parametrize(
    ("loss_type", "eps", "expected"),
    [("sigmoid", 0.0, LN2), ("cdpo", 0.1, LN2), ("robust", 0.1, LN2), ("hinge", 0.0, 1.0), ("ipo", 0.0, 25.0)],
)
def test_dpo_values_at_initialisation(loss_type, eps, expected):
    # policy == reference -> a = b = h = 0, whatever the log-probabilities are
    pc, pr = t(-3.0, -10.0, -0.5), t(-4.0, -2.0, -7.5)
    losses, rc, rr = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.1, loss_type=loss_type, label_smoothing=eps)
    approx(losses, [expected] * 3)
    approx(rc, [0.0] * 3)
    approx(rr, [0.0] * 3)


# a = 0.5, b = -0.5, so h = 1
PC, PR, RC, RR = t(-1.0), t(-2.5), t(-1.5), t(-2.0)


@pytest.mark.parametrize(
    ("loss_type", "eps", "expected"),
    [
        ("sigmoid", 0.0, math.log1p(math.exp(-0.1))),
        ("cdpo", 0.1, 0.9 * math.log1p(math.exp(-0.1)) + 0.1 * math.log1p(math.exp(0.1))),
        ("sigmoid", 0.1, 0.9 * math.log1p(math.exp(-0.1)) + 0.1 * math.log1p(math.exp(0.1))),
        ("robust", 0.1, (0.9 * math.log1p(math.exp(-0.1)) - 0.1 * math.log1p(math.exp(0.1))) / 0.8),
        ("hinge", 0.0, 0.9),
        ("ipo", 0.0, (1.0 - 5.0) ** 2),
    ],
)
def test_dpo_hand_cases(loss_type, eps, expected):
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type=loss_type, label_smoothing=eps)
    approx(losses, [expected])
    approx(rc, [0.05])
    approx(rr, [-0.05])


def test_dpo_literal_numbers():
    # the numbers quoted in the brief, as literals
    sigmoid, _, _ = dpo_loss(PC, PR, RC, RR, loss_type="sigmoid")
    cdpo, _, _ = dpo_loss(PC, PR, RC, RR, loss_type="cdpo", label_smoothing=0.1)
    robust, _, _ = dpo_loss(PC, PR, RC, RR, loss_type="robust", label_smoothing=0.1)
    assert sigmoid.item() == pytest.approx(0.644397, abs=1e-6)
    assert cdpo.item() == pytest.approx(0.654397, abs=1e-6)
    assert robust.item() == pytest.approx(0.631897, abs=1e-6)


def test_dpo_batch_and_hinge_clamp():
    # example 0: h = 2, beta 1 -> hinge 0 and sigmoid sp(2); example 1: h = -1 -> hinge 2, sigmoid sp(-1)
    pc, pr = t(0.0, -1.0), t(-2.0, 0.0)
    ref = t(0.0, 0.0)
    hinge, _, _ = dpo_loss(pc, pr, ref, ref, beta=1.0, loss_type="hinge")
    approx(hinge, [0.0, 2.0])
    sigmoid, rc, rr = dpo_loss(pc, pr, ref, ref, beta=1.0)
    approx(sigmoid, [sp(2.0), sp(-1.0)])
    approx(rc, [0.0, -1.0])
    approx(rr, [-2.0, 0.0])


def test_dpo_large_margin_is_finite():
    losses, _, _ = dpo_loss(t(0.0), t(-1e5), t(0.0), t(0.0), beta=0.1)
    assert losses.item() == 0.0
    losses, _, _ = dpo_loss(t(-1e5), t(0.0), t(0.0), t(0.0), beta=0.1)
    assert losses.item() == pytest.approx(1e4)


def test_ipo_uses_average_logps_as_given():
    # the caller passes avg logps; with h_avg = 0.5 and beta 0.5: (0.5 - 1)^2
    losses, _, _ = dpo_loss(t(-0.25), t(-0.75), t(-0.5), t(-0.5), beta=0.5, loss_type="ipo")
    approx(losses, [0.25])


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_gradients(loss_type):
    pc = t(-1.0).requires_grad_(True)
    pr = t(-2.5).requires_grad_(True)
    rc = t(-1.5).requires_grad_(True)
    rr = t(-2.0).requires_grad_(True)
    eps = 0.1 if loss_type in ("cdpo", "robust") else 0.0
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type, label_smoothing=eps)
    losses.sum().backward()
    assert pc.grad.item() < 0  # raising the chosen log-prob lowers the loss
    assert pr.grad.item() > 0
    assert rc.grad is None and rr.grad is None  # the reference is frozen
    assert not chosen_r.requires_grad and not rejected_r.requires_grad


def test_dpo_sigmoid_gradient_value():
    # d/d pi_w [-log sig(beta h)] = -beta * sig(-beta h); h = 1, beta = 0.1
    pc = t(-1.0).requires_grad_(True)
    losses, _, _ = dpo_loss(pc, PR, RC, RR, beta=0.1)
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.1 / (1.0 + math.exp(0.1)), rel=1e-9)


def test_dpo_errors():
    with pytest.raises(ValueError) as err:
        dpo_loss(PC, PR, RC, RR, loss_type="kto")
    for name in ("sigmoid", "cdpo", "robust", "hinge", "ipo"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="robust"):
        dpo_loss(PC, PR, RC, RR, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, loss_type="robust", label_smoothing=-0.1)
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, loss_type="cdpo", label_smoothing=0.6)
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, beta=0.0)


def test_dpo_end_to_end_from_logits_at_initialisation():
    torch.manual_seed(0)
    logits_c, logits_r = torch.randn(3, 6, 11), torch.randn(3, 6, 11)
    labels_c = torch.randint(0, 11, (3, 6))
    labels_r = torch.randint(0, 11, (3, 6))
    labels_c[:, :2] = IGNORE_INDEX
    labels_r[:, :3] = IGNORE_INDEX
    pc, _ = sequence_logps(logits_c, labels_c)
    pr, _ = sequence_logps(logits_r, labels_r)
    losses, _, _ = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1)
    approx(losses, [LN2] * 3, rel=1e-6)


# ---------------------------------------------------------------- the registered DPO family

SPECS = {spec.name: spec for spec in BUILTIN_PREFERENCE_LOSSES}


@pytest.mark.parametrize(
    ("name", "needs_reference", "length_normalised", "needs_nll", "options"),
    [
        ("sigmoid", True, False, False, ("beta", "label_smoothing")),
        ("cdpo", True, False, False, ("beta", "label_smoothing")),
        ("robust", True, False, False, ("beta", "label_smoothing")),
        ("hinge", True, False, False, ("beta", "label_smoothing")),
        ("ipo", True, True, False, ("beta", "label_smoothing")),
        ("simpo", False, True, False, ("beta", "simpo_gamma")),
        ("orpo", False, True, True, ("orpo_lambda",)),
    ],
)
def test_builtin_specs_declare_what_they_need(name, needs_reference, length_normalised, needs_nll, options):
    spec = SPECS[name]
    assert (spec.needs_reference, spec.length_normalised, spec.needs_nll, spec.options) == (
        needs_reference, length_normalised, needs_nll, options
    )


def test_the_builtin_family_is_the_old_list():
    assert sorted(SPECS) == sorted([*DPO_LOSS_TYPES, "simpo", "orpo"])


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        # a = 0.5, b = -0.5, h = 1 (the inputs of test_dpo_hand_cases)
        ("sigmoid", {"beta": 0.1, "label_smoothing": 0.0}, math.log1p(math.exp(-0.1))),
        ("cdpo", {"beta": 0.1, "label_smoothing": 0.1}, 0.9 * math.log1p(math.exp(-0.1)) + 0.1 * math.log1p(math.exp(0.1))),
        ("robust", {"beta": 0.1, "label_smoothing": 0.1},
         (0.9 * math.log1p(math.exp(-0.1)) - 0.1 * math.log1p(math.exp(0.1))) / 0.8),
        ("hinge", {"beta": 0.1, "label_smoothing": 0.0}, 0.9),
        ("ipo", {"beta": 0.1, "label_smoothing": 0.0}, 16.0),
    ],
)
def test_reference_specs_by_hand(name, options, expected):
    losses, rc, rr = SPECS[name](PreferenceInputs(PC, PR, RC, RR), {**options, "unrelated": 1})
    approx(losses, [expected])
    approx(rc, [0.05])
    approx(rr, [-0.05])


def test_simpo_spec_by_hand():
    # 2.5 * (-0.2 - -1.2) - 0.5 = 2
    losses, rc, rr = SPECS["simpo"](PreferenceInputs(t(-0.2), t(-1.2)), {"beta": 2.5, "simpo_gamma": 0.5})
    approx(losses, [sp(2.0)])
    approx(rc, [-0.5])
    approx(rr, [-3.0])


def test_orpo_spec_by_hand():
    # log odds(0.8) - log odds(0.25) = ln 12; the NLL term is whatever the objective passes
    x = PreferenceInputs(t(math.log(0.8)), t(math.log(0.25)), chosen_nll=t(0.3))
    losses, rc, rr = SPECS["orpo"](x, {"orpo_lambda": 0.1})
    approx(losses, [0.3 + 0.1 * math.log1p(1 / 12)])
    approx(rc, [math.log(0.8)])  # ORPO's "rewards" are the averaged log-probs
    approx(rr, [math.log(0.25)])
    assert not rc.requires_grad


def test_spec_checks_its_inputs_and_output():
    with pytest.raises(ValueError, match="'sigmoid' needs reference log-probabilities"):
        SPECS["sigmoid"](PreferenceInputs(PC, PR), {"beta": 0.1, "label_smoothing": 0.0})
    with pytest.raises(ValueError, match="'orpo' needs the chosen completions' NLL"):
        SPECS["orpo"](PreferenceInputs(PC, PR), {"orpo_lambda": 0.1})
    with pytest.raises(ValueError, match="'simpo' is missing option\\(s\\): simpo_gamma"):
        SPECS["simpo"](PreferenceInputs(PC, PR), {"beta": 2.0})

    def scalar(x, *, beta):
        return (x.chosen - x.rejected).mean(), x.chosen, x.rejected

    with pytest.raises(TypeError, match=r"'scalar' must return \(losses, chosen_rewards, rejected_rewards\), each of shape \(1,\)"):
        PreferenceLoss("scalar", scalar, needs_reference=False)(PreferenceInputs(PC, PR), {"beta": 1.0})


def test_spec_options_are_the_functions_keyword_only_parameters():
    def fine(x, *, beta, eta):
        return x.chosen, x.chosen, x.chosen

    assert PreferenceLoss("fine", fine).options == ("beta", "eta")

    def with_default(x, *, beta, eta=0.5):
        return x.chosen, x.chosen, x.chosen

    with pytest.raises(ValueError, match="option\\(s\\) eta have a default in the function"):
        PreferenceLoss("d", with_default)

    def two_positional(x, beta):
        return x.chosen, x.chosen, x.chosen

    def var_keyword(x, **options):
        return x.chosen, x.chosen, x.chosen

    for fn in (two_positional, var_keyword):
        with pytest.raises(ValueError, match="exactly one positional argument"):
            PreferenceLoss("bad", fn)
    with pytest.raises(ValueError, match="non-empty name"):
        PreferenceLoss("", fine)


def test_example_inputs_dry_run_every_builtin():
    # the values of conf/objective/dpo.yaml (label smoothing 0.1 for the two losses that use it)
    yaml = {"beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 1.0, "orpo_lambda": 0.1}
    for spec in BUILTIN_PREFERENCE_LOSSES:
        x = spec.example_inputs()
        assert (x.ref_chosen is not None) == spec.needs_reference
        assert (x.chosen_nll is not None) == spec.needs_nll
        losses, _, _ = spec(x, yaml)
        assert losses.shape == (1,) and torch.isfinite(losses).all(), spec.name


# ---------------------------------------------------------------- SimPO


def test_simpo():
    # beta (avg_w - avg_l) - gamma = 2 * 0.5 - 1 = 0 -> ln 2
    losses, rc, rr = simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=1.0)
    approx(losses, [LN2])
    approx(rc, [-1.0])
    approx(rr, [-2.0])
    # 2.5 * 1.0 - 0.5 = 2
    losses, rc, rr = simpo_loss(t(-0.2, -1.2), t(-1.2, -0.2), beta=2.5, gamma=0.5)
    approx(losses, [sp(2.0), sp(-3.0)])
    approx(rc, [-0.5, -3.0])
    approx(rr, [-3.0, -0.5])


def test_simpo_gradient():
    w = t(-0.5).requires_grad_(True)
    losses, rc, _ = simpo_loss(w, t(-1.0))
    losses.sum().backward()
    # d/dw = -beta * sig(-(beta h - gamma)) = -2 * sig(0) = -1
    assert w.grad.item() == pytest.approx(-1.0)
    assert not rc.requires_grad


# ---------------------------------------------------------------- ORPO


def test_log_odds():
    approx(log_odds(t(math.log(0.5))), [0.0], abs=1e-12)
    approx(log_odds(t(math.log(0.25), math.log(0.8))), [-math.log(3), math.log(4)])
    # stable at the extremes: p -> -inf gives log odds ~ p; p = 0 is clamped, finite
    approx(log_odds(t(-50.0)), [-50.0])
    assert torch.isfinite(log_odds(t(0.0))).all()
    assert torch.isfinite(log_odds(torch.tensor([0.0, -1e-9, -1e-3, -100.0]))).all()


def test_orpo():
    # log odds(0.8) - log odds(0.25) = ln 4 + ln 3 = ln 12
    losses, ratio = orpo_loss(t(math.log(0.8)), t(math.log(0.25)), t(-math.log(0.8)), lam=0.1)
    approx(ratio, [math.log(12)])
    approx(losses, [-math.log(0.8) + 0.1 * math.log1p(1 / 12)])
    # equal odds: ratio 0 -> NLL + lam ln 2
    losses, ratio = orpo_loss(t(math.log(0.5)), t(math.log(0.5)), t(0.7), lam=0.2)
    approx(ratio, [0.0], abs=1e-12)
    approx(losses, [0.7 + 0.2 * LN2])
    assert not ratio.requires_grad


def test_orpo_gradient_finite_near_zero():
    p = torch.tensor([-1e-9, -0.3], requires_grad=True)
    losses, _ = orpo_loss(p, torch.tensor([-2.0, -2.0]), -p)
    losses.sum().backward()
    assert torch.isfinite(p.grad).all()


# ---------------------------------------------------------------- KTO


def test_kto_at_initialisation():
    lp = t(-3.0, -5.0, -1.0, -2.0)
    desirable = torch.tensor([True, False, True, False])
    losses = kto_loss(lp, lp.clone(), desirable, torch.tensor(0.0, dtype=torch.float64), beta=0.1)
    approx(losses, [0.5] * 4)


def test_kto_with_reference_point():
    # z0 = 0.5; desirable r = 1.5 -> 1 - sig(0.1 * 1.0); undesirable r = -2.5 -> 1 - sig(0.1 * 3.0)
    policy = t(-1.0, -4.0)
    ref = t(-2.5, -1.5)
    desirable = torch.tensor([True, False])
    z0 = torch.tensor(0.5, dtype=torch.float64)
    losses = kto_loss(policy, ref, desirable, z0, beta=0.1)
    approx(losses, [1 - sig(0.1), 1 - sig(0.3)])
    approx(losses, [1 / (1 + math.exp(0.1)), 1 / (1 + math.exp(0.3))])
    weighted = kto_loss(policy, ref, desirable, z0, beta=0.1, desirable_weight=2.0, undesirable_weight=1.33)
    approx(weighted, [2.0 / (1 + math.exp(0.1)), 1.33 / (1 + math.exp(0.3))])


def test_kto_gradients():
    policy = t(-1.0, -4.0).requires_grad_(True)
    ref = t(-2.5, -1.5).requires_grad_(True)
    z0 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    losses = kto_loss(policy, ref, torch.tensor([True, False]), z0, beta=0.1)
    losses.sum().backward()
    assert policy.grad[0].item() < 0  # raise the likelihood of desirable outputs
    assert policy.grad[1].item() > 0  # lower it for undesirable ones
    # d/dr [1 - sig(beta (r - z0))] = -beta sig(x)(1 - sig(x)), x = 0.1
    assert policy.grad[0].item() == pytest.approx(-0.1 * sig(0.1) * (1 - sig(0.1)))
    assert ref.grad is None and z0.grad is None


def test_kto_reference_point():
    # r = [1, 2, -0.5] -> mean 2.5 / 3
    z0 = kto_reference_point(t(-1.0, -2.0, -3.0).requires_grad_(True), t(-2.0, -4.0, -2.5))
    assert z0.dim() == 0
    assert z0.item() == pytest.approx(2.5 / 3)
    assert not z0.requires_grad
    # negative mean KL is clamped to 0
    assert kto_reference_point(t(-3.0, -4.0), t(-1.0, -1.0)).item() == 0.0
    assert kto_reference_point(t(), t()).item() == 0.0


# ---------------------------------------------------------------- metrics


def test_preference_metrics():
    chosen = t(0.3, -0.1, 0.2, 0.0)
    rejected = t(0.1, 0.2, -0.4, 0.0)  # accuracies: yes, no, yes, tie (not counted) -> 0.5
    m = preference_metrics(
        chosen,
        rejected,
        t(-10.0, -20.0, -30.0, -40.0).requires_grad_(True),
        t(-1.0, -2.0, -3.0, -6.0),
        t(0.5, 1.5, 0.0, 0.0),
        t(-1.0, 1.0, 2.0, 2.0),
    )
    assert set(m) == {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
    }
    expected = {
        "rewards/chosen": 0.1,
        "rewards/rejected": -0.025,
        "rewards/accuracies": 0.5,
        "rewards/margins": 0.125,
        "logps/chosen": -25.0,
        "logps/rejected": -3.0,
        "logits/chosen": 0.5,
        "logits/rejected": 1.0,
    }
    for key, value in expected.items():
        assert m[key].dim() == 0 and not m[key].requires_grad and m[key].is_floating_point()
        assert m[key].item() == pytest.approx(value, abs=1e-6), key


def test_metrics_from_dpo_rewards():
    _, rc, rr = dpo_loss(t(-1.0, -3.0), t(-2.5, -1.0), t(-1.5, -2.0), t(-2.0, -2.0), beta=0.1)
    # a = [0.5, -1.0], b = [-0.5, 1.0]
    approx(rc, [0.05, -0.1])
    approx(rr, [-0.05, 0.1])
    m = preference_metrics(rc, rr, t(-1.0, -3.0), t(-2.5, -1.0), t(0.0, 0.0), t(0.0, 0.0))
    assert m["rewards/accuracies"].item() == 0.5
    assert m["rewards/margins"].item() == pytest.approx((0.1 - 0.2) / 2)


# ---------------------------------------------------------------- reward model


def test_bradley_terry_plain():
    loss, m = bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.5))
    assert loss.item() == pytest.approx((sp(1.0) + sp(-0.5)) / 2)
    assert m["accuracy"].item() == 0.5
    assert m["margin"].item() == pytest.approx(0.25)
    assert m["reward_mean"].item() == pytest.approx(1.5 / 4)
    assert m["reward_min"].item() == 0.0 and m["reward_max"].item() == 1.0


def test_bradley_terry_margin_and_centring():
    loss, m = bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.5), margin=0.5)
    assert loss.item() == pytest.approx((sp(0.5) + sp(-1.0)) / 2)
    loss, _ = bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.5), margin=t(1.0, 0.0))
    assert loss.item() == pytest.approx((LN2 + sp(-0.5)) / 2)
    loss, m = bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.5), margin=0.5, center_coef=0.01)
    assert loss.item() == pytest.approx((sp(0.5) + sp(-1.0)) / 2 + 0.01 * (1.0 + 0.25) / 2)
    assert m["margin"].item() == pytest.approx(0.25)  # the metric ignores the margin m


def test_bradley_terry_gradient_and_shape_check():
    w = t(1.0, 0.0).requires_grad_(True)
    loss, m = bradley_terry_loss(w, t(0.0, 0.5))
    loss.backward()
    assert (w.grad < 0).all()
    assert not any(v.requires_grad for v in m.values())
    with pytest.raises(ValueError):
        bradley_terry_loss(t(1.0, 0.0), t(0.0))


def test_kwise_k3():
    # best -> worst: 2.0 > 1.0 > 0.0; pairs with differences 1, 2, 1
    expected = (2 * sp(1.0) + sp(2.0)) / 3
    assert kwise_ranking_loss(t(2.0, 1.0, 0.0), torch.tensor([0, 1, 2])).item() == pytest.approx(expected)
    # same responses listed in another order
    assert kwise_ranking_loss(t(0.0, 2.0, 1.0), torch.tensor([2, 0, 1])).item() == pytest.approx(expected)


def test_kwise_k4():
    # order best -> worst: idx2 (1.5), idx0 (0.5), idx3 (0.0), idx1 (-1.0)
    # pair differences: 1.0, 1.5, 2.5, 0.5, 1.5, 1.0
    loss = kwise_ranking_loss(t(0.5, -1.0, 1.5, 0.0), torch.tensor([1, 3, 0, 2]))
    expected = (2 * sp(1.0) + 2 * sp(1.5) + sp(2.5) + sp(0.5)) / 6
    assert loss.item() == pytest.approx(expected)


def test_kwise_misranked_and_ties():
    assert kwise_ranking_loss(t(0.0, 1.0), torch.tensor([0, 1])).item() == pytest.approx(math.log1p(math.e))
    # ranks [0, 0, 1]: the tied pair is skipped -> pairs (0, 2): -2 and (1, 2): -3
    loss = kwise_ranking_loss(t(1.0, 0.0, 3.0), torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx((sp(-2.0) + sp(-3.0)) / 2)


def test_kwise_gradient():
    r = t(2.0, 1.0, 0.0).requires_grad_(True)
    kwise_ranking_loss(r, torch.tensor([0, 1, 2])).backward()
    assert r.grad[0].item() < 0 and r.grad[2].item() > 0
    assert r.grad.sum().item() == pytest.approx(0.0, abs=1e-12)


def test_kwise_errors():
    with pytest.raises(ValueError, match="K >= 2"):
        kwise_ranking_loss(t(1.0), torch.tensor([0]))
    with pytest.raises(ValueError):
        kwise_ranking_loss(t(), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="tied"):
        kwise_ranking_loss(t(1.0, 2.0), torch.tensor([0, 0]))
    with pytest.raises(ValueError):
        kwise_ranking_loss(t(1.0, 2.0, 3.0), torch.tensor([0, 1]))
