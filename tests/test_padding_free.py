"""model.padding_free: each objective's loss, metrics and gradients on packed rows (attention per row)
equal the padded computation to 1e-5, with and without LoRA and the chunked log-probs; short training
runs give the padded learning curve per step; generation is unchanged; misuse fails clearly.

The batches mix rows of very different lengths, so a third to a half of their token slots are padding
(checked): a packed forward that let a token attend across a row boundary, or read a padded position,
would change the values.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST, fast
from mlflow import MlflowClient

from alignx.config import compose
from alignx.data.cache import ENCODING_KEYS
from alignx.errors import ConfigError
from alignx.generation import Rollout, encode_prompts, left_pad, sample
from alignx.models.adapters import lora
from alignx.models.compute import enable_gradient_checkpointing
from alignx.models.loading import build_llama
from alignx.models.packing import IMPLEMENTATION, enable_padding_free, pack, packed
from alignx.objectives.base import JobContext, Objective, ReferenceObjective
from alignx.registry import load_plugins
from alignx.train import train

TOL = {"rel": 1e-5, "abs": 1e-5}
#: two layers (a leak into a token's state reaches the last token only through a second layer) and
#: grouped-query attention (one key/value head for two query heads)
DEEP = ["model.num_hidden_layers=2", "model.num_key_value_heads=1"]

PROMPTS = ["Review: The plot was", "Q: 2+3=", "Review: The cast felt rather", "Hi"]
COMPLETIONS = ["good and kind.", "5", "dull", "a long and winding reply, with more words than the rest"]
ROWS = {
    "sft": [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS)],
    "pairs": [{"prompt": p, "chosen": c, "rejected": c[::-1] + "x"} for p, c in zip(PROMPTS, COMPLETIONS)],
    "ranked": [{"prompt": p, "completions": [c, c[:2], c + "!!", "no"], "ranks": [0, 2, 1, 3]} for p, c in zip(PROMPTS, COMPLETIONS)],
    "unpaired": [{"prompt": p, "completion": c, "label": i % 2 == 0} for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS))],
}


def _objective(overrides: list[str], padding_free: bool, adapter: bool) -> tuple[Objective, dict]:
    """A bound objective (as the job binds it) on the FAST tiny model, and a batch of ROWS; both settings
    get identical weights, moved away from the reference with seeded noise so the DPO/KTO terms are real."""
    cfg = compose([*FAST, *DEEP, *overrides, *(["adapter=lora"] if adapter else []), f"model.padding_free={str(padding_free).lower()}"])
    registry = load_plugins()
    cls = registry.get("objective", str(cfg.objective.name))
    model, tok = build_llama(cfg.model)
    torch.manual_seed(0)  # a reward head and LoRA's A are drawn from the global RNG: both settings get the same
    model = cls.prepare_model(model, tok, cfg.objective)
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    g = torch.Generator().manual_seed(1)
    if adapter:
        model = lora(model, cfg.adapter)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
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


def _step(obj: Objective, batch: dict) -> tuple[float, dict[str, float], dict[str, torch.Tensor], list[tuple[int, int]]]:
    """(loss, metrics, gradients, the [rows, slots] the first decoder layer saw per forward) of one step."""
    obj.model.zero_grad()
    base = obj.model.get_base_model() if hasattr(obj.model, "get_base_model") else obj.model
    seen: list[tuple[int, int]] = []
    handle = base.model.layers[0].register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[:2])))
    try:
        loss, metrics = obj.step(batch)
    finally:
        handle.remove()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in obj.model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss.detach()), {k: float(v) for k, v in metrics.items()}, grads, seen


CASES = [
    ["objective=sft"],
    ["objective=dpo"],
    ["objective=dpo", "objective.loss=ipo"],
    ["objective=dpo", "objective.loss=simpo"],
    ["objective=kto"],
    ["objective=rm"],
    ["objective=rm", "objective.data_kind=ranked"],
    ["objective=sft", "model.logprob_chunk_size=5"],
    ["objective=dpo", "model.logprob_chunk_size=5"],
    # the backward pass runs the layers again, after the packed forward returned
    ["objective=rm", "model.gradient_checkpointing=true"],
    ["objective=sft", "model.gradient_checkpointing=true"],
]
IDS = ["sft", "dpo-sigmoid", "dpo-ipo", "dpo-simpo", "kto", "rm-pairs", "rm-ranked", "sft-chunked", "dpo-chunked",
       "rm-checkpointing", "sft-checkpointing"]


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("overrides", CASES, ids=IDS)
def test_step_loss_metrics_and_gradients_equal_the_padded_path(overrides, adapter):
    padded, batch = _objective(overrides, False, adapter)
    free, _ = _objective(overrides, True, adapter)
    assert not padded.padding_free and free.padding_free
    mask = batch["attention_mask"]
    assert 0.3 < 1 - mask.sum() / mask.numel() < 0.8  # a real share of padding to skip
    loss, metrics, grads, slots = _step(padded, batch)
    f_loss, f_metrics, f_grads, f_slots = _step(free, batch)
    # the padded forwards ran on B x T slots, the padding-free ones on one row of real tokens only
    # (one forward per model the step runs: the policy and, with LoRA, the reference; KTO: two halves)
    assert len(f_slots) == len(slots) and all(b > 1 for b, _ in slots) and all(b == 1 for b, _ in f_slots)
    assert sum(t for _, t in f_slots) < 0.7 * sum(b * t for b, t in slots)
    assert f_loss == pytest.approx(loss, **TOL)
    assert sorted(f_metrics) == sorted(metrics) and len(metrics) >= 2
    for key, value in metrics.items():
        assert f_metrics[key] == pytest.approx(value, **TOL), key
    assert sorted(f_grads) == sorted(grads) and grads
    for name, grad in grads.items():
        torch.testing.assert_close(f_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    if isinstance(padded, ReferenceObjective) and padded.needs_reference():
        with torch.no_grad():
            torch.testing.assert_close(free.reference_logps(batch), padded.reference_logps(batch), rtol=1e-5, atol=1e-5)


def test_packed_rows_never_see_each_other():
    """Changing one row's tokens leaves every other row's packed hidden states bit-for-bit alone,
    and each row equals that row run on its own (no padding at all)."""
    cfg = compose([*FAST, *DEEP])
    model, tok = build_llama(cfg.model)
    model.eval()
    ids, mask = left_pad([list(reversed(x)) for x in encode_prompts(tok, PROMPTS)], tok.pad_token_id)
    ids, mask = ids.flip(1), mask.flip(1)  # right-padded rows of 4 lengths
    decoder = model.get_decoder()

    def hidden(input_ids: torch.Tensor) -> torch.Tensor:
        rows = pack(input_ids, mask)
        with packed(model, rows), torch.no_grad():
            out = decoder(**rows.forward_kwargs).last_hidden_state
        return rows.unpack(out)

    base = hidden(ids)
    changed = ids.clone()
    changed[1, : int(mask[1].sum())] = 65
    other = hidden(changed)
    keep = torch.tensor([0, 2, 3])
    assert torch.equal(other[keep], base[keep]) and not torch.equal(other[1], base[1])
    for b in range(ids.size(0)):
        n = int(mask[b].sum())
        with torch.no_grad():
            alone = decoder(input_ids=ids[b : b + 1, :n]).last_hidden_state[0]
        torch.testing.assert_close(base[b, :n], alone, rtol=1e-5, atol=1e-5)
        assert bool((base[b, n:] == 0).all())


def test_generation_and_saving_are_unchanged_by_the_switch(tmp_path):
    """Outside a packed forward the per-row attention is SDPA with its mask: sampling left-padded
    prompts gives the same tokens; the saved config does not carry the implementation."""
    cfg = compose(list(FAST))
    model, tok = build_llama(cfg.model)
    model.eval()
    ids, mask = left_pad(encode_prompts(tok, PROMPTS), tok.pad_token_id)
    before = sample(model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=6, temperature=1.0, seed=4)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    enable_padding_free(model)
    assert model.config._attn_implementation == IMPLEMENTATION
    after = sample(model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=6, temperature=1.0, seed=4)
    assert torch.equal(after.response_ids, before.response_ids)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, logits, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert IMPLEMENTATION not in json.dumps(saved)


def test_left_padded_rows_and_non_transformers_models_are_refused():
    with pytest.raises(ValueError, match="without position ids must be right-padded"):
        pack(torch.tensor([[0, 5, 6], [4, 5, 6]]), torch.tensor([[0, 1, 1], [1, 1, 1]]))
    with pytest.raises(ConfigError, match=r"^model.padding_free needs a transformers model .*: set model.padding_free=false$"):
        enable_padding_free(torch.nn.Linear(2, 2))


def _history(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(tracking_uri=uri)
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("time/")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


@pytest.mark.parametrize("overrides", [["objective=sft"], ["objective=dpo", "adapter=lora"], ["objective=rm"]], ids=["sft", "dpo-lora", "rm"])
def test_four_training_steps_give_the_padded_learning_curve(tmp_path, overrides):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = []
    for flag in ("false", "true"):
        cfg = compose(fast(*overrides, f"model.padding_free={flag}", f"output_dir={tmp_path / flag / 'job'}",
                           f"outputs_root={tmp_path / flag}", f"tracking.uri={uri}", "eval.enabled=false", "save.model=false",
                           "trainer.max_steps=4", "trainer.val_check_interval=4"))
        runs.append(train(cfg).run_id)
    padded, free = _history(uri, runs[0]), _history(uri, runs[1])
    assert len(padded["train/loss"]) == 4 and sorted(free) == sorted(padded)
    for key, points in padded.items():
        assert [s for s, _ in free[key]] == [s for s, _ in points], key
        assert [v for _, v in free[key]] == pytest.approx([v for _, v in points], **TOL), key
    assert MlflowClient(tracking_uri=uri).get_run(runs[1]).data.params["model.padding_free"] == "True"


def test_rollout_logps_entropy_and_values_equal_the_padded_path():
    """Online RL's forwards on rollouts (left-padded prompts, responses ending at different lengths):
    log-probs and entropy without gradient, log-probs with gradient, the reference's, with the chunked
    log-probs too, and PPO's value model; positions counted over real tokens as the padded path does."""
    cfg = compose(fast(*DEEP, "objective=ppo", "adapter=lora", "objective.temperature=0.7", "objective.value_model=policy"))
    registry = load_plugins()
    model, tok = build_llama(cfg.model)
    model = lora(model, cfg.adapter)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    obj = registry.get("objective", "ppo")(model, tok, cfg.objective, optimizer=None)
    obj.bind(JobContext(cfg, registry, [{"input_ids": ids, "prompt": p} for ids, p in
                                        zip(encode_prompts(tok, PROMPTS), PROMPTS)], []))
    with torch.no_grad():  # a value head that is not zero, so the values are a real comparison
        for name, p in obj.value_model.named_parameters():
            if "score" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    ids, mask = left_pad(encode_prompts(tok, PROMPTS), tok.pad_token_id)
    full = sample(model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=9, temperature=0.7, seed=3)
    ended = torch.arange(full.response_ids.size(1)) < torch.tensor([[9], [4], [7], [2]])
    rollout = Rollout(full.prompt_ids, full.prompt_mask, full.response_ids.masked_fill(~ended, tok.pad_token_id),
                      ended.to(full.response_mask.dtype), full.has_eos)
    assert bool(mask[:, 0].eq(0).any())  # left padding: positions come from the mask

    def forwards(padding_free: bool, chunk: int | None) -> tuple[torch.Tensor, ...]:
        obj.padding_free, obj.logprob_chunk_size = padding_free, chunk
        with torch.no_grad():
            lp, ent = obj.response_logps(model, rollout, with_entropy=True)
            values = obj.token_values(rollout)
        model.zero_grad()
        lp_grad = obj.response_logps(model, rollout)
        (lp_grad * torch.linspace(0.5, 1.5, lp_grad.size(1))).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        with obj.reference() as ref, torch.no_grad():
            ref_lp = obj.response_logps(ref, rollout)
        return lp, ent, lp_grad.detach(), grads, ref_lp, values

    padded = forwards(False, None)
    assert bool((padded[5] != 0).any()) and not torch.equal(padded[0], padded[4])
    for chunk in (None, 5):
        free = forwards(True, chunk)
        for name, want, got in zip(("logps", "entropy", "logps with grad", "gradients", "reference", "values"), padded, free):
            assert got.shape == want.shape, name
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name} (chunk {chunk})")


def test_two_grpo_iterations_log_the_padded_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = []
    for flag in ("false", "true"):
        cfg = compose(fast("objective=grpo", "data.batch_size=4", "objective.max_new_tokens=6", "trainer.max_steps=2",
                           f"model.padding_free={flag}", f"output_dir={tmp_path / flag / 'job'}", f"outputs_root={tmp_path / flag}",
                           f"tracking.uri={uri}", "eval.enabled=false", "save.model=false"))
        runs.append(train(cfg).run_id)
    padded, free = _history(uri, runs[0]), _history(uri, runs[1])
    for key in ("loss/policy_avg", "objective/entropy", "kl", "policy/logprob_mismatch", "reward"):
        assert len(padded[key]) == 2, key
        assert [v for _, v in free[key]] == pytest.approx([v for _, v in padded[key]], **TOL), key
