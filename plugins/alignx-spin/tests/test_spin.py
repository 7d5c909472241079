"""alignx-spin's own tests: the pair construction, the stage plan, registration through entry
points, config errors, and the proof that SPIN improves a weak SFT model on a builtin task."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.registry import load_plugins
from alignx.train import run_job, train
from alignx_spin.spin import SPIN, self_play_rows, spin_stages

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: a tiny job: model=tiny on the builtin sentiment task, a few seconds per run on CPU
TINY = [
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "dataset.n_train=512",
    "dataset.n_val=16",
    "dataset.n_test=128",
    "eval.num_prompts=128",
    "eval.max_new_tokens=32",
]


def test_pairs_put_the_sft_target_above_the_models_own_sample():
    rows = [{"prompt": "a", "completion": "good film"}, {"prompt": "b", "completion": "fine"},
            {"prompt": "c", "completion": "x"}]
    pairs, identical = self_play_rows(rows, ["bad film", " fine ", "y"])
    assert pairs == [{"prompt": "a", "chosen": "good film", "rejected": "bad film"},
                     {"prompt": "c", "chosen": "x", "rejected": "y"}]
    assert identical == 1  # " fine " is the target: no signal, and chosen == rejected is no DPO pair
    with pytest.raises(ValueError, match="3 rows but 2 samples"):
        self_play_rows(rows, ["p", "q"])


def test_each_iteration_starts_from_the_previous_one():
    assert spin_stages(3) == [
        {"name": "iteration_1", "overrides": []},
        {"name": "iteration_2", "overrides": ["model=hf", "model.name_or_path=stage:iteration_1"]},
        {"name": "iteration_3", "overrides": ["model=hf", "model.name_or_path=stage:iteration_2"]},
    ]
    # with an adapter, the next iteration's base is the merged previous iterate (its reference)
    lora = spin_stages(2, "lora")
    assert lora[1]["overrides"] == ["save.merge_adapter=true", "model=hf", "model.name_or_path=stage:iteration_1/../merged"]


def test_registered_through_entry_points_with_its_config():
    registry = load_plugins(reload=True)
    entries = {(e.kind, e.name): e.provider for e in registry.entries()}
    assert entries[("objective", "spin")] == "alignx-spin"
    assert registry.get("objective", "spin") is SPIN
    cfg = compose(["objective=spin", "objective.iterations=3", "objective.beta=0.3"])
    assert cfg.objective.name == "spin" and cfg.objective.iterations == 3 and cfg.objective.beta == 0.3


@pytest.mark.parametrize("override,message", [
    ("objective.iterations=0", r"objective.iterations=0: SPIN needs at least 1 iteration"),
    ("objective.precompute_ref_logps=true", r"precompute_ref_logps=true does not apply to SPIN"),
    ("objective.loss=simpo", r"reference-free; SPIN is defined against the previous iterate"),
    ("+objective.iteratons=3", r"unknown key 'objective.iteratons'. Did you mean 'objective.iterations'"),
])
def test_bad_config_is_named_before_any_run(tmp_path: Path, override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        run_job(compose(["objective=spin", override, f"output_dir={tmp_path / 'o'}", f"outputs_root={tmp_path}"]))
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_spin_iterations_make_held_out_targets_more_likely(tmp_path: Path):
    """From a weak SFT model (sentiment, model=tiny), each of two SPIN iterations raises the
    log-likelihood of held-out SFT targets (lower perplexity: SPIN's objective is to move the
    policy towards the SFT data and away from its own samples); each iteration is a nested MLflow
    run whose reference is the previous iterate.

    Measured over seeds 0/1/2 at these settings (lr 1e-4; ``seed=`` on the weak SFT run and on the
    SPIN job, one intra-op thread; benchmarks/results/proof-margins-cpu.md, "Also measured"):
    perplexity SFT -> iteration 1 -> 2 was 5.533 -> 5.490 -> 5.253, 5.390 -> 5.244 -> 5.047 and
    5.800 -> 5.615 -> 5.487: every step fell, the smallest fall 0.043 (seed 0, iteration 1). The
    gold reward of samples is reported, not asserted: at 0.015-0.05 (2-5% of the gold scale, 128
    prompts) it rose over both iterations in one seed of three. At lr 3e-4 (the earlier setting)
    seeds 1 and 2 broke the perplexity ordering too (5.390 -> 5.279 -> 5.465, 5.800 -> 6.220 -> 5.701).

    The evaluation samples 32 held-out prompts (was 128): the perplexity is over all 128 test rows
    whatever ``eval.num_prompts`` is, and each stage seeds itself, so the asserted values are
    unchanged (measured again at 32 prompts, seeds 0/1/2: the same three curves to the digits above);
    only the reported gold reward is noisier. That saves only 7-12% of the test's process CPU time
    (94-101 s per seed, against 107 s at 128 prompts): most of it is the weak SFT run and the two
    iterations. Measured and rejected: SPIN on 256 training prompts (``dataset.n_train=256``) saved
    8 s more at seed 0 and broke the ordering there (5.533 -> 5.630 -> 5.439).
    """
    store = [f"outputs_root={tmp_path}"]
    # weak: 100 steps (the README's quickstart SFT takes 300); its samples are still mostly not words
    # the 128 test rows give the perplexity; the gold reward (reported only) is sampled on 32 of them
    evaluation = ["eval.num_prompts=32"]
    sft = train(compose([*TINY, *store, *evaluation, "objective=sft", "trainer.max_steps=100", "optim.lr=1e-3",
                         f"output_dir={tmp_path / 'sft'}"]))
    start = {k: sft.metrics[k] for k in ("eval/perplexity", "eval/gold_reward_sampled")}

    overrides = [*TINY, *store, *evaluation, "objective=spin", "objective.iterations=2", "objective.beta=0.5",
                 "objective.max_new_tokens=32", "model=hf", f"model.name_or_path={sft.model_dir}",
                 "trainer.max_steps=20", "optim.lr=1e-4", "scheduler=constant"]
    job = run_job(compose([*overrides, f"output_dir={tmp_path / 'spin'}"]), overrides)

    curve = [start] + [{k: job.metrics[f"iteration_{i}/{k}"] for k in start} for i in (1, 2)]
    print("SPIN (iteration 0 = SFT):", [{k: round(v, 3) for k, v in c.items()} for c in curve])
    client = MlflowClient(job.tracking_uri)
    parent = client.get_run(job.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["alignx.objective"] == "spin"
    children = sorted(client.search_runs([parent.info.experiment_id],
                                         filter_string=f"tags.mlflow.parentRunId = '{job.run_id}'"),
                      key=lambda r: r.info.start_time)
    assert [r.data.tags["alignx.stage"] for r in children] == ["iteration_1", "iteration_2"]
    assert all(r.info.status == "FINISHED" and r.data.tags["alignx.objective"] == "spin" for r in children)
    # iteration 2 starts from (and is referenced against) iteration 1's model
    assert children[0].data.params["model.name_or_path"] == str(sft.model_dir)
    assert children[1].data.params["model.name_or_path"] == str(job.stages["iteration_1"].model_dir)
    for run in children:
        assert run.data.metrics["spin/train/pairs"] > 450  # nearly every prompt gave a pair
        assert "train/rewards/accuracies" in run.data.metrics

    # each iteration: held-out SFT targets more likely
    assert curve[2]["eval/perplexity"] < curve[1]["eval/perplexity"] < curve[0]["eval/perplexity"]
