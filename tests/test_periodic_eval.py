"""eval.every_n_steps: the end-of-job evaluation suite during training, for every objective family.

Each objective runs twice with a constant learning rate (so the first 4 steps of a 6-step job are
exactly a 4-step job): 6 steps evaluated every 2 steps, and 4 steps evaluated only at the end. The
periodic evaluation at step 4 must equal the end-of-job evaluation of the 4-step job (same suite,
same rows, same seed), and the evaluation at step 2 must not change the training that follows it.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.train import train
from conftest import fast

OBJECTIVES = {
    "sft": ["objective=sft"],
    "dpo": ["objective=dpo"],
    "rm": ["objective=rm"],
    # online RL: a step is an iteration (manual optimisation)
    "grpo": ["objective=grpo", "data.batch_size=4", "objective.max_new_tokens=6"],
}
#: a per-step training curve of each family: the loss, or online RL's entropy of its sampled
#: rollouts (a function of the weights and of the sampling RNG both)
CURVE = {"sft": "train/loss", "dpo": "train/loss", "rm": "train/loss", "grpo": "objective/entropy"}


def _job(tmp_path, name: str, *overrides: str):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(fast("scheduler=constant", "save.model=false", *overrides, f"output_dir={tmp_path / name}",
                       f"outputs_root={tmp_path}", f"tracking.uri={uri}"))
    job = train(cfg)
    client = MlflowClient(tracking_uri=uri)
    return job, client


def _histories(client: MlflowClient, run_id: str, prefix: str) -> dict[str, dict[int, float]]:
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        if key.startswith(prefix):
            history = client.get_metric_history(run_id, key)
            steps = [m.step for m in history]
            assert len(steps) == len(set(steps)), f"{key} logged twice at one step: {sorted(steps)}"
            out[key] = {m.step: m.value for m in history}
    return out


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_eval_every_2_steps_logs_at_2_4_6_and_equals_the_end_of_job_evaluation(tmp_path, objective):
    periodic, client = _job(tmp_path, "every2", *OBJECTIVES[objective], "eval.every_n_steps=2")
    short, _ = _job(tmp_path, "four", *OBJECTIVES[objective], "trainer.max_steps=4")

    evals = _histories(client, periodic.run_id, "eval/")
    assert evals, "no eval/* metric logged"
    if objective == "rm":
        assert set(evals) == {"eval/rm_accuracy"}
    else:
        assert {"eval/gold_reward_sampled", "eval/kl_to_reference", "eval/perplexity"} <= set(evals)
    for key, history in evals.items():
        # 2 and 4 during training, 6 by the end-of-job evaluation (which the callback leaves to it)
        assert sorted(history) == [2, 4, 6], (key, history)

    # the suite at step 4 of the 6-step job is the 4-step job's end-of-job evaluation, number for number
    at_end = _histories(client, short.run_id, "eval/")
    assert set(at_end) == set(evals)
    for key in evals:
        assert evals[key][4] == pytest.approx(at_end[key][4], rel=1e-6, abs=1e-7), key

    # evaluating at step 2 left the training of steps 3-4 as it was
    curve = CURVE[objective]
    losses = _histories(client, periodic.run_id, curve)[curve]
    short_losses = _histories(client, short.run_id, curve)[curve]
    assert len(short_losses) == 4 and len(losses) == 6
    assert {s: losses[s] for s in short_losses} == short_losses


def test_periodic_evaluation_leaves_the_whole_training_curve_unchanged(tmp_path):
    """Same 6-step SFT job with and without eval.every_n_steps=2: identical train/loss and final eval."""
    with_eval, client = _job(tmp_path, "with", "eval.every_n_steps=2")
    without, _ = _job(tmp_path, "without")
    a = _histories(client, with_eval.run_id, "train/loss")["train/loss"]
    b = _histories(client, without.run_id, "train/loss")["train/loss"]
    assert len(a) == 6 and a == b
    final = {k: v for k, v in without.metrics.items() if k.startswith("eval/")}
    assert final and {k: with_eval.metrics[k] for k in final} == final
    # without the option nothing is evaluated before the end
    assert all(sorted(h) == [6] for h in _histories(client, without.run_id, "eval/").values())


def test_every_n_steps_must_be_positive():
    with pytest.raises(ConfigError, match="eval.every_n_steps"):
        train(compose(fast("eval.every_n_steps=0", "tracking=none")))
