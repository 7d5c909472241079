"""Loss functions: pure, typed, tested against hand-computed values."""

from alignx.losses.sft import sft_loss

__all__ = ["sft_loss"]
