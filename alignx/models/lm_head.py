"""A causal LM's final hidden states and output head, for log-probs that never build the full logits.

``model(...).logits`` is ``lm_head(decoder(...))``: a [B, T, V] tensor. With
``model.logprob_chunk_size`` set, the objectives instead run the model only up to its decoder's
last hidden states (after the final norm) and hand them, with the head's weight and bias, to
:mod:`alignx.ops.chunked`, which projects a few positions to the vocabulary at a time
(docs/losses.md, "Log-probs without the full logits"). ``output_hidden_states=True`` would not
do: the model still builds the logits.

Supported: transformers causal LMs whose logits are exactly a linear head over the decoder's
output (Llama, Mistral, Qwen2, GPT-2 and most others), plain or wrapped by peft with an in-place
tuner (LoRA, DoRA; the adapters live inside the decoder's layers, so the decoder runs them, and
inside ``disable_adapter()`` it runs without them). Anything else is a :class:`ConfigError`
naming the key, raised by :func:`check_lm_head` before training starts.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from alignx.errors import ConfigError
from alignx.models.adapters import is_peft
from alignx.models.packing import pack, packed

KEY = "model.logprob_chunk_size"

#: config attributes of architectures whose logits are more than ``lm_head(hidden)`` (Gemma 2's
#: soft-capping, Cohere's and Granite's scaling), with the value at which they are a no-op
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


class HeadInputs(NamedTuple):
    """What the logits are made of: ``logits = hidden @ weight.T (+ bias)``."""

    #: final hidden states [B, T, H], after the decoder's last norm
    hidden: torch.Tensor
    #: the output head's weight [V, H] (in the hidden states' dtype)
    weight: torch.Tensor
    #: the output head's bias [V], or None
    bias: torch.Tensor | None


def _parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """(decoder, output head) of ``model``, or a ConfigError saying why the chunked path cannot run."""
    name = type(model).__name__
    if is_peft(model):
        if model.active_peft_config.is_prompt_learning:
            raise ConfigError(
                f"{KEY} needs an adapter that lives inside the model's layers (LoRA, DoRA); "
                f"{model.active_peft_config.peft_type} prompt learning changes the model's inputs: set {KEY}=null"
            )
        model = model.get_base_model()  # LoRA layers are injected in place: the base model runs them
        name = type(model).__name__
    if not (hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings")):
        raise ConfigError(
            f"{KEY} needs a transformers causal LM exposing get_decoder() and get_output_embeddings(); "
            f"{name} does not: set {KEY}=null"
        )
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or decoder is model or not isinstance(head, torch.nn.Linear):
        what = "no output head" if head is None else f"an output head of type {type(head).__name__}, not a plain Linear"
        raise ConfigError(f"{KEY} needs a causal LM whose logits are a linear head over its decoder; {name} has {what}: set {KEY}=null")
    config = model.config
    for attr, neutral in _LOGIT_TRANSFORMS.items():
        # architecture-specific attributes: most configs do not define them at all
        value = getattr(config, attr, neutral)
        if value != neutral:
            raise ConfigError(
                f"{KEY}: {name} transforms its logits beyond the linear head ({attr}={value}), which the "
                f"chunked path does not reproduce: set {KEY}=null"
            )
    return decoder, head


def check_lm_head(model: torch.nn.Module) -> None:
    """Raise :class:`ConfigError` naming ``model.logprob_chunk_size`` unless :func:`head_inputs` can serve ``model``."""
    _parts(model)


def head_inputs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    *,
    padding_free: bool = False,
) -> HeadInputs:
    """Run ``model`` up to its final hidden states; return them with its output head's weight and bias.

    ``hidden @ weight.T + bias`` equals ``model(input_ids, attention_mask, position_ids).logits``
    (the same decoder call, ``position_ids`` passed only when given, as the plain forward does),
    but the logits are never built. A peft model runs with its adapters (or without them, inside
    its ``disable_adapter()`` block). Under autocast both are cast to the autocast dtype, else the
    weight to the hidden states' dtype (differentiable casts), as the head's own matmul would
    compute. With ``padding_free`` the decoder runs on the batch's real tokens only, packed into
    one row with attention kept per row (:func:`alignx.models.packing.pack`: right-padded rows, or
    any mask with ``position_ids``), and the hidden states come back in the padded [B, T, H]
    layout, zeros at padding.
    Raises :class:`ConfigError` for a model that is not a linear head over a decoder (see
    :func:`check_lm_head`).
    """
    decoder, head = _parts(model)
    if padding_free:
        batch = pack(input_ids, attention_mask, position_ids)
        with packed(model, batch):
            out = decoder(**batch.forward_kwargs, use_cache=False)
        hidden = batch.unpack(out.last_hidden_state)
    else:
        kwargs = {} if position_ids is None else {"position_ids": position_ids}
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).last_hidden_state
    weight, bias = head.weight, head.bias
    if weight.dim() != 2 or weight.size(1) != hidden.size(-1):
        # e.g. a head sharded by FSDP/ZeRO-3 outside its own forward
        raise ConfigError(
            f"{KEY}: the output head's weight has shape {tuple(weight.shape)}, not [vocab, {hidden.size(-1)}] "
            f"(a sharded head?): set {KEY}=null"
        )
    device = hidden.device.type
    # the head's own matmul would run in the autocast dtype under mixed precision: cast both sides to
    # it here, so the chunked op's forward and its recomputing backward (where autocast is off) agree
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    if hidden.dtype != dtype:
        hidden = hidden.to(dtype)
    if weight.dtype != dtype:  # differentiable casts: gradients reach the head in its own dtype
        weight = weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return HeadInputs(hidden, weight, bias)
