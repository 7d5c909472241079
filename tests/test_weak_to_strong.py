"""Weak-to-strong generalisation (experiment=weak_to_strong): the auxiliary confidence loss on hand values,
the pipeline's ``label`` stage, the PGR arithmetic, and a real tiny run of the whole preset with its
nested MLflow runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import approx, fast, t
from mlflow import MlflowClient

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.evaluation.weak_to_strong import (
    NoPerformanceGap,
    check_pgr_spec,
    performance_gap_recovered,
    pgr_of_stages,
)
from alignx.labelling import relabel_pairs
from alignx.losses.reward import (
    auxiliary_confidence_loss,
    bradley_terry_loss,
    grouped_ranking_loss,
)
from alignx.pipeline import run_pipeline
from alignx.rewards.model import RewardModelScorer
from alignx.tasks import BUILTIN_TASKS
from alignx.train import train


def softplus(x: float) -> float:
    """-log σ(-x), by hand."""
    return math.log(1.0 + math.exp(x))


# -- the auxiliary confidence loss -----------------------------------------------------------------
def test_aux_confidence_loss_mixes_the_label_with_the_hardened_prediction():
    # logits r_b - r_w: the student agrees (2, 0.5), disagrees (-1), is undecided (0: counts as disagreeing)
    z = t([2.0, -1.0, 0.5, 0.0])
    # alpha = 0.5: targets 1, 0.5, 1, 0.5
    approx(auxiliary_confidence_loss(z, 0.5),
           [softplus(-2.0), 0.5 * softplus(1.0) + 0.5 * softplus(-1.0), softplus(-0.5), math.log(2.0)])
    # alpha = 1: a disagreeing student's target is its own prediction, the label is ignored
    approx(auxiliary_confidence_loss(z, 1.0), [softplus(-2.0), softplus(-1.0), softplus(-0.5), math.log(2.0)])
    # alpha = 0.25: a disagreeing pair's target is 0.75
    approx(auxiliary_confidence_loss(t([-1.0]), 0.25), [0.75 * softplus(1.0) + 0.25 * softplus(-1.0)])


def test_alpha_zero_is_the_plain_bradley_terry_loss():
    z = t([2.0, -1.0, 0.5, 0.0])
    approx(auxiliary_confidence_loss(z, 0.0), [softplus(-2.0), softplus(1.0), softplus(-0.5), math.log(2.0)])
    rewards = t([1.0, -0.5, 0.3, 0.8])
    better, worse, group = torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([0, 1])
    plain, _ = bradley_terry_loss(rewards[better], rewards[worse])
    grouped, _ = grouped_ranking_loss(rewards, better, worse, group, aux_confidence=0.0)
    assert grouped.item() == pytest.approx(plain.item(), abs=1e-15)
    # with alpha = 0.5 the disagreeing pair (0.3 vs 0.8) gets target 0.5; the agreeing one is unchanged
    mixed, metrics = grouped_ranking_loss(rewards, better, worse, group, aux_confidence=0.5)
    assert mixed.item() == pytest.approx((softplus(-1.5) + 0.5 * softplus(0.5) + 0.5 * softplus(-0.5)) / 2, abs=1e-12)
    assert metrics["accuracy"].item() == 0.5


def test_the_hardened_prediction_carries_no_gradient():
    # d loss / dz = σ(z) - y with y a constant: at z = -1, alpha = 0.5 (y = 0.5): σ(-1) - 0.5
    z = torch.tensor([-1.0, 2.0], dtype=torch.float64, requires_grad=True)
    auxiliary_confidence_loss(z, 0.5).sum().backward()
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))
    assert z.grad.tolist() == pytest.approx([sig(-1.0) - 0.5, sig(2.0) - 1.0], abs=1e-12)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_0_1_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        auxiliary_confidence_loss(t([1.0]), alpha)


def test_the_rm_objective_names_a_bad_aux_confidence(tmp_path):
    with pytest.raises(ConfigError, match=r"objective.aux_confidence must be in \[0, 1\].*got 1.5"):
        train(compose(fast("objective=rm", "objective.aux_confidence=1.5", "tracking=none",
                           f"output_dir={tmp_path / 'x'}", f"outputs_root={tmp_path}")))


# -- labelling --------------------------------------------------------------------------------------
def test_relabel_orients_each_pair_by_the_reward_with_its_confidence():
    rows = [{"prompt": "p", "chosen": "aaaa", "rejected": "b"},   # the reward (length) agrees
            {"prompt": "q", "chosen": "c", "rejected": "ddd"},    # disagrees: swapped
            {"prompt": "r", "chosen": "ee", "rejected": "ff"}]    # tie: kept as given, confidence 0.5
    out, metrics = relabel_pairs(rows, lambda prompts, completions: [float(len(c)) for c in completions])
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [("p", "aaaa", "b"), ("q", "ddd", "c"), ("r", "ee", "ff")]
    assert [r["confidence"] for r in out] == pytest.approx([1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-2)), 0.5])
    assert metrics["label/agreement"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert metrics["label/mean_confidence"] == pytest.approx(sum(r["confidence"] for r in out) / 3)


# -- PGR --------------------------------------------------------------------------------------------
def test_pgr_arithmetic():
    assert performance_gap_recovered(0.6, 0.7, 0.8) == pytest.approx(0.5)
    assert performance_gap_recovered(0.6, 0.6, 0.8) == 0.0
    assert performance_gap_recovered(0.6, 0.8, 0.8) == pytest.approx(1.0)
    assert performance_gap_recovered(0.6, 0.9, 0.8) == pytest.approx(1.5)   # the student beat the ceiling
    assert performance_gap_recovered(0.6, 0.5, 0.8) == pytest.approx(-0.5)  # it fell below its supervisor
    stages = {"w": {"eval/rm_accuracy": 0.625}, "s": {"eval/rm_accuracy": 0.75}, "c": {"eval/rm_accuracy": 0.875}}
    spec = {"metric": "eval/rm_accuracy", "weak": "w", "student": "s", "ceiling": "c"}
    value, line = pgr_of_stages(spec, stages)
    assert value == pytest.approx(0.5)
    assert line == "weak-to-strong on eval/rm_accuracy: weak 0.6250, student 0.7500, ceiling 0.8750 -> PGR 0.500"


def test_pgr_without_a_gap_says_so_instead_of_dividing_by_zero():
    with pytest.raises(NoPerformanceGap, match=r"PGR is undefined: the strong ceiling scores 0\.7000, exactly the weak "
                                               r"supervisor's 0\.7000, so there is no gap to recover"):
        performance_gap_recovered(0.7, 0.8, 0.7)
    stages = {"w": {"eval/rm_accuracy": 0.5}, "s": {"eval/rm_accuracy": 0.75}, "c": {"eval/rm_accuracy": 0.5}}
    with pytest.raises(NoPerformanceGap):
        pgr_of_stages({"metric": "eval/rm_accuracy", "weak": "w", "student": "s", "ceiling": "c"}, stages)
    with pytest.raises(ConfigError, match=r"stage 'w' \(weak\) reported no 'eval/other'"):
        pgr_of_stages({"metric": "eval/other", "weak": "w", "student": "s", "ceiling": "c"}, stages)


def test_a_bad_pgr_node_is_named_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"pipeline.pgr.ceiling='gold' is not a stage of this pipeline"):
        check_pgr_spec({"metric": "m", "weak": "weak", "student": "student", "ceiling": "gold"}, ["weak", "student"])
    with pytest.raises(ConfigError, match=r"pipeline.pgr has keys \['metric', 'weak'\]; it needs exactly"):
        check_pgr_spec({"metric": "m", "weak": "weak"}, ["weak"])
    ov = fast("experiment=weak_to_strong", "pipeline.pgr.student=nope", f"output_dir={tmp_path / 'x'}", f"outputs_root={tmp_path}")
    with pytest.raises(ConfigError, match=r"pipeline.pgr.student='nope' is not a stage"):
        run_pipeline(compose(ov), ov)
    assert not (tmp_path / "mlflow.db").exists()


# -- the whole preset, tiny -------------------------------------------------------------------------
def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_weak_to_strong_preset_runs_its_stages_and_logs_pgr_on_the_parent(tmp_path):
    """experiment=weak_to_strong with FAST sizes: the job's model pretrained by 6 SFT steps, 48 gold pairs
    for the weak model, the other 48 labelled by it; the ceiling and the student (reward heads on the
    pretrained model) train on the gold labels of those 48 rows and on the 24 weak labels the weak model is surest of; all five runs nested
    under the job's run, PGR on it."""
    ov = fast("experiment=weak_to_strong", "pipeline.weak_rows=48", "objective.aux_confidence_warmup=0.5",
              "pipeline.pretrain_steps=6", "pipeline.keep_confident=0.5", "pipeline.alpha=0.5", f"output_dir={tmp_path / 'job'}",
              f"outputs_root={tmp_path}")
    job = run_pipeline(compose(ov), ov)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert job.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = client.get_run(job.run_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{job.run_id}'")
    runs = {r.data.tags["alignx.stage"]: r for r in children}
    assert parent.data.tags["alignx.stages"] == "pretrain -> weak -> labels -> ceiling -> student"
    assert parent.info.status == "FINISHED"
    assert set(runs) == {"pretrain", "weak", "labels", "ceiling", "student"} and all(r.info.status == "FINISHED" for r in children)
    # the pretrain stage is SFT of the job's model at its own steps; the weak model starts from random weights
    assert runs["pretrain"].data.params["objective.name"] == "sft" and runs["pretrain"].data.params["trainer.max_steps"] == "6"
    assert runs["weak"].data.params["model.name"] == "tiny" and runs["weak"].data.params["objective.name"] == "rm"
    assert runs["labels"].data.tags["alignx.stage_kind"] == "label"

    # PGR on the parent, from the three models' held-out pair accuracy
    acc = {s: runs[s].data.metrics["eval/rm_accuracy"] for s in ("weak", "student", "ceiling")}
    assert {s: parent.data.metrics[f"{s}/eval/rm_accuracy"] for s in acc} == acc
    if acc["ceiling"] == acc["weak"]:
        assert "eval/pgr" not in parent.data.metrics and parent.data.tags["alignx.pgr"].startswith("undefined: PGR is undefined")
    else:
        want = (acc["student"] - acc["weak"]) / (acc["ceiling"] - acc["weak"])
        assert parent.data.metrics["eval/pgr"] == pytest.approx(want) == job.metrics["eval/pgr"]
        assert parent.data.tags["alignx.pgr"].endswith(f"-> PGR {want:.3f}")

    # the label stage: the 48 training pairs after the weak model's 48, each oriented by the weak model
    stage_dir = tmp_path / "job" / "labels"
    labelled, gold, test = (_read(stage_dir / f) for f in ("data.jsonl", "gold.jsonl", "test.jsonl"))
    task = BUILTIN_TASKS["sentiment"]()
    assert gold == task.rows("pairs", "train", 96, seed=0)[48:]
    assert test == task.rows("pairs", "test", 16, seed=0)
    assert len(labelled) == 48 == runs["labels"].data.metrics["data/rows"]
    scorer = RewardModelScorer(job.stages["weak"].model_dir, device="cpu")
    prompts = [r["prompt"] for r in labelled]
    r_chosen, r_rejected = scorer(prompts, [r["chosen"] for r in labelled]), scorer(prompts, [r["rejected"] for r in labelled])
    agree = 0
    for row, g, c, r in zip(labelled, gold, r_chosen, r_rejected):
        assert {row["chosen"], row["rejected"]} == {g["chosen"], g["rejected"]} and row["prompt"] == g["prompt"]
        assert c >= r - 1e-5  # the weak model prefers the side it labelled chosen
        assert row["confidence"] == pytest.approx(1 / (1 + math.exp(-(c - r))), abs=1e-4)
        agree += row["chosen"] == g["chosen"]
    assert runs["labels"].data.metrics["label/agreement"] == pytest.approx(agree / 48)

    # both strong models are a reward head on the pretrained model; the ceiling learns from the gold
    # labels, the student from the weak ones with alpha ramped over 3 of 6 steps
    pretrained = str(job.stages["pretrain"].model_dir)
    assert runs["ceiling"].data.params["model.name_or_path"] == pretrained == runs["student"].data.params["model.name_or_path"]
    assert runs["ceiling"].data.params["dataset.path"] == str(stage_dir / "gold.jsonl")
    assert runs["student"].data.params["dataset.path"] == str(stage_dir / "data.jsonl")
    assert runs["student"].data.params["dataset.test_path"] == str(stage_dir / "test.jsonl")
    assert runs["student"].data.params["objective.aux_confidence"] == "0.5"
    # the student trains on the half of the weak labels the weak model is surest of, the ceiling on every gold row
    assert runs["student"].data.params["data.filter"] == "reward" and runs["student"].data.params["reward.path"] == str(job.stages["weak"].model_dir)
    kept = {s: job.stages[s].metrics["data/train/kept"] for s in ("student", "ceiling")}
    assert kept["student"] == round(kept["ceiling"] / 2) and kept["ceiling"] >= 40  # the val split is carved out of the 48
    ramp = sorted((m.step, m.value) for m in client.get_metric_history(runs["student"].info.run_id, "train/aux_confidence"))
    assert [v for _, v in ramp] == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5, 0.5, 0.5])
    assert "train/aux_confidence" not in runs["ceiling"].data.metrics

    # a second run reuses every stage, the label stage's sibling files included
    again = fast("experiment=weak_to_strong", "pipeline.weak_rows=48", "objective.aux_confidence_warmup=0.5",
                 "pipeline.pretrain_steps=6", "pipeline.keep_confident=0.5", "pipeline.alpha=0.5", f"output_dir={tmp_path / 'again'}", f"outputs_root={tmp_path}")
    second = run_pipeline(compose(again), again)
    assert second.metrics["pipeline/cache_hits"] == 5
    assert second.metrics.get("eval/pgr") == job.metrics.get("eval/pgr")
