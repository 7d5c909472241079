"""objective=dpo end to end: values at initialisation, metric names, reference handling, the
preference-loss registry (a loss registered in-process trains), config errors before any run."""

import math

import pytest
import torch
from mlflow import MlflowClient

import alignx.registry
from alignx.config import compose
from alignx.errors import ConfigError
from alignx.losses import PreferenceInputs, PreferenceLoss
from alignx.models.adapters import lora
from alignx.models.loading import build_llama
from alignx.objectives.dpo import DPO, collate_pairs, encode_pair
from alignx.registry import load_plugins
from alignx.train import train
from conftest import FAST

# policy == reference at step 0 (and the warmup LR is 0 there), so h = 0: the values at
# initialisation of docs/losses.md
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


VALID = "Valid preference_losses: cdpo, hinge, ipo, orpo, robust, sigmoid, simpo"


def test_unknown_loss_lists_valid_ones():
    (model, tok), _ = _tiny()
    with pytest.raises(ConfigError, match=f"objective.loss: unknown preference_loss 'kto'. {VALID}"):
        DPO(model, tok, compose(["objective=dpo", "objective.loss=kto"]).objective, optimizer=None)


def _no_run_left(tmp_path) -> None:
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "job").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.loss=simp"], rf"objective.loss: unknown preference_loss 'simp'. {VALID}. Did you mean 'simpo'\?"),
        (["objective.loss=robust", "objective.label_smoothing=0.5"],
         r"objective.loss=robust cannot run with objective.beta=0.1, objective.label_smoothing=0.5: "
         r"label_smoothing for 'robust' must satisfy 0 <= eps < 0.5, got 0.5"),
        (["objective.loss=hinge", "objective.label_smoothing=0.1"], r"label_smoothing is not used by 'hinge'"),
        (["objective.beta=0"], r"objective.loss=sigmoid cannot run with objective.beta=0, .*beta must be > 0"),
        (["objective.loss=simpo", "~objective.simpo_gamma"], r"objective.simpo_gamma must be set \(read by objective.loss=simpo\)"),
        (["+objective.simpo_gama=2"], r"unknown key 'objective.simpo_gama'. Did you mean 'objective.simpo_gamma'"),
    ],
)
def test_bad_loss_config_is_one_line_before_any_run(tmp_path, overrides, message):
    cfg = compose([*FAST, "objective=dpo", *overrides, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"])
    with pytest.raises(ConfigError, match=message) as err:
        DPO.check_config(cfg)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    _no_run_left(tmp_path)


def test_a_loss_registered_in_process_trains(tmp_path, monkeypatch):
    """A new DPO variant is one function and one registration through the public registry API;
    its option is an ``objective.*`` key read strictly, and its spec decides the inputs."""
    calls = []

    def squared_margin(x: PreferenceInputs, *, beta: float, sq_target: float):
        # (β h - target)²: at initialisation h = 0, so the loss is target²
        a, b = x.chosen - x.ref_chosen, x.rejected - x.ref_rejected
        losses = (beta * (a - b) - sq_target) ** 2
        calls.append({"loss": float(losses.detach().mean()), "sq_target": sq_target, "nll": x.chosen_nll,
                      "ref_grad": x.ref_chosen.requires_grad, "chosen": x.chosen.detach().clone(), "beta": beta})
        return losses, beta * a.detach(), beta * b.detach()

    # a fresh process-wide registry for this test, the previous one put back afterwards
    monkeypatch.setattr(alignx.registry, "_registry", alignx.registry._registry)
    registry = load_plugins(reload=True)
    registry.register("preference_loss", "squared", PreferenceLoss("squared", squared_margin, length_normalised=True))

    cfg = compose([*FAST, "objective=dpo", "objective.loss=squared", "+objective.sq_target=0.5", "objective.beta=0.2",
                   "trainer.max_steps=2", "tracking=none", "eval.enabled=false",
                   f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"])
    job = train(cfg)

    assert (job.output_dir / "model" / "model.safetensors").is_file()
    train_calls = [c for c in calls if c["chosen"].numel() == 16]  # data.batch_size pairs per training step
    assert len(train_calls) >= 2
    first = train_calls[0]
    assert first["sq_target"] == 0.5 and first["beta"] == 0.2
    assert first["loss"] == pytest.approx(0.25, abs=1e-4)  # policy == reference at step 0
    assert first["nll"] is None and first["ref_grad"] is False  # needs_nll False; the reference is frozen
    # length_normalised: per-token means of byte-level log-probs lie in [-ln 256 - slack, 0]
    assert bool((first["chosen"] <= 0).all()) and bool((first["chosen"] > -10).all())

    # the option is strict: without it the job fails before any run, naming the key
    bare = compose([*FAST, "objective=dpo", "objective.loss=squared", f"output_dir={tmp_path / 'b'}",
                    f"outputs_root={tmp_path / 'b_root'}"])
    with pytest.raises(ConfigError, match=r"objective.sq_target must be set \(read by objective.loss=squared\).*"
                                          r"\+objective.sq_target=<value>"):
        train(bare)
    assert not (tmp_path / "b").exists()


def test_reference_free_spec_builds_no_reference_and_nll_spec_logs_nll(monkeypatch):
    (model, tok), _ = _tiny()
    seen = []

    def free(x: PreferenceInputs, *, beta: float):
        seen.append((x.ref_chosen, x.ref_rejected, x.chosen_nll))
        return -torch.nn.functional.logsigmoid(beta * (x.chosen - x.rejected)) + x.chosen_nll, x.chosen.detach(), x.rejected.detach()

    monkeypatch.setattr(alignx.registry, "_registry", alignx.registry._registry)
    load_plugins(reload=True).register("preference_loss", "free", PreferenceLoss("free", free, needs_reference=False, needs_nll=True))
    objective = DPO(model, tok, compose(["objective=dpo", "objective.loss=free"]).objective, optimizer=None)
    assert objective.ref_model is None and not objective.needs_reference()
    assert objective.loss_options == {"beta": 0.1}
    cfg = compose([*FAST])
    rows = [{"prompt": "ab", "chosen": "good", "rejected": "no"}, {"prompt": "c", "chosen": "x", "rejected": "yyyy"}]
    batch = collate_pairs([encode_pair(r, tok, cfg.data)[0] for r in rows], tok.pad_token_id)
    objective.model.eval()  # no dropout, so the two forwards below agree
    loss, metrics = objective.step(batch)
    (ref_c, ref_r, nll), = seen
    assert ref_c is None and ref_r is None and nll is not None
    # the NLL the spec asked for is the chosen side's per-token mean NLL, logged as `nll`
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = torch.log_softmax(logits[:, :-1].float(), -1)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    token_lp = shifted.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    expected = -(token_lp.sum(-1) / mask.sum(-1))[:2]
    assert nll.detach().tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert metrics["nll"].item() == pytest.approx(float(expected.mean()), rel=1e-5)
    assert torch.isfinite(loss)


def test_frozen_reference_stays_in_eval_mode_and_out_of_the_module_tree():
    (model, tok), _ = _tiny()
    objective = DPO(model, tok, compose(["objective=dpo"]).objective, optimizer=None)
    objective.train()  # what Lightning does at the start of fit
    assert objective.ref_model.training is False
    names = [n for n, _ in objective.named_parameters()]
    assert names and all(n.startswith("model.") for n in names)
