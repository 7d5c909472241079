"""PPO's start-up bias and its fix: ``objective.score_norm`` (docs/online_rl.md, "Why PPO centres its scores").

A value head that starts at 0 in front of a score whose batch mean is far from 0, with GAE λ < 1
and whitened advantages, gives the first tokens of *every* completion a negative advantage and
its last tokens a positive one, whatever the completion's score. Centring the scores over the
batch (``score_norm=center``, the default) removes that: the first token's advantage then has the
sign of ``s - mean(s)``. Hand-computed values throughout; the measured effect on training is in
benchmarks/results/ppo-beta-cpu.md.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fast

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.ops.rl import gae, masked_whiten, normalize_scores, per_token_rewards
from alignx.train import train


def test_normalize_scores_hand_values():
    s = torch.tensor([0.2, 0.6, 1.0])
    assert torch.equal(normalize_scores(s, "none"), s)
    assert torch.allclose(normalize_scores(s, "center"), torch.tensor([-0.4, 0.0, 0.4]), atol=1e-7)
    # Bessel-corrected variance (0.16 + 0 + 0.16) / 2 = 0.16 -> std 0.4
    assert torch.allclose(normalize_scores(s, "whiten"), torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)
    # a batch of one, or one with no spread: 0, never NaN
    assert torch.equal(normalize_scores(torch.tensor([0.7]), "whiten"), torch.tensor([0.0]))
    assert torch.equal(normalize_scores(torch.tensor([0.5, 0.5]), "whiten"), torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="unknown score normalisation 'mad'; valid: none, center, whiten"):
        normalize_scores(s, "mad")
    with pytest.raises(ValueError, match=r"scores must be \[B\]"):
        normalize_scores(torch.zeros(2, 3), "center")


def _first_token_advantages(scores: torch.Tensor, norm: str, length: int = 16, lam: float = 0.95) -> torch.Tensor:
    """Whitened GAE advantages of the first token, V = 0 everywhere (a fresh value head), no KL yet."""
    mask = torch.ones(len(scores), length, dtype=torch.bool)
    rewards, _ = per_token_rewards(normalize_scores(scores, norm), torch.zeros(len(scores), length), mask, 0.05)
    adv, _ = gae(rewards, torch.zeros(len(scores), length), mask, 1.0, lam)
    return masked_whiten(adv, mask)[:, 0]


def test_raw_scores_give_every_first_token_a_negative_advantage():
    """Gold scores in [0, 1] (batch mean 0.6, as the quickstart SFT model's): with raw scores the first
    token of an above-average completion (0.7) is pushed down too (-0.41); with centred scores only
    the below-average ones are."""
    scores = torch.tensor([0.2, 0.5, 0.7, 1.0])
    raw = _first_token_advantages(scores, "none")
    assert torch.allclose(raw, torch.tensor([-1.4014, -0.8062, -0.4094, 0.1858]), atol=1e-3)
    assert bool((raw[:3] < 0).all())  # 0.7 > mean included
    centred = _first_token_advantages(scores, "center")
    assert torch.equal(centred > 0, scores > scores.mean())
    # the bias is by position: λ^15 = 0.46 of the score reaches the first token, all of it the last,
    # so with raw scores the batch-mean advantage is negative at the start and positive at the end
    # (ending early is rewarded as such); centred, it is 0 at every position
    def by_position(norm):
        mask = torch.ones(4, 16, dtype=torch.bool)
        rewards, _ = per_token_rewards(normalize_scores(scores, norm), torch.zeros(4, 16), mask, 0.05)
        adv, _ = gae(rewards, torch.zeros(4, 16), mask, 1.0, 0.95)
        return masked_whiten(adv, mask).mean(0)

    raw_pos = by_position("none")
    assert raw_pos[0] < -0.5 and raw_pos[-1] > 0.5
    assert torch.allclose(by_position("center"), torch.zeros(16), atol=1e-6)


def test_score_norm_is_validated_and_defaults_to_center(tmp_path):
    cfg = compose(fast("objective=ppo"))
    assert cfg.objective.score_norm == "center"
    with pytest.raises(ConfigError, match=r"objective.score_norm='mad' is not valid. Valid: none, center, whiten$"):
        train(compose(fast("objective=ppo", "objective.score_norm=mad", "data.batch_size=4", "trainer.max_steps=1",
                           f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}")))
    assert not (tmp_path / "job").exists()
