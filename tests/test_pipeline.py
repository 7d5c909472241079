"""Multi-stage pipelines (experiment=pipeline_*): nested MLflow runs, later stages consuming earlier
stages' models, and the stage cache (hits, misses, force, parallel jobs)."""

from __future__ import annotations

import mlflow
import pytest

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.pipeline import run_pipeline
from conftest import FAST, fast, run_cli, seed_store

# two tiny stages: a few SFT steps, then DPO from the SFT stage's model
STAGES = ('pipeline.stages=[{name: sft, overrides: ["objective=sft", "trainer.max_steps=4"]}, '
          '{name: dpo, overrides: ["objective=dpo", "model=hf", "model.name_or_path=stage:sft", '
          '"objective.beta=${pipeline.beta}", "trainer.max_steps=3"]}]')


def _pipeline(tmp_path, name, *overrides):
    ov = fast("experiment=pipeline_sft_dpo", STAGES, f"output_dir={tmp_path / name}", f"outputs_root={tmp_path}",
              "eval.num_prompts=4", *overrides)
    return run_pipeline(compose(ov), ov)


def _runs(job):
    client = mlflow.tracking.MlflowClient(job.tracking_uri)
    parent = client.get_run(job.run_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{job.run_id}'")
    return parent, {r.data.tags["alignx.stage"]: r for r in children}


def test_a_pipeline_runs_its_stages_as_nested_runs_and_the_second_run_hits_the_cache(tmp_path, empty_store):
    seed_store(empty_store, tmp_path)
    first = _pipeline(tmp_path, "a")
    parent, stages = _runs(first)
    assert parent.info.status == "FINISHED" and parent.data.tags["alignx.pipeline"] == "sft_dpo"
    assert parent.data.tags["alignx.stages"] == "sft -> dpo"
    assert {s: r.data.tags["alignx.stage_cache"] for s, r in stages.items()} == {"sft": "miss", "dpo": "miss"}
    assert all(r.info.status == "FINISHED" for r in stages.values())
    assert stages["dpo"].data.tags["alignx.objective"] == "dpo"
    # the DPO stage started from the SFT stage's saved model
    assert stages["dpo"].data.params["model.name_or_path"] == str(first.stages["sft"].model_dir)
    assert first.model_dir == first.stages["dpo"].model_dir and (first.model_dir / "config.json").is_file()
    assert first.metrics["pipeline/cache_hits"] == 0
    assert "sft/eval/perplexity" in first.metrics and "dpo/eval/kl_to_reference" in first.metrics

    second = _pipeline(tmp_path, "b")
    parent2, stages2 = _runs(second)
    assert {s: r.data.tags["alignx.stage_cache"] for s, r in stages2.items()} == {"sft": "hit", "dpo": "hit"}
    assert stages2["sft"].data.tags["alignx.stage_cache_source_run"] == stages["sft"].info.run_id
    assert second.metrics["pipeline/cache_hits"] == 2
    assert second.model_dir == first.model_dir  # nothing retrained, nothing copied
    assert second.metrics["dpo/eval/perplexity"] == first.metrics["dpo/eval/perplexity"]
    assert stages2["dpo"].data.metrics["eval/perplexity"] == pytest.approx(first.metrics["dpo/eval/perplexity"])
    assert not (tmp_path / "b" / "sft").exists()

    # a changed stage config misses; the unchanged stage before it still hits
    third = _pipeline(tmp_path, "c", "pipeline.beta=0.3")
    _, stages3 = _runs(third)
    assert {s: r.data.tags["alignx.stage_cache"] for s, r in stages3.items()} == {"sft": "hit", "dpo": "miss"}
    assert stages3["dpo"].data.params["objective.beta"] == "0.3"
    # force: everything retrains
    forced = _pipeline(tmp_path, "d", "pipeline.force=true")
    _, stages4 = _runs(forced)
    assert {s: r.data.tags["alignx.stage_cache"] for s, r in stages4.items()} == {"sft": "miss", "dpo": "miss"}
    assert forced.metrics["pipeline/cache_hits"] == 0


def test_a_stage_can_start_from_a_previous_runs_model_by_mlflow_uri(tmp_path, empty_store):
    seed_store(empty_store, tmp_path)
    # a one-stage pipeline is enough to leave an SFT run with a logged model; its evaluation is not read
    sft_only = 'pipeline.stages=[{name: sft, overrides: ["objective=sft", "trainer.max_steps=4"]}]'
    ov = fast("experiment=pipeline_sft_dpo", sft_only, f"output_dir={tmp_path / 'a'}", f"outputs_root={tmp_path}",
              "pipeline.cache=false", "eval.enabled=false")
    first = run_pipeline(compose(ov), ov)
    sft_run = first.stages["sft"].run_id
    stages = ('pipeline.stages=[{name: dpo, overrides: ["objective=dpo", "model=hf", '
              f'"model.name_or_path=runs:/{sft_run}/model", "trainer.max_steps=2"]}}]')
    ov = fast("experiment=pipeline_sft_dpo", stages, f"output_dir={tmp_path / 'uri'}", f"outputs_root={tmp_path}",
              "eval.enabled=false")
    job = run_pipeline(compose(ov), ov)
    _, runs = _runs(job)
    assert runs["dpo"].info.status == "FINISHED"
    fetched = runs["dpo"].data.params["model.name_or_path"]
    assert fetched.startswith(str(tmp_path / "uri" / "inputs")) and fetched.endswith("model")


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ("pipeline.stages=[]", r"pipeline.stages is empty"),
        ('pipeline.stages=[{name: dpo, overrides: ["model.name_or_path=stage:sft"]}]',
         r"refers to stage 'sft', which does not run before it"),
        ('pipeline.stages=[{name: a, overrides: []}, {name: a, overrides: []}]', r"stage name 'a' is used twice"),
        ('pipeline.stages=[{name: a, kind: rlhf, overrides: []}]', r"kind 'rlhf' is not valid. Valid: train, rlaif, raft"),
        ('pipeline.stages=[{name: a, overide: []}]', r"unknown keys \['overide'\]. Valid keys: kind, min_margin, min_score, name, num_prompts, num_samples, overrides"),
    ],
)
def test_bad_pipeline_config_is_named_before_any_stage_runs(tmp_path, stages, message):
    ov = fast("experiment=pipeline_sft_dpo", stages, f"output_dir={tmp_path / 'x'}", f"outputs_root={tmp_path}")
    with pytest.raises(ConfigError, match=message):
        run_pipeline(compose(ov), ov)
    assert not (tmp_path / "mlflow.db").exists()


def test_parallel_sweep_jobs_sharing_a_stage_train_it_once(tmp_path, empty_store):
    """Two jobs of a joblib sweep (2 processes) over the DPO beta: the SFT stage is trained by one
    of them; the other waits on the stage's lock and reuses it."""
    seed_store(empty_store, tmp_path)
    result = run_cli(
        ["-m", "experiment=pipeline_sft_dpo", STAGES, "pipeline.beta=0.1,0.3", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"outputs_root={tmp_path}",
         "eval.num_prompts=4", *FAST],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string="tags.`alignx.stage` = 'sft'")
    assert sorted(r.data.tags["alignx.stage_cache"] for r in runs) == ["hit", "miss"]
    dpo = client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string="tags.`alignx.stage` = 'dpo'")
    assert sorted(r.data.params["objective.beta"] for r in dpo) == ["0.1", "0.3"]
    assert all(r.info.status == "FINISHED" for r in [*runs, *dpo])


def test_rlaif_pairs_from_a_policy_feed_a_dpo_stage(sentiment_sft, tmp_path, empty_store):
    """RLAIF from the session's SFT model (given by path: 4 samples per prompt, best vs worst by the
    gold reward, margin > 0.1) -> DPO on those pairs, starting from the same model."""
    import json

    seed_store(empty_store, tmp_path)

    sft = sentiment_sft.model_dir
    stages = ('pipeline.stages=[{name: pairs, kind: rlaif, num_samples: 4, num_prompts: 24, min_margin: 0.1, '
              f'overrides: ["model=hf", "model.name_or_path={sft}"]}}, '
              f'{{name: dpo, overrides: ["objective=dpo", "model=hf", "model.name_or_path={sft}", "dataset=jsonl", '
              '"dataset.path=stage:pairs", "dataset.task=sentiment", "dataset.val_fraction=0.25", "trainer.max_steps=3"]}]')
    ov = fast("experiment=pipeline_rlaif_dpo", stages, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}",
              "eval.num_prompts=4", "eval.max_new_tokens=24")
    job = run_pipeline(compose(ov), ov)
    parent, runs = _runs(job)
    assert parent.info.status == "FINISHED" and set(runs) == {"pairs", "dpo"}
    assert runs["pairs"].data.tags["alignx.stage_kind"] == "rlaif"
    rows = [json.loads(line) for line in (tmp_path / "job" / "pairs" / "data.jsonl").read_text().splitlines()]
    assert len(rows) == runs["pairs"].data.metrics["data/rows"] and 4 <= len(rows) <= 24
    from alignx.tasks import BUILTIN_TASKS

    gold = BUILTIN_TASKS["sentiment"]()
    for row in rows:  # chosen beats rejected by more than min_margin under the gold reward
        assert set(row) == {"prompt", "chosen", "rejected"}
        c, r = gold.gold_reward([row["prompt"]] * 2, [row["chosen"], row["rejected"]])
        assert c - r > 0.1
    # the DPO stage trained on exactly those rows (train split + val fraction)
    dpo = runs["dpo"]
    assert dpo.data.params["dataset.path"] == str(tmp_path / "job" / "pairs" / "data.jsonl")
    assert int(dpo.data.tags["data.train.kept"]) + int(dpo.data.tags["data.val.kept"]) == len(rows)
    assert dpo.info.status == "FINISHED"


def test_raft_keeps_the_best_sample_per_prompt_and_fine_tunes_on_it(sentiment_sft, tmp_path, empty_store):
    import json

    seed_store(empty_store, tmp_path)

    sft = sentiment_sft.model_dir
    stages = ('pipeline.stages=[{name: samples, kind: raft, num_samples: 4, num_prompts: 16, '
              f'overrides: ["model=hf", "model.name_or_path={sft}"]}}, '
              f'{{name: raft, overrides: ["objective=sft", "model=hf", "model.name_or_path={sft}", "dataset=jsonl", '
              '"dataset.path=stage:samples", "dataset.task=sentiment", "dataset.val_fraction=0.25", "trainer.max_steps=3"]}]')
    ov = fast("experiment=pipeline_raft", stages, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}",
              "eval.num_prompts=4", "eval.max_new_tokens=24")
    job = run_pipeline(compose(ov), ov)
    _, runs = _runs(job)
    data = runs["samples"].data.metrics
    rows = [json.loads(line) for line in (tmp_path / "job" / "samples" / "data.jsonl").read_text().splitlines()]
    assert len(rows) == data["data/rows"] and all(set(r) == {"prompt", "completion"} for r in rows)
    # keeping the best of 4 beats the average sample by the reward that ranked them
    assert data["data/mean_best_score"] > data["data/mean_score"]
    assert runs["raft"].info.status == "FINISHED" and job.model_dir == job.stages["raft"].model_dir
