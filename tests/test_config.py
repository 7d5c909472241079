"""Every config-group option composes; typos fail before any work, listing what is valid."""

from importlib.util import find_spec

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from alignx.config import check_override_keys, compose, config_groups, validate
from alignx.errors import ConfigError

GROUPS = config_groups()
# experiment and hparams_search presets are `# @package _global_`: they have no node of their own
OPTIONS = [(g, o) for g, opts in GROUPS.items() if g not in ("experiment", "hparams_search") for o in opts]


def test_expected_groups_and_options_exist():
    for group, options in {
        "objective": {"sft"},
        "model": {"tiny", "small", "hf"},
        "adapter": {"none", "lora", "dora"},
        "dataset": {"sentiment", "arithmetic", "format", "jsonl", "parquet", "hub"},
        "trainer": {"cpu", "gpu", "ddp"},
        "tracking": {"mlflow", "none"},
    }.items():
        assert options <= set(GROUPS[group]), group
    assert GROUPS["experiment"], "there must be experiment presets"


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    cfg = compose([f"{group}={option}"])
    assert group in cfg
    mandatory = [k for k in cfg[group].keys() if OmegaConf.is_missing(cfg[group], k)]
    if mandatory:  # model=hf, dataset=jsonl|parquet|hub: validation names the value they need
        with pytest.raises(ConfigError, match=rf"^{group}\.{mandatory[0]} is required for {group}={option}: "):
            validate(cfg)
        cfg = compose([f"{group}={option}", *(f"{group}.{k}=/some/path" for k in mandatory)])
    if (group, option) == ("trainer", "deepspeed") and find_spec("deepspeed") is None:
        # an optional extra: without it the preset still composes, and validation says what to install
        with pytest.raises(ConfigError, match=r"pip install 'alignx\[deepspeed\]'"):
            validate(cfg)
    else:
        validate(cfg)
    if "name" in cfg[group]:
        # one concept, one name: the option's name field is the option (hf/hub name their model/dataset)
        if option not in ("hf", "hub"):
            assert cfg[group].name == option


@pytest.mark.parametrize("experiment", GROUPS["experiment"])
def test_experiment_presets_compose(experiment):
    cfg = compose([f"experiment={experiment}"])
    if OmegaConf.is_missing(cfg.model, "name_or_path"):  # presets that start from the user's model (rlhf_*)
        cfg = compose([f"experiment={experiment}", "model.name_or_path=/path/to/sft/model"])
    validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)


def test_dora_is_lora_with_magnitude():
    cfg = compose(["adapter=dora"])
    assert cfg.adapter.use_dora is True and cfg.adapter.r == compose(["adapter=lora"]).adapter.r


def test_unknown_option_lists_choices():
    with pytest.raises(MissingConfigException) as err:
        compose(["model=tinyy"])
    message = str(err.value)
    assert "model/tinyy" in message
    for option in ("tiny", "small", "hf"):
        assert option in message


def test_mistyped_override_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        check_override_keys(["optim.lrr=1e-3"])
    message = str(err.value)
    assert "optim.lrr" in message and "Did you mean 'optim.lr'" in message and "weight_decay" in message


def test_sweep_overrides_are_checked_by_key_only():
    check_override_keys(["optim.lr=1e-3,3e-3", "model=tiny,small", "adapter.r=4", "adapter=lora", "+x.y=1"])
    with pytest.raises(ConfigError, match="trainer.max_stepz"):
        check_override_keys(["trainer.max_stepz=1,2"])


@pytest.mark.parametrize(
    "override,key",
    [("+data.batchsize=3", "data.batchsize"), ("+trainer.max_stepz=3", "trainer.max_stepz"), ("+eval.temp=1", "eval.temp"), ("+lr=1", "lr")],
)
def test_validate_rejects_unknown_keys_from_files(override, key):
    cfg = compose([override])  # '+' forces the key in, as a typo in a YAML file would
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value) and "Valid keys" in str(err.value)


def test_validate_rejects_bad_values():
    with pytest.raises(ConfigError, match="truncation"):
        validate(compose(["data.truncation=cut"]))
    with pytest.raises(ConfigError, match="data"):
        validate(compose(["data.batch_size=abc"]))


def test_trainer_keys_are_read_from_lightnings_source_exactly():
    """The command line checks +trainer.* keys without importing Lightning: the names read from
    Lightning's source with ast are exactly the imported Trainer's arguments."""
    import inspect

    import lightning

    from alignx.config.values import _trainer_args_from_source

    assert _trainer_args_from_source() == set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
