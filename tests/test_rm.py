"""objective=rm: a scalar-head reward model on any causal-LM backbone, pairs or K-wise ranks,
normalised after training, saved so plain transformers loads it, usable as a reward function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from alignx.config import compose
from alignx.models.heads import add_reward_head
from alignx.models.loading import build_llama, save_pretrained_atomic
from alignx.objectives.rm import RewardModel, collate_ranked, encode_ranked
from alignx.rewards.model import RewardModelScorer
from alignx.train import train
from conftest import FAST
from test_models import run_plain_python

RM_METRICS = ["loss", "accuracy", "margin", "reward_mean", "reward_min", "reward_max"]


@pytest.fixture(scope="module")
def rm_job(tmp_path_factory):
    """One short RM training on sentiment pairs, tracked in a real sqlite MLflow store."""
    root = tmp_path_factory.mktemp("rm")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = compose([*FAST, "objective=rm", "trainer.max_steps=4", "trainer.val_check_interval=4",
                   f"output_dir={root / 'job'}", f"outputs_root={root}", f"tracking.uri={uri}"])
    return train(cfg), uri, root


def test_rm_logs_accuracy_margin_and_reward_range_on_train_and_val(rm_job):
    job, uri, _ = rm_job
    run = MlflowClient(tracking_uri=uri).get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["alignx.objective"] == "rm"
    for name in RM_METRICS:
        assert f"train/{name}" in run.data.metrics and f"val/{name}" in run.data.metrics, name
    m = run.data.metrics
    assert 0.0 <= m["val/accuracy"] <= 1.0
    assert m["val/reward_min"] <= m["val/reward_mean"] <= m["val/reward_max"]
    # a reward model generates nothing: no generation metrics, no perplexity; its evaluation is its
    # ranking accuracy on held-out (test split) pairs
    assert [k for k in m if k.startswith("eval/")] == ["eval/rm_accuracy"]
    assert 0.0 <= m["eval/rm_accuracy"] <= 1.0
    assert "rm/norm_offset" in m


def test_saved_rm_loads_as_plain_sequence_classifier_and_is_normalised(rm_job, tmp_path):
    job, _, _ = rm_job
    model_dir = job.model_dir
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1  # num_labels=1
    # the normalisation offset: training completions score mean 0 once it is added
    texts = ["The film was great.", "The film was awful.", "It was fine and long."]
    out = run_plain_python(
        f"""
        import json, torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        m = AutoModelForSequenceClassification.from_pretrained({str(model_dir)!r}).eval()
        t = AutoTokenizer.from_pretrained({str(model_dir)!r})
        assert m.config.num_labels == 1
        enc = t([x + t.eos_token for x in {texts!r}], return_tensors="pt", padding=True)
        with torch.no_grad():
            r = m(**enc).logits.squeeze(-1) + m.config.alignx_reward_offset
        print(json.dumps(r.tolist()))
        """,
        tmp_path,
    )
    plain = json.loads(out.strip().splitlines()[-1])
    scorer = RewardModelScorer(model_dir)
    # the scorer builds the same sequences (BOS + text + EOS) and adds the same offset
    assert scorer(["", "", ""], texts) == pytest.approx(plain, abs=1e-4)


def test_normalisation_centres_training_completions(tmp_path):
    cfg = compose([*FAST, "objective=rm", "trainer.max_steps=3", "objective.normalize_std=true",
                   f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", "tracking=none"])
    job = train(cfg)
    from alignx.registry import load_plugins

    rows = load_plugins().get("dataset", "builtin")(cfg.dataset, "pairs", "train", 0)
    scorer = RewardModelScorer(job.model_dir)
    prompts = [r["prompt"] for r in rows] * 2
    scores = torch.tensor(scorer(prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]))
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-2)


def _tiny():
    cfg = compose([*FAST])
    model, tok = build_llama(cfg.model)
    return model, tok, cfg


def test_reward_head_reads_the_last_non_pad_token_and_shares_the_backbone():
    model, tok, cfg = _tiny()
    backbone = model.model
    rm = add_reward_head(model, tok).eval()
    assert rm.model is backbone and rm.config.num_labels == 1
    d = rm.config.hidden_size
    assert rm.score.weight.std().item() == pytest.approx((d + 1) ** -0.5, rel=0.35)
    a, b = tok("<s>short</s>")["input_ids"], tok("a much longer text</s>")["input_ids"]
    with torch.no_grad():
        alone = [rm(input_ids=torch.tensor([s])).logits.item() for s in (a, b)]
        padded = torch.full((2, max(len(a), len(b))), tok.pad_token_id)
        padded[0, : len(a)], padded[1, : len(b)] = torch.tensor(a), torch.tensor(b)
        mask = (padded != tok.pad_token_id).long()
        batched = rm(input_ids=padded, attention_mask=mask).logits.squeeze(-1).tolist()
    assert batched == pytest.approx(alone, abs=1e-5)


def test_kwise_row_is_one_element_with_one_forward_per_response():
    _, tok, cfg = _tiny()
    rows = [
        {"prompt": "p", "completions": ["a", "bb", "ccc", "dddd"], "ranks": [2, 0, 3, 1]},
        {"prompt": "q", "chosen": "yes", "rejected": "no", "margin": 1.5},
    ]
    items = [encode_ranked(r, tok, cfg.data)[0] for r in rows]
    batch = collate_ranked(items, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 6  # 4 + 2 responses, each forwarded once
    assert batch["better"].numel() == 6 + 1  # C(4,2) comparisons + one pair
    assert batch["group"].tolist().count(0) == 6 and batch["group"].tolist().count(1) == 1
    # every response ends with EOS, where the reward is read
    for row, n in zip(batch["input_ids"], batch["attention_mask"].sum(-1)):
        assert row[n - 1].item() == tok.eos_token_id
    # the best of the K-wise row ("bb", rank 0) is on the better side of 3 comparisons
    assert (batch["better"] == 1).sum().item() == 3 and (batch["worse"] == 1).sum().item() == 0
    assert batch["margin"][batch["group"] == 1].tolist() == [1.5]
    assert batch["margin"][batch["group"] == 0].tolist() == [0.0] * 6


def test_rm_trains_on_kwise_rows_from_a_builtin_task(tmp_path):
    job = train(compose([*FAST, "objective=rm", "objective.data_kind=ranked", "dataset.ranked_k=4",
                         "trainer.max_steps=2", f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", "tracking=none"]))
    assert "train/accuracy" in job.metrics and (job.model_dir / "model.safetensors").is_file()


def test_unknown_rm_data_kind_lists_valid_ones():
    with pytest.raises(Exception, match="Valid: pairs, ranked"):
        RewardModel.row_kind({"data_kind": "triples"})


def test_rm_on_a_local_hf_causal_lm_with_lora_saves_a_merged_classifier(tmp_path):
    model, tok, _ = _tiny()
    save_pretrained_atomic(tmp_path / "lm", model, tok)
    no_dims = [o for o in FAST if not o.startswith("model.")]
    job = train(compose([*no_dims, "objective=rm", "model=hf", f"model.name_or_path={tmp_path / 'lm'}", "adapter=lora",
                         "trainer.max_steps=2", f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", "tracking=none"]))
    merged = job.output_dir / "merged"
    scores = RewardModelScorer(merged)(["a", "b"], ["good", "bad"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]


def test_a_trained_rm_scores_evaluation_samples_as_a_reward_function(rm_job, tmp_path):
    job, _, _ = rm_job
    dpo = train(compose([*FAST, "objective=dpo", "trainer.max_steps=2", f"eval.reward_model={job.model_dir}",
                         f"output_dir={tmp_path / 'dpo'}", f"outputs_root={tmp_path}", "tracking=none"]))
    for key in ("eval/rm_reward_greedy", "eval/rm_reward_sampled", "eval/gold_reward_sampled"):
        assert isinstance(dpo.metrics[key], float), key


def test_scorer_rejects_a_directory_without_a_model(tmp_path):
    with pytest.raises(Exception, match="no config.json"):
        RewardModelScorer(Path(tmp_path))
