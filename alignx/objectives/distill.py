"""Knowledge distillation from a saved teacher model: off-policy KD and on-policy GKD.

One objective, :class:`Distill`, covers both, because they differ only in *where the completion
whose tokens are scored comes from*; the per-token loss is the same generalised JSD
(:func:`alignx.losses.distill.generalized_jsd`, ``docs/losses.md``, "Knowledge distillation").
Each training batch (of sft rows: prompt and completion) draws, with probability
``objective.on_policy_fraction`` (GKD's λ, a seeded function of (seed, step) so a resumed run draws
the same), whether the **student samples** the completions of the batch's prompts (on-policy);
otherwise the completions are the dataset's (``objective.source=dataset``) or **sampled from the
teacher** (``objective.source=teacher``, sequence-level KD). Then both models read the same
tokens and the loss is the divergence between their next-token distributions at every
completion position, averaged over those tokens. No gradient flows through sampling.

Two registered names, two presets of the same class (as ``dapo``/``gspo`` are of GRPO):

* ``objective=distill`` (conf/objective/distill.yaml): off-policy, forward KL (``beta=0``,
  ``on_policy_fraction=0``): classic token-level KD on the dataset's completions;
* ``objective=gkd`` (conf/objective/gkd.yaml): on-policy GKD (Agarwal et al. 2024): half the
  batches on student samples, ``beta=0.5``.

Every key works in both (``objective=distill objective.on_policy_fraction=1`` is GKD with forward
KL). A separate on-policy class would have duplicated everything but one line of the step.

The teacher (``objective.teacher``: the directory of any saved causal LM, e.g. ``<output_dir>/model``
of an alignx job) is loaded once, frozen (no gradient, eval mode, kept outside the module tree so
Lightning neither trains nor checkpoints it) and must share the student's tokenizer: the same
vocabulary and special tokens (checked; a ConfigError names the key otherwise). Its hidden size and
depth may differ. With ``model.logprob_chunk_size`` (or ``model.padding_free``) both models stop at
their final hidden states and only completion positions are projected to the vocabulary, a chunk at
a time with the chunk's logits recomputed in the backward pass (memory O(chunk · V)); otherwise the
two [B, T, V] logits are built and the divergence taken at completion positions only.

Metrics: ``train/tokens``, ``train/on_policy`` (share of batches whose completions the student
sampled), ``val/loss`` (the configured divergence on held-out dataset completions) and
``val/kl_to_teacher``: the forward KL(teacher || student) per completion token of held-out
demonstrations at temperature 1, comparable across objectives and settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from alignx.errors import ConfigError, ModelLoadError
from alignx.generation import Rollout, left_pad, position_ids, rollout_seed, sample
from alignx.losses.distill import distill_loss, distill_loss_from_hidden
from alignx.models.lm_head import check_lm_head, head_inputs
from alignx.models.loading import build_hf
from alignx.objectives.base import Objective
from alignx.ops.logprobs import IGNORE_INDEX

#: the keys of objective=distill and objective=gkd (defaults: conf/objective/distill.yaml)
DISTILL_KEYS = frozenset({"teacher", "source", "on_policy_fraction", "beta", "temperature", "max_new_tokens"})
#: where off-policy completions come from
SOURCES = ("dataset", "teacher")


class Distill(Objective):
    """Distil a saved teacher into the policy (see the module docstring for the modes and keys)."""

    name: ClassVar[str] = "distill"
    data_kind: ClassVar[str] = "sft"
    config_keys: ClassVar[frozenset[str]] = DISTILL_KEYS

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        self.check_values(cfg)
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.source = str(cfg["source"])
        self.on_policy_fraction = float(cfg["on_policy_fraction"])
        self.beta = float(cfg["beta"])
        self.temperature = float(cfg["temperature"])
        self.max_new_tokens = int(cfg["max_new_tokens"])
        self.seed = 0  # the job's seed, set by attach()
        # outside the module tree on purpose (see ReferenceObjective._ref): not trained, not checkpointed
        self._teacher: list[torch.nn.Module] = [load_teacher(str(cfg["teacher"]), tokenizer)]

    @property
    def teacher(self) -> torch.nn.Module:
        """The frozen teacher (eval mode, no gradient)."""
        return self._teacher[0]

    # -- configuration ----------------------------------------------------------------------
    @classmethod
    def check_values(cls, cfg: Mapping[str, Any]) -> None:
        """ConfigError naming the key for a value the objective cannot run with."""
        teacher = cfg["teacher"]
        if teacher is None or not str(teacher):
            raise ConfigError(
                f"objective.teacher must be set for objective={cls.name}: the directory of a saved causal LM "
                "(e.g. <output_dir>/model of an alignx job) sharing the student's tokenizer"
            )
        path = Path(str(teacher)).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"objective.teacher='{teacher}' is not a directory (resolved to {path.resolve()}): pass the directory "
                "of a saved causal LM (config.json, weights, tokenizer files)"
            )
        if str(cfg["source"]) not in SOURCES:
            raise ConfigError(f"objective.source='{cfg['source']}' is not valid. Valid: {', '.join(SOURCES)}")
        for key in ("on_policy_fraction", "beta"):
            if not 0.0 <= float(cfg[key]) <= 1.0:
                raise ConfigError(f"objective.{key} must be in [0, 1], got {cfg[key]}")
        if float(cfg["temperature"]) <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {cfg['temperature']}")
        if int(cfg["max_new_tokens"]) < 1:
            raise ConfigError(f"objective.max_new_tokens must be >= 1, got {cfg['max_new_tokens']}")

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Unknown keys, bad values, and a prompt that would be trained on (distillation scores
        completion tokens only), before any work."""
        super().check_config(cfg)
        cls.check_values(cfg.objective)
        if not bool(cfg.data.completion_only_loss):
            raise ConfigError(
                f"data.completion_only_loss must be true for objective={cfg.objective.name}: distillation scores "
                "completion tokens only (the prompt is context, and the prompt is what the student samples from)"
            )

    def attach(self, job: Any) -> None:
        self.seed = int(job.cfg.seed)
        if self.logprob_chunk_size is not None:
            try:
                check_lm_head(self.teacher)
            except ConfigError as exc:
                raise ConfigError(f"objective.teacher: {exc}") from None

    def on_fit_start(self) -> None:
        self.teacher.to(self.device).eval()

    # -- completions ------------------------------------------------------------------------
    def on_policy_draw(self, step: int) -> bool:
        """Whether training step ``step`` scores the student's own samples (probability
        ``on_policy_fraction``; a function of (seed, step), the same on every rank)."""
        if self.on_policy_fraction <= 0.0:
            return False
        if self.on_policy_fraction >= 1.0:
            return True
        g = torch.Generator().manual_seed(self.seed * 7919 + int(step))
        return bool(torch.rand((), generator=g) < self.on_policy_fraction)

    def sampled_inputs(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """The batch's prompts completed by ``model`` (at ``temperature``, up to ``max_new_tokens``,
        cut after EOS), as inputs whose labels are the sampled tokens (EOS included)."""
        labelled = batch["labels"] != IGNORE_INDEX
        # completion_only_loss: the prompt is everything before the first labelled position
        starts = labelled.long().argmax(dim=1).tolist()
        prompts = [batch["input_ids"][i, :s].tolist() for i, s in enumerate(starts)]
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        rollout: Rollout = sample(
            model, ids, mask, eos_id=self.tokenizer.eos_token_id, pad_id=self.tokenizer.pad_token_id,
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=seed,
        )
        attention = rollout.attention_mask
        response = rollout.response_ids.masked_fill(~rollout.response_mask.bool(), IGNORE_INDEX)
        labels = torch.cat([torch.full_like(rollout.prompt_ids, IGNORE_INDEX), response], dim=1)
        return {"input_ids": rollout.input_ids, "attention_mask": attention,
                "position_ids": position_ids(attention), "labels": labels}

    # -- loss -------------------------------------------------------------------------------
    def divergence(self, inputs: Mapping[str, torch.Tensor], beta: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean divergence over labelled tokens, n_tokens)`` of the policy from the teacher on
        ``inputs`` (input_ids, attention_mask, labels, optional position_ids); gradient into the policy."""
        ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        pos = inputs.get("position_ids")
        if self.logprob_chunk_size is not None or self.padding_free:
            s = head_inputs(self.model, ids, mask, pos, padding_free=self.padding_free)
            with torch.no_grad():
                t = head_inputs(self.teacher, ids, mask, pos)
            v = min(s.weight.size(0), t.weight.size(0))  # heads padded past the shared tokenizer: compare its ids
            return distill_loss_from_hidden(
                s.hidden, s.weight[:v], None if s.bias is None else s.bias[:v],
                t.hidden, t.weight[:v], None if t.bias is None else t.bias[:v], labels,
                beta=beta, temperature=temperature, chunk_size=self.logprob_chunk_size,
            )
        kwargs = {} if pos is None else {"position_ids": pos}
        student = self.model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
        with torch.no_grad():
            teacher = self.teacher(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
        v = min(student.size(-1), teacher.size(-1))
        return distill_loss(student[..., :v], teacher[..., :v], labels, beta=beta, temperature=temperature)

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        step = int(self.global_step)
        on_policy = self.on_policy_draw(step)
        seed = rollout_seed(self.seed, self.global_rank, step)
        if on_policy:
            inputs = self.sampled_inputs(self.model, batch, seed)
        elif self.source == "teacher":
            inputs = self.sampled_inputs(self.teacher, batch, seed)
        else:
            inputs = batch
        loss, n_tokens = self.divergence(inputs, self.beta, self.temperature)
        return loss, {"tokens": n_tokens.float(), "on_policy": torch.tensor(float(on_policy), device=loss.device)}

    def loss_weight(self, batch: Mapping[str, torch.Tensor], metrics: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return metrics["tokens"]

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Held-out dataset completions (never sampled, so comparable across steps and settings):
        the configured divergence as ``val/loss`` and the forward KL at temperature 1 as ``val/kl_to_teacher``."""
        loss, n_tokens = self.divergence(batch, self.beta, self.temperature)
        if self.beta == 0.0 and self.temperature == 1.0:
            kl = loss
        else:
            kl, _ = self.divergence(batch, 0.0, 1.0)
        size = batch["input_ids"].size(0)
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log_dict({"val/kl_to_teacher": kl, "val/tokens": n_tokens.float()}, batch_size=size, sync_dist=True)


class GKD(Distill):
    """On-policy GKD (Agarwal et al. 2024): :class:`Distill` with conf/objective/gkd.yaml's
    preset (``on_policy_fraction=0.5``, ``beta=0.5``); a class of its own so messages and the
    registry name it."""

    name: ClassVar[str] = "gkd"


def load_teacher(path: str, tokenizer: Any) -> torch.nn.Module:
    """The causal LM saved in directory ``path``, frozen in eval mode, after checking its tokenizer
    matches ``tokenizer`` (vocabulary and special tokens); a ConfigError naming ``objective.teacher``
    otherwise."""
    try:
        teacher, teacher_tokenizer = build_hf({"name_or_path": path})
    except ModelLoadError as exc:
        raise ConfigError(f"objective.teacher='{path}' could not be loaded: {exc}") from None
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"objective.teacher='{path}' has another tokenizer than the student ({len(teacher_tokenizer)} vs "
            f"{len(tokenizer)} tokens, or the same count mapped differently): distillation compares next-token "
            "distributions id by id, so teacher and student must share one vocabulary"
        )
    def specials(tok: Any) -> tuple:
        return tok.bos_token_id, tok.eos_token_id, tok.pad_token_id

    if specials(teacher_tokenizer) != specials(tokenizer):
        raise ConfigError(
            f"objective.teacher='{path}' has other special tokens than the student: (bos, eos, pad) ids "
            f"{specials(teacher_tokenizer)} vs {specials(tokenizer)}"
        )
    out = teacher.get_output_embeddings()
    if out is not None and out.weight.size(0) < len(tokenizer):
        raise ConfigError(
            f"objective.teacher='{path}' scores {out.weight.size(0)} token ids, fewer than its tokenizer's {len(tokenizer)}"
        )
    return teacher.eval().requires_grad_(False)


__all__ = ["DISTILL_KEYS", "Distill", "GKD", "SOURCES", "load_teacher"]
