"""How the trained model computes: gradient checkpointing (``model.gradient_checkpointing``) and
compilation (``trainer.compile``). Neither changes a value beyond float rounding; both are measured in
``benchmarks/trl_side_by_side.py`` (README, "Speed").
"""

from __future__ import annotations

import torch

from alignx.errors import ConfigError
from alignx.models.adapters import is_peft


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations during the backward pass (transformers' gradient
    checkpointing, non-reentrant, so frozen inputs and adapters need no special handling).

    Activations then cost one layer's worth instead of every layer's, for about one extra forward of
    compute. Only the training forward is affected: under ``no_grad`` (reference, rollouts,
    evaluation) nothing is recomputed. Raises :class:`ConfigError` naming
    ``model.gradient_checkpointing`` for a model that does not support it.
    """
    base = model.get_base_model() if is_peft(model) else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"model.gradient_checkpointing: {type(base).__name__} does not support gradient checkpointing: "
            "set model.gradient_checkpointing=false"
        )
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (its largest ``ModuleList``), or [] if none."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    return list(max(lists, key=len)) if lists else []


def compile_model(model: torch.nn.Module) -> int:
    """``torch.compile`` each decoder layer of ``model`` in place; returns how many were compiled.

    Compiling the repeated block rather than the whole model compiles one graph reused by every
    layer (seconds, not minutes), keeps parameter names (checkpoints and saved adapters load as
    before) and leaves the embedding, head and loss code, whose shapes change with every batch,
    eager. Shapes are marked dynamic: length-bucketed batches vary in length. Raises
    :class:`ConfigError` naming ``trainer.compile`` for a model without repeated layers.
    """
    layers = decoder_layers(model)
    if not layers:
        raise ConfigError(f"trainer.compile: {type(model).__name__} has no repeated layers to compile: set trainer.compile=false")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
