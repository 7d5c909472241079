"""Evaluation: metric functions (:mod:`.metrics`), the suite a job runs after training
(:mod:`.suite`), the same suite during training (:mod:`.periodic`) and the ``alignx eval`` command
on a saved model (:mod:`.command`)."""

from alignx.evaluation.command import evaluate_model
from alignx.evaluation.metrics import (
    RewardFn,
    best_of_n,
    completion_logps,
    evaluate_policy,
    kl_to_reference,
    pair_accuracy,
    perplexity,
    reference_rows,
    rollout_logps,
    sample_rollouts,
    standard_error,
    win_rate,
)
from alignx.evaluation.periodic import PeriodicEvaluation, periodic_evaluation
from alignx.evaluation.suite import StartingModel, eval_reward_models, evaluate

__all__ = [
    "PeriodicEvaluation",
    "RewardFn",
    "StartingModel",
    "best_of_n",
    "completion_logps",
    "eval_reward_models",
    "evaluate",
    "evaluate_model",
    "evaluate_policy",
    "kl_to_reference",
    "pair_accuracy",
    "periodic_evaluation",
    "perplexity",
    "reference_rows",
    "rollout_logps",
    "sample_rollouts",
    "standard_error",
    "win_rate",
]
