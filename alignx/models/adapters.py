"""Parameter-efficient adapters (LoRA, DoRA) via peft, and the no-op ``none`` adapter."""

from __future__ import annotations

from typing import Any, Mapping

import torch


def no_adapter(model: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.nn.Module:
    """Full fine-tuning: the model is returned unchanged."""
    return model


def lora(model: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.nn.Module:
    """Wrap ``model`` with LoRA (or DoRA when ``cfg.use_dora``) adapters; only adapters train."""
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model

    targets = cfg.get("target_modules", "all-linear")
    if not isinstance(targets, str):
        targets = list(OmegaConf.to_container(targets) if OmegaConf.is_config(targets) else targets)
    config = LoraConfig(
        r=int(cfg.get("r", 8)),
        lora_alpha=float(cfg.get("alpha", 16)),
        lora_dropout=float(cfg.get("dropout", 0.0)),
        target_modules=targets,
        bias=str(cfg.get("bias", "none")),
        use_dora=bool(cfg.get("use_dora", False)),
        # a reward model's head is new: SEQ_CLS makes peft train and save it in full alongside the adapters
        task_type="SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a hard dependency
        return False
    return isinstance(model, PeftModel)
