"""objective=kto, and precomputed reference log-probs (cached on disk) for DPO and KTO."""

from __future__ import annotations

import logging

import pytest
from mlflow import MlflowClient

from alignx.config import compose
from alignx.models.adapters import lora
from alignx.models.loading import build_llama
from alignx.objectives.dpo import DPO
from alignx.objectives.kto import KTO, collate_unpaired, encode_unpaired, pair_mismatched
from alignx.train import train
from conftest import FAST

KTO_METRICS = ["kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
               "logits/chosen", "logits/rejected"]


def test_kto_starts_at_one_half_and_logs_its_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = train(compose([*FAST, "objective=kto", "trainer.max_steps=3", "trainer.val_check_interval=3",
                         f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", f"tracking.uri={uri}"]))
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["alignx.objective"] == "kto"
    first = sorted(client.get_metric_history(job.run_id, "train/loss"), key=lambda m: m.step)[0]
    # policy == reference at step 0: r = 0 and z0 = max(0, 0) = 0, so every example's loss is 1 - σ(0)
    assert first.value == pytest.approx(0.5, abs=1e-5)
    for name in KTO_METRICS:
        assert f"train/{name}" in run.data.metrics and f"val/{name}" in run.data.metrics, name
    assert "eval/kl_to_reference" in run.data.metrics


def _tok_cfg():
    cfg = compose([*FAST, "objective=kto"])
    model, tok = build_llama(cfg.model)
    return model, tok, cfg


def test_mismatched_pairs_are_a_fixed_derangement_within_the_length_limit():
    _, tok, cfg = _tok_cfg()
    rows = [{"prompt": f"p{i}:", "completion": "x" * (i + 1), "label": i % 2 == 0} for i in range(7)]
    items = [encode_unpaired(r, tok, cfg.data)[0] for r in rows]
    paired = pair_mismatched([dict(it) for it in items], seed=3)
    limit = max(len(it["input_ids"]) for it in items)
    partners = []
    for i, it in enumerate(paired):
        prompt = items[i]["input_ids"][: items[i]["prompt_len"]]
        assert it["kl_input_ids"][: len(prompt)] == prompt
        completion = it["kl_input_ids"][len(prompt):]
        j = next(j for j, other in enumerate(items) if other["input_ids"][other["prompt_len"]:][: len(completion)] == completion)
        partners.append(j)
        assert len(it["kl_input_ids"]) <= limit and j != i
    assert sorted(partners) == list(range(7))  # a permutation: every completion is used once
    again = pair_mismatched([dict(it) for it in items], seed=3)
    assert [it["kl_input_ids"] for it in again] == [it["kl_input_ids"] for it in paired]
    batch = collate_unpaired(paired[:3], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 6 and batch["desirable"].tolist() == [True, False, True]


def test_kto_weight_ratio_outside_the_recommended_range_warns(caplog):
    _, tok, cfg = _tok_cfg()
    rows = [{"prompt": "p", "completion": f"c{i}", "label": i < 6} for i in range(8)]  # 6 desirable, 2 not
    items = [encode_unpaired(r, tok, cfg.data)[0] for r in rows]
    with caplog.at_level(logging.WARNING, logger="alignx"):
        KTO.prepare_items(items, {"desirable_weight": 1.0, "undesirable_weight": 1.0}, 0)
    assert any("outside the recommended" in r.getMessage() and "= 3.00" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_precomputed_reference_logps_match_the_live_reference_and_are_cached(tmp_path, objective, caplog):
    common = [*FAST, f"objective={objective}", "trainer.max_steps=3", "trainer.val_check_interval=3", f"outputs_root={tmp_path}", "tracking=none",
              "eval.enabled=false"]
    live = train(compose([*common, f"output_dir={tmp_path / 'live'}"]))
    with caplog.at_level(logging.INFO, logger="alignx"):
        first = train(compose([*common, "objective.precompute_ref_logps=true", f"output_dir={tmp_path / 'a'}"]))
        # a different learning rate (a sweep's other job) reuses the same reference log-probs
        second = train(compose([*common, "objective.precompute_ref_logps=true", "optim.lr=3e-3", f"output_dir={tmp_path / 'b'}"]))
    for key in ("train/loss", "val/loss", "val/rewards/chosen", "val/rewards/rejected"):
        assert first.metrics[key] == pytest.approx(live.metrics[key], abs=1e-5), key
    assert first.metrics["data/train/ref_logps_cache_hit"] == 0.0
    assert second.metrics["data/train/ref_logps_cache_hit"] == 1.0 and second.metrics["data/val/ref_logps_cache_hit"] == 1.0
    assert any("reference log-prob cache hit" in r.getMessage() for r in caplog.records)
    assert len(list((tmp_path / "cache" / "ref_logps").glob("*.json"))) == 2  # train and val


def test_reference_is_not_kept_in_memory_when_precomputed_or_with_an_adapter():
    model, tok, _ = _tok_cfg()
    pre = DPO(model, tok, compose(["objective=dpo", "objective.precompute_ref_logps=true"]).objective, optimizer=None)
    assert pre.ref_model is None and pre.precompute_ref
    model, tok, _ = _tok_cfg()
    with_lora = KTO(lora(model, compose(["adapter=lora"]).adapter), tok, compose(["objective=kto"]).objective, optimizer=None)
    assert with_lora.ref_model is None
    model, tok, _ = _tok_cfg()
    full = KTO(model, tok, compose(["objective=kto"]).objective, optimizer=None)
    assert full.ref_model is not None and not any(p.requires_grad for p in full.ref_model.parameters())


def test_precompute_cache_key_changes_with_the_reference_weights(tmp_path):
    common = [*FAST, "objective=dpo", "objective.precompute_ref_logps=true", "trainer.max_steps=1",
              f"outputs_root={tmp_path}", "tracking=none", "eval.enabled=false"]
    train(compose([*common, f"output_dir={tmp_path / 'a'}"]))
    other = train(compose([*common, "model.init_seed=7", f"output_dir={tmp_path / 'b'}"]))
    assert other.metrics["data/train/ref_logps_cache_hit"] == 0.0
