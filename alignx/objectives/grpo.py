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

The 2025-26 GRPO family are options of :class:`GRPO` (formulas: ``docs/online_rl.md``, "The GRPO
family"); ``objective=dapo`` and ``objective=gspo`` are GRPO with preset options (classes that only
rename it, so messages and the registry name the preset), ``objective=reinforce_pp`` changes the
advantage:

* ``clip_range_high`` (DAPO clip-higher): the ratio is clipped to ``[1 - clip_range, 1 + clip_range_high]``;
* ``loss_normalization=bnpo``: DAPO's token-level loss (every token of the batch weighs the same);
* ``dynamic_sampling_rounds`` (DAPO dynamic sampling): groups whose rewards all equal are dropped
  and up to that many extra rounds of prompts are sampled to refill the batch;
* ``overlong_buffer_len`` / ``overlong_penalty_factor`` (DAPO overlong shaping): a penalty growing
  linearly over the last ``overlong_buffer_len`` tokens before ``max_new_tokens``;
* ``importance_sampling_level=sequence`` (GSPO): one ratio per completion, the exponential of its
  mean token log-ratio, clipped per completion;
* ``scale_rewards=batch``: group-centred rewards divided by the std of the whole batch;
* ``step_rewards`` (process supervision, Shao et al. 2024 section 4.1.3): the reward's
  step rewards (:mod:`alignx.rewards.steps`) normalised over the group, a token's advantage the sum
  of the normalised rewards of the steps ending at or after it (:func:`process_advantages`); DAPO
  and GSPO inherit the option, RLOO and REINFORCE++ do not have it;
* :class:`ReinforcePP` (REINFORCE++): per-token KL penalty in the reward, returns whitened over the batch.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from alignx.errors import ConfigError
from alignx.generation import Rollout
from alignx.losses.policy_gradient import (
    GROUP_SCALES,
    GRPO_NORMALIZATIONS,
    IMPORTANCE_LEVELS,
    RLOO_NORMALIZATIONS,
    group_advantages,
    grpo_token_loss,
    process_advantages,
    ratio_surrogate,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_clipped_loss,
)
from alignx.objectives.online import (
    ONLINE_KEYS,
    STEP_REWARDS_KEY,
    Experience,
    OnlineObjective,
    masked_seq_mean,
)
from alignx.ops.logprobs import masked_mean
from alignx.ops.rl import kl_estimate, overlong_penalty, sequence_log_ratio, zero_masked

#: the options of GRPO's family (DAPO, GSPO) beyond RLOO's keys
FAMILY_KEYS = frozenset({
    "clip_range_high", "importance_sampling_level", "dynamic_sampling_rounds", "overlong_buffer_len",
    "overlong_penalty_factor",
})


class GRPO(OnlineObjective):
    """Group relative policy optimisation: group-normalised rewards, no value model."""

    name: ClassVar[str] = "grpo"
    config_keys: ClassVar[frozenset[str]] = ONLINE_KEYS | FAMILY_KEYS | {"loss_normalization", "scale_rewards", STEP_REWARDS_KEY}
    progress_keys = ("reward", "objective/kl")
    #: accepted values of ``objective.loss_normalization``
    normalizations: ClassVar[tuple[str, ...]] = GRPO_NORMALIZATIONS

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.normalization = str(self.opt("loss_normalization"))
        # RLOO's leave-one-out baseline is never scaled: it has no scale_rewards key
        self.scale = str(self.opt("scale_rewards")) if "scale_rewards" in self.config_keys else "none"
        family = FAMILY_KEYS <= self.config_keys  # RLOO has none of these options
        high = self.opt("clip_range_high") if family else None
        self.clip_range_high = None if high is None else float(high)
        self.importance_level = str(self.opt("importance_sampling_level")) if family else "token"
        self.refill_rounds = int(self.opt("dynamic_sampling_rounds")) if family else 0
        self.overlong_buffer = int(self.opt("overlong_buffer_len")) if family else 0
        self.overlong_factor = float(self.opt("overlong_penalty_factor")) if family else 0.0

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
        if FAMILY_KEYS <= cls.config_keys:
            cls.check_family_values(cfg)
        if STEP_REWARDS_KEY in cls.config_keys and bool(cls.option(cfg, STEP_REWARDS_KEY)):
            if int(cls.option(cfg, "overlong_buffer_len")) > 0:
                raise ConfigError(
                    "objective.overlong_buffer_len > 0 shapes the outcome score, which objective.step_rewards=true does "
                    "not learn from: set one of them off (overlong_buffer_len=0 or step_rewards=false)"
                )

    @classmethod
    def check_family_values(cls, cfg: Mapping[str, Any]) -> None:
        """ConfigError naming the key for a bad DAPO/GSPO option."""
        high = cls.option(cfg, "clip_range_high")
        if high is not None and float(high) < 0:
            raise ConfigError(f"objective.clip_range_high must be >= 0 or null (= clip_range), got {high}")
        level = str(cls.option(cfg, "importance_sampling_level"))
        if level not in IMPORTANCE_LEVELS:
            raise ConfigError(
                f"objective.importance_sampling_level='{level}' is not valid. Valid: {', '.join(IMPORTANCE_LEVELS)}"
            )
        if int(cls.option(cfg, "dynamic_sampling_rounds")) < 0:
            raise ConfigError(
                f"objective.dynamic_sampling_rounds must be >= 0 (0 = off), got {cls.option(cfg, 'dynamic_sampling_rounds')}"
            )
        buffer, limit = int(cls.option(cfg, "overlong_buffer_len")), int(cls.option(cfg, "max_new_tokens"))
        if not 0 <= buffer <= limit:
            raise ConfigError(
                f"objective.overlong_buffer_len must be in [0, objective.max_new_tokens={limit}] (0 = off), got {buffer}"
            )

    def shape_scores(self, scores: torch.Tensor, rollout: Rollout) -> torch.Tensor:
        """The reward plus DAPO's overlong penalty (``overlong_buffer_len`` 0: the reward unchanged)."""
        if self.overlong_buffer == 0:
            return scores
        lengths = rollout.response_mask.sum(-1)
        penalty = overlong_penalty(lengths, self.max_new_tokens, self.overlong_buffer, self.overlong_factor)
        return scores + penalty.to(scores.device, scores.dtype)

    def group_baseline(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages [N], per-group reward std [N / G]); with ``step_rewards``, per-token
        advantages [N, R] from the group-normalised step rewards and their per-group std
        (:func:`process_advantages`)."""
        if self.step_rewards:
            # the std is that of the group's step rewards, which the advantages are made of
            return process_advantages(exp.data["step_rewards"], exp.data["step_ends"], exp.mask, self.group_size, self.scale)
        return group_advantages(exp.scores, self.group_size, self.scale)

    def kl_in_loss(self) -> bool:
        return self.beta > 0

    def compute_advantages(self, exp: Experience) -> dict[str, float]:
        with torch.no_grad():
            advantages, baseline_std = self.group_baseline(exp)
            # reward_std / frac_reward_zero_std: the spread of what the advantages are made of (the
            # scores; with step_rewards, each group's step rewards)
            std = baseline_std if self.step_rewards else group_advantages(exp.scores, self.group_size, "none")[1]
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
            if self.step_rewards:
                # the mean reward of a step (its last token), and steps per completion
                metrics["objective/step_reward"] = float(exp.data["step_rewards"][exp.data["step_ends"]].mean())
                metrics["objective/steps"] = float(exp.data["step_ends"].sum(-1).float().mean())
            if self.overlong_buffer:
                lengths = exp.mask.sum(-1)
                penalty = overlong_penalty(lengths, self.max_new_tokens, self.overlong_buffer, self.overlong_factor)
                metrics["objective/overlong_penalty"] = float(penalty.mean())
            return metrics

    def minibatch_loss(self, exp: Experience, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sub = exp.rollout.select(idx)
        mask = sub.response_mask
        logp = self.policy_logps(exp, idx, sub)
        old = exp.old_logps[idx]
        if self.importance_level == "sequence":
            # GSPO: one ratio per completion (the same value at each of its tokens)
            log_ratio = sequence_log_ratio(logp, old, mask).unsqueeze(-1).expand_as(logp)
        else:
            log_ratio = zero_masked(logp, mask) - zero_masked(old, mask)
        per_token, clipped = ratio_surrogate(log_ratio, exp.data["advantages"][idx], self.clip_range, self.clip_range_high)
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


class DAPO(GRPO):
    """DAPO (Yu et al. 2025): GRPO with the options of ``conf/objective/dapo.yaml`` (clip-higher,
    token-level loss, dynamic sampling, overlong shaping, no KL term). Only the name differs."""

    name: ClassVar[str] = "dapo"


class GSPO(GRPO):
    """GSPO (Zheng et al. 2025): GRPO with ``importance_sampling_level=sequence`` (one
    length-normalised ratio per completion, clipped per completion; ``conf/objective/gspo.yaml``).
    Only the name differs."""

    name: ClassVar[str] = "gspo"


class ReinforcePP(GRPO):
    """REINFORCE++ (Hu 2025): reward minus ``beta`` x per-token KL, returns whitened over the batch.

    No value model and no group baseline: the advantage of token ``t`` is the return from ``t``
    (``-beta·KL`` at every token plus the score at the last one) normalised with the mean and std of
    every valid token of the batch (:func:`alignx.losses.policy_gradient.reinforce_pp_advantages`);
    then GRPO's per-token clipped ratio loss without a KL term (the penalty is in the reward).
    """

    name: ClassVar[str] = "reinforce_pp"
    config_keys: ClassVar[frozenset[str]] = ONLINE_KEYS | {"loss_normalization"}

    def kl_in_loss(self) -> bool:
        return False  # the penalty is in the reward

    def group_baseline(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        if exp.ref_logps is None:
            kl = torch.zeros_like(exp.old_logps)
        else:
            kl = zero_masked(kl_estimate(exp.old_logps, exp.ref_logps, self.kl_estimator), exp.mask)
        advantages, returns = reinforce_pp_advantages(exp.scores, kl, exp.mask, self.beta)
        exp.data["rlhf_reward"] = exp.scores - self.beta * kl.sum(-1)
        _, std = group_advantages(exp.scores, self.group_size, "none")
        return advantages, std

    def compute_advantages(self, exp: Experience) -> dict[str, float]:
        metrics = super().compute_advantages(exp)
        metrics["objective/rlhf_reward"] = float(exp.data["rlhf_reward"].mean())
        return metrics
