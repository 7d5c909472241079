"""The reward config: the shipped presets work as composed, components are added and removed with one
override, factories get their options from config, and a bad or missing option is one line naming
its key (issue 15, point 5). Configs are composed for real; the rewards are real functions."""

from __future__ import annotations

import subprocess
import sys
from typing import Sequence

import mlflow
import pytest

from alignx.builtins import register as register_builtins
from alignx.config import compose
from alignx.errors import ConfigError, PluginError
from alignx.registry import Registry, load_plugins
from alignx.rewards import (
    check_reward_config,
    length_penalty,
    read_components,
    reward_factory,
    reward_model_paths,
)
from alignx.rewards.combine import build_reward
from alignx.tasks import BUILTIN_TASKS
from conftest import REPO, fast, run_cli

PROMPTS = ["Review: The film was", "Review: The plot was", "Review: The cast felt"]
# 16, 6 and 100 characters: only the last is over the length penalty's default target (64)
COMPLETIONS = [" great and warm.", " dull.", " " + "very " * 19 + "good"]


def gold(completions: Sequence[str] = COMPLETIONS) -> list[float]:
    return BUILTIN_TASKS["sentiment"]().gold_reward(PROMPTS[: len(completions)], list(completions))


def test_completions_have_the_lengths_the_hand_computations_use():
    assert [len(c) for c in COMPLETIONS] == [16, 6, 100]


# -- the shipped presets -----------------------------------------------------------------------
def test_shipped_mix_is_gold_plus_half_a_length_penalty():
    reward = build_reward(compose(["reward=mix", "dataset=sentiment"]).reward)
    assert reward.names == ["gold", "length_penalty"]
    total, parts = reward.score(PROMPTS, COMPLETIONS)
    # length penalty with its defaults: -max(0, len - 64) / 64 -> 0, 0, -36/64
    assert parts["length_penalty"].tolist() == pytest.approx([0.0, 0.0, -36 / 64])
    assert parts["gold"].tolist() == pytest.approx(gold())
    assert total.tolist() == pytest.approx([gold()[0], gold()[1], gold()[2] - 0.5 * 36 / 64])


def test_the_gold_preset_follows_the_dataset_task():
    reward = build_reward(compose(["dataset=arithmetic"]).reward)
    assert reward.names == ["gold"]
    assert reward(["What is 2+3?"], [" 5"]) == BUILTIN_TASKS["arithmetic"]().gold_reward(["What is 2+3?"], [" 5"])


# -- adding and removing components ------------------------------------------------------------
def test_adding_one_component_changes_the_reward_by_its_weighted_score():
    base = build_reward(compose(["dataset=sentiment"]).reward)(PROMPTS, COMPLETIONS)
    added = build_reward(compose(["dataset=sentiment", "+reward.components.length_penalty.weight=0.25",
                                  "+reward.components.length_penalty.target=10",
                                  "+reward.components.length_penalty.scale=2"]).reward)
    assert added.names == ["gold", "length_penalty"]
    # -max(0, len - 10) / 2 = 0, 0, -45 (x 0.25)
    expected = [b + 0.25 * d for b, d in zip(base, [-(16 - 10) / 2, 0.0, -(100 - 10) / 2])]
    assert added(PROMPTS, COMPLETIONS) == pytest.approx(expected)


def test_an_explicit_name_uses_one_registered_reward_twice():
    reward = build_reward(compose(["reward=mix", "+reward.components.short.name=length_penalty",
                                   "+reward.components.short.target=0", "+reward.components.short.weight=-1"]).reward)
    assert reward.names == ["gold", "length_penalty", "short"]
    _, parts = reward.score(PROMPTS, COMPLETIONS)
    assert parts["short"].tolist() == pytest.approx([-16 / 64, -6 / 64, -100 / 64])


@pytest.mark.parametrize("removal", [["~reward.components.gold"], ["reward.components.gold.weight=0"],
                                     ["reward.components.gold=null"]])
def test_removing_a_component(removal):
    reward = build_reward(compose(["reward=mix", *removal]).reward)
    assert reward.names == ["length_penalty"]
    assert reward(PROMPTS, COMPLETIONS) == pytest.approx([0.0, 0.0, -0.5 * 36 / 64])


def test_a_component_that_is_off_is_not_checked():
    # an rm without a path is fine while its weight is 0
    cfg = compose(["reward=rm", "reward.components.rm.weight=0", "+reward.components.gold.name=sentiment"]).reward
    assert [c.key for c in check_reward_config(cfg, load_plugins())] == ["gold"]


def test_reward_model_paths_reads_the_mapping():
    assert reward_model_paths(compose(["reward=rm", "reward.path=/models/rm"]).reward) == ["/models/rm"]
    assert reward_model_paths(compose(["reward=mix", "+reward.components.judge.name=rm",
                                       "+reward.components.judge.path=/j"]).reward) == ["/j"]
    assert reward_model_paths(compose(["reward=mix"]).reward) == []


# -- options from config -----------------------------------------------------------------------
@reward_factory(help={"word": "the word that earns the bonus"})
def keyword(word: str, bonus: float = 1.0, lowercase: bool = True):
    """A plugin-style reward with options: ``bonus`` per occurrence of ``word``."""
    def score(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [bonus * (c.lower() if lowercase else c).count(word) for c in completions]
    return score


def _with_keyword() -> Registry:
    """alignx's own registrations plus a plugin's factory, as an installed plugin would add it."""
    registry = Registry()
    register_builtins(registry)
    registry.register("reward", "keyword", keyword, provider="a-plugin")
    return registry


def test_a_plugin_factory_gets_its_options_from_config():
    cfg = compose(["dataset=sentiment", "+reward.components.keyword.word=very", "+reward.components.keyword.bonus=0.5",
                   "+reward.components.keyword.weight=2"])
    reward = build_reward(cfg.reward, _with_keyword())
    assert reward.names == ["gold", "keyword"]
    # 2 x 0.5 x count("very"): 0, 0, 19
    assert reward(PROMPTS, COMPLETIONS) == pytest.approx([g + 2 * 0.5 * n for g, n in zip(gold(), [0, 0, 19])])
    assert keyword.signature_text() == "(word=<required>, bonus=1.0, lowercase=true)"


@pytest.mark.parametrize("overrides, message", [
    # a required option left out: the component's own key, with the '+' it needs on the command line
    (["+reward.components.keyword.weight=1"],
     "reward.components.keyword.word is required: component 'keyword' (reward 'keyword') needs option 'word' "
     "(the word that earns the bonus); set +reward.components.keyword.word=<value>"),
    # set to null: the key exists, no '+'
    (["+reward.components.keyword.word=null"],
     "reward.components.keyword.word is required: component 'keyword' (reward 'keyword') needs option 'word' "
     "(the word that earns the bonus); set reward.components.keyword.word=<value>"),
    (["+reward.components.keyword.word=a", "+reward.components.keyword.bonsu=2"],
     "unknown key 'reward.components.keyword.bonsu': reward 'keyword' has no option 'bonsu'. Did you mean "
     "'reward.components.keyword.bonus'? Valid keys under 'reward.components.keyword': name, weight, word, bonus, lowercase"),
    (["+reward.components.keyword.word=a", "+reward.components.keyword.bonus=lots"],
     "reward.components.keyword.bonus='lots' is not a number (option 'bonus' of reward 'keyword')"),
    (["+reward.components.keyword.word=a", "+reward.components.keyword.lowercase=1"],
     "reward.components.keyword.lowercase=1 is not true or false (option 'lowercase' of reward 'keyword')"),
    (["+reward.components.keyword.word=a", "+reward.components.keyword.weight=high"],
     "reward.components.keyword.weight='high' must be a finite number"),
])
def test_a_bad_or_missing_option_is_one_line_naming_its_key(overrides, message):
    cfg = compose(overrides).reward
    for check in (check_reward_config, build_reward):  # before the job (no building) and when building
        with pytest.raises(ConfigError) as err:
            check(cfg, _with_keyword())
        assert str(err.value) == message


@pytest.mark.parametrize("overrides, message", [
    (["reward=mix", "+reward.components.rm.weight=0.5"],
     "reward.components.rm.path is required: component 'rm' (reward 'rm') needs option 'path' (the directory of "
     "a saved objective=rm model); set +reward.components.rm.path=<value>"),
    # reward=rm's shortcut: the error names the key the user sets
    (["reward=rm"], "reward.path is required: component 'rm' (reward 'rm') needs option 'path' (the directory of a "
     "saved objective=rm model); set reward.path=<value>"),
    (["reward=rm", "reward.path=x", "+reward.components.rm.batch_size=2.5"],
     "reward.components.rm.batch_size=2.5 is not an int (option 'batch_size' of reward 'rm')"),
    (["reward=rm", "+reward.batch_size=8"],
     "unknown key 'reward.batch_size': no reward component reads it. A component's option goes under it: "
     "reward.components.<name>.batch_size. Valid keys under 'reward': components, missing_eos_penalty, name, path"),
    (["reward.missing_eos_penalty=low"], "reward.missing_eos_penalty='low' must be a finite number or null (off)"),
    (["reward.components.gold.weight=0"],
     "reward.components has no component with a non-zero weight: add one, e.g. "
     "+reward.components.<registered reward>.weight=1.0 (`alignx plugins` lists the rewards)"),
    (["+reward.components.gold.path=x"],
     "reward.components.gold.path: reward 'sentiment' is a plain reward function and takes no options "
     "(a component takes only name and weight; reward.components.gold gives path)"),
])
def test_builtin_rewards_name_the_key_to_set(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_reward_config(compose(overrides).reward, load_plugins())
    assert str(err.value) == message


@pytest.mark.parametrize("overrides, message", [
    (["reward=mix", "+reward.components.length_penalty.scale=0"],
     "reward.components.length_penalty.scale: scale must be a number > 0, got 0 (reward 'length_penalty')"),
    (["reward=mix", "+reward.components.length_penalty.target=-1"],
     "reward.components.length_penalty.target: target must be an int >= 0, got -1 (reward 'length_penalty')"),
    (["reward=rm", "reward.path=''"],
     "reward.path: path is empty: give the directory of a saved objective=rm model (reward 'rm')"),
])
def test_a_value_the_factory_refuses_is_named_by_its_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_reward(compose(overrides).reward)
    assert str(err.value) == message


def test_an_unknown_reward_is_a_plugin_error_listing_the_registered_ones():
    with pytest.raises(PluginError, match=r"unknown reward 'lenght_penalty'.*Did you mean 'length_penalty'"):
        check_reward_config(compose(["+reward.components.lenght_penalty.weight=1"]).reward, load_plugins())


def test_the_old_list_form_says_what_the_mapping_looks_like():
    with pytest.raises(ConfigError, match=r"^reward.components is a list; it is a mapping of component name"):
        read_components({"components": [{"name": "sentiment"}]})


def test_a_factory_cannot_take_options_named_like_the_reserved_keys():
    with pytest.raises(TypeError, match="cannot be called name or weight"):
        reward_factory(lambda weight: None)


def test_length_penalty_is_a_plain_function_too():
    """A factory is still callable directly, without any config."""
    assert length_penalty(target=2, scale=4.0)(["p", "p"], ["ab", "abcdef"]) == [0.0, -1.0]


def test_the_public_reward_api_imports_without_torch():
    code = "import sys, alignx.rewards; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


# -- a real job ---------------------------------------------------------------------------------
def test_grpo_with_the_shipped_mix_logs_each_component(tmp_path):
    """The shipped mix trains; target=0 makes the length penalty non-zero on an untrained model's
    short samples, so the logged total really is checked against both logged components."""
    from alignx.train import train

    cfg = compose(fast("objective=grpo", "reward=mix", "+reward.components.length_penalty.target=0",
                       "trainer.max_steps=2", "objective.max_new_tokens=6",
                       "objective.group_size=2", "data.batch_size=4", "eval.num_prompts=4", "eval.max_new_tokens=6",
                       "save.model=false", f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"))
    job = train(cfg)
    client = mlflow.tracking.MlflowClient(job.tracking_uri)
    assert client.get_run(job.run_id).info.status == "FINISHED"

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(job.run_id, key), key=lambda m: m.step)]

    total, g, lp = history("reward"), history("reward/gold"), history("reward/length_penalty")
    assert len(total) == len(g) == len(lp) == 2
    assert all(0.0 <= x <= 1.0 for x in g) and all(x < 0.0 for x in lp)
    # the logged total is the weighted sum of the logged component means (missing_eos_penalty is off)
    assert total == pytest.approx([a + 0.5 * b for a, b in zip(g, lp)], abs=1e-5)


def test_the_cli_refuses_a_missing_option_before_any_work(tmp_path):
    proc = run_cli(["objective=grpo", "reward=mix", "+reward.components.rm.weight=0.5", *fast("trainer.max_steps=2"),
                    f"hydra.run.dir={tmp_path / 'run'}", f"outputs_root={tmp_path}"], tmp_path,
                   {"ALIGNX_DISABLE_PLUGIN_AUTOLOAD": "1"})
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if line.startswith("alignx: error:")]
    assert proc.returncode == 2 and "Traceback" not in text, text[-3000:]
    assert errors == ["alignx: error: reward.components.rm.path is required: component 'rm' (reward 'rm') needs "
                      "option 'path' (the directory of a saved objective=rm model); set "
                      "+reward.components.rm.path=<value>"], text[-3000:]
    assert not (tmp_path / "mlflow.db").exists(), "a config error must not create a run"
