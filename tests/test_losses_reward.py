"""Reward-model losses on hand-computed values: grouped ranking (pairs + K-wise in one batch)."""

import pytest
import torch

from alignx.losses.reward import bradley_terry_loss, grouped_ranking_loss, kwise_ranking_loss, ranking_pairs

# -log σ(x) = log(1 + e^-x):  x=1 -> 0.3132617, 1.5 -> 0.2014133, -1.5 -> 1.7014133, -3 -> 3.0485874, 0.5 -> 0.4740770
REWARDS = torch.tensor([1.0, 0.0, 2.0, 0.5, -1.0])
# group 0: a pair (chosen first); group 1: K=3 responses ranked [2, 0, 1] (lower is better)
RANKS = [[0, 1], [2, 0, 1]]


def _batch():
    better, worse, group = (torch.tensor(x) for x in ranking_pairs(RANKS))
    return better, worse, group


def test_ranking_pairs_enumerates_every_comparison_with_flat_indices():
    better, worse, group = ranking_pairs(RANKS)
    pairs = sorted(zip(better, worse, group))
    # group 1 sits at flat positions 2, 3, 4: 3 (rank 0) > 4 (rank 1) > 2 (rank 2)
    assert pairs == [(0, 1, 0), (3, 2, 1), (3, 4, 1), (4, 2, 1)]
    assert ranking_pairs([[1, 1, 0]]) == ([2, 2], [0, 1], [0, 0])  # ties give no pair


def test_grouped_ranking_loss_hand_computed():
    # group 0: 0.3132617; group 1: mean(0.2014133, 1.7014133, 3.0485874) = 1.6504713; mean 0.9818665
    loss, m = grouped_ranking_loss(REWARDS, *_batch())
    assert loss.item() == pytest.approx(0.9818665, abs=1e-6)
    assert m["accuracy"].item() == pytest.approx(0.5)  # diffs 1, 1.5, -1.5, -3
    assert m["margin"].item() == pytest.approx(-0.5)
    assert (m["reward_mean"].item(), m["reward_min"].item(), m["reward_max"].item()) == pytest.approx((0.5, -1.0, 2.0))


def test_grouped_ranking_loss_centring_and_margin_hand_computed():
    better, worse, group = _batch()
    # centring: sums 1, -0.5, 2.5, 1 -> mean of squares 2.125 -> + 0.01 * 2.125
    loss, _ = grouped_ranking_loss(REWARDS, better, worse, group, center_coef=0.01)
    assert loss.item() == pytest.approx(1.0031165, abs=1e-6)
    # a margin of 0.5 on the pair of group 0: (0.4740770 + 1.6504713) / 2
    margin = torch.tensor([0.5 if g == 0 else 0.0 for g in group.tolist()])
    loss, _ = grouped_ranking_loss(REWARDS, better, worse, group, margin=margin)
    assert loss.item() == pytest.approx(1.0622741, abs=1e-6)


def test_grouped_ranking_loss_reduces_to_bradley_terry_and_kwise():
    r_w, r_l = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.1, 0.5, 2.5])
    rewards = torch.stack([r_w, r_l], 1).reshape(-1)  # [w0, l0, w1, l1, ...]
    b, w, g = (torch.tensor(x) for x in ranking_pairs([[0, 1]] * 3))
    assert grouped_ranking_loss(rewards, b, w, g)[0].item() == pytest.approx(bradley_terry_loss(r_w, r_l)[0].item())
    ranks = [3, 0, 2, 1]
    b, w, g = (torch.tensor(x) for x in ranking_pairs([ranks]))
    rewards = torch.tensor([0.2, 1.0, -0.3, 0.7])
    assert grouped_ranking_loss(rewards, b, w, g)[0].item() == pytest.approx(
        kwise_ranking_loss(rewards, torch.tensor(ranks, dtype=torch.float)).item()
    )


def test_grouped_ranking_loss_gradient_pushes_better_up():
    rewards = torch.zeros(2, requires_grad=True)
    loss, _ = grouped_ranking_loss(rewards, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    loss.backward()
    assert rewards.grad.tolist() == pytest.approx([-0.5, 0.5])  # d/dr_w -log σ(r_w - r_l) = -σ(0)


def test_grouped_ranking_loss_without_comparisons_is_an_error():
    with pytest.raises(ValueError, match="tied"):
        grouped_ranking_loss(torch.zeros(2), torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
                             torch.tensor([], dtype=torch.long))
