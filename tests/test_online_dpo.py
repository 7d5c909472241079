"""objective=online_dpo: the best-vs-worst pair builder, the iteration stages, config errors named
before any run, and a real two-iteration job tracked as a parent run with nested iteration runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alignx.config import compose
from alignx.data.sampled_pairs import best_worst_pairs
from alignx.errors import ConfigError
from alignx.objectives.iterative import iteration_stages
from alignx.objectives.online_dpo import OnlineDPO
from alignx.registry import load_plugins
from alignx.train import run_job
from conftest import fast


# -- the pair builder ------------------------------------------------------------------------------
def test_pairs_are_each_prompts_best_and_worst_sample_and_ties_are_skipped():
    prompts = ["p1", "p2", "p3", "p4", "p5"]
    groups = [
        ["a", "b", "c", "d"],   # K=4: best c (0.9), worst a (0.1)
        ["e", "f", "g"],        # K=3, all tied at 0.5: no preference
        ["h", "i"],             # K=2: best i, worst h
        ["same", "same"],       # scores differ but the text is the same: no pair either
        ["j", "k", "l"],        # equal best scores: the earlier (j) is best
    ]
    scores = [[0.1, 0.5, 0.9, 0.3], [0.5, 0.5, 0.5], [-1.0, 2.0], [0.0, 1.0], [1.0, 1.0, 0.0]]
    built = best_worst_pairs(prompts, groups, scores)
    assert built.rows == [
        {"prompt": "p1", "chosen": "c", "rejected": "a"},
        {"prompt": "p3", "chosen": "i", "rejected": "h"},
        {"prompt": "p5", "chosen": "j", "rejected": "l"},
    ]
    assert built.ties == 2
    assert built.chosen_scores == [0.9, 2.0, 1.0] and built.rejected_scores == [0.1, -1.0, 0.0]
    m = built.metrics("x/train")
    assert m["x/train/pairs"] == 3.0 and m["x/train/ties_skipped"] == 2.0
    assert m["x/train/reward_chosen"] == pytest.approx((0.9 + 2.0 + 1.0) / 3)
    assert m["x/train/reward_rejected"] == pytest.approx((0.1 - 1.0 + 0.0) / 3)
    # every one of the 14 samples counts in the mean, tied prompts included
    assert m["x/train/reward_mean"] == pytest.approx((1.8 + 1.5 + 1.0 + 1.0 + 2.0) / 14)


def test_equal_worst_scores_pick_the_latest_and_a_message_prompt_is_kept_as_is():
    prompt = [{"role": "user", "content": "hi"}]
    built = best_worst_pairs([prompt], [["x", "y", "z"]], [[2.0, 1.0, 1.0]])
    assert built.rows == [{"prompt": prompt, "chosen": "x", "rejected": "z"}] and built.ties == 0


def test_all_ties_give_no_pair_and_nan_pair_means():
    built = best_worst_pairs(["p"], [["a", "b"]], [[0.0, 0.0]])
    m = built.metrics("s")
    assert built.rows == [] and m["s/pairs"] == 0.0 and m["s/ties_skipped"] == 1.0
    assert math.isnan(m["s/reward_chosen"]) and m["s/reward_mean"] == 0.0


@pytest.mark.parametrize("prompts,groups,scores,message", [
    (["p"], [["a"]], [[1.0]], r"prompt 0: 1 completion\(s\); a pair needs at least 2 samples per prompt"),
    (["p"], [["a", "b"]], [[1.0]], r"prompt 0: 2 completions but 1 scores"),
    (["p", "q"], [["a", "b"]], [[1.0, 0.0]], r"2 prompts, 1 groups and 1 score lists"),
])
def test_malformed_groups_are_refused(prompts, groups, scores, message):
    with pytest.raises(ValueError, match=message):
        best_worst_pairs(prompts, groups, scores)


# -- the stages ----------------------------------------------------------------------------------
def test_n_iterations_are_n_stages_each_starting_from_the_previous_model():
    cfg = compose(["objective=online_dpo", "objective.iterations=3"])
    assert OnlineDPO.stages(cfg) == [
        {"name": "iteration_1", "overrides": ["objective.iteration=1"]},
        {"name": "iteration_2", "overrides": ["model=hf", "model.name_or_path=stage:iteration_1", "objective.iteration=2"]},
        {"name": "iteration_3", "overrides": ["model=hf", "model.name_or_path=stage:iteration_2", "objective.iteration=3"]},
    ]
    # reference=initial: iterations 2.. load the model iteration 1 started from (saved beside its model)
    initial = OnlineDPO.stages(compose(["objective=online_dpo", "objective.iterations=2", "objective.reference=initial"]))
    assert initial[0]["overrides"] == ["objective.iteration=1"]
    assert initial[1]["overrides"][-1] == "objective.reference_path=stage:iteration_1/../reference"
    # with an adapter each iteration saves its merged model, and the next one starts from it
    lora = OnlineDPO.stages(compose(["objective=online_dpo", "objective.iterations=2", "adapter=lora"]))
    assert lora[1]["overrides"][:3] == ["save.merge_adapter=true", "model=hf", "model.name_or_path=stage:iteration_1/../merged"]
    assert [s["name"] for s in OnlineDPO.stages(compose(["objective=online_dpo", "objective.iterations=1"]))] == ["iteration_1"]
    with pytest.raises(ValueError, match="iterations must be >= 1, got 0"):
        iteration_stages(0)


def test_registered_as_a_builtin_with_its_config():
    assert load_plugins().get("objective", "online_dpo") is OnlineDPO
    cfg = compose(["objective=online_dpo"])
    assert cfg.objective.num_samples >= 2 and cfg.objective.iterations >= 1 and cfg.objective.reference == "previous"


# -- config errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("override,message", [
    ("objective.iterations=0", r"objective.iterations=0 must be >= 1"),
    ("objective.num_samples=1", r"objective.num_samples=1 must be >= 2"),
    ("objective.reference=first", r"objective.reference=first is not one of: previous, initial"),
    ("objective.precompute_ref_logps=true", r"objective.precompute_ref_logps=true does not apply to objective=online_dpo"),
    ("objective.num_prompts=0", r"objective.num_prompts=0 must be >= 1"),
    ("reward.components.gold.name=nope", r"reward.components.gold.name: unknown reward 'nope'. Valid rewards: .*sentiment"),
    ("+reward.components.sentimnt.weight=1.0", r"reward.components.sentimnt: unknown reward 'sentimnt'.*Did you mean 'sentiment'"),
    ("reward=rm", r"reward.path is required"),
    ("+objective.num_sample=3", r"unknown key 'objective.num_sample'. Did you mean 'objective.num_samples'"),
])
def test_bad_config_is_named_before_any_run(tmp_path: Path, override: str, message: str):
    overrides = ["objective=online_dpo", override, f"output_dir={tmp_path / 'o'}", f"outputs_root={tmp_path}"]
    with pytest.raises(ConfigError, match=message):
        run_job(compose(overrides), overrides)
    assert not (tmp_path / "mlflow.db").exists()


# -- a real job ----------------------------------------------------------------------------------
def test_two_iterations_are_nested_runs_with_their_pair_metrics(tmp_path: Path):
    overrides = fast("objective=online_dpo", "objective.iterations=2", "objective.reference=initial",
                     "objective.num_samples=4", "objective.num_prompts=24", "objective.max_new_tokens=8",
                     "objective.temperature=2.0", "trainer.max_steps=2", "dataset=sentiment",
                     f"outputs_root={tmp_path}", f"output_dir={tmp_path / 'job'}")
    job = run_job(compose(overrides), overrides)

    assert job.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(job.tracking_uri)
    parent = client.get_run(job.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["alignx.objective"] == "online_dpo"
    assert parent.data.tags["alignx.stages"] == "iteration_1 -> iteration_2"
    children = sorted(client.search_runs([parent.info.experiment_id],
                                         filter_string=f"tags.mlflow.parentRunId = '{job.run_id}'"),
                      key=lambda r: r.info.start_time)
    assert [r.data.tags["alignx.stage"] for r in children] == ["iteration_1", "iteration_2"]
    first, second = job.stages["iteration_1"], job.stages["iteration_2"]
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["alignx.objective"] == "online_dpo"
        m = run.data.metrics
        # 24 prompts: each gave a pair or was a tie, and the pair's chosen side scored above its rejected one
        assert m["online_dpo/train/prompts"] == 24.0
        assert m["online_dpo/train/pairs"] + m["online_dpo/train/ties_skipped"] == 24.0
        assert m["online_dpo/train/pairs"] >= 1
        assert m["online_dpo/train/reward_chosen"] > m["online_dpo/train/reward_rejected"]
        assert 0.0 <= m["online_dpo/train/reward_mean"] <= 1.0  # the sentiment gold reward's range
        assert m["online_dpo/val/prompts"] == 16.0
        assert "train/rewards/accuracies" in m and "eval/gold_reward_sampled" in m
    # iteration 2 starts from iteration 1's model, and (reference=initial) is referenced against
    # the model iteration 1 started from, which iteration 1 saved
    assert children[0].data.params["objective.iteration"] == "1"
    assert children[1].data.params["objective.iteration"] == "2"
    assert children[1].data.params["model.name_or_path"] == str(first.model_dir)
    assert children[1].data.params["objective.reference_path"] == str(first.model_dir / ".." / "reference")
    assert (first.output_dir / "reference" / "config.json").exists()
    assert not (second.output_dir / "reference").exists()
    # the job's result carries each iteration's metrics under its name, and the last one's plainly
    assert job.metrics["iteration_1/online_dpo/train/prompts"] == 24.0
    assert job.metrics["online_dpo/train/pairs"] == job.metrics["iteration_2/online_dpo/train/pairs"]
