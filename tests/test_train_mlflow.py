"""SFT on each builtin task, read back from a real MLflow store with MlflowClient."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.train import train
from conftest import FAST


def _train(tmp_path: Path, *extra: str, overrides=None):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose([*FAST, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", f"tracking.uri={uri}", *extra])
    return train(cfg, overrides=overrides), MlflowClient(tracking_uri=uri)


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


@pytest.mark.parametrize("task", ["sentiment", "arithmetic", "format"])
def test_sft_run_is_fully_tracked(tmp_path, task):
    job, client = _train(
        tmp_path,
        f"dataset={task}",
        "trainer.max_steps=16",
        "optim.lr=3e-3",
        "scheduler.num_warmup_steps=2",
        overrides=[f"dataset={task}", "trainer.max_steps=16"],
    )
    run = client.get_run(job.run_id)
    assert run.info.status == "FINISHED"

    # params: the flattened resolved config
    params = run.data.params
    assert params["objective.name"] == "sft"
    assert params["model.hidden_size"] == "32"
    assert params["optim.lr"] == "0.003"
    assert params["trainer.max_steps"] == "16"
    assert params["dataset.task"] == task

    # tags: one name per concept, plus the command-line overrides
    tags = run.data.tags
    assert tags["alignx.objective"] == "sft"
    assert tags["alignx.model"] == "tiny"
    assert tags["alignx.adapter"] == "none"
    assert tags["alignx.dataset"] == task
    assert tags["alignx.overrides"] == f"dataset={task} trainer.max_steps=16"

    # per-step metrics, and the loss goes down
    history = client.get_metric_history(job.run_id, "train/loss")
    steps = sorted(history, key=lambda m: m.step)
    assert len(steps) >= 10
    first = sum(m.value for m in steps[:3]) / 3
    last = sum(m.value for m in steps[-3:]) / 3
    assert last < first - 0.5, (first, last)
    for key in ("val/loss", "eval/perplexity", "eval/gold_reward_greedy", "eval/gold_reward_sampled"):
        assert key in run.data.metrics, key
    # metrics are results and curves: the data counters are tags and data/summary.json, and the job keeps them
    assert not [k for k in run.data.metrics if k.startswith("data/")]
    assert tags["data.train.kept"] == str(int(job.metrics["data/train/kept"])) and int(tags["data.train.kept"]) > 0
    assert tags["data.train.dropped"] == "0" and tags["data.test.invalid_dropped"] == "0"
    summary = json.loads(Path(client.download_artifacts(job.run_id, "data/summary.json", str(tmp_path))).read_text())
    assert summary["train"]["kept"] == int(tags["data.train.kept"]) and summary["val"]["cache_hit"] in (0, 1)
    assert {k.replace(".", "/", 2) for k in tags if k.startswith("data.")} == {k for k in job.metrics if k.startswith("data/")}
    assert 0.0 <= run.data.metrics["eval/gold_reward_sampled"] <= 1.0

    # artifacts: resolved config, the model, and the sample table with gold rewards
    arts = _artifacts(client, job.run_id)
    assert {"config/resolved.yaml", "model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= arts
    assert "samples/generations.json" in arts
    table = json.loads(Path(client.download_artifacts(job.run_id, "samples/generations.json", str(tmp_path))).read_text())
    assert table["columns"] == ["prompt", "greedy", "greedy_reward", "sampled", "sampled_reward"]
    assert 0 < len(table["data"]) <= 8  # eval.num_prompts distinct held-out prompts at most
    assert all(0.0 <= row[2] <= 1.0 for row in table["data"])

    # outputs on disk
    assert (job.output_dir / "model" / "model.safetensors").is_file()
    assert (job.output_dir / "config.yaml").read_text().startswith("seed: 0")


def test_secret_values_are_scrubbed_in_params(tmp_path):
    job, client = _train(tmp_path, "+tracking.hf_token=hf_SECRET", "+model.api_key=sk-123", "trainer.max_steps=2")
    params = client.get_run(job.run_id).data.params
    assert params["tracking.hf_token"] == "***"
    assert params["model.api_key"] == "***"
    assert "hf_SECRET" not in json.dumps(params) and "sk-123" not in json.dumps(params)


def test_crashed_run_is_marked_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # a valid config that fails mid-training: the early-stopping metric never exists (strict)
    cfg = compose(
        [*FAST, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", f"tracking.uri={uri}",
         "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping", "+callbacks.stop.monitor=val/no_such_metric",
         "+callbacks.stop.check_on_train_epoch_end=true"]
    )
    with pytest.raises(RuntimeError, match="no_such_metric"):
        train(cfg)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not (tmp_path / "job" / "model").exists()
    assert json.loads((tmp_path / "job" / "run.json").read_text())["status"] == "FAILED"


def test_bad_optimizer_target_fails_before_any_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose([*FAST, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", f"tracking.uri={uri}",
                   "optim._target_=torch.optim.NoSuchOptimizer"])
    with pytest.raises(ConfigError, match="NoSuchOptimizer"):
        train(cfg)
    assert not (tmp_path / "mlflow.db").exists()


def test_default_store_is_embedded_under_outputs_root(tmp_path):
    cfg = compose([*FAST, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path / 'outs'}", "trainer.max_steps=2"])
    job = train(cfg)
    assert job.tracking_uri == f"sqlite:///{(tmp_path / 'outs' / 'mlflow.db').resolve()}"
    assert (tmp_path / "outs" / "mlflow.db").is_file()
    run = MlflowClient(tracking_uri=job.tracking_uri).get_run(job.run_id)
    assert run.info.artifact_uri.startswith((tmp_path / "outs" / "mlartifacts").as_uri())


def test_tracking_none_writes_no_store(tmp_path):
    cfg = compose([*FAST, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", "tracking=none", "trainer.max_steps=2"])
    job = train(cfg)
    assert job.run_id is None and not (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "job" / "model" / "config.json").is_file()


def test_conversational_jsonl_rows_train_with_chat_template(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}
        for w in ["yes", "no", "maybe", "ok"] * 8
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fast = [a for a in FAST if not a.startswith("dataset.")]
    cfg = compose(
        [*fast, "dataset=jsonl", f"dataset.path={path}", "dataset.val_fraction=0.25", "tracking=none",
         f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"]
    )
    job = train(cfg)
    assert job.metrics["train/loss"] > 0 and "eval/perplexity" in job.metrics
    assert "eval/gold_reward_greedy" not in job.metrics  # no task named: no gold reward to report
    # prompts were rendered with the chat template for evaluation
    assert job.samples and job.samples[0]["prompt"].startswith("<|user|>\nSay ")


def test_precision_and_gradient_accumulation_options(tmp_path):
    job, client = _train(
        tmp_path, "trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=2", "trainer.max_steps=3"
    )
    run = client.get_run(job.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.precision"] == "bf16-mixed"
    # 3 optimizer steps with accumulation 2 consume 6 batches
    assert max(m.step for m in client.get_metric_history(job.run_id, "train/loss")) <= 3
