"""Chain of Hindsight: the hindsight encoding (which positions carry loss, in both orders), the seeded
order draw, the loss against a hand-computed cross entropy, evaluation prompted with the positive
phrase (in a job's suite and in ``alignx eval``), a tracked job, and config errors."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow import MlflowClient

from alignx.config import compose
from alignx.data.batching import collate_sft
from alignx.data.hindsight import encode_hindsight, pick_orders
from alignx.data.rows import encode_split, load_rows
from alignx.data.tokenize import IGNORE_INDEX, prompt_text
from alignx.errors import ConfigError
from alignx.evaluation import evaluate_model
from alignx.evaluation.metrics import reference_rows
from alignx.evaluation.suite import evaluate, generation_prompts
from alignx.generation import generate
from alignx.models.loading import build_hf, build_llama
from alignx.objectives.coh import CoH
from alignx.objectives.sft import SFT
from alignx.registry import load_plugins
from alignx.train import train
from conftest import FAST, fast

ROW = {"prompt": "Hi", "chosen": " ab", "rejected": " c"}


def _tiny(*overrides: str):
    cfg = compose([*FAST, "objective=coh", *overrides])
    model, tok = build_llama(cfg.model)
    return model, tok, cfg


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


# -- encoding ---------------------------------------------------------------------------------------
def test_both_orders_label_exactly_the_two_responses_and_their_eos():
    _, tok, cfg = _tiny()
    item, status = encode_hindsight(ROW, tok, cfg.data, "+", "-")
    assert status == "kept"
    bos, eos = tok.bos_token_id, tok.eos_token_id
    prompt_good, prompt_bad = [bos, *_ids(tok, "Hi+")], [bos, *_ids(tok, "Hi-")]
    ab, c = _ids(tok, " ab"), _ids(tok, " c")
    minus, plus = _ids(tok, "-"), _ids(tok, "+")
    good_first, bad_first = item["orders"]
    # <s>Hi+ ab</s>- c</s>: the prompt and its phrase (4 tokens) and the second phrase are masked
    assert good_first["input_ids"] == prompt_good + ab + [eos] + minus + c + [eos]
    assert tok.decode(good_first["input_ids"]) == "<s>Hi+ ab</s>- c</s>"
    labelled = [i for i, label in enumerate(good_first["labels"]) if label != IGNORE_INDEX]
    n_p, n_ab = len(prompt_good), len(ab) + 1
    assert labelled == [*range(n_p, n_p + n_ab), *range(n_p + n_ab + len(minus), len(good_first["input_ids"]))]
    assert [good_first["input_ids"][i] for i in labelled] == ab + [eos] + c + [eos]
    # <s>Hi- c</s>+ ab</s>: the same responses labelled, bad answer first
    assert bad_first["input_ids"] == prompt_bad + c + [eos] + plus + ab + [eos]
    labelled = [i for i, label in enumerate(bad_first["labels"]) if label != IGNORE_INDEX]
    n_c = len(c) + 1
    assert labelled == [*range(len(prompt_bad), len(prompt_bad) + n_c),
                        *range(len(prompt_bad) + n_c + len(plus), len(bad_first["input_ids"]))]
    assert [bad_first["input_ids"][i] for i in labelled] == c + [eos] + ab + [eos]
    assert item["input_ids"] == good_first["input_ids"]
    # the byte tokenizer: one token per character, so the masked spans are exactly "<s>Hi+" and "-"
    assert good_first["labels"][:4] == [IGNORE_INDEX] * 4 and len(prompt_good) == 4


def test_truncation_keeps_labels_aligned_and_drops_what_cannot_fit():
    _, tok, cfg = _tiny()
    # 4 prompt tokens + " ab</s>-" (5) + " c</s>" (3) = 12 tokens; at 11 truncate_completion cuts the second EOS
    data = {**cfg.data, "max_length": 11, "truncation": "truncate_completion"}
    item, status = encode_hindsight(ROW, tok, data, "+", "-")
    assert status == "truncated"
    good_first = item["orders"][0]
    assert tok.decode(good_first["input_ids"]) == "<s>Hi+ ab</s>- c"
    assert [t for t, label in zip(good_first["input_ids"], good_first["labels"]) if label != IGNORE_INDEX] == \
        _ids(tok, " ab") + [tok.eos_token_id] + _ids(tok, " c")
    # truncate_prompt keeps the phrase (the end of the prompt part) and the prompt's BOS
    data = {**cfg.data, "max_length": 11, "truncation": "truncate_prompt"}
    item, status = encode_hindsight(ROW, tok, data, "+", "-")
    assert status == "truncated" and tok.decode(item["orders"][0]["input_ids"]) == "<s>i+ ab</s>- c</s>"
    assert encode_hindsight(ROW, tok, {**cfg.data, "max_length": 10, "truncation": "drop"}, "+", "-") == (None, "dropped")


def test_the_order_is_drawn_per_row_from_the_seed():
    items = [{"orders": [{"input_ids": [i, 0], "labels": [i, 0]}, {"input_ids": [i, 1], "labels": [i, 1]}],
              "input_ids": [i, 0]} for i in range(200)]
    picked = pick_orders(items, seed=0)
    assert [p["input_ids"][0] for p in picked] == list(range(200)) and set(picked[0]) == {"input_ids", "labels"}
    bad_first = sum(p["input_ids"][1] for p in picked)
    assert 70 < bad_first < 130  # about half of each order
    assert pick_orders(items, seed=0) == picked and pick_orders(items, seed=1) != picked


def test_encoding_is_cached_by_the_phrases(tmp_path):
    """The phrases are encode_keys: another phrase is another cache entry, the same phrase a hit."""
    _, tok, cfg = _tiny()
    rows = [ROW, {"prompt": "Yo", "chosen": " good", "rejected": " bad"}]
    first, _, hit = encode_split(CoH, rows, tok, cfg.data, tmp_path, "train", objective_cfg=cfg.objective)
    assert not hit
    again, _, hit = encode_split(CoH, rows, tok, cfg.data, tmp_path, "train", objective_cfg=cfg.objective)
    assert hit and again == first
    other = compose([*FAST, "objective=coh", "objective.positive_phrase=GOOD:"]).objective
    changed, _, hit = encode_split(CoH, rows, tok, cfg.data, tmp_path, "train", objective_cfg=other)
    assert not hit and tok.decode(changed[0]["orders"][0]["input_ids"]).startswith("<s>HiGOOD: ab</s>")


# -- the loss ----------------------------------------------------------------------------------------
def test_step_is_the_cross_entropy_of_the_response_tokens_computed_by_hand():
    torch.manual_seed(0)
    model, tok, cfg = _tiny()
    objective = CoH(model.eval(), tok, cfg.objective, optimizer=None).eval()
    rows = [ROW, {"prompt": "Yo", "chosen": " good", "rejected": " bad!"}]
    items = pick_orders([encode_hindsight(r, tok, cfg.data, "+", "-")[0] for r in rows], seed=3)
    batch = collate_sft(items, tok.pad_token_id)
    with torch.no_grad():
        loss, metrics = objective.step(batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    # by hand: -log p(token t | tokens < t) at every labelled position, averaged over them
    nll = []
    for b, item in enumerate(items):
        for t, label in enumerate(item["labels"]):
            if label != IGNORE_INDEX:
                nll.append(-torch.log_softmax(logits[b, t - 1], -1)[label].item())
    # " ab</s>" + " c</s>" = 4 + 3 and " good</s>" + " bad!</s>" = 6 + 6 response tokens, nothing else
    assert len(nll) == 7 + 12 == int(metrics["tokens"])
    assert loss.item() == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert metrics["ppl"].item() == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    # the chunked and padding-free paths give the same loss (CoH is SFT's loss on other items)
    from alignx.models.packing import enable_padding_free

    with torch.no_grad():
        objective.logprob_chunk_size = 3
        chunked, _ = objective.step(batch)
        enable_padding_free(model)
        objective.padding_free = True
        packed, _ = objective.step(batch)
    assert chunked.item() == pytest.approx(loss.item(), rel=1e-5)
    assert packed.item() == pytest.approx(loss.item(), rel=1e-5)


# -- generation conditioned on the positive phrase ---------------------------------------------------
def test_the_suite_generates_from_the_prompt_and_positive_phrase_and_scores_the_prompt():
    torch.manual_seed(0)
    model, tok, cfg = _tiny("dataset=arithmetic")
    registry = load_plugins()
    rows = list(load_rows(cfg, registry, "pairs", CoH.test_kind(cfg))["test"])
    metrics, samples = evaluate(cfg, registry, model.eval(), tok, CoH, rows)
    prompts = [prompt_text(r, tok, False) for r in reference_rows(rows)][: int(cfg.eval.num_prompts)]
    phrase = "\nA good answer:"
    asked = generation_prompts(CoH, prompts, cfg)
    assert asked == [p + phrase for p in prompts]
    # the greedy completions are those of the conditioned prompts, decoded as the suite decodes them
    unique = list(dict.fromkeys(asked))
    expected = dict(zip(unique, generate(model, tok, unique, greedy=True, max_new_tokens=int(cfg.eval.max_new_tokens),
                                         seed=int(cfg.seed))))
    assert [s["greedy"] for s in samples] == [expected[p + phrase] for p in prompts][: len(samples)]
    # the samples table and the gold reward see the task's prompt (arithmetic parses it)
    assert [s["prompt"] for s in samples] == prompts[: len(samples)]
    task = registry.get("task", "arithmetic")()
    greedy = [expected[a] for a in asked]
    assert metrics["eval/gold_reward_greedy"] == pytest.approx(sum(task.gold_reward(prompts, greedy)) / len(prompts))
    # any other objective generates from the prompt itself
    assert generation_prompts(SFT, prompts, cfg) == prompts


def test_a_tracked_job_trains_on_pairs_and_alignx_eval_prompts_its_model_the_same_way(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = train(compose([*fast("trainer.max_steps=3"), "objective=coh", "dataset=sentiment",
                         "trainer.val_check_interval=3", f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}",
                         f"tracking.uri={uri}"]))
    run = MlflowClient(tracking_uri=uri).get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["alignx.objective"] == "coh"
    assert run.data.params["objective.positive_phrase"].strip() == "A good answer:"
    assert run.data.params["objective.negative_phrase"].strip() == "A bad answer:"
    m = run.data.metrics
    for key in ("train/loss", "val/loss", "train/tokens", "eval/gold_reward_greedy", "eval/perplexity"):
        assert key in m and math.isfinite(m[key]), key
    assert job.metrics["data/train/kept"] == 96  # every pairs row became one training sequence
    # alignx eval reads the job's config next to the model: the same prompts, so the same numbers
    overrides = [o for o in FAST if o.startswith(("dataset.", "eval."))] + ["dataset=sentiment", f"outputs_root={tmp_path}"]
    metrics, samples, _ = evaluate_model(str(job.model_dir), overrides, track=False)
    for key in ("eval/gold_reward_greedy", "eval/gold_reward_sampled", "eval/perplexity"):
        assert metrics[key] == pytest.approx(job.metrics[key], abs=1e-6), key
    model, tok = build_hf(compose(["model=hf", f"model.name_or_path={job.model_dir}"]).model)
    model.eval()
    prompts = list(dict.fromkeys(s["prompt"] for s in samples))
    conditioned = generate(model, tok, [p + "\nA good answer:" for p in prompts], greedy=True, max_new_tokens=8, seed=0)
    by_prompt = dict(zip(prompts, conditioned))
    assert [s["greedy"] for s in samples] == [by_prompt[s["prompt"]] for s in samples]


# -- config errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    (["objective.positive_phrase=''"], "objective.positive_phrase"),
    (["objective.negative_phrase='  '"], "objective.negative_phrase"),
    (["objective.positive_phrase=same", "objective.negative_phrase=same"], "objective.negative_phrase"),
    (["+objective.positve_phrase=x"], "objective.positve_phrase"),
    (["data.completion_only_loss=false"], "data.completion_only_loss"),
])
def test_bad_config_is_one_line_naming_the_key_before_any_work(tmp_path, overrides, key):
    cfg = compose([*FAST, "objective=coh", *overrides, "tracking=none", f"output_dir={tmp_path / 'job'}",
                   f"outputs_root={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert key in str(err.value) and "\n" not in str(err.value).strip()
    assert not (tmp_path / "job" / "model").exists()
