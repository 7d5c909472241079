"""Loss functions: pure, typed, tested against hand-computed values."""

from alignx.losses.dpo_family import (
    BUILTIN_PREFERENCE_LOSSES,
    PreferenceInputs,
    PreferenceLoss,
    PreferenceOutput,
)
from alignx.losses.listwise import best_response, pro_loss, ranking_accuracy, rrhf_loss
from alignx.losses.policy_gradient import (
    GRPO_NORMALIZATIONS,
    clipped_policy_loss,
    clipped_surrogate,
    clipped_value_loss,
    group_advantages,
    grpo_token_loss,
    rloo_advantages,
)
from alignx.losses.preference import (
    DPO_LOSS_TYPES,
    completion_logits_mean,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    log_odds,
    orpo_loss,
    preference_metrics,
    sequence_logps,
    simpo_loss,
)
from alignx.losses.reward import bradley_terry_loss, kwise_ranking_loss
from alignx.losses.sft import sft_loss

__all__ = [
    "BUILTIN_PREFERENCE_LOSSES",
    "DPO_LOSS_TYPES",
    "GRPO_NORMALIZATIONS",
    "best_response",
    "bradley_terry_loss",
    "clipped_policy_loss",
    "clipped_surrogate",
    "clipped_value_loss",
    "completion_logits_mean",
    "dpo_loss",
    "group_advantages",
    "grpo_token_loss",
    "kto_loss",
    "kto_reference_point",
    "kwise_ranking_loss",
    "log_odds",
    "orpo_loss",
    "PreferenceInputs",
    "PreferenceLoss",
    "PreferenceOutput",
    "preference_metrics",
    "pro_loss",
    "ranking_accuracy",
    "rloo_advantages",
    "rrhf_loss",
    "sequence_logps",
    "sft_loss",
    "simpo_loss",
]
