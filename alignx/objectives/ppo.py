"""PPO for language models (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022).

The implementation details, numbered as in ``docs/online_rl.md`` ("PPO implementation details",
which states each one with its formula), and where each lives:

1.   query + response is every model's input; prompts left-padded, pad != EOS, position ids
     from the attention mask: :mod:`alignx.generation`, :meth:`OnlineObjective.forward_logits`
2.   logits / temperature for policy and reference log-probs: ``forward_logits``
3.   dropout off: policy and value model stay in eval mode (``OnlineObjective.training_step``)
4/5. truncation after the first EOS, padding ignored; a missing EOS can score
     ``reward.missing_eos_penalty``: :func:`~alignx.ops.rl.truncate_after_eos`, :class:`~alignx.rewards.combine.Reward`
6.   per-token ``-β·KL_t`` (``objective.kl_estimator`` k1 | k3) plus the score at the last token:
     :func:`~alignx.ops.rl.per_token_rewards`, the score first normalised over the batch
     (``score_norm``: :func:`~alignx.ops.rl.normalize_scores`; why: ``docs/online_rl.md``,
     "Why PPO centres its scores"); with ``objective.step_rewards`` each step's reward at the step's
     last token instead (:func:`~alignx.losses.policy_gradient.per_token_step_rewards`)
7.   optional reward whitening (``whiten_rewards``), advantage whitening always: ``masked_whiten``
8.   GAE (``gamma``, ``lam``): :func:`~alignx.ops.rl.gae`
9/10. clipped policy and value losses, ``vf_coef``: :mod:`alignx.losses.policy_gradient`
11.  ``epochs`` reshuffled passes, minibatches, micro-batch accumulation: ``OnlineObjective``
12.  value model from the reward model (``value_model=reward``) or a zero-initialised head on a
     copy of the policy (``policy``); ``auto`` picks the RM when ``reward`` has one
13.  fixed or adaptive KL controller (``adaptive_kl``, ``kl_target``, ``kl_horizon``)
14.  linear LR annealing to 0 and AdamW eps 1e-5: the ``rlhf_ppo`` preset's choice (``scheduler``
     and ``optim`` groups; plain ``objective=ppo`` uses them as configured)
15.  seeds differ per rank: :func:`~alignx.generation.rollout_seed`
16.  PPO-ptx: ``ptx_coef`` · NLL of the dataset's demonstrations added to every minibatch
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from alignx.data.batching import collate_sft
from alignx.errors import ConfigError, ModelLoadError
from alignx.generation import Rollout, position_ids
from alignx.losses.policy_gradient import clipped_policy_loss, clipped_value_loss, per_token_step_rewards
from alignx.models.adapters import is_peft
from alignx.models.heads import add_reward_head, zero_head
from alignx.rewards import reward_model_paths
from alignx.models.heads import token_values as head_token_values
from alignx.models.packing import pack, packed
from alignx.objectives.base import JobContext
from alignx.objectives.online import (
    ONLINE_KEYS,
    STEP_REWARDS_KEY,
    Experience,
    OnlineObjective,
    check_finite,
)
from alignx.ops.rl import (
    SCORE_NORMS,
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_estimate,
    masked_whiten,
    normalize_scores,
    per_token_rewards,
    zero_masked,
)

VALUE_MODELS = ("auto", "reward", "policy")


class PPO(OnlineObjective):
    """Proximal policy optimisation with a value model, a KL penalty in the reward and GAE."""

    name: ClassVar[str] = "ppo"
    config_keys: ClassVar[frozenset[str]] = ONLINE_KEYS | {
        "gamma", "lam", "vf_coef", "value_clip_range", "whiten_rewards", "adaptive_kl", "kl_target",
        "kl_horizon", "value_model", "ptx_coef", "score_norm", STEP_REWARDS_KEY,
    }
    progress_keys = ("objective/scores", "objective/kl")

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        beta = float(self.opt("beta"))
        self.kl_ctl = (
            AdaptiveKLController(beta, float(self.opt("kl_target")), float(self.opt("kl_horizon")))
            if bool(self.opt("adaptive_kl")) else FixedKLController(beta)
        )
        self.value_model: torch.nn.Module | None = None
        self.ptx_items: list[dict] = []

    @classmethod
    def check_values(cls, cfg: Mapping[str, Any]) -> None:
        super().check_values(cfg)
        if str(cls.option(cfg, "kl_estimator")) not in ("k1", "k3"):
            raise ConfigError(
                f"objective.kl_estimator='{cls.option(cfg, 'kl_estimator')}' is not a PPO reward-penalty estimator. Valid: k1, k3"
            )
        if str(cls.option(cfg, "value_model")) not in VALUE_MODELS:
            raise ConfigError(f"objective.value_model='{cls.option(cfg, 'value_model')}' is not valid. Valid: {', '.join(VALUE_MODELS)}")
        if str(cls.option(cfg, "score_norm")) not in SCORE_NORMS:
            raise ConfigError(f"objective.score_norm='{cls.option(cfg, 'score_norm')}' is not valid. Valid: {', '.join(SCORE_NORMS)}")

    @classmethod
    def auxiliary_kinds(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        return {"ptx": "sft"} if float(cls.option(cfg, "ptx_coef")) > 0 else {}

    # -- models ----------------------------------------------------------------------------
    def attach(self, job: JobContext) -> None:
        super().attach(job)
        self.value_model = self.build_value_model(job)
        self.ptx_items = list(job.auxiliary.get("ptx", []))
        if float(self.opt("ptx_coef")) > 0 and not self.ptx_items:
            raise ConfigError("objective.ptx_coef > 0 needs demonstrations (sft rows) in the dataset's train split; it has none")

    def build_value_model(self, job: JobContext) -> torch.nn.Module:
        """The value model: the reward model's weights, or a zero-initialised head on a copy of the policy."""
        choice = str(self.opt("value_model"))
        rm_paths = reward_model_paths(job.cfg.reward)
        if choice == "reward" and len(rm_paths) != 1:
            raise ConfigError(
                f"objective.value_model=reward needs exactly one reward model among reward.components (found {len(rm_paths)}); "
                "use reward=rm reward.path=<rm dir>, or value_model=policy"
            )
        if choice == "reward" or (choice == "auto" and len(rm_paths) == 1):
            value = self._load_reward_model(str(rm_paths[0]))
        else:
            policy = copy.deepcopy(self.model)
            if is_peft(policy):
                policy = policy.merge_and_unload()
            value = zero_head(add_reward_head(policy, self.tokenizer))
        adapter = str(job.cfg.adapter.name)
        if adapter != "none":
            value = job.registry.get("adapter", adapter)(value, job.cfg.adapter)
        return value.to(next(self.model.parameters()).device)

    def _load_reward_model(self, path: str) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = str(Path(path).expanduser().resolve()) if Path(path).expanduser().is_dir() else path
        try:
            rm_tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - any loading failure is the user's path
            raise ModelLoadError(f"cannot load the reward model at '{path}' as the value model: {exc}") from None
        if rm_tok.get_vocab() != self.tokenizer.get_vocab():
            raise ConfigError(
                f"the reward model at '{path}' uses a different tokenizer than the policy, so it cannot initialise "
                "the value model (which reads the policy's token ids); set objective.value_model=policy"
            )
        return model.train()

    def extra_models(self) -> list[torch.nn.Module]:
        return [self.value_model] if self.value_model is not None else []

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = super().trainable_parameters()
        if self.value_model is not None:
            params += [p for p in self.value_model.parameters() if p.requires_grad]
        return params

    def token_values(self, rollout: Rollout) -> torch.Tensor:
        """V(s_t) [N, R] before each response token (0 past the end)."""
        mask = rollout.attention_mask
        if self.padding_free:
            rows = pack(rollout.input_ids, mask, position_ids(mask))
            with packed(self.value_model, rows):
                v = rows.unpack(head_token_values(self.value_model, **rows.forward_kwargs)).float()
        else:
            v = head_token_values(self.value_model, rollout.input_ids, mask, position_ids(mask)).float()
        p = rollout.prompt_width
        return zero_masked(v[:, p - 1 : -1], rollout.response_mask)

    # -- the algorithm -------------------------------------------------------------------------
    def compute_advantages(self, exp: Experience) -> dict[str, float]:
        with torch.no_grad():
            values = torch.cat([self.token_values(exp.rollout.select(idx.to(exp.scores.device)))
                                for idx in self._chunks(len(exp), self.micro_batch_size)])
            mask = exp.mask
            kl = zero_masked(kl_estimate(exp.old_logps, exp.ref_logps, self.kl_estimator), mask)
            beta = self.kl_ctl.value
            # the score as the returns see it (objective/scores keeps logging the raw one)
            if self.step_rewards:
                # process supervision: each step's reward at its last token (normalised over the batch's steps)
                rewards, non_score = per_token_step_rewards(
                    exp.data["step_rewards"], exp.data["step_ends"], kl, mask, beta, str(self.opt("score_norm")),
                )
            else:
                scores = normalize_scores(exp.scores, str(self.opt("score_norm")))
                rewards, non_score = per_token_rewards(scores, kl, mask, beta)
            if bool(self.opt("whiten_rewards")):
                rewards = masked_whiten(rewards, mask, shift_mean=False)
            advantages, returns = gae(rewards, values, mask, float(self.opt("gamma")), float(self.opt("lam")))
            advantages = masked_whiten(advantages, mask)
            exp.data.update(values=values, advantages=advantages, returns=returns)
            seq_kl = kl.sum(-1)
            mean_kl = float(seq_kl.mean())
            self.kl_ctl.update(mean_kl, len(exp))
            non_score_sum = non_score.sum(-1)
            return {
                "objective/kl": mean_kl,
                "objective/non_score_reward": float(non_score_sum.mean()),
                "objective/rlhf_reward": float((exp.scores + non_score_sum).mean()),
                "objective/scores": float(exp.scores.mean()),
                "objective/kl_coef": beta,
                "val/num_eos_tokens": float(exp.rollout.has_eos.sum()),
                # how well the value model (before this iteration's updates) predicts the GAE returns
                "val/explained_variance": float(explained_variance(values, returns, mask)),
            }

    def minibatch_loss(self, exp: Experience, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sub = exp.rollout.select(idx)
        mask = sub.response_mask
        logp = self.policy_logps(exp, idx, sub)
        values = self.token_values(sub)
        pg, pst = clipped_policy_loss(logp, exp.old_logps[idx], exp.data["advantages"][idx], mask, self.clip_range)
        vf, vst = clipped_value_loss(values, exp.data["values"][idx], exp.data["returns"][idx], mask,
                                     float(self.opt("value_clip_range")))
        loss = pg + float(self.opt("vf_coef")) * vf
        stats = {
            "policy/approxkl_avg": pst["approxkl"], "policy/clipfrac_avg": pst["clipfrac"], "val/ratio": pst["ratio"],
            "loss/policy_avg": pg.detach(), "loss/value_avg": vf.detach(), "val/clipfrac_avg": vst["clipfrac"],
        }
        ptx_coef = float(self.opt("ptx_coef"))
        if ptx_coef > 0:
            ptx = self.ptx_loss(len(idx), int(self.global_step), int(idx[0]))
            check_finite("the PPO-ptx loss", ptx, int(self.global_step))
            loss = loss + ptx_coef * ptx
            stats["loss/ptx_avg"] = ptx.detach()
        return loss, stats

    def ptx_loss(self, n: int, step: int, salt: int) -> torch.Tensor:
        """NLL of ``n`` demonstrations drawn (seeded by step and minibatch) from the pretraining mix."""
        g = torch.Generator().manual_seed(self.seed * 31 + step * 1009 + salt)
        picks = torch.randint(len(self.ptx_items), (n,), generator=g).tolist()
        batch = collate_sft([self.ptx_items[i] for i in picks], self.tokenizer.pad_token_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.completion_cross_entropy(self.model, batch)[0]

    def iteration_metrics(self, exp: Experience, stats: dict[str, float]) -> dict[str, float]:
        return dict(stats)

    # -- exact resume ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["alignx_kl_controller"] = self.kl_ctl.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "alignx_kl_controller" in checkpoint:
            self.kl_ctl.load_state_dict(checkpoint["alignx_kl_controller"])
