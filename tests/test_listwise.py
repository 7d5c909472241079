"""PRO and RRHF: the listwise losses against hand-computed values, the ranked encoding with labels,
the collation of items with different K, and the objectives' step and job path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from alignx.config import compose
from alignx.data.batching import collate_ranked_lm
from alignx.data.tokenize import IGNORE_INDEX, encode_ranked_lm, encode_rows
from alignx.errors import ConfigError
from alignx.losses import best_response, pro_loss, ranking_accuracy, rrhf_loss
from alignx.models.loading import build_llama
from alignx.objectives.listwise import PRO, RRHF
from alignx.train import train
from conftest import FAST, approx, t

LN = math.log


# -- PRO -------------------------------------------------------------------------------------------
def test_pro_strict_ranking_is_the_plackett_luce_likelihood():
    # exp(scores) = 3, 2, 1 with ranks best-first 0, 1, 2:
    #   -log(3/6) - log(2/3) - log(1/1) = log 2 + log 1.5 = log 3
    # the same scores ranked the other way (the exp-1 response best, then 2, then 3):
    #   -log(1/6) - log(2/5) - 0 = log 15
    scores = t([[LN(3), LN(2), 0.0], [LN(3), LN(2), 0.0]])
    ranks = t([[0, 1, 2], [2, 1, 0]])
    approx(pro_loss(scores, ranks), [LN(3), LN(15)], rel=1e-12)
    # rank numbers only matter through their order
    approx(pro_loss(scores, t([[5, 7, 40], [9, 3, -1]])), [LN(3), LN(15)], rel=1e-12)


def test_pro_ties_are_not_in_each_others_denominator():
    # exp(scores) 3, 2, 1; the first two tied best: response 0 competes with itself and the worst
    # (-log 3/4), response 1 likewise (-log 2/3), the worst beats none (0): log(4/3 · 3/2) = log 2
    scores = t([[LN(3), LN(2), 0.0]])
    approx(pro_loss(scores, t([[0, 0, 1]])), [LN(2)], rel=1e-12)
    # all tied: no preference, no loss, whatever the scores
    approx(pro_loss(scores, t([[4, 4, 4]])), [0.0])
    # the order of tied responses does not change the value
    approx(pro_loss(t([[LN(2), LN(3), 0.0]]), t([[0, 0, 1]])), [LN(2)], rel=1e-12)


def test_pro_k2_is_bradley_terry_and_temperature_divides_the_scores():
    # K=2: -log(e^a / (e^a + e^b)) = -log σ(a - b)
    a, b = t([0.7, -1.2, 3.0]), t([0.1, 0.4, 3.5])
    scores, ranks = torch.stack([a, b], 1), t([[0, 1]] * 3)
    expected = -F.logsigmoid(a - b)
    approx(pro_loss(scores, ranks), expected.tolist(), rel=1e-12)
    # temperature 2 on scores (2 ln 2, 0): z = (ln 2, 0), -log(2/3) = log 1.5
    approx(pro_loss(t([[2 * LN(2), 0.0]]), t([[0, 1]]), temperature=2.0), [LN(1.5)], rel=1e-12)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        pro_loss(scores, ranks, temperature=0.0)


def test_pro_gradient_at_k2_is_the_bradley_terry_gradient():
    # d/da -log σ(a - b) = -(1 - σ(a - b)) = -σ(b - a); at a = b: -0.5 and +0.5
    scores = t([[0.3, 0.3]]).requires_grad_(True)
    pro_loss(scores, t([[0, 1]])).sum().backward()
    approx(scores.grad, [[-0.5, 0.5]], rel=1e-12)


def test_pro_invalid_slots_take_part_in_nothing():
    # exp(scores) 3, 2 and a padding slot with a huge score: -log(3/5) + 0 = log(5/3)
    scores = t([[LN(3), LN(2), 100.0]])
    valid = torch.tensor([[True, True, False]])
    approx(pro_loss(scores, t([[0, 1, math.inf]]), valid), [LN(5 / 3)], rel=1e-12)
    # even a padding slot whose rank number would make it the best is ignored
    approx(pro_loss(scores, t([[0, 1, -5]]), valid), [LN(5 / 3)], rel=1e-12)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"scores and ranks must both be \[B, K\]"):
        pro_loss(t([1.0, 2.0]), t([0, 1]))
    with pytest.raises(ValueError, match="valid must be"):
        rrhf_loss(t([[1.0, 2.0]]), t([[0, 1]]), torch.ones(1, 3, dtype=torch.bool))


# -- RRHF ------------------------------------------------------------------------------------------
def test_rrhf_sums_the_hinge_over_misordered_pairs():
    # p = (-1, -0.5, -2), ranks 0, 1, 2: pairs (0,1): max(0, -0.5 + 1) = 0.5; (0,2): max(0, -2 + 1) = 0;
    # (1,2): max(0, -2 + 0.5) = 0 -> 0.5
    p = t([[-1.0, -0.5, -2.0]])
    approx(rrhf_loss(p, t([[0, 1, 2]])), [0.5], rel=1e-12)
    # reversed ranks: (2,1): max(0, -0.5 + 2) = 1.5; (2,0): max(0, -1 + 2) = 1; (1,0): max(0, -1 + 0.5) = 0 -> 2.5
    approx(rrhf_loss(p, t([[2, 1, 0]])), [2.5], rel=1e-12)


def test_rrhf_ties_add_nothing_and_k2_is_one_hinge():
    # ranks 0, 0, 1 with p = (-1, -0.5, -0.2): the tied pair is skipped; (0,2): 0.8, (1,2): 0.3 -> 1.1
    approx(rrhf_loss(t([[-1.0, -0.5, -0.2]]), t([[0, 0, 1]])), [1.1], rel=1e-12)
    approx(rrhf_loss(t([[-1.0, -0.5, -0.2]]), t([[1, 1, 1]])), [0.0])
    # K=2: max(0, p_worst - p_best)
    approx(rrhf_loss(t([[-1.0, -0.25], [-0.25, -1.0]]), t([[0, 1], [0, 1]])), [0.75, 0.0], rel=1e-12)


def test_rrhf_invalid_slots_take_part_in_nothing():
    valid = torch.tensor([[True, True, False]])
    approx(rrhf_loss(t([[-1.0, -0.5, 50.0]]), t([[0, 1, math.inf]]), valid), [0.5], rel=1e-12)


# -- shared pieces ----------------------------------------------------------------------------------
def test_ranking_accuracy_and_best_response():
    # p = (-1, -0.5, -2), ranks 0, 1, 2: (0,1) wrong, (0,2) right, (1,2) right -> 2/3
    p, ranks = t([[-1.0, -0.5, -2.0]]), t([[0, 1, 2]])
    assert ranking_accuracy(p, ranks).item() == pytest.approx(2 / 3)
    # ties and padding give no pair: only (1,0) here, and it is right
    valid = torch.tensor([[True, True, False]])
    assert ranking_accuracy(t([[0.0, 1.0, 9.0]]), t([[1, 0, 0]]), valid).item() == 1.0
    # the best valid response; the first of tied best ones; padding never chosen
    assert best_response(t([[1, 0, 0], [2, 1, 0]])).tolist() == [1, 2]
    assert best_response(t([[1, 2, 0]]), torch.tensor([[True, True, False]])).tolist() == [0]


# -- encoding and collation -------------------------------------------------------------------------
def _tiny():
    cfg = compose([*FAST])
    return build_llama(cfg.model), cfg


def test_ranked_rows_encode_k_completion_masked_sequences():
    (_, tok), cfg = _tiny()
    row = {"prompt": "ab", "completions": ["good", "no", "fine!"], "ranks": [1, 0, 2]}
    item, status = encode_ranked_lm(row, tok, cfg.data)
    assert status == "kept" and item["ranks"] == [1.0, 0.0, 2.0]
    assert [tok.decode(s) for s in item["seqs"]] == ["<s>abgood</s>", "<s>abno</s>", "<s>abfine!</s>"]
    assert [tok.decode([x for x in lab if x != IGNORE_INDEX]) for lab in item["seq_labels"]] == ["good</s>", "no</s>", "fine!</s>"]
    assert item["input_ids"] == item["seqs"][2]  # the longest, for length bucketing
    # a pair is chosen ranked above rejected
    pair, _ = encode_ranked_lm({"prompt": "ab", "chosen": "yes", "rejected": "no"}, tok, cfg.data)
    assert pair["ranks"] == [0.0, 1.0] and tok.decode(pair["seqs"][0]) == "<s>abyes</s>"


def test_rows_that_collapse_under_truncation_are_dropped():
    (_, tok), cfg = _tiny()
    data = {**cfg.data, "max_length": 5, "truncation": "truncate_completion"}
    rows = [{"prompt": "ab", "completions": ["goodness", "goodwill"], "ranks": [0, 1]}]
    items, stats = encode_rows(rows, lambda r: encode_ranked_lm(r, tok, data))
    assert items == [] and stats.counts["identical_after_truncation"] == 1


def test_collation_is_item_major_and_pads_items_with_fewer_responses():
    (_, tok), cfg = _tiny()
    rows = [{"prompt": "ab", "completions": ["good", "no", "okay"], "ranks": [1, 0, 2]},
            {"prompt": "c", "chosen": "x", "rejected": "yyyy"}]
    items = [encode_ranked_lm(r, tok, cfg.data)[0] for r in rows]
    batch = collate_ranked_lm(items, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 6 and batch["labels"].shape == batch["input_ids"].shape
    assert batch["ranks"][0].tolist() == [1.0, 0.0, 2.0] and batch["ranks"][1, :2].tolist() == [0.0, 1.0]
    assert batch["valid"].tolist() == [[True, True, True], [True, True, False]]
    # row b*K + k is item b's response k; the filler is one attended pad token with no label
    assert tok.decode(batch["input_ids"][4][batch["attention_mask"][4].bool()]) == "<s>cyyyy</s>"
    assert batch["attention_mask"][5].sum() == 1 and (batch["labels"][5] == IGNORE_INDEX).all()


# -- the objectives -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PRO, RRHF])
def test_step_equals_the_losses_on_the_models_scores_and_padding_changes_nothing(cls):
    torch.manual_seed(0)
    (model, tok), cfg = _tiny()
    node = compose([f"objective={cls.name}", "objective.sft_weight=0.5"]).objective
    objective = cls(model.eval(), tok, node, optimizer=None).eval()
    rows = [{"prompt": "ab", "completions": ["good", "no", "okay"], "ranks": [1, 0, 2]},
            {"prompt": "c", "chosen": "x", "rejected": "yyyy"}]
    items = [encode_ranked_lm(r, tok, cfg.data)[0] for r in rows]
    with torch.no_grad():
        loss, metrics = objective.step(collate_ranked_lm(items, tok.pad_token_id))
        # each item alone (no filler slot): the same per-item values, averaged
        per_item = []
        for it in items:
            b = collate_ranked_lm([it], tok.pad_token_id)
            logps, n = objective.completion_logps(model, b["input_ids"], b["attention_mask"], b["labels"])[:2]
            scores = (logps / n).view(1, -1)
            rank = pro_loss(scores, b["ranks"]) if cls is PRO else rrhf_loss(scores, b["ranks"])
            sft = -scores[0, int(b["ranks"].argmin())]
            per_item.append((rank.item(), sft.item()))
    rank_mean = sum(r for r, _ in per_item) / 2
    sft_mean = sum(s for _, s in per_item) / 2
    assert metrics["rank_loss"].item() == pytest.approx(rank_mean, rel=1e-5)
    assert metrics["sft_loss"].item() == pytest.approx(sft_mean, rel=1e-5)
    assert loss.item() == pytest.approx(rank_mean + 0.5 * sft_mean, rel=1e-5)
    assert 0.0 <= metrics["ranking_accuracy"].item() <= 1.0


@pytest.mark.parametrize("overrides", [["objective=pro", "objective.temperature=0"], ["objective=rrhf", "objective.sft_weight=-1"],
                                       ["objective=pro", "+objective.beta=1"]])
def test_bad_config_is_one_line_before_any_run(tmp_path, overrides):
    cfg = compose([*FAST, *overrides, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"])
    cls = PRO if "objective=pro" in overrides else RRHF
    with pytest.raises(ConfigError) as err:
        cls.check_config(cfg)
    assert "\n" not in str(err.value) and "objective." in str(err.value)


@pytest.mark.parametrize("name", ["pro", "rrhf"])
def test_job_trains_on_ranked_rows_and_logs_the_listwise_metrics(tmp_path, name):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = train(compose([*FAST, f"objective={name}", "dataset=sentiment", "dataset.ranked_k=3", "trainer.max_steps=3",
                         "trainer.val_check_interval=3", f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}",
                         f"tracking.uri={uri}"]))
    run = MlflowClient(tracking_uri=uri).get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["alignx.objective"] == name
    m = run.data.metrics
    for key in ("loss", "rank_loss", "sft_loss", "ranking_accuracy"):
        assert f"train/{key}" in m and f"val/{key}" in m, key
        assert math.isfinite(m[f"train/{key}"])
    assert 0.0 <= m["val/ranking_accuracy"] <= 1.0
    assert "eval/gold_reward_greedy" in m  # evaluated as a policy
    assert (job.output_dir / "model" / "model.safetensors").is_file()


def test_padding_free_and_chunked_log_probs_give_the_padded_step():
    """The filler slot (one attended pad token) packs like any row; the chunked log-probs equal the logits'."""
    from alignx.models.packing import enable_padding_free

    torch.manual_seed(0)
    (model, tok), cfg = _tiny()
    objective = PRO(model.eval(), tok, compose(["objective=pro"]).objective, optimizer=None).eval()
    rows = [{"prompt": "ab", "completions": ["good", "no", "fine!"], "ranks": [1, 0, 2]},
            {"prompt": "c", "chosen": "x", "rejected": "yyyy"}]
    batch = collate_ranked_lm([encode_ranked_lm(r, tok, cfg.data)[0] for r in rows], tok.pad_token_id)
    with torch.no_grad():
        padded, metrics = objective.step(batch)
        objective.logprob_chunk_size = 3
        chunked, _ = objective.step(batch)
        enable_padding_free(model)
        objective.padding_free = True
        packed, packed_metrics = objective.step(batch)
    assert chunked.item() == pytest.approx(padded.item(), rel=1e-5)
    assert packed.item() == pytest.approx(padded.item(), rel=1e-5)
    assert packed_metrics["sft_loss"].item() == pytest.approx(metrics["sft_loss"].item(), rel=1e-5)


def test_a_jsonl_file_with_rankings_of_different_k_and_pairs_trains(tmp_path):
    """Rows with 2, 3 and 4 responses share batches: the collator pads with filler slots and the
    job trains and evaluates on them."""
    from conftest import write_jsonl

    rows = []
    for i in range(32):
        k = 2 + i % 3
        rows.append({"prompt": f"say {i}", "completions": [f"answer {j} to {i}" for j in range(k)], "ranks": list(range(k))})
    path = write_jsonl(tmp_path / "ranked.jsonl", rows)
    fast = [o for o in FAST if not o.startswith("dataset.")]  # the builtin tasks' sizes
    job = train(compose([*fast, "objective=rrhf", "dataset=jsonl", f"dataset.path={path}", "dataset.val_fraction=0.25",
                         "data.batch_size=8", "trainer.max_steps=3", "tracking=none",
                         f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"]))
    assert math.isfinite(job.metrics["train/loss"]) and math.isfinite(job.metrics["val/rank_loss"])
    assert job.metrics["data/train/kept"] + job.metrics["data/val/kept"] == 32
