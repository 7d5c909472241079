"""Small, pure tensor operations shared by objectives and evaluation."""

from alignx.ops.logprobs import (
    masked_mean,
    masked_sum,
    shift_for_next_token,
    token_logprobs,
)
from alignx.ops.rl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    kl_estimate,
    last_token_index,
    masked_var,
    masked_whiten,
    per_token_rewards,
    truncate_after_eos,
)

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "entropy_from_logits",
    "gae",
    "kl_estimate",
    "last_token_index",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "per_token_rewards",
    "shift_for_next_token",
    "token_logprobs",
    "truncate_after_eos",
]
