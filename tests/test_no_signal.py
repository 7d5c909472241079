"""No silent no-signal training.

* Preference rows whose completions become the same token ids under the truncation policy are
  dropped, counted (``data/<split>/identical_after_truncation``) and named in a warning.
* A non-finite loss or non-finite weights stop SFT, RM, DPO and KTO with ``TrainingDiverged``
  (online RL has its own checks, tested in test_online_rl.py): the MLflow run ends FAILED and the
  last checkpoint on disk holds the finite weights of an earlier step.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from conftest import fast, write_jsonl
from mlflow import MlflowClient

from alignx.checkpoint import load_checkpoint
from alignx.config import compose
from alignx.data.tokenize import IDENTICAL, encode_rows
from alignx.errors import AlignxError, TrainingDiverged
from alignx.models.loading import build_llama, save_pretrained_atomic
from alignx.objectives.dpo import DPO
from alignx.objectives.online import TrainingDiverged as OnlineTrainingDiverged
from alignx.objectives.rm import RewardModel
from alignx.train import train

#: until the job adds the guard itself; `++` keeps this valid once it does (and two guards agree)
GUARD = "++callbacks.guard._target_=alignx.objectives.guards.DivergenceGuard"


def test_training_diverged_is_one_user_facing_error_class():
    assert OnlineTrainingDiverged is TrainingDiverged and issubclass(TrainingDiverged, AlignxError)


# -- pairs that collapse under truncation ----------------------------------------------------------
def _tokenizer_and_room(completion: str, **data):
    """The tiny model's tokenizer and a data config whose max_length leaves room for exactly
    ``completion``'s tokens after the prompt "Review:"."""
    cfg = compose(fast("data.truncation=truncate_completion"))
    _, tok = build_llama(cfg.model)
    room = len(tok("Review:")["input_ids"]) + len(tok(completion, add_special_tokens=False)["input_ids"])
    cfg.data.max_length = room
    return tok, cfg.data


# chosen and rejected share " good", then differ; fine/awful differ at once; ok/no fit whole
ROWS = [
    {"prompt": "Review:", "chosen": " good film, loved it", "rejected": " good grief, awful"},
    {"prompt": "Review:", "chosen": " fine and long", "rejected": " awful and long"},
    {"prompt": "Review:", "chosen": " ok", "rejected": " no"},
]


@pytest.mark.parametrize("objective", [DPO, RewardModel], ids=["dpo", "rm"])
def test_pairs_identical_after_truncation_are_dropped_counted_and_warned(objective, caplog):
    tok, data_cfg = _tokenizer_and_room(" good")
    with caplog.at_level(logging.WARNING, logger="alignx"):
        items, stats = encode_rows(ROWS, lambda r: objective.encode(r, tok, data_cfg, {}), split="train")
    assert dict(stats.counts) == {IDENTICAL: 1, "truncated": 1, "kept": 1}
    assert stats.as_metrics("data/train") == {
        "data/train/kept": 1.0, "data/train/truncated": 1.0, "data/train/dropped": 0.0,
        "data/train/identical_after_truncation": 1.0,
    }
    assert len(items) == 2  # the collapsed pair is not trained on
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("train split: 1 of 3 rows compare completions that are identical")
    # with room for two more tokens the same pair still differs (RM spends the last one on the EOS
    # its reward is read at): nothing collapses, nothing is said
    caplog.clear()
    tok, data_cfg = _tokenizer_and_room(" good fi")
    with caplog.at_level(logging.WARNING, logger="alignx"):
        items, stats = encode_rows(ROWS, lambda r: objective.encode(r, tok, data_cfg, {}), split="train")
    assert stats.counts[IDENTICAL] == 0 and len(items) == 3 and not caplog.records


def test_a_job_reports_collapsed_pairs_per_split(tmp_path):
    """A real DPO job on a file where the length limit cuts the only difference of some pairs."""
    collapse = {"chosen": " good film", "rejected": " good show"}
    differ = {"chosen": " fine", "rejected": " awful"}
    train_rows = [{"prompt": f"Rev {i:02d}:", **(collapse if i % 3 == 0 else differ)} for i in range(24)]
    val_rows = [{"prompt": f"Val {i:02d}:", **(collapse if i < 2 else differ)} for i in range(8)]
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    write_jsonl(tmp_path / "val.jsonl", val_rows)
    builtin_only = ("dataset.n_train", "dataset.n_val", "dataset.n_test")
    cfg = compose([o for o in fast(
        "objective=dpo", "dataset=jsonl", f"dataset.path={tmp_path / 'train.jsonl'}", f"dataset.val_path={tmp_path / 'val.jsonl'}",
        "data.truncation=truncate_completion", "trainer.max_steps=1", "eval.enabled=false", "save.model=false",
        f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}",
    ) if not o.startswith(builtin_only)])
    _, tok = build_llama(cfg.model)
    # prompt + " good": the rest of " good film" / " good show" (and their EOS) is cut
    cfg.data.max_length = len(tok("Rev 00:")["input_ids"]) + len(tok(" good", add_special_tokens=False)["input_ids"])
    job = train(cfg)
    tags = MlflowClient(job.tracking_uri).get_run(job.run_id).data.tags  # data counters are tags, not metrics
    assert tags["data.train.identical_after_truncation"] == "8" and tags["data.val.identical_after_truncation"] == "2"
    assert tags["data.train.truncated"] == "16" and tags["data.train.kept"] == "0"


# -- divergence stops every objective ----------------------------------------------------------------
def _runs(root):
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


@pytest.mark.parametrize("objective", ["sft", "rm", "dpo", "kto"])
def test_divergence_stops_training_keeping_the_last_good_checkpoint(tmp_path, objective):
    """lr=1e30: Adam's first update moves every weight by ~1e30 (still finite), the next forward
    or update overflows. The job stops naming the objective and the step; nothing of that step
    is saved, the last checkpoint is the step before it and holds finite weights."""
    cfg = compose(fast(
        f"objective={objective}", "optim.lr=1e30", "checkpoint.every_n_steps=1", "trainer.max_steps=6",
        "eval.enabled=false", "save.model=false", GUARD, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}",
    ))
    with pytest.raises(TrainingDiverged) as err:
        train(cfg)
    message = str(err.value)
    found = re.match(
        rf"objective={objective}: the (training loss is (nan|inf|-inf) in|weights are not finite after the update of) "
        r"training step (\d+)", message)
    assert found, message
    step = int(found.group(3))
    assert "lower optim.lr" in message and "No update of this step was saved" in message
    [run] = _runs(tmp_path)
    assert run.info.status == "FAILED"
    checkpoints = tmp_path / "job" / "checkpoints"
    last = load_checkpoint(checkpoints / "last.ckpt")
    assert last["global_step"] == step - 1 >= 1
    assert sorted(p.name for p in checkpoints.glob("step-*.ckpt")) == [f"step-{s:06d}.ckpt" for s in range(1, step)]
    assert _finite(last["state_dict"])


def test_sft_on_a_model_with_nan_weights_stops_at_the_first_loss(tmp_path):
    """The reported case: SFT on a checkpoint whose weights hold NaN trained on a `nan` loss and
    only crashed in evaluation. Now the first loss stops it, before any update or checkpoint."""
    cfg = compose(fast())
    model, tok = build_llama(cfg.model)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    save_pretrained_atomic(tmp_path / "nan_model", model, tok)
    no_dims = [o for o in fast() if not o.startswith("model.")]
    cfg = compose([*no_dims, "model=hf", f"model.name_or_path={tmp_path / 'nan_model'}", "checkpoint.every_n_steps=1",
                   "trainer.max_steps=3", GUARD, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"])
    with pytest.raises(TrainingDiverged, match=r"^objective=sft: the training loss is nan in training step 1, so training "
                                               r"stopped before its update; lower optim\.lr.* No checkpoint was saved"):
        train(cfg)
    assert [r.info.status for r in _runs(tmp_path)] == ["FAILED"]
    assert not list((tmp_path / "job").glob("checkpoints/*.ckpt"))
    assert not (tmp_path / "job" / "model").exists()  # no model saved from NaN weights


def test_online_rl_keeps_its_own_checks_under_the_guard(tmp_path):
    """Manual optimisation (online RL) checks inside its loop; the guard neither adds a second
    error nor gets in the way of a healthy run."""
    common = ["objective=grpo", "data.batch_size=4", "objective.max_new_tokens=6", "objective.group_size=2",
              "eval.enabled=false", "save.model=false", GUARD, f"outputs_root={tmp_path}"]
    healthy = train(compose(fast(*common, "trainer.max_steps=2", f"output_dir={tmp_path / 'ok'}")))
    assert MlflowClient(healthy.tracking_uri).get_run(healthy.run_id).info.status == "FINISHED"
    with pytest.raises(TrainingDiverged) as err:
        train(compose(fast(*common, "optim.lr=1e30", "trainer.max_steps=8", f"output_dir={tmp_path / 'bad'}")))
    assert re.search(r"not finite (in|after the updates of) training step \d+; training stopped", str(err.value))
    assert not str(err.value).startswith("objective=grpo:")  # the online loop's message, not the guard's
