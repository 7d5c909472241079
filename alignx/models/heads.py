"""Scalar heads on causal-LM backbones: the reward model's head."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch


def is_reward_model(model: torch.nn.Module) -> bool:
    """A transformers sequence classifier with a single output (``num_labels == 1``)."""
    return type(model).__name__.endswith("ForSequenceClassification") and getattr(model.config, "num_labels", 0) == 1


def add_reward_head(model: torch.nn.Module, tokenizer: Any) -> torch.nn.Module:
    """Turn a causal LM into ``AutoModelForSequenceClassification`` (num_labels=1) on the same backbone.

    The backbone object is reused, not copied, and the LM head is dropped. The new head reads the
    final hidden state at the last non-pad token (transformers' convention; the EOS that closes
    every completion), initialised N(0, 1/sqrt(d_model + 1)) as in InstructGPT/Stiennon et al.
    The result saves and loads with plain ``AutoModelForSequenceClassification``.
    """
    if is_reward_model(model):
        return model
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    config.architectures = None
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    prefix = model.base_model_prefix
    backbone = getattr(model, prefix)
    # Built on the meta device: only the head gets real memory, the backbone is the LM's own.
    with torch.device("meta"):
        reward_model = AutoModelForSequenceClassification.from_config(config)
    setattr(reward_model, prefix, backbone)
    param = next(backbone.parameters())
    hidden = int(config.get_text_config().hidden_size)
    for name, module in reward_model.named_children():
        if name == prefix:
            continue
        module.to_empty(device=param.device).to(param.dtype)
        for p_name, p in module.named_parameters():
            with torch.no_grad():
                if p_name.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, 1.0 / math.sqrt(hidden + 1))
    leftover = [n for n, p in reward_model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"reward head conversion left parameters unmaterialised: {leftover[:5]}")
    reward_model.train(model.training)
    return reward_model


def head_name(model: torch.nn.Module) -> str:
    """Name of the scalar head of a (possibly peft-wrapped) sequence classifier: its one non-backbone child."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = [n for n, _ in base.named_children() if n != base.base_model_prefix]
    if len(names) != 1:
        raise ValueError(f"cannot tell the scalar head of {type(base).__name__} apart (children besides the backbone: {names})")
    return names[0]


def token_values(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
    **forward_kwargs: object,
) -> torch.Tensor:
    """The scalar head's output at **every** position [B, T] (a value model's V(s_t)).

    A sequence classifier applies its head to every hidden state and then keeps the last
    non-pad one; a forward hook on the head keeps them all, so the same code serves plain and
    peft-wrapped models of any architecture. ``forward_kwargs`` reach the model's forward (a
    packed batch's row boundaries, :mod:`alignx.models.packing`).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, head_name(model))
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        kwargs = {} if position_ids is None else {"position_ids": position_ids}
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs, **forward_kwargs)
    finally:
        handle.remove()
    return captured[-1].squeeze(-1)


def zero_head(model: torch.nn.Module) -> torch.nn.Module:
    """Set the scalar head's weights to 0 (a value head that starts by predicting 0 everywhere)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        for p in getattr(base, head_name(model)).parameters():
            p.zero_()
    return model
