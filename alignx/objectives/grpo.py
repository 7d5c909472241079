"""Critic-free online RL: GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024).

Both sample ``group_size`` completions per prompt and use the group as the baseline instead of a
value model:

* GRPO: advantage ``(r - mean_group) / (std_group + 1e-4)`` (``scale_rewards=none`` drops the
  division, as Dr. GRPO), the clipped ratio objective per token, plus ``beta`` · k3 KL to the
  reference in the loss; ``loss_normalization`` grpo | bnpo | dr_grpo reduces tokens to a scalar.
* RLOO: the KL penalty is part of the reward (``r - beta · KL_k1(sequence)``) and the advantage of
  sample i is its reward minus the mean of the other G-1 rewards of its prompt. By default
  (``loss_normalization=sequence``) the loss is the paper's sequence-level REINFORCE: the ratio of
  a completion is taken on the sum of its token log-probs, clipped as PPO, and averaged over
  completions. ``loss_normalization=grpo|bnpo|dr_grpo`` is GRPO's token-level loss instead
  (``grpo``: per-token ratios, token mean per completion, so each completion's gradient is
  ``1/|y_i|`` of the paper's).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from alignx.errors import ConfigError
from alignx.losses.policy_gradient import (
    GROUP_SCALES,
    GRPO_NORMALIZATIONS,
    RLOO_NORMALIZATIONS,
    clipped_surrogate,
    group_advantages,
    grpo_token_loss,
    rloo_advantages,
    sequence_clipped_loss,
)
from alignx.objectives.online import (
    ONLINE_KEYS,
    Experience,
    OnlineObjective,
    masked_seq_mean,
)
from alignx.ops.logprobs import masked_mean
from alignx.ops.rl import kl_estimate, zero_masked


class GRPO(OnlineObjective):
    """Group relative policy optimisation: group-normalised rewards, no value model."""

    name: ClassVar[str] = "grpo"
    config_keys: ClassVar[frozenset[str]] = ONLINE_KEYS | {"loss_normalization", "scale_rewards"}
    progress_keys = ("reward", "objective/kl")
    #: accepted values of ``objective.loss_normalization``
    normalizations: ClassVar[tuple[str, ...]] = GRPO_NORMALIZATIONS

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.normalization = str(self.opt("loss_normalization"))
        # RLOO's leave-one-out baseline is never scaled: it has no scale_rewards key
        self.scale = str(self.opt("scale_rewards")) if "scale_rewards" in self.config_keys else "none"

    @classmethod
    def check_values(cls, cfg: Mapping[str, Any]) -> None:
        super().check_values(cfg)
        g = int(cls.option(cfg, "group_size"))
        if g < 2:
            raise ConfigError(f"objective.group_size must be >= 2 for objective={cls.name} (the group is the baseline), got {g}")
        norm = str(cls.option(cfg, "loss_normalization"))
        if norm not in cls.normalizations:
            raise ConfigError(
                f"objective.loss_normalization='{norm}' is not valid for objective={cls.name}. Valid: {', '.join(cls.normalizations)}"
            )
        if "scale_rewards" in cls.config_keys:
            scale = str(cls.option(cfg, "scale_rewards"))
            if scale not in GROUP_SCALES:
                raise ConfigError(f"objective.scale_rewards='{scale}' is not valid. Valid: {', '.join(GROUP_SCALES)}")

    def group_baseline(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages [N], per-group reward std [N / G])."""
        return group_advantages(exp.scores, self.group_size, self.scale)

    def kl_in_loss(self) -> bool:
        return self.beta > 0

    def compute_advantages(self, exp: Experience) -> dict[str, float]:
        with torch.no_grad():
            advantages, _ = self.group_baseline(exp)
            _, std = group_advantages(exp.scores, self.group_size, "none")
            exp.data["advantages"] = advantages
            metrics = {
                "reward": float(exp.scores.mean()),
                "reward_std": float(std.mean()),
                "frac_reward_zero_std": float((std == 0).float().mean()),
                "entropy": float(masked_seq_mean(exp.entropy, exp.mask)),
                # the same quantity for every online objective: KL per completion (k1), and the mean score
                "objective/kl": float(self.sequence_kl(exp, "k1").mean()),
                "objective/scores": float(exp.scores.mean()),
            }
            if exp.ref_logps is not None:
                metrics["kl"] = float(masked_seq_mean(kl_estimate(exp.old_logps, exp.ref_logps, self.kl_estimator), exp.mask))
            return metrics

    def minibatch_loss(self, exp: Experience, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sub = exp.rollout.select(idx)
        mask = sub.response_mask
        logp = self.policy_logps(exp, idx, sub)
        per_token, clipped = clipped_surrogate(zero_masked(logp, mask), exp.old_logps[idx], exp.data["advantages"][idx], self.clip_range)
        stats = {"policy/clipfrac_avg": masked_mean(clipped.float(), mask)}
        if self.kl_in_loss() and exp.ref_logps is not None:
            per_token = per_token + self.beta * kl_estimate(logp, exp.ref_logps[idx], self.kl_estimator)
        loss = grpo_token_loss(per_token, mask, self.normalization, max_len=self.max_new_tokens)
        stats["loss/policy_avg"] = loss.detach()
        return loss, stats

    def iteration_metrics(self, exp: Experience, stats: dict[str, float]) -> dict[str, float]:
        return dict(stats)


class RLOO(GRPO):
    """REINFORCE leave-one-out: KL-penalised sequence rewards, baseline = mean of the other samples."""

    name: ClassVar[str] = "rloo"
    config_keys: ClassVar[frozenset[str]] = ONLINE_KEYS | {"loss_normalization"}
    normalizations = RLOO_NORMALIZATIONS

    def kl_in_loss(self) -> bool:
        return False  # the penalty is already in the reward

    def group_baseline(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        rlhf_reward = exp.scores - self.beta * self.sequence_kl(exp, self.kl_estimator)
        exp.data["rlhf_reward"] = rlhf_reward
        _, std = group_advantages(rlhf_reward, self.group_size, "none")
        return rloo_advantages(rlhf_reward, self.group_size), std

    def minibatch_loss(self, exp: Experience, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.normalization != "sequence":
            return super().minibatch_loss(exp, idx)  # GRPO's token-level loss (no KL term: kl_in_loss)
        sub = exp.rollout.select(idx)
        logp = self.policy_logps(exp, idx, sub)
        loss, stats = sequence_clipped_loss(logp, exp.old_logps[idx], exp.data["advantages"][idx], sub.response_mask,
                                            self.clip_range)
        return loss, {"policy/clipfrac_avg": stats["clipfrac"], "loss/policy_avg": loss.detach()}

    def compute_advantages(self, exp: Experience) -> dict[str, float]:
        metrics = super().compute_advantages(exp)
        metrics["kl"] = float(self.sequence_kl(exp, self.kl_estimator).mean())
        metrics["objective/rlhf_reward"] = float(exp.data["rlhf_reward"].mean())
        return metrics
