"""Dataset sources and row formats: happy paths and the exact location of every data error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import write_jsonl, write_parquet
from omegaconf import OmegaConf

from alignx.data.formats import validate_rows
from alignx.data.sources import SOURCES, load_hub, load_jsonl, load_parquet
from alignx.errors import DataError


def qa(n: int, start: int = 0) -> list[dict]:
    return [{"question": f"q{i}", "answer": f"a{i}", "extra": i} for i in range(start, start + n)]


def assert_where(err: pytest.ExceptionInfo, path: Path | str, row: int | None, column: str | None) -> str:
    msg = str(err.value)
    assert str(path) in msg
    assert (row is None) == (err.value.row is None) and (row is None or f"row {row}," in msg or f"row {row}:" in msg)
    assert column is None or f"column '{column}'" in msg
    return msg


# ---------------------------------------------------------------- happy paths


def test_sources_registry():
    assert set(SOURCES) == {"jsonl", "parquet", "hub", "builtin"}


def test_jsonl_column_mapping_and_val_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", qa(3) + [""])  # trailing blank line is skipped
    val = write_jsonl(tmp_path / "val.jsonl", qa(2, start=10))
    cfg = OmegaConf.create(
        {"path": str(train), "val_path": str(val), "columns": {"prompt": "question", "completion": "answer"}}
    )
    assert load_jsonl(cfg, "sft", "train", 0) == [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    assert load_jsonl(cfg, "sft", "val", 0) == [{"prompt": "q10", "completion": "a10"}, {"prompt": "q11", "completion": "a11"}]
    assert load_jsonl(cfg, "sft", "test", 0) == load_jsonl(cfg, "sft", "val", 0)  # no test_path -> val rows
    assert load_jsonl(cfg, "prompt", "train", 0) == [{"prompt": "q0"}, {"prompt": "q1"}, {"prompt": "q2"}]


def test_jsonl_test_path(tmp_path):
    cfg = {
        "path": str(write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "completion": "c"}])),
        "test_path": str(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "t", "completion": "u"}])),
    }
    assert load_jsonl(cfg, "sft", "test", 0) == [{"prompt": "t", "completion": "u"}]


def test_parquet_all_kinds(tmp_path):
    rows = [
        {"q": "p1", "completion": "good", "chosen": "good", "rejected": "bad", "label": True},
        {"q": "", "completion": "meh", "chosen": "x", "rejected": "y", "label": False},
    ]
    cfg = {"path": str(write_parquet(tmp_path / "d.parquet", rows)), "columns": {"prompt": "q"}}
    assert load_parquet(cfg, "pairs", "train", 0)[0] == {"prompt": "p1", "chosen": "good", "rejected": "bad"}
    assert load_parquet(cfg, "unpaired", "train", 0)[1] == {"prompt": "", "completion": "meh", "label": False}
    assert load_parquet(cfg, "sft", "train", 0)[1] == {"prompt": "", "completion": "meh"}


def test_hub_local_directory(tmp_path):
    write_parquet(tmp_path / "ds/data/train-00000-of-00002.parquet", qa(2))
    write_parquet(tmp_path / "ds/data/train-00001-of-00002.parquet", qa(2, start=2))
    write_parquet(tmp_path / "ds/data/test-00000-of-00001.parquet", qa(1, start=100))
    (tmp_path / "ds/README.md").write_text("# a dataset")
    cfg = OmegaConf.create(
        {
            "id": str(tmp_path / "ds"),
            "splits": {"train": "train", "val": "test", "test": "test"},
            "columns": {"prompt": "question", "completion": "answer"},
        }
    )
    assert [r["prompt"] for r in load_hub(cfg, "sft", "train", 0)] == ["q0", "q1", "q2", "q3"]  # shards in order
    assert load_hub(cfg, "sft", "val", 0) == [{"prompt": "q100", "completion": "a100"}]
    assert load_hub(cfg, "sft", "test", 0) == [{"prompt": "q100", "completion": "a100"}]


def test_hub_jsonl_layout_and_missing_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "completion": "c"}])
    cfg = {"id": str(tmp_path), "splits": {"train": "train", "val": "validation"}}
    assert load_hub({"id": str(tmp_path)}, "sft", "train", 0) == [{"prompt": "p", "completion": "c"}]
    with pytest.raises(DataError) as err:
        load_hub(cfg, "sft", "val", 0)
    msg = assert_where(err, tmp_path, None, None)
    assert "'validation'" in msg and "train.jsonl" in msg and "data/validation-*.parquet" in msg


def test_conversational_rows():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "x": 1}]
    assert validate_rows([{"messages": msgs}], "sft", "src") == [{"messages": [{k: m[k] for k in ("role", "content")} for m in msgs]}]
    assert validate_rows([{"messages": msgs[:2]}], "prompt", "src") == [{"messages": msgs[:2]}]
    pair = {"chosen": [msgs[2]], "rejected": [{"role": "assistant", "content": "no"}]}
    assert validate_rows([pair], "pairs", "src")[0]["prompt"] == []
    assert validate_rows([{**pair, "prompt": msgs[:2]}], "pairs", "src")[0]["prompt"] == msgs[:2]


def test_unknown_kind():
    with pytest.raises(ValueError, match="sft.*prompt.*pairs.*unpaired"):
        validate_rows([], "dpo", "src")


def test_val_fraction_split_is_seeded_and_disjoint(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "c"} for i in range(50)]
    cfg = {"path": str(write_jsonl(tmp_path / "d.jsonl", rows)), "val_fraction": 0.2}
    train, val = load_jsonl(cfg, "sft", "train", 7), load_jsonl(cfg, "sft", "val", 7)
    assert (len(train), len(val)) == (40, 10)
    assert {r["prompt"] for r in train}.isdisjoint(r["prompt"] for r in val)
    assert {r["prompt"] for r in train + val} == {r["prompt"] for r in rows}
    assert load_jsonl(cfg, "sft", "val", 7) == val
    assert load_jsonl(cfg, "sft", "test", 7) == val
    assert load_jsonl(cfg, "sft", "val", 8) != val
    assert len(load_jsonl({**cfg, "val_fraction": 0.0}, "sft", "train", 7)) == 50


# ---------------------------------------------------------------- errors name file, row and column


def test_malformed_json_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, "", '{"prompt": "a", "completion": }'])
    with pytest.raises(DataError) as err:
        load_jsonl({"path": str(path)}, "sft", "train", 0)
    assert "invalid JSON" in assert_where(err, path, 3, None)


def test_line_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [[1, 2]])
    with pytest.raises(DataError) as err:
        load_jsonl({"path": str(path)}, "sft", "train", 0)
    assert "list" in assert_where(err, path, 1, None)


def test_missing_column_names_file_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}, {"question": "q"}])
    cfg = {"path": str(path), "columns": {"prompt": "question", "completion": "answer"}}
    with pytest.raises(DataError) as err:
        load_jsonl(cfg, "sft", "train", 0)
    msg = assert_where(err, path, 2, "answer")
    assert "missing column" in msg and "['question']" in msg


def test_empty_completion(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": "  "}])
    with pytest.raises(DataError) as err:
        load_jsonl({"path": str(path)}, "sft", "train", 0)
    assert "non-empty string" in assert_where(err, path, 2, "completion")


def test_wrong_type_in_parquet(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [{"prompt": "q", "answer": 5}, {"prompt": "q", "answer": 6}])
    with pytest.raises(DataError) as err:
        load_parquet({"path": str(path), "columns": {"completion": "answer"}}, "sft", "train", 0)
    assert "expected a non-empty string, got int 5" in assert_where(err, path, 1, "answer")


@pytest.mark.parametrize("label", ["true", 1, None])
def test_label_must_be_bool(tmp_path, label):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a", "label": True}, {"prompt": "q", "completion": "a", "label": label}])
    with pytest.raises(DataError) as err:
        load_jsonl({"path": str(path)}, "unpaired", "train", 0)
    assert "expected a bool" in assert_where(err, path, 2, "label")


def test_bad_message_role(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": msgs}])
    with pytest.raises(DataError) as err:
        load_jsonl({"path": str(path)}, "sft", "train", 0)
    msg = assert_where(err, path, 1, "messages")
    assert "message 2" in msg and "'bot'" in msg


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"messages": "hi"}, "list of {role, content} messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "last message must be from the assistant"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}, "empty content"),
    ],
)
def test_bad_messages(row, needle):
    with pytest.raises(DataError) as err:
        validate_rows([row], "sft", "src.jsonl", first_row=5)
    assert needle in assert_where(err, "src.jsonl", 5, "messages")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="does not exist") as err:
        load_jsonl({"path": str(path)}, "sft", "train", 0)
    assert str(path.resolve()) in str(err.value)


def test_hub_offline_is_a_short_data_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds_id = "nonexistent-org/nonexistent-dataset-xyz"
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_hub({"id": ds_id}, "sft", "train", 0)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert ds_id in msg and "dataset.id=/path/to/dir" in msg and "Hub" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
