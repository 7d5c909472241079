"""Padding-free forward passes: a padded batch runs as one packed sequence, attention kept per row.

A right-padded batch of B rows of length T spends ``B * T`` token slots, of which only
``sum(lengths)`` are real. With ``model.padding_free=true`` the objectives run the model on the
real tokens only: they are concatenated into one row of N tokens, each keeping the position ids
it had in its own row, and attention is computed row by row (``is_causal`` per segment), so no
token ever attends across a row boundary. Every projection and MLP then works on N tokens instead
of ``B * T``. The hidden states (or a head's outputs) are scattered back to the padded [B, T]
layout afterwards, so losses, log-probs and metrics are computed by exactly the code the padded
path uses and equal it up to float rounding (docs/losses.md, "Padding-free batches").

How attention is kept per row: a transformers attention implementation registered under
:data:`IMPLEMENTATION`. Given the row boundaries (``cu_seq_lens_q``, the keyword arguments
transformers' flash-attention path takes for packed rows, which models pass down to their
attention), it computes scaled dot-product attention on each row's slice of the packed queries,
keys and values; without them (generation, evaluation, any caller passing an attention mask) it
is transformers' own SDPA attention with its usual mask. The boundaries travel as forward
arguments, not as state, because gradient checkpointing calls the layers again in the backward
pass, after the forward returned; only the mask builder, which runs once per forward, reads the
:func:`packed` context.

Supported: transformers models that dispatch attention through ``config._attn_implementation``
(Llama, Mistral, Qwen2, Gemma, GPT-2 and most others since transformers 4.48), plain or
wrapped by peft with an in-place tuner. Anything else is a :class:`ConfigError` naming
``model.padding_free``.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

from alignx.errors import ConfigError
from alignx.models.adapters import is_peft

KEY = "model.padding_free"
#: the name of alignx's per-row attention in transformers' attention registries
IMPLEMENTATION = "alignx_varlen"

#: True while a packed forward runs: the mask builder (which sees no forward arguments) then builds no mask
_PACKED: contextvars.ContextVar[bool] = contextvars.ContextVar("alignx_packed", default=False)


class PackedBatch(NamedTuple):
    """A right-padded [B, T] batch as one row of its N real tokens."""

    #: the real tokens, row after row [1, N]
    input_ids: torch.Tensor
    #: each token's position id in its own row [1, N]
    position_ids: torch.Tensor
    #: flat index of each packed token in the [B * T] padded layout [N]
    index: torch.Tensor
    #: offsets of the rows in the packed sequence: row b is ``bounds[b]:bounds[b + 1]`` (B + 1 ints)
    bounds: tuple[int, ...]
    #: the padded batch's shape (B, T)
    shape: tuple[int, int]

    @property
    def last_index(self) -> torch.Tensor:
        """Position in the packed sequence of each row's last real token [B] (-1 for an empty row)."""
        return torch.tensor(self.bounds[1:], device=self.index.device) - 1

    @property
    def forward_kwargs(self) -> dict[str, object]:
        """The model's keyword arguments for this packed batch (inputs, positions, row boundaries)."""
        cu = torch.tensor(self.bounds, dtype=torch.int32, device=self.index.device)
        longest = max((e - a for a, e in zip(self.bounds[:-1], self.bounds[1:])), default=0)
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "attention_mask": None,
                "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed per-token values [1, N, ...] -> the padded layout [B, T, ...], zeros at padding.

        Differentiable: gradients reach ``packed`` at the real tokens only.
        """
        b, t = self.shape
        flat = packed[0]
        out = flat.new_zeros((b * t, *flat.shape[1:])).index_copy(0, self.index, flat)
        return out.view(b, t, *flat.shape[1:])


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None) -> PackedBatch:
    """The real tokens of a padded batch (``attention_mask`` 1) as one packed row, in row order.

    Without ``position_ids`` each token keeps its index in its padded row, which is what the padded
    forward uses (transformers' default ``arange(T)``); that equals the padded computation for
    right-padded rows only, so other masks are refused. With ``position_ids`` [B, T] (e.g. online
    RL's left-padded prompts, positions counted over real tokens) those are kept, and any mask
    works: in the padded forward a token attends to the real tokens before it in its row, which
    are exactly those before it in its packed segment.
    """
    b, t = input_ids.shape
    mask = attention_mask.bool()
    lengths = mask.sum(1)
    if position_ids is None:
        right_padded = torch.arange(t, device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
        if not torch.equal(mask, right_padded):
            raise ValueError("padding-free batches without position ids must be right-padded: every row's real tokens first, then padding")
        position_ids = torch.arange(t, device=input_ids.device).expand(b, t)
    index = mask.flatten().nonzero().squeeze(1)
    bounds = (0, *torch.cumsum(lengths, 0).tolist())
    return PackedBatch(input_ids.flatten()[index].unsqueeze(0), position_ids.flatten()[index].unsqueeze(0), index, bounds, (b, t))


def _per_row_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention-function signature: [1, H, N, D] tensors in, [1, N, H, D] out."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if cu_seq_lens_q is None:
        for name in ("cu_seq_lens_k", "max_length_q", "max_length_k"):
            kwargs.pop(name, None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    groups = query.size(1) // key.size(1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    p = dropout if module.training else 0.0
    outs = [
        F.scaled_dot_product_attention(query[:, :, a:e], key[:, :, a:e], value[:, :, a:e], dropout_p=p, is_causal=True, scale=scaling)
        for a, e in zip(bounds[:-1], bounds[1:])
        if e > a
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _per_row_mask(*args, **kwargs) -> torch.Tensor | None:
    """No mask inside :func:`packed` (attention is per row already); SDPA's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    return None if _PACKED.get() else sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, _per_row_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _per_row_mask)


def enable_padding_free(model: torch.nn.Module) -> None:
    """Switch ``model``'s attention to alignx's per-row implementation (idempotent).

    Outside a packed forward it behaves as transformers' SDPA attention, so generation and
    evaluation are unchanged. The setting is not saved with the model. Raises
    :class:`ConfigError` naming ``model.padding_free`` for a model that does not dispatch
    attention through transformers' registry.
    """
    base = model.get_base_model() if is_peft(model) else model
    config = getattr(base, "config", None)
    if config is None or not hasattr(base, "set_attn_implementation"):
        raise ConfigError(f"{KEY} needs a transformers model (set_attn_implementation); {type(base).__name__} is not one: set {KEY}=false")
    if config._attn_implementation == IMPLEMENTATION:
        return
    _register()
    try:
        base.set_attn_implementation(IMPLEMENTATION)
    except (ValueError, NotImplementedError) as exc:
        raise ConfigError(
            f"{KEY}: {type(base).__name__} cannot use a registered attention implementation "
            f"({str(exc).splitlines()[0][:160]}): set {KEY}=false"
        ) from None


@contextmanager
def packed(model: torch.nn.Module, batch: PackedBatch) -> Iterator[None]:
    """The block runs ``model`` on the packed ``batch``: call it with ``**batch.forward_kwargs``.

    Switches ``model`` to the per-row attention first (:func:`enable_padding_free`): under any
    other implementation a packed row would attend across its sequences. Inside the block the
    model builds no attention mask.
    """
    enable_padding_free(model)
    token = _PACKED.set(True)
    try:
        yield
    finally:
        _PACKED.reset(token)
