"""Parameter-efficient adapters (LoRA, DoRA) via peft, and the no-op ``none`` adapter."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch

from alignx.errors import ConfigError
from alignx.models.heads import head_name, is_reward_model

#: peft's shorthand for every linear layer except the output head
ALL_LINEAR = "all-linear"


def no_adapter(model: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.nn.Module:
    """Full fine-tuning: the model is returned unchanged."""
    return model


def probe(model: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.nn.Module:
    """A linear probe: only a reward model's new scalar head trains; the backbone is frozen.

    The head reads features the backbone already has, so what it can fit is limited to what is
    (linearly) in them: the weak-to-strong recipe's strong student on weak labels, a cheap reward
    model on a pretrained LM. Raises :class:`ConfigError` for a model without a scalar head (a
    policy: nothing would train).
    """
    if not is_reward_model(model):
        raise ConfigError(
            f"adapter=probe trains only a reward model's scalar head, and this {type(model).__name__} has none: "
            "use it with a reward-model objective (objective=rm), or adapter=lora / adapter=none for a policy"
        )
    head = head_name(model)
    for name, param in model.named_parameters():
        param.requires_grad_(name.split(".", 1)[0] == head)
    return model


#: adapters that train only a reward model's scalar head (a policy has none to train); the model they
#: leave is a whole plain model, with no peft base to save beside it
HEAD_ONLY_ADAPTERS = ("probe",)


def _adaptable_layers(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(names of every module LoRA can wrap, the distinct last names of its linear layers)."""
    from transformers.pytorch_utils import Conv1D

    linear = (torch.nn.Linear, Conv1D)
    adaptable = (*linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    names, linear_leaves = [], {}
    for name, module in model.named_modules():
        if isinstance(module, adaptable):
            names.append(name)
            if isinstance(module, linear):
                linear_leaves.setdefault(name.rsplit(".", 1)[-1], None)
    return names, list(linear_leaves)


def check_target_modules(model: torch.nn.Module, targets: str | Sequence[str]) -> None:
    """Every ``adapter.target_modules`` pattern matches a layer of ``model``, as peft matches them.

    A string is a regular expression matched against whole module names; a list entry matches a
    module whose name is it or ends with ``.<entry>``. peft fails only when *nothing* matches, so
    a typo in one entry of a list would silently adapt fewer layers; here every entry must match.
    Raises :class:`ConfigError` naming the patterns and listing the model's linear layers.
    """
    if targets == ALL_LINEAR:
        return
    names, linear = _adaptable_layers(model)
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise ConfigError(f"adapter.target_modules='{targets}' is not a valid regular expression: {exc}") from None
        unmatched = [] if any(pattern.fullmatch(n) for n in names) else [targets]
    else:
        unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unmatched:
        raise ConfigError(
            f"adapter.target_modules: {', '.join(repr(t) for t in unmatched)} match no layer of this "
            f"{type(model).__name__}. Its linear layers: {', '.join(linear)} (or adapter.target_modules={ALL_LINEAR})"
        )


def lora(model: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.nn.Module:
    """Wrap ``model`` with LoRA (or DoRA when ``cfg.use_dora``) adapters; only adapters train.

    ``cfg`` is the ``adapter`` node (conf/adapter/lora.yaml holds every key and its default).
    Raises :class:`ConfigError` when ``target_modules`` names layers the model does not have.
    """
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model

    targets = cfg["target_modules"]
    if not isinstance(targets, str):
        targets = [str(t) for t in (OmegaConf.to_container(targets) if OmegaConf.is_config(targets) else targets)]
    check_target_modules(model, targets)
    config = LoraConfig(
        r=int(cfg["r"]),
        lora_alpha=float(cfg["alpha"]),
        lora_dropout=float(cfg["dropout"]),
        target_modules=targets,
        bias=str(cfg["bias"]),
        use_dora=bool(cfg["use_dora"]),
        # a reward model's head is new: SEQ_CLS makes peft train and save it in full alongside the adapters
        task_type="SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_peft(model: torch.nn.Module) -> bool:
    """Whether ``model`` is wrapped by peft (it carries adapters)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a hard dependency
        return False
    return isinstance(model, PeftModel)
