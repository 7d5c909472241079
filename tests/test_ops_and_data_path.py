"""Pure functions of the data path and SFT loss, against hand-computed values."""

import math

import pytest
import torch

from alignx.data.batching import BucketBatchSampler, collate_sft, padding_fraction
from alignx.data.tokenize import encode_rows, encode_sft_row, fit_to_length
from alignx.losses.sft import sft_loss
from alignx.models.tokenizer import build_byte_tokenizer
from alignx.ops.logprobs import IGNORE_INDEX, masked_mean, token_logprobs


def test_sft_loss_hand_computed():
    # vocab 3; sequence of 3 tokens; after the shift, positions 0 and 1 predict labels[1], labels[2]
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    # pos0 uniform -> -ln(1/3); pos1 p(0) = 2/(2+1+1) = 1/2 -> -ln(1/2)
    expected = (math.log(3) + math.log(2)) / 2
    loss, n = sft_loss(logits, labels)
    assert n.item() == 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_sft_loss_ignores_masked_positions():
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 3] = 4
    loss, n = sft_loss(logits, labels)
    expected = -torch.log_softmax(logits[0, 2], -1)[4]
    assert n.item() == 1 and loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_token_logprobs_and_temperature():
    logits = torch.tensor([[[1.0, 2.0, 3.0]]])
    labels = torch.tensor([[2]])
    lp = token_logprobs(logits, labels)
    assert lp.item() == pytest.approx(3 - math.log(math.e + math.e**2 + math.e**3), rel=1e-6)
    lp_t = token_logprobs(logits, labels, temperature=2.0)
    assert lp_t.item() == pytest.approx(1.5 - math.log(math.e**0.5 + math.e + math.e**1.5), rel=1e-6)
    assert token_logprobs(logits, torch.tensor([[IGNORE_INDEX]])).item() == 0.0


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx(1.5)
    assert masked_mean(x, m, dim=1).tolist() == [1.5, 0.0]  # an empty row gives 0, not NaN


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


def test_completion_only_mask(tok):
    item, status = encode_sft_row(
        {"prompt": "ab", "completion": "cd"}, tok, max_length=32, truncation="drop", completion_only=True, chat_template=False
    )
    # BOS a b | c d EOS
    assert status == "kept"
    assert len(item["input_ids"]) == 6
    assert item["input_ids"][0] == tok.bos_token_id and item["input_ids"][-1] == tok.eos_token_id
    assert item["labels"][:3] == [IGNORE_INDEX] * 3
    assert item["labels"][3:] == item["input_ids"][3:]
    full, _ = encode_sft_row(
        {"prompt": "ab", "completion": "cd"}, tok, max_length=32, truncation="drop", completion_only=False, chat_template=False
    )
    assert full["labels"] == full["input_ids"]


def test_messages_rows_use_chat_template(tok):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    item, _ = encode_sft_row(row, tok, max_length=64, truncation="drop", completion_only=True, chat_template=False)
    text = tok.decode(item["input_ids"])
    assert text == "<|user|>\nhi\n<|assistant|>\nyo</s>"
    trained = [t for t in item["labels"] if t != IGNORE_INDEX]
    assert tok.decode(trained) == "yo</s>"


def test_truncation_policies():
    p, c = list(range(10)), [100, 101, 102]
    assert fit_to_length(p, c, 20, "drop") == (p, c, "kept")
    assert fit_to_length(p, c, 8, "drop") is None
    # keep BOS (prefix 1) and the prompt's end
    assert fit_to_length(p, c, 8, "truncate_prompt", keep_prefix=1) == ([0, 6, 7, 8, 9], c, "truncated")
    assert fit_to_length(p, c, 12, "truncate_completion") == (p, [100, 101], "truncated")
    assert fit_to_length(p, c, 10, "truncate_completion") is None  # no room for any completion


def test_truncation_counts_reported(tok):
    rows = [{"prompt": "x" * n, "completion": "yy"} for n in (2, 30, 40)]
    enc = lambda r: encode_sft_row(r, tok, max_length=24, truncation="truncate_prompt", completion_only=True, chat_template=False)
    items, stats = encode_rows(rows, enc)
    assert stats.counts == {"kept": 1, "truncated": 2}
    assert all(len(i["input_ids"]) <= 24 for i in items)
    enc_drop = lambda r: encode_sft_row(r, tok, max_length=24, truncation="drop", completion_only=True, chat_template=False)
    items, stats = encode_rows(rows, enc_drop)
    assert len(items) == 1 and stats.as_metrics("data/train") == {
        "data/train/kept": 1.0, "data/train/truncated": 0.0, "data/train/dropped": 2.0,
        "data/train/identical_after_truncation": 0.0,
    }


def test_collate_pads_right():
    batch = collate_sft([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_bucketing_cuts_padding_and_covers_every_row():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 120) for _ in range(1000)]
    bucketed = list(BucketBatchSampler(lengths, 16, bucketing=True, seed=1))
    plain = list(BucketBatchSampler(lengths, 16, bucketing=False, seed=1))
    assert sorted(i for b in bucketed for i in b) == list(range(1000))
    assert padding_fraction(lengths, bucketed) < padding_fraction(lengths, plain) / 3


def test_bucket_sampler_is_seeded_and_shards_ranks():
    lengths = list(range(100))
    a = list(BucketBatchSampler(lengths, 8, seed=3))
    assert a == list(BucketBatchSampler(lengths, 8, seed=3))
    s = BucketBatchSampler(lengths, 8, seed=3)
    s.set_epoch(1)
    assert list(s) != a
    # 100 rows, 2 ranks x 4 = global batches of 8: 12 full + one of 4 rows (2 each)
    r0 = list(BucketBatchSampler(lengths, 4, seed=3, rank=0, world_size=2))
    r1 = list(BucketBatchSampler(lengths, 4, seed=3, rank=1, world_size=2))
    assert len(r0) == len(r1) == len(BucketBatchSampler(lengths, 4, world_size=2)) == 13
    assert not set(i for b in r0 for i in b) & set(i for b in r1 for i in b)
    # each step's two rank batches are exactly one batch of a single process with batch size 8
    single = list(BucketBatchSampler(lengths, 8, seed=3))
    assert [sorted(b0 + b1) for b0, b1 in zip(r0, r1)] == [sorted(b) for b in single]


def test_bucket_sampler_drops_a_last_global_batch_too_small_for_every_rank():
    r = [list(BucketBatchSampler(list(range(17)), 4, seed=0, rank=k, world_size=4)) for k in range(4)]
    assert [len(x) for x in r] == [1, 1, 1, 1]  # 16 rows in one global batch; the 17th row cannot be shared out
    assert len(BucketBatchSampler(list(range(17)), 4, world_size=4)) == 1


def test_bucket_sampler_resumes_mid_epoch():
    lengths = list(range(50))
    full = list(BucketBatchSampler(lengths, 4, seed=1))
    s = BucketBatchSampler(lengths, 4, seed=1)
    s.resume_at(0, 5)
    assert list(s) == full[5:]
    assert list(s) == full  # the skip applies to one iteration only
    s.resume_at(0, 5)
    s.set_epoch(1)  # a checkpoint from an earlier epoch: nothing to skip in this one
    assert len(list(s)) == len(full)
