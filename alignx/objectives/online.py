"""Online RL: the policy samples completions, a reward scores them, a policy-gradient loss learns.

:class:`OnlineObjective` is the shared loop of PPO, GRPO and RLOO; one Lightning training step is
one *iteration*:

1. take ``data.batch_size`` prompts (a seeded permutation per epoch, a function of the step) and
   sample ``group_size`` completions each with :func:`alignx.generation.sample` (KV cache, seeded
   per rank and step, cut after EOS);
2. score them with the ``reward`` config group (a missing EOS can get a fixed penalty; with
   ``objective.step_rewards`` (GRPO, PPO) also each step's reward at the token that ends the step,
   :mod:`alignx.rewards.steps`, in ``exp.data["step_rewards"]``/``["step_ends"]``; GRPO may
   shape the scores and, with dynamic sampling, replace groups whose scores are all equal by the
   groups of more prompts, see ``docs/online_rl.md`` ("The GRPO family"));
3. with no gradient: log-probs of the sampled tokens under the policy and the reference (logits
   divided by the sampling temperature), plus what the algorithm needs (PPO: values);
4. the algorithm turns that into advantages (:meth:`compute_advantages`);
5. ``epochs`` passes over the rollouts, reshuffled, in minibatches of ``mini_batch_size`` (one
   optimizer step each) split into ``micro_batch_size`` forwards (gradient accumulation).

Every source of randomness in an iteration (prompt order, sampling, minibatch shuffles) is a
function of (seed, rank, step), so a run resumed from a checkpoint at step k continues exactly as
the uninterrupted run did; the optimizer, LR schedule and KL-controller state travel in the
checkpoint. Dropout is off throughout (the policy stays in eval mode; gradients still flow).

Every iteration also logs diagnostics of the optimisation (``policy/logprob_mismatch`` on the
first minibatch before any update, ``policy/clipfrac_avg``, ``objective/entropy``; see
``docs/online_rl.md`` ("Diagnostics")).

A non-finite loss or non-finite next-token probabilities stop training with
:class:`TrainingDiverged` *before* the bad update is applied, so the last checkpoint is good.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import lightning as L
import torch

from alignx.data.templates import ORIGINAL_PROMPT
from alignx.data.tokenize import (
    encode_prompt,
    fit_to_length,
    prompt_is_templated,
    prompt_text,
)
from alignx.errors import ConfigError, TrainingDiverged
from alignx.generation import (
    Rollout,
    decode_responses,
    left_pad,
    position_ids,
    rollout_seed,
    sample,
)
from alignx.losses.policy_gradient import nonconstant_groups
from alignx.models.lm_head import head_inputs
from alignx.models.packing import pack, packed
from alignx.objectives.base import JobContext, ReferenceObjective
from alignx.objectives.guards import checkpoint_hint
from alignx.ops.chunked import chunked_logprobs_and_entropy, chunked_token_logprobs
from alignx.ops.logprobs import IGNORE_INDEX, masked_mean, token_logprobs
from alignx.ops.rl import entropy_from_logits, kl_estimate, logprob_mismatch, zero_masked
from alignx.registry import load_plugins
from alignx.rewards import check_reward_config
from alignx.rewards.combine import build_reward
from alignx.rewards.steps import (
    check_step_reward_components,
    step_rewards_of,
)
from alignx.tracking.logger import TrackerLogger


#: keys every online objective's config node may hold (subclasses add their own)
ONLINE_KEYS = frozenset({
    "name", "max_new_tokens", "temperature", "top_k", "top_p", "group_size", "epochs", "mini_batch_size",
    "micro_batch_size", "generation_batch_size", "clip_range", "beta", "kl_estimator", "precompute_ref_logps",
    "log_samples_every_n_steps", "num_logged_samples", "use_cache",
})


#: one round of sampled and scored groups: (rollout, prompts, completions, scores [N], score parts,
#: step rewards: per completion its (response token index, reward) pairs, or None without
#: ``objective.step_rewards``)
Sampled = tuple[Rollout, list[str], list[str], torch.Tensor, dict[str, torch.Tensor], list[list[tuple[int, float]]] | None]
#: the config key that turns on step-level rewards (process supervision) for objectives that declare it
STEP_REWARDS_KEY = "step_rewards"


@dataclass
class Experience:
    """One iteration's rollouts and everything computed from them without gradients ([N] or [N, R])."""

    rollout: Rollout
    prompts: list[str]
    completions: list[str]
    scores: torch.Tensor
    score_parts: dict[str, torch.Tensor]
    old_logps: torch.Tensor
    ref_logps: torch.Tensor | None
    entropy: torch.Tensor
    #: algorithm-specific tensors: values, advantages, returns...
    data: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.response_mask

    def __len__(self) -> int:
        return int(self.scores.numel())


class PromptBatches(torch.utils.data.Dataset):
    """The trainer's train loader: item i is just the step number i (prompts are chosen by the
    objective from the step, so a resumed run picks the same ones)."""

    def __init__(self, steps: int) -> None:
        self.steps = int(steps)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> int:
        return i


class _StepDataModule(L.LightningDataModule):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(PromptBatches(self.steps), batch_size=None, shuffle=False)


def check_finite(name: str, value: torch.Tensor, step: int, hint: str = "") -> None:
    """Raise :class:`TrainingDiverged` naming ``name`` and ``step`` unless every entry of ``value`` is finite."""
    if not bool(torch.isfinite(value.detach()).all()):
        raise TrainingDiverged(f"{name} is not finite in training step {step + 1}; training stopped.{hint}")


class OnlineObjective(ReferenceObjective):
    """Shared rollout/optimisation loop of online RL objectives (see the module docstring).

    Subclasses set :attr:`name` and implement :meth:`compute_advantages` (per-iteration, no
    gradient) and :meth:`minibatch_loss` (one micro-batch, with gradient).
    """

    data_kind: ClassVar[str] = "prompt"
    #: every key is read strictly: the objective's YAML (conf/objective/<name>.yaml) holds each
    #: one with its default, so a default lives in exactly one place
    config_keys: ClassVar[frozenset[str]] = ONLINE_KEYS
    # 2: encoded prompts carry ``reward_prompt`` (the task's prompt under a template)
    encode_version: ClassVar[str] = "2"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        self.check_values(cfg)
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.automatic_optimization = False
        self.beta = float(self.opt("beta"))
        self.max_new_tokens = int(self.opt("max_new_tokens"))
        self.temperature = float(self.opt("temperature"))
        self.top_k, self.top_p = int(self.opt("top_k")), float(self.opt("top_p"))
        self.group_size = int(self.opt("group_size"))
        self.epochs = int(self.opt("epochs"))
        self.clip_range = float(self.opt("clip_range"))
        self.kl_estimator = str(self.opt("kl_estimator"))
        self.use_cache = bool(self.opt("use_cache"))
        self.log_samples_every = int(self.opt("log_samples_every_n_steps") or 0)
        self.num_logged_samples = int(self.opt("num_logged_samples"))
        #: process supervision: rewards at each step's last token (objectives that declare the key)
        self.step_rewards = STEP_REWARDS_KEY in self.config_keys and bool(self.opt(STEP_REWARDS_KEY))
        # set by attach()
        self.prompts: list[dict] = []
        self.prompts_per_step = 1
        self.seed = 0
        self.reward: Any = None
        self.gradient_clip_val: float | None = None
        self.step_metrics: dict[str, float] = {}
        self._generation_s = 0.0
        # policy/logprob_mismatch of the iteration: token-weighted sum and token count, gathered by
        # policy_logps while the first minibatch is being evaluated (None otherwise)
        self._mismatch: tuple[float, float] | None = None
        #: extra sampling rounds of dynamic sampling (GRPO's ``dynamic_sampling_rounds``; 0 = off)
        self.refill_rounds = 0
        self._sampling_metrics: dict[str, float] = {}

    def opt(self, key: str) -> Any:
        """The objective's config value for ``key`` (see :meth:`option`)."""
        return self.option(self.cfg, key)

    @classmethod
    def option(cls, cfg: Mapping[str, Any], key: str) -> Any:
        """``cfg[key]``, read strictly: its default is in the objective's YAML, nowhere else. A node
        built without the YAML (programmatic use) that lacks the key is a :class:`ConfigError`."""
        if key not in cfg:
            raise ConfigError(
                f"objective.{key} is not set: objective={cls.name} reads it (conf/objective/{cls.name}.yaml sets "
                "every key the objective reads; compose the config with alignx.config.compose)"
            )
        return cfg[key]

    @classmethod
    def check_values(cls, cfg: Mapping[str, Any]) -> None:
        """ConfigError naming the key for a value the objective cannot run with (subclasses extend)."""
        if bool(cls.option(cfg, "precompute_ref_logps")):
            raise ConfigError(
                f"objective.precompute_ref_logps is not possible for objective={cls.name}: online RL scores "
                "new samples every step, so reference log-probs cannot be computed ahead"
            )
        for key in ("max_new_tokens", "group_size", "epochs"):
            if int(cls.option(cfg, key)) < 1:
                raise ConfigError(f"objective.{key} must be >= 1, got {cls.option(cfg, key)}")
        if float(cls.option(cfg, "temperature")) <= 0:
            raise ConfigError(f"objective.temperature must be > 0 (sampling), got {cls.option(cfg, 'temperature')}")
        if float(cls.option(cfg, "beta")) < 0:
            raise ConfigError(f"objective.beta must be >= 0, got {cls.option(cfg, 'beta')}")

    # -- configuration ----------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Fail before any work on keys this objective does not know, or a run without a step budget."""
        super().check_config(cfg)  # only this objective's keys (answered before any import by the CLI)
        cls.check_values(cfg.objective)
        registry = load_plugins()
        components = check_reward_config(cfg.reward, registry)
        if STEP_REWARDS_KEY in cls.config_keys and bool(cls.option(cfg.objective, STEP_REWARDS_KEY)):
            check_step_reward_components(
                [(c.key, c.weight, registry.get("reward", c.reward)) for c in components], f"objective.{STEP_REWARDS_KEY}",
            )
        if int(cfg.trainer.get("max_steps") or -1) <= 0:
            raise ConfigError(
                f"objective={cfg.objective.name} trains for trainer.max_steps iterations (rollout batches); "
                f"set trainer.max_steps to a positive number (got {cfg.trainer.get('max_steps')})"
            )
        if str(cfg.data.curriculum) != "none":
            # rollouts draw their prompts at random each iteration: an order of the rows would be ignored
            raise ConfigError(
                f"data.curriculum={cfg.data.curriculum} orders the training rows of offline objectives; "
                f"objective={cfg.objective.name} takes its prompts in a seeded random order each epoch: set data.curriculum=none"
            )
        if int(cfg.trainer.get("accumulate_grad_batches") or 1) != 1:
            raise ConfigError(
                f"trainer.accumulate_grad_batches is not used by objective={cfg.objective.name}; its minibatches "
                "accumulate gradients over objective.micro_batch_size forwards instead"
            )

    @classmethod
    def datamodule(cls, train_items: list[dict], val_items: list[dict], tokenizer: Any, cfg: Any) -> L.LightningDataModule:
        return _StepDataModule(int(cfg.trainer.max_steps))

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        """A prompt row -> its token ids (fit to ``data.max_length``, keeping the end), its text and
        the prompt its rewards read (``reward_prompt``: the task's prompt before a template rewrote it)."""
        chat = bool(data_cfg["chat_template"])
        text = prompt_text(row, tokenizer, chat)
        ids = encode_prompt(text, tokenizer, templated=prompt_is_templated(row, chat))
        keep = 1 if ids and ids[0] == tokenizer.bos_token_id else 0
        policy = str(data_cfg["truncation"])
        fitted = fit_to_length(ids, [], int(data_cfg["max_length"]), "truncate_prompt" if policy == "truncate_completion" else policy, keep)
        if fitted is None:
            return None, "dropped"
        # a prompt template (conf/template/) rewrote the prompt; rewards such as a task's gold reward
        # read the task's own prompt, which the row keeps
        reward_prompt = str(row[ORIGINAL_PROMPT]) if row.get(ORIGINAL_PROMPT) is not None else text
        return {"input_ids": fitted[0], "prompt": text, "reward_prompt": reward_prompt}, fitted[2]

    def attach(self, job: JobContext) -> None:
        cfg = job.cfg
        self.prompts = list(job.train_items)
        self.prompts_per_step = int(cfg.data.batch_size)
        self.seed = int(cfg.seed)
        self.reward = build_reward(cfg.reward, job.registry)
        if self.step_rewards:
            check_step_reward_components(self.reward.components, f"objective.{STEP_REWARDS_KEY}")
        clip = cfg.trainer.get("gradient_clip_val")
        self.gradient_clip_val = float(clip) if clip else None
        n = self.prompts_per_step * self.group_size
        self.mini_batch_size = min(n, int(self.opt("mini_batch_size") or n))
        self.micro_batch_size = min(self.mini_batch_size, int(self.opt("micro_batch_size") or self.mini_batch_size))
        self.generation_batch_size = int(self.opt("generation_batch_size") or n)

    # -- algorithm hooks ----------------------------------------------------------------------
    def compute_advantages(self, exp: Experience) -> dict[str, float]:
        """Fill ``exp.data`` (advantages etc.) from the scored rollouts; return metrics to log."""
        raise NotImplementedError

    def minibatch_loss(self, exp: Experience, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of rollouts ``idx`` (with gradient) and detached stats to average over the iteration."""
        raise NotImplementedError

    def iteration_metrics(self, exp: Experience, stats: dict[str, float]) -> dict[str, float]:
        """Metrics of a finished iteration under the algorithm's names (``stats``: averaged minibatch stats)."""
        return {}

    # -- shared machinery --------------------------------------------------------------------
    def prompt_batch(self, step: int) -> list[dict]:
        """This rank's prompts for ``step``: consecutive slices of a seeded permutation per epoch."""
        n, b = len(self.prompts), self.prompts_per_step
        rank, world = (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        per_epoch = max(1, n // (b * world))
        epoch, k = divmod(int(step), per_epoch)
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)  # the same permutation on every rank
        perm = torch.randperm(n, generator=g)
        if n < b * world:  # fewer prompts than one step needs: cycle through them
            perm = perm.repeat(math.ceil(b * world / n))
        start = (k * world + rank) * b
        return [self.prompts[int(i)] for i in perm[start : start + b]]

    def forward_logits(self, model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
        """Logits [N, R, V] predicting each response token, divided by the sampling temperature."""
        mask = rollout.attention_mask
        if self.padding_free:
            rows = pack(rollout.input_ids, mask, position_ids(mask))
            with packed(model, rows):
                logits = rows.unpack(model(**rows.forward_kwargs, use_cache=False).logits)
        else:
            logits = model(input_ids=rollout.input_ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
        p = rollout.prompt_width
        return logits[:, p - 1 : -1, :].float() / self.temperature

    @staticmethod
    def response_labels(rollout: Rollout) -> torch.Tensor:
        return rollout.response_ids.masked_fill(~rollout.response_mask.bool(), IGNORE_INDEX)

    def response_logps(self, model: torch.nn.Module, rollout: Rollout, *, with_entropy: bool = False) -> Any:
        """Per-token log-probs [N, R] (0 past the end) of the sampled tokens; with entropy [N, R] too.

        From :meth:`forward_logits`, or with ``model.logprob_chunk_size`` set from the final hidden
        states by chunks of response positions (:meth:`_chunked_response_logps`).
        """
        if self.logprob_chunk_size is not None:
            return self._chunked_response_logps(model, rollout, with_entropy)
        logits = self.forward_logits(model, rollout)
        logps = token_logprobs(logits, self.response_labels(rollout))
        if with_entropy:
            return logps, zero_masked(entropy_from_logits(logits), rollout.response_mask)
        return logps

    def _chunked_response_logps(self, model: torch.nn.Module, rollout: Rollout, with_entropy: bool) -> Any:
        """:meth:`response_logps` without the [N, R, V] logits: only the valid response positions
        are projected to the vocabulary, ``logprob_chunk_size`` at a time (same forward: the
        attention mask and the position ids counted over real tokens). The entropy is bookkeeping
        and comes back detached."""
        mask = rollout.attention_mask
        h = head_inputs(model, rollout.input_ids, mask, position_ids(mask), padding_free=self.padding_free)
        p = rollout.prompt_width
        labels = self.response_labels(rollout)
        rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
        hidden, targets = h.hidden[:, p - 1 : -1][rows, cols], labels[rows, cols]
        kw = {"bias": h.bias, "temperature": self.temperature, "chunk_size": self.logprob_chunk_size}
        entropy = None
        if with_entropy and not torch.is_grad_enabled():  # rollout scoring: both in one pass
            logps, entropy = chunked_logprobs_and_entropy(hidden, h.weight, targets, **kw)
        else:
            logps = chunked_token_logprobs(hidden, h.weight, targets, **kw)
            if with_entropy:
                entropy = chunked_logprobs_and_entropy(hidden.detach(), h.weight.detach(), targets, **kw)[1]

        def spread(values: torch.Tensor) -> torch.Tensor:  # [n valid] -> [N, R], 0 elsewhere
            return torch.zeros(labels.shape, dtype=values.dtype, device=values.device).index_put((rows, cols), values)

        return (spread(logps), spread(entropy)) if entropy is not None else spread(logps)

    def policy_logps(self, exp: Experience, idx: torch.Tensor, sub: Rollout) -> torch.Tensor:
        """Per-token log-probs [N, R] of rollouts ``idx`` (``sub = exp.rollout.select(idx)``) under the
        policy being trained, with gradient: what :meth:`minibatch_loss` implementations call.

        On the iteration's first minibatch (no update applied yet) it also records their gap to
        ``exp.old_logps``, logged as ``policy/logprob_mismatch``.
        """
        logp = self.response_logps(self.model, sub)
        if self._mismatch is not None:
            mask = sub.response_mask
            n = float(mask.sum())
            total, count = self._mismatch
            self._mismatch = (total + float(logprob_mismatch(logp, exp.old_logps[idx], mask)) * n, count + n)
        return logp

    def _chunks(self, n: int, size: int) -> list[torch.Tensor]:
        return list(torch.arange(n).split(size))

    def shape_scores(self, scores: torch.Tensor, rollout: Rollout) -> torch.Tensor:
        """The scores the algorithm learns from, given the reward's ``scores`` [N] (hook; GRPO adds
        DAPO's overlong penalty). Applied before dynamic sampling looks at the groups."""
        return scores

    def _sample_and_score(self, items: list[dict], seed: int, step: int) -> Sampled:
        """``group_size`` completions of each prompt in ``items``, sampled from ``seed`` and scored:
        (rollout, prompts, completions, scores [N], score parts)."""
        tok = self.tokenizer
        g = self.group_size
        ids_list = [it["input_ids"] for it in items for _ in range(g)]
        prompts = [it["prompt"] for it in items for _ in range(g)]
        reward_prompts = [it["reward_prompt"] for it in items for _ in range(g)]
        rollouts = []
        for j, idx in enumerate(self._chunks(len(ids_list), self.generation_batch_size)):
            ids, mask = left_pad([ids_list[int(i)] for i in idx], tok.pad_token_id)
            try:
                rollouts.append(sample(
                    self.model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                    max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p, seed=seed + j, use_cache=self.use_cache,
                ))
            except RuntimeError as exc:
                if "inf" in str(exc) or "nan" in str(exc):
                    raise TrainingDiverged(
                        f"the policy's next-token probabilities are not finite in training step {step + 1} (sampling "
                        f"failed: {str(exc).splitlines()[0]}): earlier updates made the weights diverge; training "
                        f"stopped.{self._checkpoint_hint()}"
                    ) from None
                raise
        rollout = _concat(rollouts, tok.pad_token_id)
        completions = decode_responses(tok, rollout)
        scores, parts = self.reward.score(reward_prompts, completions, has_eos=rollout.has_eos.cpu())
        steps = self._step_rewards(rollout, reward_prompts, completions) if self.step_rewards else None
        return rollout, prompts, completions, self.shape_scores(scores, rollout), parts, steps

    def _step_rewards(self, rollout: Rollout, prompts: list[str], completions: list[str]) -> list[list[tuple[int, float]]]:
        """Each completion's step rewards (:func:`alignx.rewards.steps.step_rewards_of`), their
        character offsets turned into response token indices (:func:`step_token_positions`)."""
        entries = step_rewards_of(
            self.reward.components, prompts, completions,
            has_eos=rollout.has_eos.cpu().tolist(), missing_eos_penalty=self.reward.missing_eos_penalty,
        )
        ids = rollout.response_ids.cpu()
        lengths = rollout.response_mask.sum(-1).cpu().tolist()
        out = []
        for i, row in enumerate(entries):
            positions = step_token_positions(self.tokenizer, ids[i, : int(lengths[i])].tolist(), [o for o, _ in row])
            out.append([(p, r) for p, (_, r) in zip(positions, row)])
        return out

    def _refill(self, step: int, first: Sampled) -> Sampled:
        """DAPO's dynamic sampling: keep the groups whose scores are not all equal and sample the
        groups of more prompts (up to ``refill_rounds`` extra rounds, each a seeded draw of
        ``data.batch_size`` distinct prompts, a function of (seed, step, round)) until the batch holds
        ``data.batch_size`` such groups. Short of that, zero-variance groups fill the rest (they
        carry no policy gradient). Sets ``self._sampling_metrics``."""
        g, b = self.group_size, self.prompts_per_step
        kept: list[tuple[int, int]] = []  # (sampling round, group index within it)
        dropped: list[tuple[int, int]] = []
        rounds = [first]
        n_kept = 0
        r = 0
        while True:
            informative = nonconstant_groups(rounds[r][3], g)
            for k, ok in enumerate(informative.tolist()):
                (kept if ok else dropped).append((r, k))
            n_kept = len(kept)
            if n_kept >= b or r >= self.refill_rounds:
                break
            r += 1
            gen = torch.Generator().manual_seed((self.seed * 7919 + step) * 1009 + r)
            extra = [self.prompts[int(i)] for i in torch.randperm(len(self.prompts), generator=gen)[:b]]
            seed = (rollout_seed(self.seed, self.global_rank, step) * 31 + r * 1_000_000_007) % (2**63 - 1)
            rounds.append(self._sample_and_score(extra, seed, step))
        chosen = (kept + dropped)[:b]
        self._sampling_metrics = {
            "dynamic_sampling/extra_rounds": float(r),
            "dynamic_sampling/dropped_groups": float(len(dropped)),
            # zero-variance groups left in the batch because the extra rounds ran out
            "dynamic_sampling/filled_zero_std": float(max(0, b - n_kept)),
        }
        parts_of = []
        for r_i, k in chosen:
            rollout, prompts, completions, scores, parts, steps = rounds[r_i]
            rows = torch.arange(k * g, (k + 1) * g)
            parts_of.append((
                rollout.select(rows.to(rollout.response_ids.device)), prompts[k * g:(k + 1) * g],
                completions[k * g:(k + 1) * g], scores[rows.to(scores.device)],
                {name: v[rows.to(v.device)] for name, v in parts.items()},
                None if steps is None else steps[k * g:(k + 1) * g],
            ))
        rollout = _concat([p[0] for p in parts_of], self.tokenizer.pad_token_id)
        return (
            rollout, [x for p in parts_of for x in p[1]], [x for p in parts_of for x in p[2]],
            torch.cat([p[3] for p in parts_of]),
            {name: torch.cat([p[4][name] for p in parts_of]) for name in first[4]},
            None if first[5] is None else [x for p in parts_of for x in p[5]],
        )

    @torch.no_grad()
    def make_experience(self, step: int) -> Experience:
        """Sample, score and evaluate one iteration's rollouts (steps 1-3 of the module docstring)."""
        t0 = time.perf_counter()
        sampled = self._sample_and_score(self.prompt_batch(step), rollout_seed(self.seed, self.global_rank, step), step)
        if self.refill_rounds > 0:
            sampled = self._refill(step, sampled)
        rollout, prompts, completions, scores, parts, steps = sampled
        self._generation_s = time.perf_counter() - t0
        old, ent, ref = [], [], []
        for idx in self._chunks(len(prompts), self.micro_batch_size):
            sub = rollout.select(idx.to(rollout.response_ids.device))
            lp, h = self.response_logps(self.model, sub, with_entropy=True)
            old.append(lp)
            ent.append(h)
            with self.reference() as ref_model:
                if ref_model is not None:
                    ref.append(self.response_logps(ref_model, sub))
        old_logps = torch.cat(old)
        check_finite("the policy's log-probabilities of its own samples", old_logps, step, self._checkpoint_hint())
        data: dict[str, torch.Tensor] = {}
        if steps is not None:
            data["step_rewards"], data["step_ends"] = dense_step_rewards(steps, rollout.response_mask.shape, old_logps.device)
        return Experience(
            rollout=rollout,
            prompts=prompts,
            completions=completions,
            scores=scores.to(old_logps.device),
            score_parts=parts,
            old_logps=old_logps,
            ref_logps=torch.cat(ref) if ref else None,
            entropy=torch.cat(ent),
            data=data,
        )

    def sequence_kl(self, exp: Experience, kind: str = "k1") -> torch.Tensor:
        """Per-sequence KL(π || π_ref) estimate [N]: the masked token sum of estimator ``kind``."""
        if exp.ref_logps is None:
            return torch.zeros_like(exp.scores)
        return zero_masked(kl_estimate(exp.old_logps, exp.ref_logps, kind), exp.mask).sum(-1)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        step = int(self.global_step)
        t0 = time.perf_counter()
        self.model.eval()  # dropout off: log-probs must be reproducible (gradients still flow)
        for m in self.extra_models():
            m.eval()
        exp = self.make_experience(step)
        t_rollout = time.perf_counter() - t0
        metrics = dict(self.compute_advantages(exp))
        metrics.update(self._sampling_metrics)
        opt = self.optimizers()
        n = len(exp)
        g = torch.Generator().manual_seed(rollout_seed(self.seed, self.global_rank, step) ^ 0x5EED)
        n_opt_steps = self.epochs * math.ceil(n / self.mini_batch_size)
        sums: dict[str, float] = {}
        count, k = 0, 0
        self._mismatch = (0.0, 0.0)  # measured on the first minibatch, before its optimizer step
        for _ in range(self.epochs):
            perm = torch.randperm(n, generator=g)
            for mb in perm.split(self.mini_batch_size):
                opt.zero_grad()
                for micro in mb.split(self.micro_batch_size):
                    loss, stats = self.minibatch_loss(exp, micro.to(exp.scores.device))
                    check_finite(f"the {self.name} loss", loss, step, self._checkpoint_hint())
                    self.manual_backward(loss * (len(micro) / len(mb)))
                    for key, v in stats.items():
                        sums[key] = sums.get(key, 0.0) + float(v)
                    count += 1
                if self._mismatch is not None:
                    total, tokens = self._mismatch
                    if tokens > 0:  # 0: a plugin's minibatch_loss that does not call policy_logps
                        metrics["policy/logprob_mismatch"] = total / tokens
                    self._mismatch = None
                if self.gradient_clip_val:
                    self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
                k += 1
                if k < n_opt_steps:
                    # all but the last update of an iteration bypass Lightning's step counter, so
                    # trainer.global_step (max_steps, checkpoints, logged steps) counts iterations
                    self.trainer.strategy.optimizer_step(opt.optimizer, closure=_no_closure, model=self)
                else:
                    opt.step()
        # before the checkpoint callback runs: a non-finite update is never saved over a good checkpoint
        if not _all_finite(self.trainable_parameters()):
            raise TrainingDiverged(
                f"the weights are not finite after the updates of training step {step + 1}; training stopped."
                f"{self._checkpoint_hint()}"
            )
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        stats = {key: v / max(count, 1) for key, v in sums.items()}
        metrics.update(self.iteration_metrics(exp, stats))
        metrics.update(self.reward.metrics(exp.score_parts))
        lengths = exp.mask.sum(-1).float()
        metrics.update({
            # the policy's entropy at the sampled positions, summed over each completion, mean over rollouts
            "objective/entropy": float(zero_masked(exp.entropy, exp.mask).sum(-1).mean()),
            "completions/mean_length": float(lengths.mean()),
            "completions/clipped_ratio": float((~exp.rollout.has_eos).float().mean()),
            "lr": float(opt.optimizer.param_groups[0]["lr"]),
            "time/generation_s": self._generation_s,
            "time/rollout_s": t_rollout,
            "time/step_s": time.perf_counter() - t0,
        })
        self._log_iteration(step, metrics, exp)

    def extra_models(self) -> list[torch.nn.Module]:
        """Trained modules besides the policy (PPO's value model), kept in eval mode like it."""
        return []

    def _log_iteration(self, step: int, metrics: dict[str, float], exp: Experience) -> None:
        self.step_metrics = metrics
        self.log_dict({k: v for k, v in metrics.items() if k in self.progress_keys}, prog_bar=True, logger=False, batch_size=len(exp))
        logger = self.logger
        if logger is not None and self.trainer.is_global_zero:
            logger.log_metrics(metrics, step=step + 1)
            if self.log_samples_every and step % self.log_samples_every == 0:
                if isinstance(logger, TrackerLogger):  # the job's logger; another one has no tables
                    logger.tracker.log_table(self.sample_rows(exp), f"samples/rollouts/step-{step + 1:06d}.json")

    #: metrics shown on the progress bar
    progress_keys: ClassVar[tuple[str, ...]] = ()

    def sample_rows(self, exp: Experience) -> list[dict]:
        """The first ``num_logged_samples`` rollouts of an iteration as table rows."""
        rows = []
        for i in range(min(self.num_logged_samples, len(exp))):
            row = {"prompt": exp.prompts[i], "completion": exp.completions[i], "reward": float(exp.scores[i])}
            for name, part in exp.score_parts.items():
                if len(exp.score_parts) > 1:
                    row[f"reward/{name}"] = float(part[i])
            row["has_eos"] = bool(exp.rollout.has_eos[i])
            if "advantages" in exp.data and exp.data["advantages"].dim() == 1:
                row["advantage"] = float(exp.data["advantages"][i])
            rows.append(row)
        return rows

    def _checkpoint_hint(self) -> str:
        return checkpoint_hint(self._trainer)


def _all_finite(params: list[torch.nn.Parameter]) -> bool:
    """Whether every parameter entry is finite (one device sync for all of them)."""
    flags = [torch.isfinite(p.detach()).all() for p in params]
    return bool(torch.stack(flags).all()) if flags else True


def _no_closure() -> None:
    return None


def _concat(rollouts: list[Rollout], pad_id: int) -> Rollout:
    """Join rollouts generated in chunks (prompt widths are left-padded, responses right-padded, to a common size)."""
    if len(rollouts) == 1:
        return rollouts[0]
    p = max(r.prompt_width for r in rollouts)
    width = max(r.response_ids.size(1) for r in rollouts)

    def pad(t: torch.Tensor, size: int, value: int, left: bool) -> torch.Tensor:
        extra = size - t.size(1)
        if extra == 0:
            return t
        filler = torch.full((t.size(0), extra), value, dtype=t.dtype, device=t.device)
        return torch.cat([filler, t] if left else [t, filler], dim=1)

    return Rollout(
        torch.cat([pad(r.prompt_ids, p, pad_id, True) for r in rollouts]),
        torch.cat([pad(r.prompt_mask, p, 0, True) for r in rollouts]),
        torch.cat([pad(r.response_ids, width, pad_id, False) for r in rollouts]),
        torch.cat([pad(r.response_mask, width, 0, False) for r in rollouts]),
        torch.cat([r.has_eos for r in rollouts]),
    )


def step_token_positions(tokenizer: Any, ids: list[int], offsets: list[int]) -> list[int]:
    """The index in ``ids`` (one response's valid tokens, EOS included) of the token that closes
    each character ``offset`` of its decoded text: the first token whose decoded prefix is at least
    ``offset`` characters long. An offset at or past the end of the text is the last token (the EOS
    when there is one: where an outcome reward goes, as PPO's score).

    Prefix lengths grow with the prefix, so each offset is found by bisection: O(log n) decodes per
    step rather than one decode per token (quadratic in the response length, on the rollout path).
    """
    if not ids:
        raise ValueError("a response with no token has no position for a step reward")
    memo: dict[int, int] = {}

    def length(k: int) -> int:  # characters of the decoded prefix ids[: k + 1]
        if k not in memo:
            memo[k] = len(tokenizer.decode(ids[: k + 1], skip_special_tokens=True))
        return memo[k]

    last = len(ids) - 1
    out = []
    for offset in offsets:
        if offset >= length(last):
            out.append(last)
            continue
        lo, hi = 0, last  # length(hi) >= offset
        while lo < hi:
            mid = (lo + hi) // 2
            if length(mid) >= offset:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out


def dense_step_rewards(
    steps: list[list[tuple[int, float]]], shape: torch.Size | tuple[int, int], device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per completion ``(token index, reward)`` pairs -> ``(step_rewards [N, R], step_ends [N, R] bool)``:
    each reward at its token (summed when two share one), 0 and False elsewhere."""
    rewards = torch.zeros(shape, dtype=torch.float32)
    ends = torch.zeros(shape, dtype=torch.bool)
    for i, row in enumerate(steps):
        for pos, r in row:
            rewards[i, pos] += float(r)
            ends[i, pos] = True
    return rewards.to(device), ends.to(device)


def masked_seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of the per-sequence token mean (GRPO's view of a per-token quantity)."""
    m = mask.to(x.dtype)
    return (zero_masked(x, mask).sum(-1) / m.sum(-1).clamp(min=1)).mean()


__all__ = ["OnlineObjective", "Experience", "STEP_REWARDS_KEY", "TrainingDiverged", "check_finite", "dense_step_rewards",
           "masked_mean", "masked_seq_mean", "step_token_positions"]
