"""Prompt templates (the ``template`` config group): exact rendered prompts, seeded exemplars, errors, the cache key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from alignx.config import compose, validate
from alignx.data.cache import cache_key, encoder_code
from alignx.data.rows import encode_split, load_rows
from alignx.data.sources import SplitRows
from alignx.data.templates import STYLES, apply_template
from alignx.errors import ConfigError, DataError
from alignx.models.tokenizer import build_byte_tokenizer
from alignx.objectives.sft import SFT
from alignx.registry import load_plugins

ROWS = [{"prompt": f"Q{i}?", "completion": f" A{i}"} for i in range(4)]


def template(option: str, *overrides: str):
    return compose([f"template={option}", *(f"template.{o}" for o in overrides)]).template


def test_none_is_the_default_and_leaves_rows_alone():
    cfg = compose([])
    assert cfg.template.name == "none"
    rows = {"train": list(ROWS)}
    assert apply_template(rows, cfg.template, 0) == rows


def test_zero_shot_and_chain_of_thought_exact_strings():
    out = apply_template({"train": ROWS}, template("zero_shot"), 0)["train"]
    assert out[1] == {"prompt": "Answer the following.\nQ1?", "completion": " A1", "task_prompt": "Q1?"}
    out = apply_template({"train": ROWS}, template("chain_of_thought", "instruction=Solve."), 0)["train"]
    assert out[0]["prompt"] == "Solve.\nQ0?\nLet's think step by step."


def test_few_shot_exemplars_come_from_train_and_never_from_the_row_itself():
    tcfg = template("few_shot", "k=2", "splits=[train,val]")
    val = [{"prompt": "V?", "completion": " v"}]
    out = apply_template({"train": ROWS, "val": val}, tcfg, 0)
    for row in out["train"]:
        own = row["task_prompt"]
        lines = row["prompt"].split("\n")
        # instruction, two exemplars "Qi? Ai", the prompt
        assert lines[0] == "Answer the following." and lines[-1] == own and len(lines) == 4
        shots = lines[1:3]
        assert len(set(shots)) == 2 and f"{own} A{own[1]}" not in shots
        for shot in shots:
            i = shot[1]
            assert shot == f"Q{i}? A{i}"
    # the exact string for one row, seeded: the same again, and the val row draws from train rows
    assert out["train"][0]["prompt"] == apply_template({"train": ROWS}, tcfg, 0)["train"][0]["prompt"]
    v = out["val"][0]["prompt"].split("\n")
    assert v[0] == "Answer the following." and v[-1] == "V?" and all(s in {f"Q{i}? A{i}" for i in range(4)} for s in v[1:3])
    seeds = {apply_template({"train": ROWS}, tcfg, s)["train"][0]["prompt"] for s in range(10)}
    assert len(seeds) > 1  # the exemplars depend on the seed


def test_few_shot_exact_string_with_one_possible_exemplar():
    rows = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}]
    tcfg = template("few_shot", "k=1", "instruction=Add.", "exemplar='{prompt}{completion}; '")
    out = apply_template({"train": rows}, tcfg, 0)["train"]
    assert [r["prompt"] for r in out] == ["Add.\n3+3=6; 2+2=", "Add.\n2+2=4; 3+3="]


def test_few_shot_demonstrations_of_other_row_kinds():
    pairs = [{"prompt": "a", "chosen": " good a", "rejected": " bad a"}, {"prompt": "b", "chosen": " good b", "rejected": " bad b"}]
    tcfg = template("few_shot", "k=1", "instruction=I")
    assert apply_template({"train": pairs}, tcfg, 0)["train"][0]["prompt"] == "I\nb good b\na"
    ranked = [{"prompt": "a", "completions": [" x", " y"], "ranks": [1, 0]}, {"prompt": "b", "completions": [" p", " q"], "ranks": [0, 1]}]
    assert apply_template({"train": ranked}, tcfg, 0)["train"][1]["prompt"] == "I\na y\nb"
    convo = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
             {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]}]
    out = apply_template({"train": convo}, tcfg, 0)["train"]
    assert out[0]["messages"] == [{"role": "user", "content": "I\nbyeciao\nhi"}, {"role": "assistant", "content": "hello"}]
    assert out[0]["task_prompt"] == "hi" and convo[0]["messages"][0]["content"] == "hi"


def test_styles_mix_per_row_by_weight_and_seed():
    rows = [{"prompt": f"Q{i}?", "completion": f" A{i}"} for i in range(400)]
    tcfg = template("none", "mix={none: 0.25, zero_shot: 0.75}")
    out = apply_template({"train": rows}, tcfg, 0)["train"]
    zero = sum(r["prompt"].startswith("Answer the following.\n") for r in out)
    assert 0.65 * 400 < zero < 0.85 * 400
    # rows drawn "none" are the rows as they were, without a task_prompt column
    assert all(r == rows[i] for i, r in enumerate(out) if not r["prompt"].startswith("Answer"))
    assert apply_template({"train": rows}, tcfg, 0)["train"] == out
    mixed = apply_template({"train": rows}, template("mixed"), 0)["train"]
    few = sum(r["prompt"].count("\n") == 3 for r in mixed)
    assert 0.4 * 400 < few < 0.6 * 400 and sum(r["prompt"].count("\n") == 1 for r in mixed) == 400 - few


def test_the_test_split_is_left_bare_unless_listed():
    rows = {"train": ROWS, "test": [{"prompt": "T?", "completion": " t"}]}
    assert apply_template(rows, template("zero_shot"), 0)["test"][0]["prompt"] == "T?"
    assert apply_template(rows, template("zero_shot", "splits=[train,test]"), 0)["test"][0]["prompt"] == "Answer the following.\nT?"


def test_split_rows_keep_their_locations():
    rows = SplitRows(ROWS, locations=[("f.jsonl", i + 3) for i in range(4)], split="train")
    out = apply_template({"train": rows}, template("zero_shot"), 0)["train"]
    assert isinstance(out, SplitRows) and out.location(2) == ("f.jsonl", 5) and out.split == "train"


@pytest.mark.parametrize("overrides,error,needle", [
    (["mix={zero_shoot: 1.0}"], ConfigError, r"template\.mix\.zero_shoot: unknown template style; valid: none, zero_shot, few_shot, chain_of_thought"),
    (["mix={zero_shot: -1}"], ConfigError, r"template\.mix\.zero_shot must be a number >= 0, got -1"),
    (["mix={zero_shot: 0}"], ConfigError, r"template\.mix must give some style a weight > 0"),
    (["name=fancy"], ConfigError, r"template\.name=fancy is not a template style .* valid styles: none, zero_shot"),
    (["name=few_shot", "k=0"], ConfigError, r"template\.k .* must be >= 1, got 0"),
    (["name=zero_shot", "zero_shot='{instruction} {question}'"], ConfigError, r"template\.zero_shot uses \{question\}; it may use \{instruction\}, \{prompt\}"),
    (["name=zero_shot", "splits=[train,dev]"], ConfigError, r"template\.splits: unknown split 'dev'"),
    (["name=few_shot", "k=4"], DataError, r"template\.k=4 exemplars are asked for, but the train split has only 3 rows"),
])
def test_bad_template_config_names_the_key(overrides, error, needle):
    with pytest.raises(error, match=needle):
        apply_template({"train": ROWS}, template("none", *overrides), 0)


def test_few_shot_on_prompt_only_rows_says_why():
    with pytest.raises(DataError, match=r"template=few_shot \(train split row 1\): few-shot exemplars come from train rows with a completion"):
        apply_template({"train": [{"prompt": "a"}, {"prompt": "b"}]}, template("few_shot"), 0)


def test_unknown_template_option_lists_the_options():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose(["template=fiveshot"])
    for option in STYLES:
        assert option in str(err.value)


def test_job_rows_are_templated_and_the_cache_key_sees_it(tmp_path):
    base = ["dataset=arithmetic", "dataset.n_train=12", "dataset.n_val=4", "dataset.n_test=4"]
    registry = load_plugins()
    keys = {}
    for option in ("none", "zero_shot", "few_shot"):
        cfg = compose([*base, f"template={option}"])
        validate(cfg)
        rows = load_rows(cfg, registry, "sft", "sft")
        tok = build_byte_tokenizer()
        keys[option] = cache_key(rows["train"], tok, encoder_code(SFT), {"data": OmegaConf.to_container(cfg.data)})
        items, _, hit = encode_split(SFT, rows["train"], tok, cfg.data, tmp_path, "train")
        assert not hit  # a new template is never served another template's items
        if option == "zero_shot":
            assert rows["train"][0]["prompt"] == "Answer the following.\n" + rows["train"][0]["task_prompt"]
            assert tok.decode(items[0]["input_ids"], skip_special_tokens=True).startswith("Answer the following.\nWhat is ")
        assert all(r["prompt"].startswith("What is") for r in rows["test"])  # evaluation asks the bare question
    assert len(set(keys.values())) == 3


def test_online_rl_rewards_read_the_task_prompt_under_a_template(tmp_path):
    """GRPO on arithmetic with templated prompts: the policy completes the templated prompt, and the
    gold reward (which parses "What is A+B?") reads the row's own prompt, so the job trains."""
    from alignx.objectives.online import OnlineObjective
    from alignx.train import train

    from tests.conftest import fast

    tok = build_byte_tokenizer()
    data = {"chat_template": False, "truncation": "truncate_prompt", "max_length": 128}
    item, _ = OnlineObjective.encode({"prompt": "Answer the following.\nWhat is 2+3?", "task_prompt": "What is 2+3?"},
                                     tok, data, {})
    assert item["prompt"] == "Answer the following.\nWhat is 2+3?" and item["reward_prompt"] == "What is 2+3?"
    bare, _ = OnlineObjective.encode({"prompt": "What is 2+3?"}, tok, data, {})
    assert bare["reward_prompt"] == "What is 2+3?"

    job = train(compose(fast("objective=grpo", "dataset=arithmetic", "template=zero_shot", "trainer.max_steps=2",
                             "data.batch_size=2", "objective.group_size=2", "objective.max_new_tokens=4",
                             "eval.enabled=false", "tracking=none", f"output_dir={tmp_path / 'job'}",
                             f"outputs_root={tmp_path}")))
    assert "train/reward" in job.metrics or any(k.endswith("reward") for k in job.metrics)
