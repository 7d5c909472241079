"""Every objective that trains a policy is compared with the model it started from:
``eval/kl_to_reference`` and ``eval/win_rate`` under the same names whether or not the objective
used a reference while training (SFT, reference-free SimPO/ORPO), the objective's own reference
reused where it holds one, and ``alignx eval --reference <start>`` giving the job's numbers."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

from alignx.config import compose
from alignx.evaluation import StartingModel, evaluate_model, sample_rollouts
from alignx.evaluation.suite import weights_probe
from alignx.generation import generate
from alignx.job import build_policy
from alignx.job.build import build_objective
from alignx.registry import load_plugins
from alignx.train import train
from conftest import fast

COMPARISON = ("eval/kl_to_reference", "eval/win_rate")
# optim.lr=0 and trainer.max_steps=0 are refused by config validation: a learning rate of 1e-30
# moves no float32 weight (every update is below half an ulp), so the policy stays the start
UNTRAINED = ("optim.lr=1e-30", "trainer.max_steps=2")
# enough movement for the Monte-Carlo KL to stand clear of its noise on 64 samples (measured at
# seeds 0-2: sft 0.26-0.29, simpo 0.052-0.059)
TRAINED = ("optim.lr=5e-2", "trainer.max_steps=3", "dataset.n_test=64", "eval.num_prompts=64")
REFERENCE_FREE = {"sft": ["objective=sft"], "simpo": ["objective=dpo", "objective.loss=simpo"]}


def _metrics(run_root, run_id):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{run_root / 'mlflow.db'}").get_run(run_id).data.metrics


@pytest.mark.parametrize("objective", sorted(REFERENCE_FREE))
def test_an_objective_without_a_reference_is_compared_with_its_starting_model(objective, tmp_path):
    """Untrained, the policy *is* its start: every sampled sequence has the same log-prob under
    both (KL exactly 0) and both sample the same completions with the same seed (every prompt a
    tie: win rate exactly 0.5). Trained, the KL is clearly positive. Both runs log the metrics."""
    base = [*REFERENCE_FREE[objective], f"outputs_root={tmp_path}"]
    still = train(compose(fast(*base, *UNTRAINED, f"output_dir={tmp_path / 'still'}")))
    logged = _metrics(tmp_path, still.run_id)
    assert logged["eval/kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert logged["eval/win_rate"] == 0.5

    moved = train(compose(fast(*base, *TRAINED, f"output_dir={tmp_path / 'moved'}")))
    logged = _metrics(tmp_path, moved.run_id)
    assert logged["eval/kl_to_reference"] > 0.02
    assert 0.0 <= logged["eval/win_rate"] <= 1.0


def test_a_policy_trained_in_bf16_is_compared_in_its_own_precision(tmp_path):
    """trainer.precision=bf16-true casts the policy to bf16; the rebuilt start (built in float32)
    is cast the same way, so an untrained policy still has KL exactly 0 and win rate 0.5."""
    job = train(compose(fast("trainer.precision=bf16-true", *UNTRAINED, "tracking=none", f"output_dir={tmp_path / 'job'}",
                             f"outputs_root={tmp_path}")))
    assert job.metrics["eval/kl_to_reference"] == 0.0 and job.metrics["eval/win_rate"] == 0.5


def test_every_policy_objective_reports_the_same_evaluation_axes(tmp_path):
    """A mixed sweep compares its rows on the same axes: SFT, a reference-free loss, DPO with a
    reference, each with or without an adapter, report the same set of eval/ metrics; a reward
    model reports its accuracy and no comparison."""
    names = {}
    for label, extra in {"sft": [], "sft_lora": ["adapter=lora"], "orpo_lora": ["objective=dpo", "objective.loss=orpo", "adapter=lora"],
                         "dpo": ["objective=dpo"], "rm": ["objective=rm"]}.items():
        job = train(compose(fast(*extra, "tracking=none", "trainer.max_steps=2", f"output_dir={tmp_path / label}",
                                 f"outputs_root={tmp_path}")))
        names[label] = {k for k in job.metrics if k.startswith("eval/")}
    assert set(COMPARISON) <= names["sft"]
    assert names["sft"] == names["sft_lora"] == names["orpo_lora"] == names["dpo"]
    assert names["rm"] == {"eval/rm_accuracy"}


def _objective(*overrides: str, tmp_path):
    cfg = compose(fast(*overrides, "tracking=none", f"output_dir={tmp_path}", f"outputs_root={tmp_path}"))
    registry = load_plugins()
    cls = registry.get("objective", str(cfg.objective.name))
    model, tokenizer, _ = build_policy(cfg, registry, tmp_path, cls)
    start = StartingModel(cfg, registry, cls, model)
    return cfg, registry, start, build_objective(cfg, cls, model, tokenizer, 16)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_starting_model_is_the_reference_the_objective_already_holds(tmp_path):
    """No second copy: DPO under full fine-tuning hands over its frozen reference; with an adapter
    the policy itself serves with its adapters off; SFT gets the model rebuilt, equal to the start."""
    ids = torch.tensor([[1, 72, 101, 108, 108, 111]])

    _, _, start, dpo = _objective("objective=dpo", tmp_path=tmp_path / "dpo")
    with start.factory(dpo)() as ref:
        assert ref is dpo.ref_model

    cfg, registry, start, lora = _objective("objective=dpo", "objective.loss=simpo", "adapter=lora", tmp_path=tmp_path / "lora")
    base = _logits(registry.get("model", str(cfg.model.kind))(cfg.model)[0].eval(), ids)
    # move the adapter, so the policy differs from its start
    for name, p in lora.model.named_parameters():
        if "lora_B" in name:
            p.data.fill_(0.5)
    assert not torch.allclose(_logits(lora.model.eval(), ids), base)
    with start.factory(lora)() as ref:
        assert ref is lora.model
        assert torch.equal(_logits(ref, ids), base)
    assert not torch.allclose(_logits(lora.model, ids), base)  # adapters back on afterwards

    _, _, start, sft = _objective("objective=sft", tmp_path=tmp_path / "sft")
    at_start = {k: v.clone() for k, v in sft.model.state_dict().items()}
    with torch.no_grad():
        for p in sft.model.parameters():
            p.add_(0.1)  # "training"
    with start.factory(sft)() as ref:
        assert ref is not sft.model and not ref.training
        assert all(torch.equal(v, at_start[k]) for k, v in ref.state_dict().items())


def test_a_rebuilt_model_that_is_not_the_start_leaves_the_comparison_out(tmp_path, caplog):
    """A model builder that is not deterministic (here: the job started from init_seed=1, its config
    rebuilds init_seed=0) is named in a warning, and no KL against a different model is reported."""
    cfg, registry, _, sft = _objective("objective=sft", "model.init_seed=1", tmp_path=tmp_path)
    start = StartingModel(OmegaConf.merge(cfg, {"model": {"init_seed": 0}}), registry, type(sft), sft.model)
    with caplog.at_level(logging.WARNING, logger="alignx"):
        assert start.factory(sft) is None
    assert "model.kind=llama built again from the same config has other weights" in caplog.text


def test_a_reward_model_is_not_compared(tmp_path):
    _, _, start, rm = _objective("objective=rm", tmp_path=tmp_path)
    assert start.probe is None and start.factory(rm) is None


def test_weights_probe_sees_a_different_initialisation():
    registry = load_plugins()
    cfg = compose(fast()).model
    a, b = (registry.get("model", "llama")(OmegaConf.merge(cfg, {"init_seed": s}))[0] for s in (0, 0))
    c = registry.get("model", "llama")(OmegaConf.merge(cfg, {"init_seed": 1}))[0]
    assert torch.equal(weights_probe(a), weights_probe(b))
    # every tensor that is initialised at random differs (norm weights start at 1 under any seed)
    differ = weights_probe(a) != weights_probe(c)
    randomly_initialised = torch.tensor([p.std().item() > 0 for p in a.parameters()])
    assert torch.equal(differ, randomly_initialised) and differ.any()


def test_sample_rollouts_draws_what_generate_draws():
    """The KL is taken on the token ids of exactly the completions the gold reward scores."""
    registry = load_plugins()
    model, tok = registry.get("model", "llama")(compose(fast()).model)
    prompts = ["Review: The film is", "Review: The acting felt", "Review: The film is"]
    texts, rollouts = sample_rollouts(model, tok, prompts, max_new_tokens=6, seed=3, batch_size=2)
    assert texts == generate(model, tok, prompts, max_new_tokens=6, seed=3, batch_size=2)
    assert [r.response_ids.size(0) for r in rollouts] == [2, 1]


def test_alignx_eval_against_the_starting_model_reproduces_the_jobs_comparison(tmp_path):
    """A job that starts from a saved model (model=hf) rebuilds that model to compare with;
    `alignx eval <its model> --reference <the saved start>` reports the same KL and win rate."""
    start = train(compose(fast("tracking=none", "trainer.max_steps=2", f"output_dir={tmp_path / 'start'}",
                               f"outputs_root={tmp_path}")))
    shared = ["dataset.n_test=64", "eval.num_prompts=64", "eval.max_new_tokens=8", "dataset.n_train=96", "dataset.n_val=16"]
    job = train(compose(["model=hf", f"model.name_or_path={start.model_dir}", "trainer.max_steps=3", "optim.lr=5e-2",
                         "data.batch_size=16", "trainer.enable_progress_bar=false", "tracking=none", *shared,
                         f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"]))
    assert job.metrics["eval/kl_to_reference"] > 0.02
    metrics, _, _ = evaluate_model(str(job.model_dir), [*shared, f"outputs_root={tmp_path}"],
                                   reference=str(start.model_dir), track=False)
    for key in COMPARISON:
        assert metrics[key] == pytest.approx(job.metrics[key], abs=1e-4), key
