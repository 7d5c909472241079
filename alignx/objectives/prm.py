"""Process reward model: the reward model's scalar head, read at the last token of every step.

``objective=prm`` trains on ``steps`` rows ``{prompt, steps, step_labels}`` (the builtin ``steps``
task makes them). A row is encoded as the prompt followed by its steps joined by
``objective.step_separator``; the scalar head (:func:`~alignx.models.heads.add_reward_head`, the
RM's) gives one logit per token and the loss is binary cross-entropy at each step's last token
against its label (:func:`~alignx.losses.process_reward.step_bce_loss`). Logged (train/ and val/):
``loss``, ``step_accuracy``, ``first_error_accuracy``, ``positive_rate`` (the majority baseline is
``max(p, 1 - p)``) and ``steps``.

The saved model is a plain ``AutoModelForSequenceClassification`` (num_labels=1) like the RM's.
To score the steps of a solution later, use :func:`~alignx.rewards.steps.step_scores` with the same
separator (recorded in the saved config as ``alignx_step_separator``): it encodes exactly as
training did (a plain-string prompt, no chat template) and returns ``σ(s)`` per step, the
probability that the step is correct. The ``prm`` reward (step-level rewards for online RL) and
``eval.prm`` (PRM-guided best-of-N) read a saved PRM that way.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from alignx.data.batching import collate_sft
from alignx.data.tokenize import (
    encode_prompt,
    fit_to_length,
    prompt_is_templated,
    prompt_text,
)
from alignx.errors import ConfigError
from alignx.losses.process_reward import NOT_A_STEP, step_bce_loss
from alignx.models.heads import add_reward_head, token_values
from alignx.objectives.base import Objective
from alignx.objectives.dpo import required
from alignx.rewards.steps import SEPARATOR_ATTR, encode_step_tokens, step_scores

#: the keys encode reads (defaults in conf/objective/prm.yaml)
PRM_KEYS = frozenset({"step_separator"})


def encode_steps_row(row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], separator: str) -> tuple[dict | None, str]:
    """A steps row -> ``input_ids`` (prompt + steps) and ``labels``: each step's label (0/1) at its
    last token, :data:`~alignx.losses.process_reward.NOT_A_STEP` elsewhere (SFT's label layout, so
    :func:`~alignx.data.batching.collate_sft` batches it). Under ``truncate_completion`` the steps
    past ``max_length`` lose their labels; a row left with no labelled step is dropped."""
    chat = bool(data_cfg["chat_template"])
    p_ids = encode_prompt(prompt_text(row, tokenizer, chat), tokenizer, prompt_is_templated(row, chat))
    c_ids, ends = encode_step_tokens(row["steps"], tokenizer, separator)
    keep = 1 if p_ids and p_ids[0] == tokenizer.bos_token_id else 0
    fitted = fit_to_length(p_ids, c_ids, int(data_cfg["max_length"]), str(data_cfg["truncation"]), keep)
    if fitted is None:
        return None, "dropped"
    p_ids, c_ids, status = fitted
    labels = [NOT_A_STEP] * (len(p_ids) + len(c_ids))
    kept = 0
    for end, label in zip(ends, row["step_labels"]):
        if end < len(c_ids):
            labels[len(p_ids) + end] = int(label)
            kept += 1
    if kept == 0:
        return None, "dropped"
    return {"input_ids": p_ids + c_ids, "labels": labels}, status


class ProcessRewardModel(Objective):
    """A process reward model: BCE on the scalar head at each step's last token (module docstring)."""

    name: ClassVar[str] = "prm"
    data_kind: ClassVar[str] = "steps"
    generates_text: ClassVar[bool] = False
    merge_adapter_on_save: ClassVar[bool] = True
    config_keys: ClassVar[frozenset[str]] = PRM_KEYS
    encode_keys: ClassVar[frozenset[str]] = PRM_KEYS

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Before any work: only the PRM's keys, ``step_separator`` a string."""
        super().check_config(cfg)
        sep = required(cfg.objective, sorted(PRM_KEYS), "read by objective=prm")["step_separator"]
        if not isinstance(sep, str):
            raise ConfigError(f"objective.step_separator must be a string (what joins a solution's steps), got {sep!r}")

    @classmethod
    def prepare_model(cls, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any]) -> torch.nn.Module:
        """The RM's scalar head; the separator is recorded in the config (saved with the model), so
        the ``prm`` reward and ``eval.prm`` split and encode steps as training did."""
        prm = add_reward_head(model, tokenizer)
        setattr(prm.config, SEPARATOR_ATTR, str(cfg["step_separator"]))
        return prm

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        return encode_steps_row(row, tokenizer, data_cfg, str(objective_cfg["step_separator"]))

    @classmethod
    def collate_fn(cls, tokenizer: Any) -> Callable[[Sequence[dict]], dict]:
        return partial(collate_sft, pad_id=tokenizer.pad_token_id)

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = token_values(self.model, batch["input_ids"], batch["attention_mask"])
        return step_bce_loss(values, batch["labels"])

    def loss_weight(self, batch: Mapping[str, torch.Tensor], metrics: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss is a mean over the batch's labelled steps."""
        return metrics["steps"]


__all__ = ["ProcessRewardModel", "encode_step_tokens", "encode_steps_row", "step_scores"]
