"""Build or load policy models and tokenizers, and save them atomically in HF format."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from alignx.errors import ModelLoadError
from alignx.models.tokenizer import build_byte_tokenizer
from alignx.registry import load_plugins


def build_llama(cfg: Mapping[str, Any], tokenizer: Any = None) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised Llama-style causal LM from config dims, with the byte tokenizer.

    ``cfg`` is a ``model`` node of kind ``llama`` (conf/model/tiny.yaml lists every key).

    Initialisation is seeded by ``cfg.init_seed`` so every job of a sweep starts from the same
    weights regardless of the training seed.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_byte_tokenizer(model_max_length=int(cfg["max_position_embeddings"]))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=int(cfg["num_attention_heads"]),
        # null: as many key/value heads as attention heads (no grouped-query attention)
        num_key_value_heads=int(cfg["num_key_value_heads"] or cfg["num_attention_heads"]),
        max_position_embeddings=int(cfg["max_position_embeddings"]),
        tie_word_embeddings=bool(cfg["tie_word_embeddings"]),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
    )
    fork_devices: list = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(int(cfg["init_seed"]))
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or os.sep in name and name.count("/") != 1


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def build_hf(cfg: Mapping[str, Any], tokenizer: Any = None) -> tuple[torch.nn.Module, Any]:
    """Load any transformers causal LM by local directory or hub id (``cfg.name_or_path``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(cfg.get("name_or_path") or "")
    if not name:
        raise ModelLoadError("model=hf needs model.name_or_path=<local directory or hub id>")
    local = Path(name).expanduser()
    is_local = local.is_dir()
    if not is_local and (local.exists() or _looks_like_path(name)):
        what = "is not a directory" if local.exists() else "does not exist"
        raise ModelLoadError(
            f"model path '{name}' {what} (resolved to {local.resolve()}). Pass a directory containing "
            f"config.json and the weights (e.g. one saved by alignx or save_pretrained), or a hub id like 'org/name'."
        )
    source = str(local) if is_local else name
    kwargs = dict(
        revision=cfg.get("revision") or None,
        # opt-in: only an explicit `true` runs code shipped with a checkpoint (conf/model/hf.yaml says false)
        trust_remote_code=cfg.get("trust_remote_code") is True,
    )
    try:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source, **kwargs)
        dtype = cfg.get("dtype") or "auto"
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype if dtype == "auto" else getattr(torch, dtype), **kwargs
        )
    except Exception as exc:
        if "custom code" in str(exc) or "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"'{name}' needs its own Python code to load (its config.json names code in the repository: "
                f"auto_map / an unknown model_type). alignx does not run a model's code unless you set "
                f"model.trust_remote_code=true; do that only for a source you trust."
            ) from None
        if is_local:
            raise ModelLoadError(
                f"could not load a causal LM from directory '{local.resolve()}': {_reason(exc)}. "
                f"It needs config.json, the weights (*.safetensors) and tokenizer files."
            ) from None
        raise ModelLoadError(
            f"could not load '{name}' from the Hugging Face Hub ({_reason(exc)}). If this machine is offline, "
            f"download it elsewhere (`hf download {name} --local-dir DIR`), copy it here and pass "
            f"model.name_or_path=DIR; otherwise check the id, the network and HF_HUB_OFFLINE."
        ) from None
    if tokenizer.pad_token is None:
        # Right-padded batches with an attention mask never train on pad, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def build_model(cfg: Mapping[str, Any], registry: Any = None) -> tuple[torch.nn.Module, Any]:
    """Build the model named by ``cfg.kind`` through the registry (``llama``, ``hf`` or a plugin's)."""
    registry = registry or load_plugins()
    builder = registry.get("model", str(cfg["kind"]))
    return builder(cfg)


def save_pretrained_atomic(dest: str | os.PathLike, *objects: Any, **kwargs: Any) -> Path:
    """``save_pretrained`` every object into ``dest`` so that ``dest`` appears complete or not at all.

    Writes to a sibling temp directory, then renames it into place: a crash mid-save never
    leaves a half-written model where a user (or a later stage) would load it.
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for obj in objects:
            obj.save_pretrained(tmp, **kwargs)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
