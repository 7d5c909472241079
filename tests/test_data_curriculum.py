"""Curriculum ordering (``data.curriculum``): easy-to-hard order of hand-made rows, and batches that keep it."""

from __future__ import annotations

import pytest
import torch
from conftest import fast

from alignx.config import compose, validate
from alignx.data.batching import BucketBatchSampler, collate_sft
from alignx.data.curriculum import (
    apply_curriculum,
    curriculum_order,
    length_difficulty,
    reward_difficulty,
)
from alignx.data.target_loss import target_nll
from alignx.data.module import AlignDataModule
from alignx.data.rows import load_rows
from alignx.errors import ConfigError
from alignx.registry import load_plugins
from alignx.tasks.sentiment import lexicon_sentiment

SENTIMENT = compose(["dataset=sentiment"]).dataset


def gold(prompts, completions):
    return [lexicon_sentiment(c) for c in completions]


def test_length_orders_short_rows_first():
    rows = [{"prompt": "abcd", "completion": "efgh"},           # 8
            {"prompt": "a", "completion": "b"},                 # 2
            {"prompt": "ab", "chosen": "cde", "rejected": "f"},  # 2 + 3 = 5
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]}]  # 2 + 3 = 5
    assert [length_difficulty(r) for r in rows] == [8.0, 2.0, 5.0, 5.0]
    out = apply_curriculum(rows, "length", SENTIMENT, load_plugins(), 0)
    assert out[0] is rows[1] and out[3] is rows[0] and {id(out[1]), id(out[2])} == {id(rows[2]), id(rows[3])}


def test_reward_orders_clear_rows_first_on_hand_computed_gold():
    # lexicon_sentiment: one positive word of one -> sigmoid(2) = 0.881; two -> sigmoid(4) = 0.982;
    # a neutral word -> 0.5; one negative word -> sigmoid(-2) = 0.119
    sft = [{"prompt": "p", "completion": " dull."}, {"prompt": "p", "completion": " great and superb."},
           {"prompt": "p", "completion": " long."}, {"prompt": "p", "completion": " great."}]
    assert [round(reward_difficulty(r, gold), 3) for r in sft] == [0.881, 0.018, 0.5, 0.119]
    out = apply_curriculum(sft, "reward", SENTIMENT, load_plugins(), 0)
    assert [r["completion"] for r in out] == [" great and superb.", " great.", " long.", " dull."]
    # comparisons: the wider the gold margin, the easier; 0.982 - 0.119 > 0.881 - 0.5 > 0.5 - 0.5... ties aside
    pairs = [{"prompt": "p", "chosen": " great.", "rejected": " long."},           # margin 0.381
             {"prompt": "p", "chosen": " great and superb.", "rejected": " dull."},  # margin 0.863
             {"prompt": "p", "chosen": " long.", "rejected": " dull."}]            # margin 0.381
    assert [round(reward_difficulty(r, gold), 3) for r in pairs] == [-0.381, -0.863, -0.381]
    assert apply_curriculum(pairs, "reward", SENTIMENT, load_plugins(), 0)[0] is pairs[1]
    ranked = {"prompt": "p", "completions": [" long.", " great.", " dull."], "ranks": [1, 0, 2]}
    assert round(reward_difficulty(ranked, gold), 3) == round(-(0.881 - 0.119), 3)
    # an undesirable example is clearer the worse it is
    assert round(reward_difficulty({"prompt": "p", "completion": " dull.", "label": False}, gold), 3) == 0.119


def test_ties_keep_a_seeded_order():
    assert curriculum_order([1.0, 0.0, 1.0, 0.0], 0)[:2] in ([1, 3], [3, 1])
    orders = {tuple(curriculum_order([0.0] * 6, s)) for s in range(5)}
    assert len(orders) > 1 and curriculum_order([0.0] * 6, 3) == curriculum_order([0.0] * 6, 3)


def test_the_job_train_split_is_ordered_and_only_it(tmp_path):
    base = ["dataset=sentiment", "dataset.n_train=40", "dataset.n_val=8", "dataset.n_test=8"]
    registry = load_plugins()
    plain = load_rows(compose(base), registry, "sft", "sft")
    cfg = compose([*base, "data.curriculum=reward"])
    validate(cfg)
    rows = load_rows(cfg, registry, "sft", "sft")
    scores = [1 - lexicon_sentiment(r["completion"]) for r in rows["train"]]
    assert scores == sorted(scores) and sorted(map(str, rows["train"])) == sorted(map(str, plain["train"]))
    assert rows["val"] == plain["val"] and rows["test"] == plain["test"]
    # SplitRows locations follow their rows
    first = rows["train"][0]
    assert plain["train"][rows["train"].location(0)[1] - 1] == first


def test_ordered_sampler_cuts_consecutive_batches_every_epoch():
    sampler = BucketBatchSampler([5, 1, 9, 2, 7], 2, shuffle=True, bucketing=True, seed=3, ordered=True)
    assert list(sampler) == [[0, 1], [2, 3], [4]]
    sampler.set_epoch(1)
    assert list(sampler) == [[0, 1], [2, 3], [4]]
    ddp = BucketBatchSampler([1] * 6, 1, ordered=True, rank=1, world_size=2)
    assert list(ddp) == [[1], [3], [5]]


def test_the_datamodule_trains_in_curriculum_order():
    items = [{"input_ids": [i] * (10 - i), "labels": [i] * (10 - i)} for i in range(6)]
    dm = AlignDataModule(items, items, lambda b: collate_sft(b, 0), batch_size=2, eval_batch_size=2, curriculum=True)
    firsts = [batch["input_ids"][:, 0].tolist() for batch in dm.train_dataloader()]
    assert firsts == [[0, 1], [2, 3], [4, 5]]
    shuffled = AlignDataModule(items, items, lambda b: collate_sft(b, 0), batch_size=2, eval_batch_size=2, seed=1)
    assert [b["input_ids"][:, 0].tolist() for b in shuffled.train_dataloader()] != firsts


def test_reward_curriculum_needs_a_task(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " d"}\n')
    cfg = compose(["dataset=jsonl", f"dataset.path={path}", "data.curriculum=reward"])
    with pytest.raises(ConfigError, match=r"data\.curriculum=reward scores rows with a builtin task's gold reward, and dataset\.task names no task"):
        load_rows(cfg, load_plugins(), "sft", None)


def test_reward_curriculum_needs_completions():
    cfg = compose(["data.curriculum=reward", "dataset.n_train=4", "dataset.n_val=2", "dataset.n_test=2"])
    with pytest.raises(ConfigError, match=r"data\.curriculum=reward scores a row's completions .* this row has none"):
        load_rows(cfg, load_plugins(), "prompt", None)


def test_reward_curriculum_of_a_mixture_scores_each_row_with_its_source_task():
    cfg = compose(["dataset=mixture", "+dataset@dataset.sources.sent=sentiment", "+dataset@dataset.sources.math=arithmetic",
                   "dataset.sources.sent.n_train=20", "dataset.sources.math.n_train=20", "dataset.sources.sent.n_val=2",
                   "dataset.sources.math.n_val=2", "data.curriculum=reward", "eval.enabled=false"])
    registry = load_plugins()
    rows = load_rows(cfg, registry, "sft", None)["train"]
    golds = {"sent": registry.get("reward", "sentiment"), "math": registry.get("reward", "arithmetic")}
    scores = [1 - golds[r["source"]]([r["prompt"]], [r["completion"]])[0] for r in rows]
    # arithmetic demonstrations are exact (gold 1): every math row comes before any sentiment row
    assert scores == sorted(scores) and [r["source"] for r in rows[:20]] == ["math"] * 20


def test_unknown_curriculum_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"data\.curriculum.*none.*length.*reward.*loss"):
        validate(compose(["data.curriculum=lossy"]))
    with pytest.raises(ConfigError, match=r"data\.curriculum=lossy is not a curriculum; valid: none, length, reward, loss"):
        apply_curriculum([], "lossy", SENTIMENT, load_plugins(), 0)


def _tiny_lm():
    from alignx.models.loading import build_llama

    cfg = compose(fast())
    torch.manual_seed(0)
    model, tok = build_llama(cfg.model)
    return cfg, model.eval(), tok


def test_target_nll_is_the_mean_token_nll_of_each_rows_training_target():
    """Checked against a plain forward pass: prompt ids + target ids + EOS, mean NLL over the target's
    tokens (EOS included); the target is the completion, the chosen side, or the best-ranked one."""
    cfg, model, tok = _tiny_lm()
    rows = [{"prompt": "Review: ", "completion": " great fun"},
            {"prompt": "Say", "chosen": " yes", "rejected": " no no no"},
            {"prompt": "Q", "completions": [" worst", " best"], "ranks": [1, 0]}]

    def by_hand(prompt, target):
        p = tok(prompt)["input_ids"]
        c = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        positions = range(len(p) - 1, len(p) + len(c) - 1)
        return -sum(float(logp[i, ids[0, i + 1]]) for i in positions) / len(c)

    got = target_nll(rows, model, tok, cfg.data, batch_size=2)
    want = [by_hand("Review: ", " great fun"), by_hand("Say", " yes"), by_hand("Q", " best")]
    assert got == pytest.approx(want, rel=1e-4)
    # a target that cannot fit is scored last, as training will drop it
    long = {"prompt": "x", "completion": " y" * 400}
    assert target_nll([long], model, tok, {**cfg.data, "max_length": 16, "truncation": "drop"}) == [float("inf")]
    with pytest.raises(ConfigError, match="data.curriculum=loss scores a row's training target, and this row has none"):
        target_nll([{"prompt": "only"}], model, tok, cfg.data)


def test_loss_curriculum_orders_rows_by_the_scores_it_is_given():
    rows = [{"prompt": "a", "completion": str(i)} for i in range(4)]
    out = apply_curriculum(rows, "loss", SENTIMENT, load_plugins(), 0, loss_scores=lambda r: [3.0, 0.5, 2.0, 1.0])
    assert [r["completion"] for r in out] == ["1", "3", "2", "0"]


def test_a_job_with_the_loss_curriculum_trains_on_rows_ordered_by_its_starting_models_loss(tmp_path, monkeypatch):
    """The job scores the train rows with the model it starts from (before any step) and hands the
    trainer its items in that order. A spy on the objective's real ``datamodule`` records the items."""
    from alignx.data.rows import encode_split
    from alignx.job import build_policy
    from alignx.objectives.sft import SFT
    from alignx.train import train

    cfg = compose(fast("data.curriculum=loss", "trainer.max_steps=2", "tracking=none", "eval.enabled=false",
                       f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"))
    registry = load_plugins()
    rows = load_rows(cfg, registry, "sft", "sft")["train"]
    model, tok, _ = build_policy(cfg, registry, tmp_path / "probe", SFT)  # the same seeded start the job builds
    scores = target_nll(rows, model, tok, cfg.data)
    assert scores != sorted(scores)  # loaded order is not already the curriculum's
    expected, _, _ = encode_split(SFT, [rows[i] for i in curriculum_order(scores, int(cfg.seed))], tok, cfg.data)

    seen = []
    real = SFT.datamodule.__func__

    def spy(cls, train_items, *args, **kwargs):
        seen.append([item["input_ids"] for item in train_items])
        return real(cls, train_items, *args, **kwargs)

    monkeypatch.setattr(SFT, "datamodule", classmethod(spy))
    train(cfg)
    assert seen and seen[0] == [item["input_ids"] for item in expected]


def test_the_loss_curriculum_refuses_a_reward_model_before_any_work(tmp_path):
    from alignx.train import train

    out = tmp_path / "job"
    with pytest.raises(ConfigError, match=r"data\.curriculum=loss orders rows by the starting model's token loss, and "
                                          r"objective=rm trains a scorer with no token loss"):
        train(compose(fast("objective=rm", "data.curriculum=loss", f"output_dir={out}", f"outputs_root={tmp_path / 'root'}")))
    assert not out.exists() and not (tmp_path / "root" / "mlflow.db").exists()


@pytest.mark.parametrize("curriculum", ["none", "length"])
def test_a_jobs_objective_builds_its_data_module_in_curriculum_order(curriculum):
    """The wiring: an objective's data module (what the trainer iterates) keeps the curriculum
    order exactly when ``data.curriculum`` is set; without it, batches are shuffled as usual."""
    from alignx.objectives.sft import SFT

    cfg = compose([f"data.curriculum={curriculum}", "data.batch_size=2", "data.length_bucketing=false"])
    items = [{"input_ids": [i] * (10 - i), "labels": [i] * (10 - i)} for i in range(8)]

    class Tok:
        pad_token_id = 0

    dm = SFT.datamodule(items, items, Tok(), cfg)
    firsts = [batch["input_ids"][:, 0].tolist() for batch in dm.train_dataloader()]
    in_order = [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert (firsts == in_order) == (curriculum != "none")


def test_online_rl_refuses_a_curriculum_it_would_ignore():
    from alignx.objectives.grpo import GRPO

    cfg = compose(["objective=grpo", "data.curriculum=length", "trainer.max_steps=2"])
    with pytest.raises(ConfigError, match=r"data\.curriculum=length orders the training rows of offline objectives; "
                                          r"objective=grpo takes its prompts in a seeded random order"):
        GRPO.check_config(cfg)
    GRPO.check_config(compose(["objective=grpo", "trainer.max_steps=2"]))
