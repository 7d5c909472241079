"""The data-side contract for plugin objectives and row formats (docs/data.md).

* the tokenised-data cache key covers the encoder's code: a plugin whose ``encode`` (or a helper
  in its package) is edited between two runs is encoded again, an unchanged one hits, and
  ``encode_version`` is part of the key;
* ``encode`` sees the encoding settings and exactly the objective keys it declares
  (``encode_keys``), which enter the key;
* items come back through JSON whether encoded or cached; values JSON cannot hold, bad statuses
  and items without ``input_ids`` (under length bucketing) are errors naming who and where;
* the pair/ranked/SFT encoders and collators and ``IGNORE_INDEX`` are public in ``alignx.data``;
* a row format rejects a row naming a column with ``FormatError``.

The tiny model's tokenizer maps a character to its byte value minus 30 ("a" -> 67, "Q" -> 51,
":" -> 28), with BOS 1, EOS 2 and padding 0, so the token ids below are checked by hand.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys

import pytest
import torch
from conftest import FAST, write_jsonl
from omegaconf import OmegaConf

from alignx.config import compose
from alignx.data.batching import IGNORE_INDEX as BATCHING_IGNORE_INDEX
from alignx.data.batching import collate_pairs, collate_ranked, collate_sft
from alignx.data.formats import FormatError, collect_invalid_rows
from alignx.data.rows import encode_split
from alignx.data.sources import SplitRows, load_jsonl
from alignx.data.tokenize import IGNORE_INDEX, encode_pair, encode_ranked, encode_sft_row
from alignx.errors import ConfigError, DataError, PluginError
from alignx.models.loading import build_llama
from alignx.objectives import Objective
from alignx.objectives.dpo import DPO
from alignx.objectives.rm import RewardModel
from alignx.registry import load_plugins


def ids(text: str) -> list[int]:
    """The tiny tokenizer's ids of ``text`` (no special tokens), by hand: byte value - 30."""
    return [b - 30 for b in text.encode()]


@pytest.fixture(scope="module")
def job_cfg():
    return compose(FAST)


@pytest.fixture(scope="module")
def tok(job_cfg):
    return build_llama(job_cfg.model)[1]


# -- the cache key covers the encoder's code ----------------------------------------------------------

PLUGIN = '''\
"""A plugin objective on ranked rows, as a third party writes it."""
from alignx.data.batching import collate_ranked
from alignx.data.tokenize import encode_ranked
from alignx.objectives import Objective
from alignx_toyrank.marks import MARK
from functools import partial


class ToyRanked(Objective):
    name = "toy_ranked"
    data_kind = "ranked"
    config_keys = frozenset()

    @classmethod
    def encode(cls, row, tokenizer, data_cfg, objective_cfg):
        item, status = encode_ranked(row, tokenizer, data_cfg)
        if item is not None:
            item["mark"] = MARK
        return item, status

    @classmethod
    def collate_fn(cls, tokenizer):
        return partial(collate_ranked, pad_id=tokenizer.pad_token_id)
'''

RANKED_ROWS = [{"prompt": "Q:", "completions": ["ab", "c"], "ranks": [1, 0]}]
#: RANKED_ROWS[0] encoded: BOS + "Q:" + completion + EOS per completion; input_ids is the longest
RANKED_ITEM = {"seqs": [[1, *ids("Q:ab"), 2], [1, *ids("Q:c"), 2]], "ranks": [1.0, 0.0], "input_ids": [1, *ids("Q:ab"), 2]}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A plugin package ``alignx_toyrank`` (objective in __init__, a helper module beside it) on sys.path.

    Bytecode is not written, so each fresh import compiles the files as they are now (a run after
    an edit); the package's modules are dropped from sys.modules at the end.
    """
    root = tmp_path / "site"
    (root / "alignx_toyrank").mkdir(parents=True)
    (root / "alignx_toyrank" / "__init__.py").write_text(PLUGIN)
    (root / "alignx_toyrank" / "marks.py").write_text('MARK = "a"\n')
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    yield root
    for name in [n for n in sys.modules if n in ("alignx_toyrank", "toyhelper") or n.startswith("alignx_toyrank.")]:
        del sys.modules[name]


def fresh_import(root):
    """The plugin's objective class as a new run would import it (from the files as they are now)."""
    for name in [n for n in sys.modules if n == "alignx_toyrank" or n.startswith("alignx_toyrank.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    return importlib.import_module("alignx_toyrank").ToyRanked


def run(objective_cls, tok, job_cfg, cache, caplog):
    """One run's encoding of the train split through the cache: (items, hit, the hit/miss log line)."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="alignx"):
        items, _, hit = encode_split(objective_cls, SplitRows(RANKED_ROWS, split="train"), tok, job_cfg.data, cache,
                                     "train", objective_cfg=OmegaConf.create({}))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tokenised-data cache")]
    assert len(lines) == 2  # the INFO line, and the DEBUG line (alignx -v) saying what the key covers
    return items, hit, " ".join(lines)


def test_an_edited_encoder_is_encoded_again_and_an_unchanged_one_hits(plugin_dir, tok, job_cfg, tmp_path, caplog):
    cache = tmp_path / "cache"
    items, hit, line = run(fresh_import(plugin_dir), tok, job_cfg, cache, caplog)
    assert not hit and items == [{**RANKED_ITEM, "mark": "a"}]
    assert line.startswith("tokenised-data cache miss")
    # the next run, nothing edited: served from the cache, and the debug line says what the key covers
    items, hit, line = run(fresh_import(plugin_dir), tok, job_cfg, cache, caplog)
    assert hit and items == [{**RANKED_ITEM, "mark": "a"}]
    assert line.startswith("tokenised-data cache hit") and line.endswith(
        "covers the rows, the tokenizer, data.max_length, data.truncation, data.completion_only_loss, "
        "data.chat_template and the code of alignx, alignx_toyrank (encode_version 1)"
    )
    # encode edited: encoded again, and the items are the edited encoder's
    init = plugin_dir / "alignx_toyrank" / "__init__.py"
    init.write_text(PLUGIN.replace('item["mark"] = MARK', 'item["mark"] = MARK + "-edited"'))
    items, hit, _ = run(fresh_import(plugin_dir), tok, job_cfg, cache, caplog)
    assert not hit and items == [{**RANKED_ITEM, "mark": "a-edited"}]
    # a helper in another module of the plugin's package edited: the package is covered too
    (plugin_dir / "alignx_toyrank" / "marks.py").write_text('MARK = "bb"\n')
    items, hit, _ = run(fresh_import(plugin_dir), tok, job_cfg, cache, caplog)
    assert not hit and items == [{**RANKED_ITEM, "mark": "bb-edited"}]
    # back to the first version: its entry is still there
    init.write_text(PLUGIN)
    (plugin_dir / "alignx_toyrank" / "marks.py").write_text('MARK = "a"\n')
    items, hit, _ = run(fresh_import(plugin_dir), tok, job_cfg, cache, caplog)
    assert hit and items == [{**RANKED_ITEM, "mark": "a"}]
    assert len(list(cache.glob("*.json"))) == 3


def test_encode_version_is_part_of_the_key_for_code_outside_the_package(plugin_dir, tok, job_cfg, tmp_path, caplog, monkeypatch):
    """Code outside the objective's package is not read (here: a top-level helper module), so
    editing it alone still hits; bumping ``encode_version`` is how its author says it changed."""
    (plugin_dir / "toyhelper.py").write_text('MARK = "x"\n')
    (plugin_dir / "alignx_toyrank" / "marks.py").write_text("from toyhelper import MARK\n")
    cache = tmp_path / "cache"
    cls = fresh_import(plugin_dir)
    assert run(cls, tok, job_cfg, cache, caplog)[:2] == ([{**RANKED_ITEM, "mark": "x"}], False)
    (plugin_dir / "toyhelper.py").write_text('MARK = "yy"\n')
    del sys.modules["toyhelper"]
    cls = fresh_import(plugin_dir)
    assert run(cls, tok, job_cfg, cache, caplog)[:2] == ([{**RANKED_ITEM, "mark": "x"}], True)  # the documented limit
    monkeypatch.setattr(cls, "encode_version", "2")
    items, hit, line = run(cls, tok, job_cfg, cache, caplog)
    assert (items, hit) == ([{**RANKED_ITEM, "mark": "yy"}], False)
    assert "(encode_version 2)" in line


# -- what encode sees --------------------------------------------------------------------------------


class Prefixed(Objective):
    """SFT on rows whose prompt gets ``objective.prefix`` prepended; ``objective.weight`` is not read by encode."""

    name = "prefixed"
    config_keys = frozenset({"prefix", "weight"})
    encode_keys = frozenset({"prefix"})
    seen: list = []

    @classmethod
    def encode(cls, row, tokenizer, data_cfg, objective_cfg):
        cls.seen.append((data_cfg, objective_cfg))
        return super().encode({**row, "prompt": objective_cfg["prefix"] + row["prompt"]}, tokenizer, data_cfg, objective_cfg)


def test_encode_sees_the_encoding_settings_and_its_declared_objective_keys(tok, job_cfg, tmp_path):
    rows = SplitRows([{"prompt": "Q:", "completion": "ab"}], split="train")
    cache = tmp_path / "cache"
    Prefixed.seen.clear()
    node = OmegaConf.create({"name": "prefixed", "prefix": "P", "weight": 1.0})
    items, _, hit = encode_split(Prefixed, rows, tok, job_cfg.data, cache, "train", objective_cfg=node)
    # BOS + "PQ:" masked out of the labels, then "ab" + EOS
    assert not hit and items == [{"input_ids": [1, *ids("PQ:ab"), 2], "labels": [IGNORE_INDEX] * 4 + [*ids("ab"), 2]}]
    data_cfg, objective_cfg = Prefixed.seen[0]
    assert data_cfg == {"max_length": 128, "truncation": "truncate_prompt", "completion_only_loss": True, "chat_template": False}
    assert objective_cfg == {"prefix": "P"} and type(objective_cfg) is dict and type(data_cfg) is dict
    # a key encode does not read shares the entry; one it reads does not
    node.weight = 2.0
    assert encode_split(Prefixed, rows, tok, job_cfg.data, cache, "train", objective_cfg=node)[2] is True
    node.prefix = "R"
    items, _, hit = encode_split(Prefixed, rows, tok, job_cfg.data, cache, "train", objective_cfg=node)
    assert not hit and items[0]["input_ids"] == [1, *ids("RQ:ab"), 2]
    with pytest.raises(ConfigError, match=r"^objective.prefix must be set: objective 'prefixed' lists it in encode_keys"):
        encode_split(Prefixed, rows, tok, job_cfg.data, cache, "train", objective_cfg={"weight": 1.0})


# -- what items are ----------------------------------------------------------------------------------


class Tupled(Objective):
    """Returns tuples and an int-keyed dict, which JSON stores as lists and string keys."""

    name = "tupled"

    @classmethod
    def encode(cls, row, tokenizer, data_cfg, objective_cfg):
        if row["prompt"] == "tensor":
            return {"input_ids": [1], "weights": {"w": torch.tensor([0.5])}}, "kept"
        if row["prompt"] == "status":
            return {"input_ids": [1]}, "ok"
        return {"input_ids": (1, 2, 3), "spans": {0: (1, 2)}, "score": 0.5}, "kept"


def test_items_have_the_same_types_encoded_or_cached(tok, job_cfg, tmp_path):
    rows = SplitRows([{"prompt": "p", "completion": "c"}], split="train")
    plain = [{"input_ids": [1, 2, 3], "spans": {"0": [1, 2]}, "score": 0.5}]
    uncached = encode_split(Tupled, rows, tok, job_cfg.data)[0]
    missed, _, miss = encode_split(Tupled, rows, tok, job_cfg.data, tmp_path)
    hit_items, _, hit = encode_split(Tupled, rows, tok, job_cfg.data, tmp_path)
    assert (miss, hit) == (False, True)
    for items in (uncached, missed, hit_items):
        assert items == plain and type(items[0]["input_ids"]) is list and type(items[0]["spans"]["0"]) is list


@pytest.mark.parametrize("prompt, message", [
    ("tensor", "objective 'tupled' encoded item['weights']['w'] as a torch.Tensor; items are stored as JSON"),
    ("status", "the encode of objective 'tupled' returned (dict, 'ok'); it returns (item, 'kept' | 'truncated') or (None, 'dropped')"),
])
def test_a_bad_item_names_the_file_row_and_what_is_wrong(tok, job_cfg, tmp_path, prompt, message):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "fine", "completion": "c"}, {"prompt": prompt, "completion": "c"}])
    rows = load_jsonl({"path": str(path)}, "sft", "train", 0)
    with pytest.raises(DataError) as err:
        encode_split(Tupled, rows, tok, job_cfg.data, tmp_path / "cache", "train")
    assert str(err.value).startswith(f"{path}, row 2: {message}")
    assert not list((tmp_path / "cache").glob("*.json"))  # nothing half-right was stored


class NoIds(Objective):
    """Items without ``input_ids``; its collator builds the batch from ``tokens``."""

    name = "no_ids"

    @classmethod
    def encode(cls, row, tokenizer, data_cfg, objective_cfg):
        return {"tokens": ids(row["completion"]), "n": len(row["completion"])}, "kept"

    @classmethod
    def collate_fn(cls, tokenizer):
        return lambda items: collate_sft([{"input_ids": it["tokens"], "labels": it["tokens"]} for it in items], 0)


def test_items_without_input_ids_are_named_under_length_bucketing(tok, job_cfg):
    rows = [{"prompt": "", "completion": c} for c in ("a", "bcd", "ef")]
    items = encode_split(NoIds, rows, tok, job_cfg.data)[0]
    with pytest.raises(DataError) as err:
        NoIds.datamodule(items, items[:1], tok, job_cfg)
    assert str(err.value) == (
        "objective 'no_ids': encoded item 1 has no 'input_ids' (its keys: ['n', 'tokens']); data.length_bucketing=true "
        "batches items by len(item['input_ids']). Return 'input_ids' from encode (a token-id list as long as the item, "
        "e.g. its longest sequence) or set data.length_bucketing=false"
    )
    # without bucketing nothing reads it: every item is served once per epoch
    cfg = OmegaConf.merge(job_cfg, {"data": {"length_bucketing": False, "batch_size": 2}})
    batches = list(NoIds.datamodule(items, items[:1], tok, cfg).train_dataloader())
    assert sorted(len(b["input_ids"]) for b in batches) == [1, 2]
    served = sorted(int(n) for b in batches for n in b["attention_mask"].sum(1))
    assert served == [1, 2, 3]


# -- the public building blocks ------------------------------------------------------------------------


def test_ranked_pair_and_sft_blocks_are_public_and_the_builtins_use_them(tok, job_cfg):
    assert IGNORE_INDEX == BATCHING_IGNORE_INDEX == -100
    row = {"prompt": "Q:", "completions": ["ab", "c", "def"], "ranks": [1, 0, 2]}
    item, status = encode_ranked(row, tok, job_cfg.data)
    assert status == "kept" and item["ranks"] == [1.0, 0.0, 2.0] and item["input_ids"] == [1, *ids("Q:def"), 2]
    assert RewardModel.encode(row, tok, job_cfg.data, {}) == (item, status)
    batch = collate_ranked([item, encode_ranked({"prompt": "", "chosen": "x", "rejected": "y", "margin": 2.0}, tok, job_cfg.data)[0]], 0)
    # item 0: response 1 (rank 0) beats 0 and 2, response 0 beats 2; item 1 (responses 3, 4): 3 beats 4
    assert sorted(zip(batch["better"].tolist(), batch["worse"].tolist(), batch["group"].tolist())) == [
        (0, 2, 0), (1, 0, 0), (1, 2, 0), (3, 4, 1),
    ]
    assert batch["margin"].tolist() == [0.0, 0.0, 0.0, 2.0] and batch["input_ids"].shape == (5, 7)
    assert RewardModel.collate_fn(tok).func is collate_ranked
    pair = encode_pair({"prompt": "Q:", "chosen": "ab", "rejected": "c"}, tok, job_cfg.data)[0]
    assert pair == {
        "chosen_input_ids": [1, *ids("Q:ab"), 2], "chosen_labels": [IGNORE_INDEX] * 3 + [*ids("ab"), 2],
        "rejected_input_ids": [1, *ids("Q:c"), 2], "rejected_labels": [IGNORE_INDEX] * 3 + [*ids("c"), 2],
    }
    assert DPO.encode({"prompt": "Q:", "chosen": "ab", "rejected": "c"}, tok, job_cfg.data, {})[0] == {**pair, "input_ids": pair["chosen_input_ids"]}
    batch = collate_pairs([pair], 0)
    assert batch["labels"].tolist() == [pair["chosen_labels"], pair["rejected_labels"] + [IGNORE_INDEX]]
    assert DPO.collate_fn(tok).func is collate_pairs
    sft, _ = encode_sft_row({"prompt": "Q:", "completion": "ab"}, tok, max_length=8, truncation="truncate_prompt",
                            completion_only=True, chat_template=False)
    assert sft == {"input_ids": [1, *ids("Q:ab"), 2], "labels": [IGNORE_INDEX] * 3 + [*ids("ab"), 2]}


def test_the_data_package_and_its_row_modules_import_without_torch():
    code = "import sys, alignx.data, alignx.data.formats, alignx.data.sources; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- row formats ----------------------------------------------------------------------------------------


def scored(row, cfg):
    """A plugin-style row format: ``q``/``a`` columns, and a numeric ``score`` it checks."""
    if isinstance(row.get("score"), bool) or not isinstance(row.get("score"), (int, float)):
        raise FormatError(f"expected a number, got {row.get('score')!r}", column="score", reason="bad score")
    return {"prompt": row["q"], "completion": row["a"]}


def one_argument(row):
    return row


def register_format(name, fn):
    registry = load_plugins()
    if ("format", name) not in registry:  # the registry is process-wide
        registry.register("format", name, fn)


def test_a_format_names_the_column_of_a_row_it_rejects(tmp_path):
    register_format("contract_scored", scored)
    path = write_jsonl(tmp_path / "scored.jsonl", [
        {"q": "1+1?", "a": "2", "score": 3},
        {"q": "2+2?", "a": "4", "score": "high"},
        {"q": "3+3?", "score": 1},
    ])
    cfg = {"path": str(path), "format": "contract_scored"}
    with pytest.raises(DataError) as err:
        load_jsonl(cfg, "sft", "train", 0)
    assert str(err.value) == f"{path}, row 2, column 'score': dataset.format=contract_scored: expected a number, got 'high'"
    with collect_invalid_rows("drop") as invalid:
        invalid.split = "train"
        assert load_jsonl(cfg, "sft", "train", 0) == [{"prompt": "1+1?", "completion": "2"}]
    # FormatError's reason counts its rows; a KeyError names the missing column
    assert invalid.reasons("train") == {"bad score": 1, "format 'contract_scored' failed": 1}
    assert [d.column for d in invalid.dropped["train"]] == ["score", "a"]


def test_a_format_with_the_wrong_signature_is_one_error_before_any_row(tmp_path):
    register_format("contract_one_argument", one_argument)
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "p", "completion": "c"}])
    with collect_invalid_rows("drop"):  # not one dropped row per row: the format itself is wrong
        with pytest.raises(PluginError, match=r"^dataset.format=contract_one_argument: the registered row format takes "
                                              r"\(row\); a row format takes \(raw row: dict, dataset cfg\)"):
            load_jsonl({"path": str(path), "format": "contract_one_argument"}, "sft", "train", 0)

