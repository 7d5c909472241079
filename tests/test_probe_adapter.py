"""adapter=probe: a linear probe, where only a reward model's new scalar head trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignx.config import compose, validate
from alignx.errors import ConfigError
from alignx.models.adapters import probe
from alignx.models.heads import add_reward_head
from alignx.models.loading import build_llama
from alignx.train import train
from conftest import fast

MICRO = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, init_seed=0)


def test_probe_freezes_everything_but_the_head():
    lm, tok = build_llama(MICRO)
    rm = probe(add_reward_head(lm, tok), {"name": "probe"})
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert trainable == {"score.weight"}
    assert sum(p.numel() for n, p in rm.named_parameters() if n in trainable) == 32


def test_probe_refuses_a_model_without_a_scalar_head():
    lm, _ = build_llama(MICRO)
    with pytest.raises(ConfigError, match=r"^adapter=probe trains only a reward model's scalar head, and this "
                                          r"LlamaForCausalLM has none"):
        probe(lm, {"name": "probe"})


def test_a_probed_reward_model_trains_its_head_and_keeps_the_backbone(tmp_path: Path):
    """objective=rm on a saved LM with adapter=probe: the saved reward model is one plain
    transformers model (no peft base beside it) whose backbone is the LM's, bit for bit."""
    lm, tok = build_llama(MICRO)
    start = tmp_path / "lm"
    lm.save_pretrained(start)
    tok.save_pretrained(start)
    job = train(compose([o for o in fast("objective=rm", "model=hf", f"model.name_or_path={start}", "adapter=probe", "optim.lr=1e-2",
                             "trainer.max_steps=4", "eval.enabled=false", "tracking=none",
                             f"output_dir={tmp_path / 'run'}", f"outputs_root={tmp_path}")
                         if not o.startswith("model.") or o.startswith("model.name_or_path")]))
    assert not (job.output_dir / "base").exists() and not (job.model_dir / "adapter_config.json").exists()
    rm = AutoModelForSequenceClassification.from_pretrained(job.model_dir)
    backbone = lm.model.state_dict()
    assert all(torch.equal(v, backbone[k]) for k, v in rm.model.state_dict().items())
    assert rm.score.weight.shape == (1, 32)


def test_probe_on_a_policy_objective_fails_before_any_work(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^adapter=probe trains only a reward model's scalar head, and "
                                          r"objective=sft trains a policy"):
        train(compose(fast("adapter=probe", f"output_dir={tmp_path / 'run'}", f"outputs_root={tmp_path}")))
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


def test_probe_takes_no_options():
    with pytest.raises(ConfigError, match=r"^unknown key 'adapter.r'. Valid keys under 'adapter': name"):
        validate(compose(["objective=rm", "adapter=probe", "+adapter.r=2"]))
