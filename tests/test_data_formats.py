"""Preference row formats (pairs, conversational, ranked, unpaired), the Hub dataset presets on
fixture rows written in each dataset's real schema, and the invalid-row / over-length policies."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
from conftest import write_jsonl, write_parquet
from omegaconf import OmegaConf

from alignx.config import compose, validate
from alignx.data.formats import (
    CANONICAL_COLUMNS,
    collect_invalid_rows,
    reject_row,
    validate_rows,
)
from alignx.data.presets import FORMATS, parse_hh_transcript
from alignx.data.sources import SplitRows, load_builtin, load_hub, load_jsonl
from alignx.data.tokenize import (
    RowTooLongError,
    encode_rows,
    encode_sft_row,
    fit_to_length,
)
from alignx.errors import ConfigError, DataError
from alignx.registry import KINDS, load_plugins


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def one(row: dict, kind: str) -> dict:
    [out] = validate_rows([row], kind, "src.jsonl")
    return out


def error_of(row: dict, kind: str) -> DataError:
    with pytest.raises(DataError) as err:
        validate_rows([row], kind, "src.jsonl", first_row=7)
    assert err.value.source == "src.jsonl" and err.value.row == 7
    return err.value


# ---------------------------------------------------------------- normalised forms


def test_canonical_columns_include_the_preference_columns():
    assert {"completions", "ranks", "margin"} <= set(CANONICAL_COLUMNS)


def test_plain_pairs_and_margin():
    assert one({"prompt": "p", "chosen": "a", "rejected": "b", "x": 1}, "pairs") == {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert one({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2}, "pairs") == {
        "prompt": "p", "chosen": "a", "rejected": "b", "margin": 2.0,
    }


def test_conversational_pairs_implicit_prompt():
    row = {"chosen": [user("hi"), bot("hello!")], "rejected": [user("hi"), bot("go away")]}
    assert one(row, "pairs") == {"prompt": [user("hi")], "chosen": "hello!", "rejected": "go away"}
    multi = [user("a"), bot("b"), user("c")]
    assert one({"chosen": multi + [bot("yes")], "rejected": multi + [bot("no")]}, "pairs")["prompt"] == multi


def test_conversational_pairs_explicit_prompt():
    prompt = [{"role": "system", "content": "be kind"}, user("hi")]
    assert one({"prompt": prompt, "chosen": [bot("a")], "rejected": [bot("b")]}, "pairs") == {
        "prompt": prompt, "chosen": "a", "rejected": "b",
    }
    # shared earlier turns in the continuations are appended to the prompt
    row = {"prompt": [user("hi")], "chosen": [bot("x"), user("more"), bot("a")], "rejected": [bot("x"), user("more"), bot("b")]}
    assert one(row, "pairs")["prompt"] == [user("hi"), bot("x"), user("more")]
    # continuations that repeat the whole prompt are not doubled
    row = {"prompt": [user("hi")], "chosen": [user("hi"), bot("a")], "rejected": [user("hi"), bot("b")]}
    assert one(row, "pairs")["prompt"] == [user("hi")]


def test_string_prompt_with_conversational_sides():
    # UltraFeedback: the string repeats the user turn already inside chosen/rejected
    row = {"prompt": "hi", "chosen": [user("hi"), bot("a")], "rejected": [user("hi"), bot("b")]}
    assert one(row, "pairs") == {"prompt": [user("hi")], "chosen": "a", "rejected": "b"}
    # sides with only the assistant turn: the string is the user turn
    assert one({"prompt": "hi", "chosen": [bot("a")], "rejected": [bot("b")]}, "pairs")["prompt"] == [user("hi")]
    assert one({"prompt": "", "chosen": [bot("a")], "rejected": [bot("b")]}, "pairs")["prompt"] == []


def test_ranked_rows():
    assert one({"prompt": "p", "completions": ["a", "b", "c"], "ranks": [2, 0, 2]}, "ranked") == {
        "prompt": "p", "completions": ["a", "b", "c"], "ranks": [2, 0, 2],
    }
    # no ranks: listed best first
    assert one({"prompt": "p", "completions": ["a", "b", "c"]}, "ranked")["ranks"] == [0, 1, 2]
    assert one({"prompt": "p", "completions": ["a", "b"], "ranks": [0.5, 1.5]}, "ranked")["ranks"] == [0.5, 1.5]
    conv = {"completions": [[user("q"), bot("x")], [user("q"), bot("y")]], "ranks": [1, 0]}
    assert one(conv, "ranked") == {"prompt": [user("q")], "completions": ["x", "y"], "ranks": [1, 0]}
    explicit = {"prompt": [user("q")], "completions": [[bot("x")], [bot("y")], [bot("z")]]}
    assert one(explicit, "ranked") == {"prompt": [user("q")], "completions": ["x", "y", "z"], "ranks": [0, 1, 2]}


def test_ranked_columns_can_be_mapped():
    row = {"q": "p", "answers": ["a", "b"], "order": [1, 0]}
    [out] = validate_rows([row], "ranked", "f", columns={"prompt": "q", "completions": "answers", "ranks": "order"})
    assert out == {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 0]}


def test_unpaired_rows():
    assert one({"prompt": "p", "completion": "c", "label": True}, "unpaired") == {"prompt": "p", "completion": "c", "label": True}
    kto_row = {"prompt": [user("q")], "completion": [bot("c")], "label": False}
    assert one(kto_row, "unpaired") == {"prompt": [user("q")], "completion": "c", "label": False}


# ---------------------------------------------------------------- invalid rows: what each says


@pytest.mark.parametrize(
    "row, kind, column, needle, reason",
    [
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "pairs", "rejected", "identical", "chosen == rejected"),
        ({"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("a")]}, "pairs", "rejected", "identical", "chosen == rejected"),
        ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "pairs", "chosen", "non-empty", "empty text"),
        ({"chosen": [user("q"), bot("")], "rejected": [user("q"), bot("b")]}, "pairs", "chosen", "empty content", "empty text"),
        ({"chosen": [user("q"), bot("a")], "rejected": [user("Q"), bot("b")]}, "pairs", "rejected", "differ before the final", "sides differ before the final turn"),
        ({"chosen": [user("q"), bot("a")], "rejected": "b"}, "pairs", "rejected", "must be one too", "wrong type"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "1"}, "pairs", "margin", "finite number", "bad margin"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": float("nan")}, "pairs", "margin", "finite number", "bad margin"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": True}, "pairs", "margin", "finite number", "bad margin"),
        ({"prompt": "p", "completion": "c", "label": "true"}, "unpaired", "label", "expected a bool", "label not a bool"),
        ({"prompt": "p", "completion": "c", "label": 1}, "unpaired", "label", "expected a bool", "label not a bool"),
        ({"prompt": "p", "completion": "", "label": True}, "unpaired", "completion", "non-empty", "empty text"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [0]}, "ranked", "ranks", "1 ranks for 2 completions", "ranks: length mismatch"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, "1"]}, "ranked", "ranks", "rank 2 must be a finite number", "ranks: not a number"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, True]}, "ranked", "ranks", "rank 2 must be a finite number", "ranks: not a number"),
        ({"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 1, 1]}, "ranked", "ranks", "all ranks are tied", "ranks: all tied"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": None}, "ranked", "ranks", "list of ranks", "ranks: not a list"),
        ({"prompt": "p", "completions": ["a"]}, "ranked", "completions", "at least 2", "fewer than 2 completions"),
        ({"prompt": "p", "completions": ["a", "b", "a"]}, "ranked", "completions", "completions 1 and 3 are identical", "duplicate completions"),
        ({"prompt": "p", "completions": ["a", ""]}, "ranked", "completions", "completion 2: expected a non-empty", "empty text"),
        ({"completions": [[user("q"), bot("a")], [user("r"), bot("b")]]}, "ranked", "completions", "completion 2 of 'completions' and completion 1", "sides differ before the final turn"),
    ],
)
def test_invalid_rows_under_both_policies(row, kind, column, needle, reason):
    good = {
        "pairs": {"prompt": "p", "chosen": "a", "rejected": "b"},
        "unpaired": {"prompt": "p", "completion": "c", "label": True},
        "ranked": {"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]},
    }[kind]
    # error (the default, with or without the context): the first invalid row raises, located
    err = error_of(row, kind)
    assert needle in str(err) and f"column '{column}'" in str(err) and err.reason == reason
    with collect_invalid_rows("error"), pytest.raises(DataError, match=needle):
        validate_rows([good, row], kind, "src.jsonl")
    # drop: left out, counted by reason, with its location
    with collect_invalid_rows("drop") as invalid:
        invalid.split = "train"
        kept = validate_rows([good, row, good], kind, "src.jsonl")
    assert len(kept) == 2
    assert invalid.count("train") == 1 and invalid.reasons("train") == {reason: 1}
    [dropped] = invalid.dropped["train"]
    assert (dropped.source, dropped.row, dropped.column) == ("src.jsonl", 2, column)
    assert f"src.jsonl, row 2, column '{column}'" in invalid.summary("train")


def test_invalid_policy_name_is_checked():
    with pytest.raises(ConfigError, match="Valid: error, drop"), collect_invalid_rows("skip"):
        pass


def test_reject_row_for_third_party_loaders():
    err = DataError("bad", source="mine", row=3)
    with pytest.raises(DataError):
        reject_row(err)  # no policy in force: raise
    with collect_invalid_rows("drop") as invalid:
        invalid.split = "val"
        reject_row(err)
    assert invalid.count("val") == 1 and invalid.reasons("val") == {"invalid row": 1}


def test_drop_in_files_counts_each_row_once_under_its_split(tmp_path):
    good = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(8)]
    bad = [{"prompt": "x", "chosen": "same", "rejected": "same"}, '{"prompt": "broken', {"prompt": "y", "chosen": "", "rejected": "b"}]
    path = write_jsonl(tmp_path / "d.jsonl", good[:3] + bad + good[3:])
    cfg = {"path": str(path), "val_fraction": 0.25}
    with pytest.raises(DataError) as err:  # error: the first bad line, named
        load_jsonl(cfg, "pairs", "train", 0)
    assert f"{path}, row 4, column 'rejected'" in str(err.value)
    with collect_invalid_rows("drop") as invalid:
        for split in ("train", "val"):
            invalid.split = split
            rows = load_jsonl(cfg, "pairs", split, 0)
            assert all(r["chosen"] == "a" for r in rows)
    # the val rows are a fraction of the same file: its invalid rows count once, under train
    assert invalid.count("train") == 3 and invalid.count("val") == 0
    assert invalid.reasons("train") == {"chosen == rejected": 1, "invalid JSON": 1, "empty text": 1}
    # rows remember their file and line
    with collect_invalid_rows("drop"):
        rows = load_jsonl({"path": str(path)}, "pairs", "train", 0)
    assert isinstance(rows, SplitRows) and rows.locations[3] == (str(path), 7) and len(rows) == 8


def test_invalid_rows_config_key():
    cfg = compose(["data.invalid_rows=drop"])
    validate(cfg)
    assert compose([]).data.invalid_rows == "error"
    with pytest.raises(ConfigError, match="data.invalid_rows='skip' is not a valid value. Valid: error, drop"):
        validate(compose(["data.invalid_rows=skip"]))
    validate(compose(["data.truncation=error"]))
    with pytest.raises(ConfigError, match="truncate_prompt, truncate_completion, drop, error"):
        validate(compose(["data.truncation=cut"]))


# ---------------------------------------------------------------- over-long rows


def test_fit_to_length_error_policy():
    p, c = list(range(10)), [100, 101, 102]
    assert fit_to_length(p, c, 20, "error") == (p, c, "kept")
    with pytest.raises(RowTooLongError) as err:
        fit_to_length(p, c, 8, "error")
    assert (err.value.prompt_len, err.value.completion_len, err.value.max_length) == (10, 3, 8)


@pytest.fixture(scope="module")
def tok():
    from alignx.models.tokenizer import build_byte_tokenizer

    return build_byte_tokenizer()


def test_overlong_prompt_error_names_split_file_row_and_lengths(tmp_path, tok):
    rows = [{"prompt": "short", "completion": "ok"}, {"prompt": "x" * 60, "completion": "yy"}, {"prompt": "s", "completion": "k"}]
    path = write_jsonl(tmp_path / "d.jsonl", ["", *rows])  # a blank first line: file lines != row indices
    loaded = load_jsonl({"path": str(path)}, "sft", "train", 0)

    def enc(policy):
        return lambda r: encode_sft_row(r, tok, max_length=24, truncation=policy, completion_only=True, chat_template=False)

    with pytest.raises(DataError) as err:
        encode_rows(loaded, enc("error"))
    msg = str(err.value)
    assert err.value.source == str(path) and err.value.row == 3
    assert "train split row 2 is too long: prompt 61 + completion 3 = 64 tokens > data.max_length=24" in msg
    assert "truncate_prompt" in msg and "drop" in msg
    # drop: counted, never silent
    items, stats = encode_rows(loaded, enc("drop"))
    assert len(items) == 2 and stats.counts == {"kept": 2, "dropped": 1}
    # plain lists (a plugin's loader) still get the row index
    with pytest.raises(DataError, match="row 2 is too long"):
        encode_rows(list(loaded), enc("error"))


def test_overlong_pair_prompt_error_and_drop(tok):
    from alignx.objectives.dpo import encode_pair

    rows = SplitRows([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "x" * 50, "chosen": "a", "rejected": "b"}], split="val")
    cfg = {"chat_template": False, "max_length": 16}
    with pytest.raises(DataError) as err:
        encode_rows(rows, lambda r: encode_pair(r, tok, {**cfg, "truncation": "error"}))
    assert "val split row 2 is too long" in str(err.value) and "data.max_length=16" in str(err.value)
    items, stats = encode_rows(rows, lambda r: encode_pair(r, tok, {**cfg, "truncation": "drop"}))
    assert len(items) == 1 and stats.counts["dropped"] == 1


# ---------------------------------------------------------------- presets on fixture rows in the real schemas


def test_format_registry_kind_and_presets():
    assert "format" in KINDS
    registry = load_plugins()
    for name, fn in FORMATS.items():
        assert registry.get("format", name) is fn
    assert {"hh_rlhf", "ultrafeedback_binarized", "kto"} <= set(registry.names("format"))


HH_TRAIN = [
    {
        "chosen": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers is a classic.",
        "rejected": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Cats do not need names.",
    },
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross the road?",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant: No.",
    },
]
HH_HELPFUL = [
    {
        "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for 9 minutes.",
        "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Microwave it.",
    },
]
HH_TEST = [
    {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"},
]


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hh_dir(root: Path) -> Path:
    """Anthropic/hh-rlhf's layout: one directory per subset, each with train/test .jsonl.gz."""
    write_jsonl_gz(root / "harmless-base/train.jsonl.gz", HH_TRAIN)
    write_jsonl_gz(root / "harmless-base/test.jsonl.gz", HH_TEST)
    write_jsonl_gz(root / "helpful-base/train.jsonl.gz", HH_HELPFUL)
    write_jsonl_gz(root / "helpful-base/test.jsonl.gz", [])
    (root / "README.md").write_text("# hh-rlhf")
    return root


def test_hh_rlhf_preset(tmp_path):
    root = hh_dir(tmp_path / "hh-rlhf")
    cfg = compose(["dataset=hh_rlhf", f"dataset.id={root}"])
    assert cfg.dataset.format == "hh_rlhf" and cfg.dataset.source == "hub"
    assert load_hub(cfg.dataset, "pairs", "train", 0) == [
        {"prompt": [user("What is a good name for a cat?")], "chosen": "Whiskers is a classic.", "rejected": "Cats do not need names."},
        {
            "prompt": [user("Hi"), bot("Hello! How can I help?"), user("Tell me a joke.")],
            "chosen": "Why did the chicken cross the road?",
            "rejected": "No.",
        },
        {"prompt": [user("How do I boil an egg?")], "chosen": "Put it in boiling water for 9 minutes.", "rejected": "Microwave it."},
    ]
    assert load_hub(cfg.dataset, "pairs", "val", 0) == [{"prompt": [user("2+2?")], "chosen": "4", "rejected": "5"}]
    # sft rows (SFT, and evaluation's held-out rows) are the chosen conversations
    assert load_hub(cfg.dataset, "sft", "test", 0) == [{"messages": [user("2+2?"), bot("4")]}]
    # one subset
    subset = compose(["dataset=hh_rlhf", f"dataset.id={root}", "dataset.data_dir=helpful-base"])
    assert [r["chosen"] for r in load_hub(subset.dataset, "pairs", "train", 0)] == ["Put it in boiling water for 9 minutes."]


def test_hh_rlhf_plain_jsonl_layout(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", HH_TRAIN)
    write_jsonl(tmp_path / "test.jsonl", HH_TEST)
    cfg = compose(["dataset=hh_rlhf", f"dataset.id={tmp_path}"])
    assert len(load_hub(cfg.dataset, "pairs", "train", 0)) == 2


@pytest.mark.parametrize(
    "chosen, needle",
    [
        ("Human: hi\n\nAssistant: yo", "must start with"),
        ("\n\nHuman: hi", "must end with an Assistant turn"),
        ("\n\nAssistant: hi", "must start with a Human turn"),
        (None, "expected an hh-rlhf transcript string"),
    ],
)
def test_hh_rlhf_malformed_transcripts(tmp_path, chosen, needle):
    bad = {"chosen": chosen, "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    write_jsonl(tmp_path / "train.jsonl", [HH_TRAIN[0], bad])
    write_jsonl(tmp_path / "test.jsonl", HH_TEST)
    cfg = compose(["dataset=hh_rlhf", f"dataset.id={tmp_path}"])
    with pytest.raises(DataError) as err:
        load_hub(cfg.dataset, "pairs", "train", 0)
    assert f"{tmp_path / 'train.jsonl'}, row 2, column 'chosen'" in str(err.value) and needle in str(err.value)
    with collect_invalid_rows("drop") as invalid:
        invalid.split = "train"
        assert len(load_hub(cfg.dataset, "pairs", "train", 0)) == 1
    assert invalid.reasons("train") == {"bad transcript": 1}


def test_hh_rlhf_sides_that_differ_before_the_last_turn(tmp_path):
    bad = {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hello\n\nAssistant: no"}
    write_jsonl(tmp_path / "train.jsonl", [bad])
    cfg = compose(["dataset=hh_rlhf", f"dataset.id={tmp_path}"])
    with pytest.raises(DataError, match=r"row 1, column 'rejected'.*differ before the final assistant turn"):
        load_hub(cfg.dataset, "pairs", "train", 0)


def test_parse_hh_transcript_keeps_blank_lines_inside_turns():
    text = "\n\nHuman: a\nb\n\nAssistant: line one\n\nline two"
    # hh-rlhf marks turns with "\n\nHuman: "/"\n\nAssistant: "; other blank lines belong to the turn
    assert parse_hh_transcript(text, "chosen") == [user("a\nb"), bot("line one\n\nline two")]


def uf_row(i: int, prompt: str, good: str, bad: str, s_good: float, s_bad: float) -> dict:
    chosen, rejected = [user(prompt), bot(good)], [user(prompt), bot(bad)]
    return {
        "prompt": prompt, "prompt_id": f"id{i}", "chosen": chosen, "rejected": rejected, "messages": chosen,
        "score_chosen": s_good, "score_rejected": s_bad,
    }


UF_TRAIN = [uf_row(0, "Name a prime.", "7", "8", 9.0, 2.5), uf_row(1, "Say hi.", "Hi!", "Bye.", 7.5, 7.0)]
UF_TEST = [uf_row(2, "2+2?", "4", "5", 10.0, 1.0)]


def uf_dir(root: Path) -> Path:
    """HuggingFaceH4/ultrafeedback_binarized's layout: data/<split>-00000-of-00001.parquet."""
    for split, rows in (("train_prefs", UF_TRAIN), ("test_prefs", UF_TEST), ("train_sft", UF_TRAIN), ("test_gen", UF_TEST)):
        write_parquet(root / f"data/{split}-00000-of-00001.parquet", rows)
    return root


def test_ultrafeedback_binarized_preset(tmp_path):
    root = uf_dir(tmp_path / "uf")
    cfg = compose(["dataset=ultrafeedback_binarized", f"dataset.id={root}"])
    assert cfg.dataset.splits.train == "train_prefs" and cfg.dataset.margin_from_scores is False
    assert load_hub(cfg.dataset, "pairs", "train", 0) == [
        {"prompt": [user("Name a prime.")], "chosen": "7", "rejected": "8"},
        {"prompt": [user("Say hi.")], "chosen": "Hi!", "rejected": "Bye."},
    ]
    assert load_hub(cfg.dataset, "pairs", "test", 0) == [{"prompt": [user("2+2?")], "chosen": "4", "rejected": "5"}]
    assert load_hub(cfg.dataset, "sft", "val", 0) == [{"messages": [user("2+2?"), bot("4")]}]
    margins = compose(["dataset=ultrafeedback_binarized", f"dataset.id={root}", "dataset.margin_from_scores=true"])
    assert [r["margin"] for r in load_hub(margins.dataset, "pairs", "train", 0)] == [6.5, 0.5]


def test_ultrafeedback_tied_pair_is_an_invalid_row(tmp_path):
    root = tmp_path / "uf"
    write_parquet(root / "data/train_prefs-00000-of-00001.parquet", UF_TRAIN + [uf_row(3, "Q", "same", "same", 5.0, 5.0)])
    write_parquet(root / "data/test_prefs-00000-of-00001.parquet", UF_TEST)
    cfg = compose(["dataset=ultrafeedback_binarized", f"dataset.id={root}"])
    with pytest.raises(DataError, match=r"train_prefs-00000-of-00001.parquet, row 3, column 'rejected'.*identical"):
        load_hub(cfg.dataset, "pairs", "train", 0)
    with collect_invalid_rows("drop") as invalid:
        invalid.split = "train"
        assert len(load_hub(cfg.dataset, "pairs", "train", 0)) == 2
    assert invalid.reasons("train") == {"chosen == rejected": 1}


KTO_TRAIN = [
    {"prompt": [user("Is the sky blue?")], "completion": [bot("Yes, on a clear day.")], "label": True},
    {"prompt": [user("Is the sky blue?")], "completion": [bot("It is green.")], "label": False},
    {"prompt": [user("hi"), bot("hello"), user("bye")], "completion": [bot("See you!")], "label": True},
]
KTO_TEST = [{"prompt": [user("2+2?")], "completion": [bot("5")], "label": False}]


def test_kto_mix_preset(tmp_path):
    root = tmp_path / "kto"
    write_parquet(root / "data/train-00000-of-00001.parquet", KTO_TRAIN)
    write_parquet(root / "data/test-00000-of-00001.parquet", KTO_TEST)
    cfg = compose(["dataset=kto_mix", f"dataset.id={root}"])
    assert cfg.dataset.format == "kto"
    assert load_hub(cfg.dataset, "unpaired", "train", 0) == [
        {"prompt": [user("Is the sky blue?")], "completion": "Yes, on a clear day.", "label": True},
        {"prompt": [user("Is the sky blue?")], "completion": "It is green.", "label": False},
        {"prompt": [user("hi"), bot("hello"), user("bye")], "completion": "See you!", "label": True},
    ]
    assert load_hub(cfg.dataset, "unpaired", "val", 0) == [{"prompt": [user("2+2?")], "completion": "5", "label": False}]
    assert load_hub(cfg.dataset, "sft", "test", 0) == [{"messages": [user("2+2?"), bot("5")]}]


def test_kto_non_bool_label_is_an_invalid_row(tmp_path):
    root = tmp_path / "kto"
    write_jsonl(root / "train.jsonl", KTO_TRAIN + [{"prompt": [user("q")], "completion": [bot("a")], "label": "yes"}])
    write_jsonl(root / "test.jsonl", KTO_TEST)
    cfg = compose(["dataset=kto_mix", f"dataset.id={root}"])
    with pytest.raises(DataError, match=r"train.jsonl, row 4, column 'label': expected a bool"):
        load_hub(cfg.dataset, "unpaired", "train", 0)
    with collect_invalid_rows("drop") as invalid:
        invalid.split = "train"
        assert len(load_hub(cfg.dataset, "unpaired", "train", 0)) == 3
    assert invalid.reasons("train") == {"label not a bool": 1}


def test_format_on_file_sources_and_errors(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_TRAIN + [{"rejected": "x"}])
    cfg = OmegaConf.create({"path": str(path), "format": "hh_rlhf"})
    with pytest.raises(DataError) as err:  # a KeyError inside the format names the missing column
        load_jsonl(cfg, "pairs", "train", 0)
    assert f"{path}, row 3, column 'chosen'" in str(err.value) and "missing column" in str(err.value)
    with pytest.raises(ConfigError, match="dataset.format='nope' is not a registered row format. Valid: .*hh_rlhf"):
        load_jsonl({"path": str(path), "format": "nope"}, "pairs", "train", 0)


def test_presets_compose_with_every_objective_key_known():
    for preset in ("hh_rlhf", "ultrafeedback_binarized", "kto_mix"):
        cfg = compose([f"dataset={preset}"])
        validate(cfg)
        assert cfg.dataset.columns is None and cfg.dataset.task is None and cfg.dataset.format


# ---------------------------------------------------------------- builtin ranked rows through the loader


def test_builtin_loader_makes_ranked_rows_with_ranked_k():
    cfg = compose(["dataset=arithmetic", "dataset.ranked_k=3"])
    rows = load_builtin(cfg.dataset, "ranked", "train", 0)[:20]
    assert all(len(r["completions"]) == 3 == len(r["ranks"]) for r in rows)
    assert compose(["dataset=sentiment"]).dataset.ranked_k == 4


def test_invalid_rows_warning_and_counts_through_load_rows(tmp_path, caplog):
    from alignx.train import load_rows

    good = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(6)]
    path = write_jsonl(tmp_path / "d.jsonl", good + [{"prompt": "x", "chosen": "s", "rejected": "s"}, {"prompt": "y", "chosen": "a"}])
    cfg = compose(["dataset=jsonl", f"dataset.path={path}", "dataset.val_fraction=0.2", "eval.enabled=false", "data.invalid_rows=drop"])
    with caplog.at_level(logging.WARNING, logger="alignx"):
        rows = load_rows(cfg, load_plugins(), "pairs")
    assert rows["train"].invalid_dropped == 2 and rows["val"].invalid_dropped == 0
    assert len(rows["train"]) + len(rows["val"]) == 6
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "2 invalid train row(s) dropped (chosen == rejected: 1, missing column: 1)" in warning
    assert f"{path}, row 7, column 'rejected'" in warning
    # every train row invalid: still an error
    all_bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "s", "rejected": "s"}])
    cfg = compose(["dataset=jsonl", f"dataset.path={all_bad}", "eval.enabled=false", "data.invalid_rows=drop"])
    with pytest.raises(DataError, match="every training row is invalid: 1 invalid train row"):
        load_rows(cfg, load_plugins(), "pairs")
