"""Loss functions: pure, typed, tested against hand-computed values."""

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
    "DPO_LOSS_TYPES",
    "bradley_terry_loss",
    "completion_logits_mean",
    "dpo_loss",
    "kto_loss",
    "kto_reference_point",
    "kwise_ranking_loss",
    "log_odds",
    "orpo_loss",
    "preference_metrics",
    "sequence_logps",
    "sft_loss",
    "simpo_loss",
]
