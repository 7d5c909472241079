"""Small, pure tensor operations shared by objectives and evaluation."""

from alignx.ops.chunked import (
    chunked_logprobs_and_entropy,
    chunked_token_logprobs,
    completion_logits_mean_from_hidden,
    cross_entropy_from_hidden,
    sequence_logps_from_hidden,
)
from alignx.ops.logprobs import (
    IGNORE_INDEX,
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
    "IGNORE_INDEX",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "chunked_logprobs_and_entropy",
    "chunked_token_logprobs",
    "completion_logits_mean_from_hidden",
    "cross_entropy_from_hidden",
    "entropy_from_logits",
    "gae",
    "kl_estimate",
    "last_token_index",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "per_token_rewards",
    "sequence_logps_from_hidden",
    "shift_for_next_token",
    "token_logprobs",
    "truncate_after_eos",
]
