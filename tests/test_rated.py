"""Rating feedback: the ``rated`` row kind (validation, files, builtin tasks), RWR's weights and loss
against hand-computed values, SteerLM's attribute prompt and label masking, and both objectives'
job path (builtin task and a rated file)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from alignx.config import compose
from alignx.data.formats import validate_rows
from alignx.data.rows import load_rows
from alignx.errors import ConfigError, DataError
from alignx.evaluation.suite import generation_prompts
from alignx.losses.rating import rwr_weights, weighted_nll
from alignx.losses.sft import sft_loss
from alignx.models.loading import build_llama
from alignx.objectives.rated import RWR, SteerLM, collate_rated, encode_rated, rating_level
from alignx.ops.logprobs import IGNORE_INDEX
from alignx.registry import load_plugins
from alignx.tasks import BUILTIN_TASKS
from alignx.train import train
from conftest import FAST, approx, t, write_jsonl, write_parquet

E = math.e


# -- the row kind ----------------------------------------------------------------------------------
def test_a_rated_row_normalises_to_prompt_completion_and_a_float_rating():
    rows = validate_rows([{"prompt": "Q", "completion": " A.", "rating": 4, "extra": 1},
                          {"completion": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                           "rating": -0.5}], "rated", "f.jsonl")
    assert rows[0] == {"prompt": "Q", "completion": " A.", "rating": 4.0} and type(rows[0]["rating"]) is float
    # a conversational completion: its earlier turns are the prompt
    assert rows[1] == {"prompt": [{"role": "user", "content": "hi"}], "completion": "yo", "rating": -0.5}


@pytest.mark.parametrize(("row", "column", "expected"), [
    ({"prompt": "Q", "completion": "A"}, "rating", "missing column"),
    ({"prompt": "Q", "completion": "A", "rating": True}, "rating", "expected a finite number"),
    ({"prompt": "Q", "completion": "A", "rating": "4"}, "rating", "expected a finite number"),
    ({"prompt": "Q", "completion": "A", "rating": float("nan")}, "rating", "expected a finite number"),
    ({"prompt": "Q", "completion": "  ", "rating": 1.0}, "completion", "non-empty string"),
])
def test_a_bad_rated_row_names_file_row_column_and_what_was_expected(row, column, expected):
    good = {"prompt": "Q", "completion": "A", "rating": 1.0}
    with pytest.raises(DataError) as err:
        validate_rows([good, row], "rated", "ratings.jsonl")
    text = str(err.value)
    assert "ratings.jsonl" in text and "row 2" in text and f"column '{column}'" in text and expected in text
    assert "\n" not in text


def test_a_mapped_rating_column_is_named_as_the_file_names_it():
    with pytest.raises(DataError, match="column 'score'"):
        validate_rows([{"prompt": "Q", "completion": "A", "score": None}], "rated", "f.jsonl", columns={"rating": "score"})
    assert validate_rows([{"prompt": "Q", "completion": "A", "score": 2}], "rated", "f", columns={"rating": "score"}) == [
        {"prompt": "Q", "completion": "A", "rating": 2.0}]


def _rated_rows(n: int, bad: tuple[int, ...] = ()) -> list[dict]:
    rows = [{"prompt": f"Review {i}:", "completion": f" answer {i}.", "rating": (i % 5) / 4} for i in range(n)]
    for i in bad:
        rows[i] = {**rows[i], "rating": "high"}
    return rows


def test_files_and_hub_directories_load_rated_rows_and_drop_counts_invalid_ones(tmp_path):
    registry = load_plugins()
    path = write_jsonl(tmp_path / "r.jsonl", _rated_rows(20, bad=(3, 7)))
    cfg = compose(["objective=rwr", "dataset=jsonl", f"dataset.path={path}", "dataset.val_fraction=0.25",
                   "data.invalid_rows=drop", "eval.enabled=false"])
    rows = load_rows(cfg, registry, "rated")
    assert len(rows["train"]) + len(rows["val"]) == 18
    assert rows["train"].invalid_dropped + rows["val"].invalid_dropped == 2
    assert all(type(r["rating"]) is float for r in rows["train"])
    # the default policy stops at the first bad row, naming it
    with pytest.raises(DataError, match=r"r\.jsonl, row 4, column 'rating'"):
        load_rows(compose(["objective=rwr", "dataset=jsonl", f"dataset.path={path}", "eval.enabled=false"]), registry, "rated")
    # parquet in a Hub-style directory, with the rating under the dataset's own column name
    renamed = [{"prompt": r["prompt"], "completion": r["completion"], "score": r["rating"]} for r in _rated_rows(12)]
    write_parquet(tmp_path / "hub" / "data" / "train-00000.parquet", renamed[:8])
    write_parquet(tmp_path / "hub" / "data" / "test-00000.parquet", renamed[8:])
    cfg = compose(["objective=rwr", "dataset=hub", f"dataset.id={tmp_path / 'hub'}", "dataset.columns={rating: score}"])
    rows = load_rows(cfg, registry, "rated", "rated")
    assert [r["rating"] for r in rows["train"]] == [(i % 5) / 4 for i in range(8)]
    assert len(rows["val"]) == len(rows["test"]) == 4


# -- builtin rated rows ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_ratings_are_the_gold_reward_plus_seeded_gaussian_noise(name):
    task = BUILTIN_TASKS[name]()
    clean = task.rows("rated", "train", 400, seed=3)
    noisy = task.rows("rated", "train", 400, seed=3, rating_noise=0.2)
    gold = task.gold_reward([r["prompt"] for r in clean], [r["completion"] for r in clean])
    assert [r["rating"] for r in clean] == gold  # no noise: the rating is the gold reward
    # noise changes only the ratings, and by a zero-mean Gaussian of the given std
    assert [(r["prompt"], r["completion"]) for r in noisy] == [(r["prompt"], r["completion"]) for r in clean]
    residuals = [r["rating"] - g for r, g in zip(noisy, gold)]
    assert abs(statistics.fmean(residuals)) < 0.04 and 0.17 < statistics.pstdev(residuals) < 0.23
    # reproducible by seed, different across seeds
    assert type(task)().rows("rated", "train", 400, seed=3, rating_noise=0.2) == noisy
    assert task.rows("rated", "train", 400, seed=4, rating_noise=0.2) != noisy
    # the noise is one draw per row, scaled by rating_noise
    doubled = task.rows("rated", "train", 400, seed=3, rating_noise=0.4)
    assert [d["rating"] - g for d, g in zip(doubled, gold)] == pytest.approx([2 * r for r in residuals], abs=1e-12)
    # ratings spread over the gold range: there is something to learn from
    assert max(gold) - min(gold) > 0.5


def test_the_builtin_source_reads_dataset_rating_noise_and_rejects_bad_values():
    registry = load_plugins()
    cfg = compose(["objective=rwr", "dataset=sentiment", "dataset.rating_noise=0.0", "eval.enabled=false"])
    rows = load_rows(cfg, registry, "rated")["train"]
    task = BUILTIN_TASKS["sentiment"]()
    assert [r["rating"] for r in rows] == task.gold_reward([r["prompt"] for r in rows], [r["completion"] for r in rows])
    with pytest.raises(ConfigError, match="dataset.rating_noise"):
        load_rows(compose(["objective=rwr", "dataset=sentiment", "dataset.rating_noise=null"]), registry, "rated")
    with pytest.raises(ConfigError, match="rating_noise .* must be a finite number >= 0, got -0.1"):
        task.rows("rated", "train", 4, rating_noise=-0.1)


# -- RWR: weights and loss by hand -----------------------------------------------------------------
def test_rwr_weights_are_the_batch_softmax_of_rating_over_beta_times_b():
    # ratings 0, 0.5, 1 at beta 0.5: exp(r / beta) = 1, e, e^2, normalised to mean 1
    z = 1 + E + E**2
    approx(rwr_weights(t([0.0, 0.5, 1.0]), 0.5), [3 / z, 3 * E / z, 3 * E**2 / z], rel=1e-6)
    # any baseline cancels: shifting every rating changes nothing
    approx(rwr_weights(t([10.0, 10.5, 11.0]), 0.5), [3 / z, 3 * E / z, 3 * E**2 / z], rel=1e-6)
    # equal ratings (or a huge beta): plain SFT weights; a tiny beta: the best row carries the batch
    approx(rwr_weights(t([0.3, 0.3]), 0.1), [1.0, 1.0])
    approx(rwr_weights(t([0.0, 1.0]), 1e6), [1.0, 1.0], rel=1e-5)
    approx(rwr_weights(t([0.0, 1.0]), 1e-3), [0.0, 2.0], abs=1e-9)
    with pytest.raises(ValueError, match="beta must be > 0"):
        rwr_weights(t([0.0]), 0.0)


def test_weighted_nll_is_the_token_mean_with_row_weights_and_sft_at_weight_one():
    # rows with summed log-probs -2, -3, -4 over 2, 1, 1 tokens, weights 0.5, 1, 1.5:
    #   (0.5·2 + 1·3 + 1.5·4) / 4 = 10 / 4
    approx(weighted_nll(t([-2.0, -3.0, -4.0]), t([2, 1, 1]), t([0.5, 1.0, 1.5])).reshape(1), [2.5])
    # weights 1: exactly SFT's mean next-token NLL on the same logits
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[IGNORE_INDEX, 3, 1, 2, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 4, 6, 0]])
    logp = F.log_softmax(logits[:, :-1], -1).gather(2, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    mask = labels[:, 1:] != IGNORE_INDEX
    logps, n = (logp * mask).sum(1), mask.sum(1)
    assert weighted_nll(logps, n, torch.ones(2, dtype=torch.float64)).item() == pytest.approx(sft_loss(logits, labels)[0].item(), rel=1e-6)  # sft_loss reduces in float32


def _tiny():
    cfg = compose([*FAST])
    return build_llama(cfg.model), cfg


def test_the_rwr_step_is_the_hand_computed_weighted_nll_of_the_model():
    torch.manual_seed(0)
    (model, tok), cfg = _tiny()
    objective = RWR(model.eval(), tok, compose(["objective=rwr", "objective.beta=0.5"]).objective, optimizer=None).eval()
    rows = [{"prompt": "ab", "completion": "good", "rating": 0.0}, {"prompt": "c", "completion": "no", "rating": 0.5},
            {"prompt": "de", "completion": "fine!", "rating": 1.0}]
    batch = collate_rated([RWR.encode(r, tok, cfg.data, {})[0] for r in rows], tok.pad_token_id)
    with torch.no_grad():
        loss, metrics = objective.step(batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"]
    logp = F.log_softmax(logits[:, :-1], -1).gather(2, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    mask = labels[:, 1:] != IGNORE_INDEX
    logps, n = (logp * mask).sum(1), mask.sum(1)
    assert n.tolist() == [5, 3, 6]  # completion bytes + EOS
    z = 1 + E + E**2
    w = [3 / z, 3 * E / z, 3 * E**2 / z]
    expected = -sum(wi * lp for wi, lp in zip(w, logps.tolist())) / 14
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["nll"].item() == pytest.approx(-logps.sum().item() / 14, rel=1e-5)
    assert metrics["ratings/weighted"].item() == pytest.approx((w[1] * 0.5 + w[2] * 1.0) / 3, rel=1e-5)
    assert metrics["weights/max"].item() == pytest.approx(w[2], rel=1e-5)
    assert metrics["weights/ess"].item() == pytest.approx(sum(w) ** 2 / (3 * sum(x * x for x in w)), rel=1e-5)


# -- SteerLM: the attribute prompt -------------------------------------------------------------------
def test_rating_levels_are_equal_width_buckets_clamped_at_the_ends():
    # 5 levels over [0, 1]: level = floor(4r + 1/2)
    assert [rating_level(r, 5, 0.0, 1.0) for r in (0.0, 0.12, 0.125, 0.5, 0.8, 0.874, 0.875, 1.0)] == [0, 0, 1, 2, 3, 3, 4, 4]
    assert rating_level(1.3, 5, 0.0, 1.0) == 4 and rating_level(-0.2, 5, 0.0, 1.0) == 0
    assert rating_level(7.0, 10, 1.0, 10.0) == 6  # a 1-10 scale: (7 - 1) / 9 · 9 = 6


def test_steerlm_appends_the_rating_attribute_to_the_prompt_and_masks_it():
    (_, tok), cfg = _tiny()
    node = compose(["objective=steerlm"]).objective
    options = {k: node[k] for k in SteerLM.encode_keys}
    row = {"prompt": "Review: The plot was", "completion": " great.", "rating": 0.8}
    item, status = SteerLM.encode(row, tok, cfg.data, options)
    assert status == "kept" and item["rating"] == 0.8
    assert tok.decode(item["input_ids"]) == "<s>Review: The plot was [quality: 3] great.</s>"
    completion = tok(" great.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n_prompt = len(item["input_ids"]) - len(completion)
    # the prompt and its attribute are never trained on; the completion and EOS are
    assert item["labels"] == [IGNORE_INDEX] * n_prompt + completion
    assert tok.decode(item["input_ids"][:n_prompt]) == "<s>Review: The plot was [quality: 3]"
    # RWR encodes the same row without an attribute
    plain, _ = RWR.encode(row, tok, cfg.data, {})
    assert tok.decode(plain["input_ids"]) == "<s>Review: The plot was great.</s>"
    # generation asks for the top level, with the configured attribute
    cfg = compose(["objective=steerlm", "objective.levels=3", "objective.attribute=' <q{level}>'"])
    assert SteerLM.generation_prompt("Review: The plot was", cfg) == "Review: The plot was <q2>"
    # the evaluation suite generates from it (the gold reward still reads the prompt itself)
    asked = generation_prompts(SteerLM, ["A", "B"], compose(["objective=steerlm"]))
    assert asked == ["A [quality: 4]", "B [quality: 4]"]
    assert generation_prompts(RWR, ["A"], compose(["objective=rwr"])) == ["A"]


def test_steerlm_truncation_keeps_the_attribute_next_to_the_completion():
    (_, tok), cfg = _tiny()
    data = {**{k: cfg.data[k] for k in ("completion_only_loss", "chat_template")}, "max_length": 24, "truncation": "truncate_prompt"}
    item, status = encode_rated({"prompt": "x" * 40, "completion": "ok", "rating": 1.0}, tok, data, " [quality: 4]")
    assert status == "truncated" and len(item["input_ids"]) == 24
    assert tok.decode(item["input_ids"]).endswith("x [quality: 4]ok</s>")


@pytest.mark.parametrize("overrides", [["objective=rwr", "objective.beta=0"], ["objective=steerlm", "objective.levels=1"],
                                       ["objective=steerlm", "objective.rating_max=0"],
                                       ["objective=steerlm", "objective.attribute=' [good]'"], ["objective=rwr", "+objective.levels=3"]])
def test_bad_config_is_one_line_before_any_run(tmp_path, overrides):
    cfg = compose([*FAST, *overrides, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"])
    cls = RWR if "objective=rwr" in overrides else SteerLM
    with pytest.raises(ConfigError) as err:
        cls.check_config(cfg)
    assert "\n" not in str(err.value) and "objective." in str(err.value)


# -- jobs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rwr", "steerlm"])
def test_job_trains_on_builtin_rated_rows_and_logs_its_metrics(tmp_path, name):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = train(compose([*FAST, f"objective={name}", "dataset=sentiment", "trainer.max_steps=3", "trainer.val_check_interval=3",
                         f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}", f"tracking.uri={uri}"]))
    run = MlflowClient(tracking_uri=uri).get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["alignx.objective"] == name
    m = run.data.metrics
    for key in ("loss", "nll", "ratings/mean", "ratings/weighted"):
        assert math.isfinite(m[f"train/{key}"]) and math.isfinite(m[f"val/{key}"]), key
    if name == "rwr":  # the weights favour the better-rated rows
        assert m["val/ratings/weighted"] > m["val/ratings/mean"] and 0 < m["val/weights/ess"] < 1
    else:  # SteerLM is plain SFT on conditioned prompts
        assert m["train/loss"] == pytest.approx(m["train/nll"], rel=1e-5)
    assert "eval/gold_reward_greedy" in m  # evaluated as a policy
    assert (job.output_dir / "model" / "model.safetensors").is_file()


def test_a_rated_jsonl_file_trains_rwr_and_evaluates_on_its_held_out_rows(tmp_path):
    path = write_jsonl(tmp_path / "rated.jsonl", _rated_rows(40))
    fast = [o for o in FAST if not o.startswith("dataset.")]  # the builtin tasks' sizes
    job = train(compose([*fast, "objective=rwr", "dataset=jsonl", f"dataset.path={path}", "dataset.val_fraction=0.25",
                         "data.batch_size=8", "trainer.max_steps=3", "tracking=none",
                         f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"]))
    assert math.isfinite(job.metrics["train/loss"]) and math.isfinite(job.metrics["val/loss"])
    assert job.metrics["data/train/kept"] + job.metrics["data/val/kept"] == 40
    assert math.isfinite(job.metrics["eval/perplexity"])  # held-out rated rows serve as references
