"""Process supervision: the `steps` task (shown steps, a step verifier, final-answer gold reward),
step-labelled `steps` rows with corrupted solutions, and objective=prm (a process reward model:
the RM's scalar head read at each step's last token, BCE against the step labels)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fast
from mlflow import MlflowClient

from alignx.config import compose
from alignx.data.formats import validate_row
from alignx.errors import DataError
from alignx.losses.process_reward import NOT_A_STEP, step_bce_loss
from alignx.models.loading import build_llama
from alignx.objectives.prm import encode_steps_row, step_scores
from alignx.tasks import BUILTIN_TASKS, StepsTask, TaskArgumentError
from alignx.tasks.steps import (
    answer_of,
    corrupt,
    gold_steps,
    render,
    split_steps,
    verify_steps,
)
from alignx.train import train


def test_gold_steps_render_and_final_answer_reward():
    assert gold_steps("3+4-1=") == ["3+4=7", "7-1=6"]
    assert answer_of("9-2-5+7=") == 9
    assert render(["3+4=7", "7-1=6"]) == "3+4=7; 7-1=6. Answer: 6"
    assert split_steps("3+4=7; 7-1=6. Answer: 6") == ["3+4=7", "7-1=6"]
    task = StepsTask()
    assert task.gold_reward(["3+4-1="] * 4, ["3+4=7; 7-1=6. Answer: 6", "3+4=8; 8-1=7. Answer: 7", "Answer: 6", "6"]) == [
        1.0, 0.0, 1.0, 0.0,  # only the final answer counts; no "Answer:" scores 0
    ]
    assert BUILTIN_TASKS["steps"] is StepsTask


@pytest.mark.parametrize(
    "steps, expected",
    [
        (["3+4=7", "7-1=6", "6+2=8"], [True, True, True]),
        (["3 + 4 = 7", "7-1=6", "6+2=8"], [True, True, True]),  # spaces ignored
        (["3+4=8", "8-1=7", "7+2=9"], [False, False, False]),  # arithmetic wrong at step 1, carried on
        (["3+4=7", "7-1=5", "6+2=8"], [True, False, False]),  # first-error semantics: step 3 alone is right
        (["3+4=7", "6-1=5", "5+2=7"], [True, False, False]),  # wrong running value carried in
        (["3+4=7", "7+1=8", "8+2=10"], [True, False, False]),  # wrong operation
        (["3+4=7", "seven", "6+2=8"], [True, False, False]),  # not a step
        (["3+4=7", "7-1=6", "6+2=8", "8+1=9"], [True, True, True, False]),  # more steps than operations
        (["3+4=7"], [True]),  # an unfinished solution: its one step is right
    ],
)
def test_verify_steps_on_hand_examples(steps, expected):
    assert verify_steps("3+4-1+2=", steps) == expected


def test_corrupt_makes_one_wrong_step_and_labels_it_and_every_later_one_zero():
    task = StepsTask()
    for prompt in task.split_prompts("val")[:200]:
        steps, labels = corrupt(prompt, __import__("random").Random(prompt))
        j = labels.index(0)
        assert labels == [1] * j + [0] * (len(labels) - j)
        assert [bool(x) for x in labels] == verify_steps(prompt, steps)
        assert task.score(prompt, render(steps)) == 0.0  # the error reaches the final answer


def test_steps_rows_are_seeded_and_corrupted_at_the_configured_rate():
    task = StepsTask()
    rows = task.rows("steps", "train", 400, seed=3, corruption_rate=0.5)
    assert rows == task.rows("steps", "train", 400, seed=3, corruption_rate=0.5)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in task.rows("sft", "train", 400, seed=3)]
    for r in rows:  # every label is the verifier's verdict
        assert r["step_labels"] == [int(ok) for ok in verify_steps(r["prompt"], r["steps"])]
    corrupted = sum(0 in r["step_labels"] for r in rows)
    assert 160 <= corrupted <= 240
    assert all(1 not in r["step_labels"][r["step_labels"].index(0):] for r in rows if 0 in r["step_labels"])
    assert all(0 not in r["step_labels"] for r in task.rows("steps", "train", 50, seed=3, corruption_rate=0.0))
    assert all(0 in r["step_labels"] for r in task.rows("steps", "train", 50, seed=3, corruption_rate=1.0))
    with pytest.raises(TaskArgumentError, match="corruption_rate must be a number in"):
        task.rows("steps", "train", 5, corruption_rate=1.5)
    # other tasks do not make steps rows
    with pytest.raises(TaskArgumentError, match="unknown row kind 'steps'"):
        BUILTIN_TASKS["arithmetic"]().rows("steps", "train", 5)


@pytest.mark.parametrize(
    "row, column, message",
    [
        ({"prompt": "1+2=", "steps": ["1+2=3"], "step_labels": [1, 0]}, "step_labels", "2 labels for 1 steps"),
        ({"prompt": "1+2=", "steps": [], "step_labels": []}, "steps", "non-empty list of step texts"),
        ({"prompt": "1+2=", "steps": "1+2=3", "step_labels": [1]}, "steps", "non-empty list of step texts"),
        ({"prompt": "1+2=", "steps": ["1+2=3", " "], "step_labels": [1, 1]}, "steps", "step 2: expected a non-empty string"),
        ({"prompt": "1+2=", "steps": ["1+2=3"], "step_labels": [True]}, "step_labels", "label 1 must be 0 or 1"),
        ({"prompt": "1+2=", "steps": ["1+2=3"], "step_labels": [0.5]}, "step_labels", "label 1 must be 0 or 1"),
        ({"prompt": "1+2=", "steps": ["1+2=3"], "step_labels": 1}, "step_labels", "expected a list of 0/1 labels"),
        ({"prompt": "1+2=", "steps": ["1+2=3"]}, "step_labels", "missing column"),
    ],
)
def test_steps_row_validation_names_the_row_and_column(row, column, message):
    with pytest.raises(DataError) as err:
        validate_row(row, "steps", "rows.jsonl", 7)
    text = str(err.value)
    assert "rows.jsonl, row 7" in text and f"column '{column}'" in text and message in text


def test_valid_steps_row_is_normalised():
    row = {"prompt": "1+2=", "steps": ["1+2=3", "3+1=5"], "step_labels": [1, 0], "extra": "x"}
    assert validate_row(row, "steps", "rows.jsonl", 1) == {"prompt": "1+2=", "steps": ["1+2=3", "3+1=5"], "step_labels": [1, 0]}


def test_step_bce_loss_matches_a_hand_computation():
    values = torch.tensor([[0.3, 2.0, -1.0, 0.5], [0.0, 1.5, 0.7, 0.0]])
    labels = torch.tensor([[NOT_A_STEP, 1, 0, NOT_A_STEP], [NOT_A_STEP, 1, 0, NOT_A_STEP]])
    loss, m = step_bce_loss(values, labels)

    def sig(x):
        return 1 / (1 + math.exp(-x))

    expected = -(math.log(sig(2.0)) + math.log(1 - sig(-1.0)) + math.log(sig(1.5)) + math.log(1 - sig(0.7))) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # predictions (s > 0): row 0 [1, 0] right twice; row 1 [1, 1] wrong at its second step
    assert m["step_accuracy"].item() == pytest.approx(0.75)
    # first predicted error: row 0 step 2 (= labelled), row 1 none (labelled step 2)
    assert m["first_error_accuracy"].item() == pytest.approx(0.5)
    assert m["positive_rate"].item() == pytest.approx(0.5) and m["steps"].item() == 4
    with pytest.raises(ValueError, match="no labelled step"):
        step_bce_loss(values, torch.full_like(labels, NOT_A_STEP))


def test_encode_puts_each_label_on_its_steps_last_token():
    cfg = compose(fast())
    _, tok = build_llama(cfg.model)
    row = {"prompt": "3+4-1=", "steps": ["3+4=7", "7-1=5"], "step_labels": [1, 0]}
    item, status = encode_steps_row(row, tok, cfg.data, "; ")
    assert status == "kept"
    assert tok.decode(item["input_ids"], skip_special_tokens=True) == "3+4-1=3+4=7; 7-1=5"
    marked = [(tok.decode([t]), y) for t, y in zip(item["input_ids"], item["labels"]) if y != NOT_A_STEP]
    assert marked == [("7", 1), ("5", 0)]
    # truncating the completion drops the labels of the steps cut off; none left: dropped
    short = {**cfg.data, "max_length": len(item["input_ids"]) - 2, "truncation": "truncate_completion"}
    cut, status = encode_steps_row(row, tok, short, "; ")
    assert status == "truncated" and [y for y in cut["labels"] if y != NOT_A_STEP] == [1]
    tiny = {**cfg.data, "max_length": 8, "truncation": "truncate_completion"}
    assert encode_steps_row(row, tok, tiny, "; ") == (None, "dropped")


def test_prm_job_logs_step_metrics_and_saves_a_step_scorer(tmp_path):
    """A short real objective=prm job on the builtin steps task; prints its held-out step accuracy."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(fast("objective=prm", "dataset=steps", "trainer.max_steps=4", "trainer.val_check_interval=4",
                       f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", f"tracking.uri={uri}"))
    job = train(cfg)
    run = MlflowClient(tracking_uri=uri).get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["alignx.objective"] == "prm"
    m = run.data.metrics
    for name in ("loss", "step_accuracy", "first_error_accuracy", "positive_rate"):
        assert 0.0 <= m[f"val/{name}"] and f"train/{name}" in m, name
    assert m["val/step_accuracy"] <= 1.0 and m["val/first_error_accuracy"] <= 1.0
    print(f"held-out step accuracy after 4 steps: {m['val/step_accuracy']:.3f} "
          f"(majority baseline {max(m['val/positive_rate'], 1 - m['val/positive_rate']):.3f})")
    # the saved PRM is a plain one-label sequence classifier; step_scores reads it per step
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(job.model_dir).eval()
    tok = AutoTokenizer.from_pretrained(job.model_dir)
    assert model.config.num_labels == 1
    sep = str(cfg.objective.step_separator)
    scores = step_scores(model, tok, "3+4-1=", ["3+4=7", "7-1=6"], separator=sep)
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)
    # the score of a step does not depend on the steps after it (causal backbone)
    assert step_scores(model, tok, "3+4-1=", ["3+4=7"], separator=sep)[0] == pytest.approx(scores[0], abs=1e-5)
