"""Model loading: byte tokenizer, tiny Llama configs, HF checkpoints, adapters."""

from alignx.models.loading import build_model, save_pretrained_atomic
from alignx.models.tokenizer import build_byte_tokenizer

__all__ = ["build_byte_tokenizer", "build_model", "save_pretrained_atomic"]
