"""Small, pure tensor operations shared by objectives and evaluation."""

from alignx.ops.logprobs import masked_mean, masked_sum, shift_for_next_token, token_logprobs

__all__ = ["masked_mean", "masked_sum", "shift_for_next_token", "token_logprobs"]
