"""Per-source metrics of a dataset mixture: ``train/loss/<source>`` equals the loss of that source's rows
alone, each held-out row is gold-scored by its own source's task, and ``eval/<source>/*`` equal
evaluating that source alone (real job, real MLflow store)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import fast
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignx.config import compose
from alignx.data.batching import SOURCE_INDEX, collate_sft, collate_with_sources, source_names
from alignx.data.mixture import load_mixture
from alignx.data.rows import encode_split
from alignx.errors import ConfigError
from alignx.evaluation.metrics import evaluate_policy, group_metrics, perplexity, reference_rows
from alignx.evaluation.sources import SourceReward, row_sources, source_reward
from alignx.job import build_policy
from alignx.job.build import build_objective
from alignx.objectives.base import ROW_LOSS, RowLoss
from alignx.objectives.dpo import DPO
from alignx.objectives.sft import SFT
from alignx.registry import load_plugins
from alignx.train import train

MIX = ["dataset=mixture", "+dataset@dataset.sources.sent=sentiment", "+dataset@dataset.sources.math=arithmetic"]


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """An untrained tiny SFT objective (eval mode: no dropout) and the mixture's first 12 train items."""
    root = tmp_path_factory.mktemp("sft")
    cfg = compose(fast(*MIX, "tracking=none", f"output_dir={root}", f"outputs_root={root}"))
    registry = load_plugins()
    model, tokenizer, _ = build_policy(cfg, registry, root, SFT)
    objective = build_objective(cfg, SFT, model, tokenizer, 16)
    objective.model.eval()
    items, _, _ = encode_split(SFT, load_mixture(cfg.dataset, "sft", "train", 0)[:12], tokenizer, cfg.data)
    objective.source_names = source_names(items)
    return objective, items, tokenizer


def test_items_carry_their_rows_source(sft):
    _, items, _ = sft
    assert source_names(items) == ("math", "sent")
    assert {it["source"] for it in items} == {"math", "sent"} and len(items) == 12
    # items an objective rebuilt without their source (CoH's prepare_items): no per-source batches at all
    assert source_names(items, [{"input_ids": [1], "labels": [1]}]) == () and source_names([]) == ()


def test_per_source_loss_equals_the_loss_of_those_rows_alone(sft):
    """Hand identity: with per-source sums, the batch loss is sum_s loss_s * tokens_s / sum_s tokens_s,
    and each loss_s is SFT's plain loss (batch cross-entropy, no per-row path) on that source's items."""
    objective, items, tokenizer = sft
    collate = SFT.collate_fn(tokenizer)
    batch = collate_with_sources(collate, {"math": 0, "sent": 1}, items)
    assert batch[SOURCE_INDEX].tolist() == [0 if it["source"] == "math" else 1 for it in items]
    with torch.no_grad():
        loss, metrics = objective.step(batch)
        plain_loss, plain_metrics = objective.step(collate(items))
        per = objective.source_losses(metrics.pop(ROW_LOSS), batch[SOURCE_INDEX])
        assert ROW_LOSS not in plain_metrics  # plain datasets never take the per-row path
        assert float(loss) == pytest.approx(float(plain_loss), rel=1e-5)
        assert float(metrics["tokens"]) == float(plain_metrics["tokens"])
        weighted, tokens = 0.0, 0.0
        for name in ("math", "sent"):
            alone, alone_metrics = objective.step(collate([it for it in items if it["source"] == name]))
            assert float(per[name]) == pytest.approx(float(alone), rel=1e-5)
            weighted += float(alone) * float(alone_metrics["tokens"])
            tokens += float(alone_metrics["tokens"])
    assert float(loss) == pytest.approx(weighted / tokens, rel=1e-5)
    assert float(per["math"]) != pytest.approx(float(per["sent"]), rel=1e-3)  # two different numbers, not one copied


def test_source_losses_by_hand(sft):
    objective, _, _ = sft
    # items of sources 0, 1, 0: totals 3, 4, 9 over weights 1, 2, 3 -> math (3 + 9) / (1 + 3) = 3, sent 4 / 2 = 2
    rows = RowLoss(torch.tensor([3.0, 4.0, 9.0]), torch.tensor([1, 2, 3]))
    per = objective.source_losses(rows, torch.tensor([0, 1, 0]))
    assert {k: float(v) for k, v in per.items()} == {"math": 3.0, "sent": 2.0}
    # a source without items in the batch is left out, not logged as 0/0
    assert list(objective.source_losses(rows, torch.tensor([1, 1, 1]))) == ["sent"]


def test_only_a_mixture_gets_source_indices_in_its_batches(sft, tmp_path):
    objective, items, tokenizer = sft
    cfg = compose(fast(*MIX, "tracking=none", f"output_dir={tmp_path}", f"outputs_root={tmp_path}"))
    mixed = next(iter(SFT.datamodule(items, [], tokenizer, cfg).train_dataloader()))
    assert sorted(mixed[SOURCE_INDEX].tolist()) == sorted(0 if it["source"] == "math" else 1 for it in items)
    plain = [{k: v for k, v in it.items() if k != "source"} for it in items]
    assert SOURCE_INDEX not in next(iter(SFT.datamodule(plain, [], tokenizer, cfg).train_dataloader()))


def test_each_prompt_is_scored_by_its_own_sources_task():
    """The builtin rewards by hand: arithmetic gives digit credit (" 82" for 37+45 -> 1.0, " 85" -> 0.5),
    sentiment the lexicon score of the words; each call scores its prompts in place."""
    registry = load_plugins()
    maths, review = "What is 37+45?", "The film was"
    reward = SourceReward({maths: "arithmetic", review: "sentiment"},
                          {t: registry.get("reward", t) for t in ("arithmetic", "sentiment")})
    sentiment = registry.get("reward", "sentiment")([review], [" wonderful"])[0]
    assert sentiment > 0.8  # one positive word: sigmoid(2) ~ 0.88
    assert reward([maths, review, maths], [" 82", " wonderful", " 85"]) == pytest.approx([1.0, sentiment, 0.5])
    with pytest.raises(ValueError, match="not one of the held-out rows' prompts"):
        reward(["What is 1+1?"], [" 2"])


def test_group_metrics_by_hand():
    out = group_metrics(["a", "b", "a"], [1.0, 0.5, 0.0], [0.2, 0.4, 0.6], reference=[0.1, 0.9, 0.6])
    assert out["eval/a/gold_reward_greedy"] == 0.5 and out["eval/b/gold_reward_greedy"] == 0.5
    assert out["eval/a/gold_reward_sampled"] == pytest.approx(0.4) and out["eval/b/gold_reward_sampled"] == 0.4
    assert out["eval/a/num_prompts"] == 2.0 and out["eval/a/win_rate"] == 0.75  # a win and a tie
    assert out["eval/b/win_rate"] == 0.0
    assert out["eval/a/gold_reward_greedy_stderr"] == pytest.approx(0.5)  # sd of (1, 0) = 0.707 / sqrt(2)


def test_a_source_without_a_task_leaves_the_mixture_without_gold_reward(tmp_path, caplog):
    from conftest import write_jsonl

    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": f"Q{i}?", "completion": f" A{i}"} for i in range(10)])
    cfg = compose([*MIX, "+dataset@dataset.sources.qa=jsonl", f"dataset.sources.qa.path={path}"])
    rows = [{"prompt": "What is 1+2?", "completion": " 3", "source": "math"}, {"prompt": "Q1?", "completion": " A1", "source": "qa"}]
    with caplog.at_level(logging.WARNING, logger="alignx"):
        assert source_reward(cfg, load_plugins(), rows, tokenizer=None) is None
    assert "sources qa have no builtin task" in caplog.text
    assert source_reward(cfg, load_plugins(), [{"prompt": "x", "completion": "y"}], tokenizer=None) is None  # no sources
    # the same prompt in two sources of different tasks: its gold reward would be ambiguous
    clash = [{"prompt": "What is 1+2?", "completion": " 3", "source": "math"}, {"prompt": "What is 1+2?", "completion": " ok", "source": "sent"}]
    with pytest.raises(ConfigError, match=r"dataset\.sources\.math \(task arithmetic\) and dataset\.sources\.sent \(task sentiment\)"):
        source_reward(cfg, load_plugins(), clash, tokenizer=None)


@pytest.fixture(scope="module")
def mixed_job(tmp_path_factory):
    """100 SFT steps on sentiment + arithmetic (about 5 s on an idle core): enough for non-zero arithmetic gold reward."""
    root = tmp_path_factory.mktemp("mixed")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    overrides = fast(*MIX, "trainer.max_steps=100", "optim.lr=1e-2", "eval.num_prompts=16", "eval.num_logged_samples=16",
                     f"output_dir={root / 'job'}", f"outputs_root={root}", f"tracking.uri={uri}")
    cfg = compose(overrides)
    return cfg, train(cfg), MlflowClient(tracking_uri=uri), root


def test_a_mixed_job_logs_train_loss_per_source(mixed_job):
    _, job, client, _ = mixed_job
    history = {name: client.get_metric_history(job.run_id, f"train/loss/{name}") for name in ("math", "sent")}
    for name, points in history.items():
        assert len(points) > 20, name  # logged at (nearly) every step: length-bucketed batches can hold one source only
        assert all(0.0 < p.value < 20.0 for p in points)
    total = {p.step: p.value for p in client.get_metric_history(job.run_id, "train/loss")}
    # a step whose batch held one source only: its train/loss is that source's loss
    single = [p for p in history["math"] if p.step not in {q.step for q in history["sent"]}]
    assert all(total[p.step] == pytest.approx(p.value, rel=1e-6) for p in single)


def test_a_mixed_job_gold_scores_each_source_by_its_own_task(mixed_job):
    """eval/<source>/gold_reward_greedy|sampled are the means of that source's samples scored by its own
    task (rescored here from the logged samples table); the overall metric is their prompt-weighted mean;
    greedy gold and perplexity equal evaluating the saved model on that source's rows alone."""
    cfg, job, client, root = mixed_job
    m = client.get_run(job.run_id).data.metrics
    registry = load_plugins()
    table = json.loads(Path(client.download_artifacts(job.run_id, "samples/generations.json", str(root))).read_text())
    rows = table if isinstance(table, list) else [dict(zip(table["columns"], r)) for r in table["data"]]
    assert len(rows) == 16 and {r["source"] for r in rows} == {"math", "sent"}
    tasks = {"math": "arithmetic", "sent": "sentiment"}
    for name, task in tasks.items():
        own = [r for r in rows if r["source"] == name]
        reward = registry.get("reward", task)
        greedy = list(reward([r["prompt"] for r in own], [r["greedy"] for r in own]))
        sampled = list(reward([r["prompt"] for r in own], [r["sampled"] for r in own]))
        assert [r["greedy_reward"] for r in own] == pytest.approx(greedy)
        assert m[f"eval/{name}/num_prompts"] == len(own)
        assert m[f"eval/{name}/gold_reward_greedy"] == pytest.approx(sum(greedy) / len(own))
        assert m[f"eval/{name}/gold_reward_sampled"] == pytest.approx(sum(sampled) / len(own))
    # digit credit, not the lexicon (which gives a bare number 0): 3 of 8 greedy answers score (seed 0,
    # the same at 1 and 2 threads); a sentiment prompt scored by arithmetic would not even parse
    assert m["eval/math/gold_reward_greedy"] > 0
    n = {k: m[f"eval/{k}/num_prompts"] for k in tasks}
    assert m["eval/gold_reward_greedy"] == pytest.approx(
        sum(m[f"eval/{k}/gold_reward_greedy"] * n[k] for k in tasks) / sum(n.values()))

    # each source alone: the saved model, that source's held-out rows, that task's reward, no mixture
    model = AutoModelForCausalLM.from_pretrained(job.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
    test_rows = reference_rows(load_mixture(cfg.dataset, "sft", "test", int(cfg.seed)))
    assert row_sources(test_rows, 16) == [r["source"] for r in rows]
    for name, task in tasks.items():
        own_rows = [r for r in test_rows if r["source"] == name]
        prompts = [r["prompt"] for r in test_rows[:16] if r["source"] == name]
        alone, _ = evaluate_policy(model, tokenizer, prompts, cfg.eval, reward_fn=registry.get("reward", task), seed=int(cfg.seed))
        assert m[f"eval/{name}/gold_reward_greedy"] == pytest.approx(alone["eval/gold_reward_greedy"])
        items, _, _ = encode_split(SFT, own_rows, tokenizer, cfg.data)
        bs = int(cfg.data.eval_batch_size)
        batches = [collate_sft(items[i : i + bs], tokenizer.pad_token_id) for i in range(0, len(items), bs)]
        assert m[f"eval/{name}/perplexity"] == pytest.approx(perplexity(model, batches), rel=1e-5)


def test_dpo_per_source_loss_equals_the_loss_of_those_pairs_alone(tmp_path):
    """DPO declares per_row_loss: each source's logged loss is the mean loss of its pairs alone."""
    cfg = compose(fast(*MIX, "objective=dpo", "tracking=none", f"output_dir={tmp_path}", f"outputs_root={tmp_path}"))
    model, tokenizer, _ = build_policy(cfg, load_plugins(), tmp_path, DPO)
    objective = build_objective(cfg, DPO, model, tokenizer, 16)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy off its reference: the pair losses are not all ln 2
        for p in objective.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    objective.model.eval()
    items, _, _ = encode_split(DPO, load_mixture(cfg.dataset, "pairs", "train", 0)[:12], tokenizer, cfg.data,
                               objective_cfg=cfg.objective)
    objective.source_names = source_names(items)
    collate = DPO.collate_fn(tokenizer)
    batch = collate_with_sources(collate, {"math": 0, "sent": 1}, items)
    with torch.no_grad():
        loss, metrics = objective.step(batch)
        per = objective.source_losses(metrics.pop(ROW_LOSS), batch[SOURCE_INDEX])
        n = {}
        for name in ("math", "sent"):
            own = [it for it in items if it["source"] == name]
            n[name] = len(own)
            assert n[name] > 0
            assert float(per[name]) == pytest.approx(float(objective.step(collate(own))[0]), rel=1e-5)
    assert float(loss) == pytest.approx(sum(float(per[k]) * n[k] for k in n) / sum(n.values()), rel=1e-5)
