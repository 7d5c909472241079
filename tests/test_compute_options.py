"""model.gradient_checkpointing and trainer.compile: the training step's loss and gradients equal the
plain step's (checkpointing recomputes the same activations; compilation fuses the same math), a real
job trains with each, and a model that cannot is refused naming the key. Speed and memory are measured
in benchmarks/trl_side_by_side.py, not asserted here."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow import MlflowClient
from conftest import FAST, fast

from alignx.config import compose
from alignx.data.cache import ENCODING_KEYS
from alignx.errors import ConfigError
from alignx.models.compute import compile_model, decoder_layers, enable_gradient_checkpointing
from alignx.models.loading import build_llama
from alignx.objectives.base import JobContext
from alignx.registry import load_plugins
from alignx.train import train

ROWS = [{"prompt": p, "completion": c} for p, c in
        [("Review: The plot was", "good and kind."), ("Q: 2+3=", "5"), ("Hi", "a long and winding reply")]]


def _step(overrides: list[str]) -> tuple[float, dict[str, torch.Tensor], list[tuple]]:
    """(loss, gradients, the checkpointed calls seen) of one SFT step on a 2-layer tiny model."""
    cfg = compose([*FAST, "model.num_hidden_layers=2", "objective=sft", *overrides])
    registry = load_plugins()
    model, tok = build_llama(cfg.model)
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    cls = registry.get("objective", "sft")
    obj = cls(model, tok, cfg.objective, optimizer=None)
    obj.bind(JobContext(cfg, registry, [], []))
    data_cfg = {k: cfg.data[k] for k in ENCODING_KEYS}
    batch = cls.collate_fn(tok)([cls.encode(r, tok, data_cfg, {})[0] for r in ROWS])
    recomputed: list[tuple] = []
    hook = model.model.layers[0].mlp.register_forward_pre_hook(lambda _m, args: recomputed.append(torch.is_grad_enabled()))
    try:
        loss, _ = obj.step(batch)
        loss.backward()
    finally:
        hook.remove()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, recomputed


@pytest.mark.parametrize("option", ["model.gradient_checkpointing=true", "trainer.compile=true"])
def test_the_step_equals_the_plain_step(option):
    loss, grads, calls = _step([])
    o_loss, o_grads, o_calls = _step([option])
    assert o_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert sorted(o_grads) == sorted(grads) and grads
    for name, grad in grads.items():
        torch.testing.assert_close(o_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert len(calls) == 1
    if option.startswith("model.gradient_checkpointing"):
        assert len(o_calls) == 2  # the first layer ran again in the backward pass: its activations were not kept


def test_compile_compiles_every_decoder_layer_in_place():
    cfg = compose([*FAST, "model.num_hidden_layers=3"])
    model, _ = build_llama(cfg.model)
    names = [n for n, _ in model.named_parameters()]
    assert compile_model(model) == 3 == len(decoder_layers(model))
    assert [n for n, _ in model.named_parameters()] == names  # state dicts and adapters load as before
    with pytest.raises(ConfigError, match=r"^trainer.compile: Linear has no repeated layers to compile: set trainer.compile=false$"):
        compile_model(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"^model.gradient_checkpointing: Linear does not support gradient checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("overrides", [["objective=dpo", "adapter=lora", "model.gradient_checkpointing=true"],
                                       ["objective=rm", "model.gradient_checkpointing=true", "model.padding_free=true"],
                                       ["objective=sft", "trainer.compile=true"]],
                         ids=["dpo-lora-checkpointing", "rm-checkpointing-padding-free", "sft-compile"])
def test_a_job_trains_and_saves_with_the_option(tmp_path, overrides):
    cfg = compose(fast(*overrides, "trainer.max_steps=3", "eval.enabled=false", f"output_dir={tmp_path / 'job'}",
                       f"outputs_root={tmp_path}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"))
    result = train(cfg)
    history = MlflowClient(tracking_uri=result.tracking_uri).get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2] and all(math.isfinite(m.value) for m in history)
    assert any((result.model_dir / f).exists() for f in ("config.json", "adapter_config.json"))
