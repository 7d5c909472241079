"""objective=dpo end to end: values at initialisation, metric names, reference handling."""

import math

import pytest
from mlflow import MlflowClient

from alignx.config import compose
from alignx.models.adapters import lora
from alignx.models.loading import build_llama
from alignx.objectives.dpo import DPO, collate_pairs, encode_pair
from alignx.train import train
from conftest import FAST

# policy == reference at step 0 (and the warmup LR is 0 there), so h = 0: REFERENCE.md's values
AT_INIT = {"sigmoid": math.log(2), "cdpo": math.log(2), "robust": math.log(2), "hinge": 1.0, "ipo": 25.0}
METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"]


@pytest.mark.parametrize("loss", ["sigmoid", "cdpo", "robust", "hinge", "ipo", "simpo", "orpo"])
def test_dpo_losses_train_and_log_the_field_metrics(tmp_path, loss):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = ["objective.label_smoothing=0.1"] if loss in ("cdpo", "robust") else []
    cfg = compose([*FAST, "objective=dpo", f"objective.loss={loss}", "trainer.max_steps=3", "trainer.val_check_interval=3", *extra,
                   f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", f"tracking.uri={uri}"])
    job = train(cfg)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["alignx.objective"] == "dpo"
    history = sorted(client.get_metric_history(job.run_id, "train/loss"), key=lambda m: m.step)
    if loss in AT_INIT:
        assert history[0].value == pytest.approx(AT_INIT[loss], abs=1e-4)
    for name in METRICS:
        assert f"train/{name}" in run.data.metrics and f"val/{name}" in run.data.metrics, name
    if loss == "orpo":
        assert "train/nll" in run.data.metrics
    assert (job.output_dir / "model" / "model.safetensors").is_file()


def _tiny():
    cfg = compose([*FAST])
    return build_llama(cfg.model), cfg


def test_reference_is_a_frozen_copy_or_the_disabled_adapter_or_none():
    (model, tok), cfg = _tiny()
    full = DPO(model, tok, compose(["objective=dpo"]).objective, optimizer=None)
    assert full.ref_model is not None and full.ref_model is not model
    assert not any(p.requires_grad for p in full.ref_model.parameters())
    (model, tok), _ = _tiny()
    peft_model = lora(model, compose(["adapter=lora"]).adapter)
    assert DPO(peft_model, tok, compose(["objective=dpo"]).objective, optimizer=None).ref_model is None
    (model, tok), _ = _tiny()
    simpo = DPO(model, tok, compose(["objective=dpo", "objective.loss=simpo"]).objective, optimizer=None)
    assert simpo.ref_model is None


def test_pairs_are_one_concatenated_batch_with_prompt_masked():
    (model, tok), cfg = _tiny()
    rows = [{"prompt": "ab", "chosen": "good", "rejected": "no"}, {"prompt": "c", "chosen": "x", "rejected": "yyyy"}]
    items = [encode_pair(r, tok, cfg.data)[0] for r in rows]
    batch = collate_pairs(items, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4  # chosen rows, then rejected rows
    assert tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()]) == "<s>abgood</s>"
    assert tok.decode(batch["input_ids"][2][batch["attention_mask"][2].bool()]) == "<s>abno</s>"
    trained = batch["labels"][0][batch["labels"][0] != -100]
    assert tok.decode(trained) == "good</s>"


def test_unknown_loss_lists_valid_ones():
    (model, tok), _ = _tiny()
    with pytest.raises(Exception, match="Valid: sigmoid, cdpo, robust, hinge, ipo, simpo, orpo"):
        DPO(model, tok, compose(["objective=dpo", "objective.loss=kto"]).objective, optimizer=None)


def test_frozen_reference_stays_in_eval_mode_and_out_of_the_module_tree():
    (model, tok), _ = _tiny()
    objective = DPO(model, tok, compose(["objective=dpo"]).objective, optimizer=None)
    objective.train()  # what Lightning does at the start of fit
    assert objective.ref_model.training is False
    names = [n for n, _ in objective.named_parameters()]
    assert names and all(n.startswith("model.") for n in names)
