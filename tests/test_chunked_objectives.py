"""model.logprob_chunk_size: every objective's loss and metrics from the hidden states by chunks equal
the plain path's (the model's [B, T, V] logits) to 1e-5, with and without LoRA; training runs give the
same learning curve; a bad value fails before any run.

The chunk size is 5 throughout, which divides none of the batches' labelled-position counts (checked),
so every batch ends in a partial chunk. The op itself is tested in test_ops_chunked.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, fast
from mlflow import MlflowClient

from alignx.config import compose
from alignx.data.cache import ENCODING_KEYS
from alignx.errors import ConfigError
from alignx.generation import Rollout, encode_prompts, left_pad, sample
from alignx.models.adapters import lora
from alignx.models.heads import add_reward_head
from alignx.models.lm_head import head_inputs
from alignx.models.loading import build_llama
from alignx.objectives.base import JobContext, Objective, ReferenceObjective
from alignx.ops.logprobs import IGNORE_INDEX
from alignx.registry import load_plugins
from alignx.train import train

CHUNK = 5
TOL = {"rel": 1e-5, "abs": 1e-5}

PROMPTS = ["Review: The plot was", "Q: 2+3=", "Review: The cast felt rather", "Hi"]
COMPLETIONS = ["good and kind.", "5", "dull", "a long and winding reply"]
ROWS = {
    "sft": [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS)],
    "pairs": [{"prompt": p, "chosen": c, "rejected": c[::-1] + "x"} for p, c in zip(PROMPTS, COMPLETIONS)],
    "unpaired": [{"prompt": p, "completion": c, "label": i % 2 == 0} for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS))],
}


def _objective(overrides: list[str], chunk: int | None, adapter: bool) -> tuple[Objective, dict]:
    """A bound objective (as the job binds it) on the FAST tiny model, and a batch of ROWS.

    The policy is moved away from its reference with seeded noise (LoRA: the adapter's matrices,
    B being zero at initialisation; full fine-tuning: every weight after the reference copy is made), so
    rewards, KL and the reference log-probs are all non-trivial. Both paths get identical weights.
    """
    cfg = compose([*FAST, *overrides, *(["adapter=lora"] if adapter else []),
                   f"model.logprob_chunk_size={'null' if chunk is None else chunk}"])
    registry = load_plugins()
    model, tok = build_llama(cfg.model)
    g = torch.Generator().manual_seed(1)
    if adapter:
        model = lora(model, cfg.adapter)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:  # A is drawn from the global RNG: both paths get the same
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    cls = registry.get("objective", str(cfg.objective.name))
    obj = cls(model, tok, cfg.objective, optimizer=None)
    if not adapter:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    obj.bind(JobContext(cfg, registry, [], []))
    data_cfg = {k: cfg.data[k] for k in ENCODING_KEYS}
    items = [cls.encode(row, tok, data_cfg, {})[0] for row in ROWS[cls.row_kind(cfg.objective)]]
    items = cls.prepare_items(items, cfg.objective, 0)
    return obj, cls.collate_fn(tok)(items)


def _step(obj: Objective, batch: dict) -> tuple[float, dict[str, float], dict[str, torch.Tensor], int]:
    """(loss, metrics, gradients of the trainable weights, calls of the LM head) of one training step."""
    obj.model.zero_grad()
    calls = []
    head = obj.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda *_: calls.append(1))
    try:
        loss, metrics = obj.step(batch)
    finally:
        handle.remove()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in obj.model.named_parameters() if p.requires_grad}
    return float(loss.detach()), {k: float(v) for k, v in metrics.items()}, grads, len(calls)


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("overrides", [
    ["objective=sft"],
    ["objective=dpo"],
    ["objective=dpo", "objective.loss=ipo"],
    ["objective=dpo", "objective.loss=simpo"],
    ["objective=kto"],
], ids=["sft", "dpo-sigmoid", "dpo-ipo", "dpo-simpo", "kto"])
def test_step_loss_metrics_and_gradients_equal_the_plain_path(overrides, adapter):
    plain, batch = _objective(overrides, None, adapter)
    chunked, _ = _objective(overrides, CHUNK, adapter)
    assert plain.logprob_chunk_size is None and chunked.logprob_chunk_size == CHUNK
    # every batch ends in a partial chunk of labelled positions
    labelled = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)
    assert int(labelled.sum()) % CHUNK and int(labelled[: labelled.numel() // 2].sum()) % CHUNK
    loss, metrics, grads, head_calls = _step(plain, batch)
    c_loss, c_metrics, c_grads, c_head_calls = _step(chunked, batch)
    assert head_calls > 0 and c_head_calls == 0  # the chunked step never built the logits
    assert c_loss == pytest.approx(loss, **TOL)
    assert sorted(c_metrics) == sorted(metrics) and len(metrics) >= 2
    for key, value in metrics.items():
        assert c_metrics[key] == pytest.approx(value, **TOL), key
    if overrides != ["objective=sft"]:  # the policy differs from its reference: a real test of both
        assert abs(metrics.get("rewards/margins", metrics.get("kl", 0.0))) > 1e-4
    assert sorted(c_grads) == sorted(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(c_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    if isinstance(plain, ReferenceObjective) and plain.needs_reference():
        with torch.no_grad():
            ref = plain.reference_logps(batch)
            c_ref = chunked.reference_logps(batch)
        torch.testing.assert_close(c_ref, ref, rtol=1e-5, atol=1e-5)


def test_rollout_logps_and_entropy_equal_the_plain_path():
    """OnlineObjective.response_logps on left-padded prompts with ragged responses (the position ids
    count real tokens): scoring without gradient (log-probs and entropy in one pass) and the policy
    log-probs with gradient, under the sampling temperature, with LoRA."""
    cfg = compose(fast("objective=grpo", "adapter=lora", "objective.temperature=0.7"))
    registry = load_plugins()
    model, tok = build_llama(cfg.model)
    model = lora(model, cfg.adapter)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    obj = registry.get("objective", "grpo")(model, tok, cfg.objective, optimizer=None)
    obj.bind(JobContext(cfg, registry, [{"input_ids": ids, "prompt": p} for ids, p in
                                        zip(encode_prompts(tok, PROMPTS), PROMPTS)], []))
    assert obj.logprob_chunk_size is None
    ids, mask = left_pad(encode_prompts(tok, PROMPTS), tok.pad_token_id)
    full = sample(model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=9,
                  temperature=0.7, seed=3)
    # an untrained model rarely samples EOS: end the responses at 9, 4, 7 and 2 tokens as EOS would
    ended = torch.arange(full.response_ids.size(1)) < torch.tensor([[9], [4], [7], [2]])
    rollout = Rollout(full.prompt_ids, full.prompt_mask, full.response_ids.masked_fill(~ended, tok.pad_token_id),
                      ended.to(full.response_mask.dtype), full.has_eos)
    valid = rollout.response_mask.sum(-1)
    assert int(valid.sum()) % CHUNK and len(set(valid.tolist())) > 1 and bool(mask[:, 0].eq(0).any())

    def score(chunk: int | None) -> tuple[torch.Tensor, ...]:
        obj.logprob_chunk_size = chunk
        with torch.no_grad():
            lp, ent = obj.response_logps(model, rollout, with_entropy=True)
        model.zero_grad()
        lp_grad = obj.response_logps(model, rollout)
        (lp_grad * torch.linspace(0.5, 1.5, lp_grad.size(1))).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        with obj.reference() as ref, torch.no_grad():
            ref_lp = obj.response_logps(ref, rollout)
        return lp, ent, lp_grad.detach(), grads, ref_lp

    plain, chunked = score(None), score(CHUNK)
    assert bool((plain[0] != 0).any()) and bool((plain[1] > 0).any()) and not torch.equal(plain[0], plain[4])
    for name, want, got in zip(("logps", "entropy", "logps with grad", "gradients", "reference"), plain, chunked):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    # padding positions are exactly 0 in both
    assert bool((chunked[0][~rollout.response_mask.bool()] == 0).all())
    assert bool((chunked[1][~rollout.response_mask.bool()] == 0).all())


@pytest.mark.parametrize("overrides", [["objective=sft"], ["objective=dpo"]], ids=["sft", "dpo"])
def test_under_bf16_autocast_the_chunked_step_is_as_exact_as_the_plain_one(overrides):
    """Mixed precision: the head runs in the autocast dtype in the forward and in the recomputing
    backward alike, so the chunked gradients are as close to the float32 ones as the plain path's."""
    grads = []
    for chunk, autocast in ((None, False), (None, True), (CHUNK, True)):
        obj, batch = _objective(overrides, chunk, adapter=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = obj.step(batch)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in obj.model.parameters() if p.grad is not None]))
    exact, plain_bf16, chunked_bf16 = grads
    plain_err = float((plain_bf16 - exact).norm() / exact.norm())
    chunked_err = float((chunked_bf16 - exact).norm() / exact.norm())
    assert 0 < plain_err < 0.02 and chunked_err < 2 * plain_err


def _history(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's per-step history of an MLflow run, time measurements left out."""
    client = MlflowClient(tracking_uri=uri)
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("time/")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def _same_history(plain: dict, chunked: dict) -> None:
    assert sorted(chunked) == sorted(plain)
    for key, points in plain.items():
        assert [s for s, _ in chunked[key]] == [s for s, _ in points], key
        assert [v for _, v in chunked[key]] == pytest.approx([v for _, v in points], **TOL), key


def _jobs(tmp_path, overrides: list[str]) -> tuple[str, object, object]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs = []
    for chunk in ("null", str(CHUNK)):
        cfg = compose(fast(*overrides, f"model.logprob_chunk_size={chunk}", f"output_dir={tmp_path / chunk / 'job'}",
                           f"outputs_root={tmp_path / chunk}",  # caches apart: both jobs miss them
                           f"tracking.uri={uri}", "eval.enabled=false", "save.model=false"))
        jobs.append(train(cfg))
    return uri, *jobs


@pytest.mark.parametrize("overrides", [
    ["objective=sft"], ["objective=dpo"], ["objective=dpo", "adapter=lora"],
    ["objective=dpo", "objective.precompute_ref_logps=true"],
], ids=["sft", "dpo", "dpo-lora", "dpo-precomputed-reference"])
def test_four_training_steps_give_the_plain_learning_curve(tmp_path, overrides):
    uri, plain, chunked = _jobs(tmp_path, [*overrides, "trainer.max_steps=4", "trainer.val_check_interval=4"])
    history, c_history = _history(uri, plain.run_id), _history(uri, chunked.run_id)
    assert len(history["train/loss"]) == 4
    _same_history(history, c_history)
    assert MlflowClient(tracking_uri=uri).get_run(chunked.run_id).data.params["model.logprob_chunk_size"] == str(CHUNK)


@pytest.mark.parametrize("adapter", [[], ["adapter=lora"]], ids=["full", "lora"])
def test_grpo_iterations_log_the_plain_metrics(tmp_path, adapter):
    """Two GRPO iterations: rollout log-probs and entropy (scored without gradient), the reference
    log-probs and the policy log-probs of the loss all come from the chunked path."""
    rl = ["objective=grpo", "data.batch_size=4", "objective.max_new_tokens=6", "trainer.max_steps=2", *adapter]
    uri, plain, chunked = _jobs(tmp_path, rl)
    history, c_history = _history(uri, plain.run_id), _history(uri, chunked.run_id)
    for key in ("loss/policy_avg", "objective/entropy", "kl", "policy/logprob_mismatch", "reward"):
        assert len(history[key]) == 2, key
    assert history["objective/entropy"][0][1] > 0
    _same_history(history, c_history)


def test_a_bad_chunk_size_fails_before_any_run(tmp_path):
    cfg = compose([*FAST, "model.logprob_chunk_size=0", f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^model.logprob_chunk_size=0 is out of range: must be >= 1$"):
        train(cfg)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "job").exists()


def test_a_model_without_a_linear_lm_head_is_a_config_error_naming_the_key():
    cfg = compose(list(FAST))
    model, tok = build_llama(cfg.model)
    ids = torch.tensor([[1, 70, 71]])
    hidden = head_inputs(model, ids, torch.ones_like(ids))
    torch.testing.assert_close(hidden.hidden @ hidden.weight.T, model(input_ids=ids).logits)
    with pytest.raises(ConfigError, match=r"model.logprob_chunk_size needs a causal LM .* no output head: set model.logprob_chunk_size=null"):
        head_inputs(add_reward_head(model, tok), ids, torch.ones_like(ids))
    with pytest.raises(ConfigError, match=r"model.logprob_chunk_size needs a transformers causal LM exposing get_decoder"):
        head_inputs(torch.nn.Linear(2, 2), ids, torch.ones_like(ids))
