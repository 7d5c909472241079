"""Every bad value is one clear line before any run exists.

Bad values, unknown ``+`` keys of ``_target_`` nodes, unset mandatory values, mistyped group
options and LoRA targets that match nothing each stop the job with one ``alignx: error:`` line
naming the key and what was expected: exit code 2, no traceback, no MLflow run, no cache entry.
The many value checks run in-process through :func:`alignx.config.validate` (what the job calls
first); a handful of representative cases go through the real CLI.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import fields
from pathlib import Path

import inspect

import lightning
import pytest
from mlflow import MlflowClient
from omegaconf import MISSING

from alignx.config.schema import TRAINER_EXTRA_KEYS

from alignx.config import (
    ADAPTER_SCHEMAS,
    MODEL_SCHEMAS,
    SECTIONS,
    ModelSchema,
    TrainerSchema,
    check_group_choices,
    compose,
    validate,
)
from alignx.errors import ConfigError
from alignx.models.adapters import check_target_modules, lora
from alignx.models.loading import build_llama
from conftest import fast, run_cli

# -- the CLI: exit 2, one line, no traceback, nothing created ---------------------------------------

CLI_CASES = {
    "max_steps_not_int": (["trainer.max_steps=abc"], "trainer.max_steps='abc' is not an int"),
    "negative_lr": (["optim.lr=-1"], "optim.lr=-1 is out of range: must be > 0"),
    "zero_batch_size": (["data.batch_size=0"], "data.batch_size=0 is out of range: must be >= 1"),
    "unknown_optimizer_argument": (
        ["+optim.lrr=1e-3"],
        "unknown key 'optim.lrr'. Did you mean 'optim.lr'? Valid keys under 'optim' (arguments of torch.optim.AdamW): ",
    ),
    "mistyped_objective": (
        ["objective=dpoo"],
        "objective=dpoo is not an option of group 'objective'. Did you mean 'dpo'? Options: coh, dapo, distill, dpo, ",
    ),
    "hf_without_path": (["model=hf"], "model.name_or_path is required for model=hf: a hub id or a local directory"),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every CLI case, run as subprocesses a few at a time (each is ~10 s of interpreter start and composition)."""
    roots = {name: tmp_path_factory.mktemp(name) for name in CLI_CASES}

    def run(name: str):
        root = roots[name]
        overrides = CLI_CASES[name][0]
        # FAST keeps a job short should a check not fire; its model.* sizes belong to model=tiny
        args = [a for a in fast(*overrides) if "model=hf" not in overrides or not a.startswith("model.")]
        return run_cli([*args, f"outputs_root={root}", f"hydra.run.dir={root / 'run'}"], cwd=root)

    with ThreadPoolExecutor(max_workers=3) as executor:
        futures = {name: executor.submit(run, name) for name in CLI_CASES}
        return {name: (roots[name], f.result()) for name, f in futures.items()}


def assert_nothing_created(root: Path) -> None:
    """No MLflow run (no store, or a store without runs), no cache entry, no model."""
    db = root / "mlflow.db"
    if db.exists():
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    cache = root / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()], sorted(cache.rglob("*"))
    assert not (root / "run" / "model").exists()


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_value_is_one_line_exit_2_and_creates_nothing(cli_results, case):
    root, proc = cli_results[case]
    expected = CLI_CASES[case][1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("alignx: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"alignx: error: {expected}"), errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert_nothing_created(root)


# -- validate(): types and ranges of every value ----------------------------------------------------

#: overrides -> the exact error line
VALUE_CASES = [
    # trainer
    (["trainer.max_steps=abc"], "trainer.max_steps='abc' is not an int"),
    (["trainer.max_steps=1.5"], "trainer.max_steps=1.5 is not an int"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 would train nothing: set a positive number of steps "
                              "(or trainer.max_steps=-1 with trainer.max_epochs=N)"),
    (["trainer.max_steps=-1"], "trainer.max_steps=-1 trains by epochs, but trainer.max_epochs is null: "
                               "set trainer.max_epochs=N, or a positive trainer.max_steps"),
    (["trainer.max_steps=-5", "trainer.max_epochs=1"], "trainer.max_steps=-5 is out of range: must be >= 1, or -1 with trainer.max_epochs=N"),
    (["trainer.max_steps=-1", "trainer.max_epochs=-1"], "trainer.max_steps=-1 with trainer.max_epochs=-1 would never stop: "
                                                        "set a positive trainer.max_steps or trainer.max_epochs"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range: must be >= 1 (or -1: no limit)"),
    (["trainer.max_epochs=two"], "trainer.max_epochs='two' is not an int or null"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is out of range: must be >= 1"),
    (["trainer.gradient_clip_val=-0.5"], "trainer.gradient_clip_val=-0.5 is out of range: must be >= 0"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is out of range: must be >= 1"),
    (["trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5 is out of range: a fraction must be > 0 and <= 1 (an int counts batches)"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval=0 is out of range: a batch count must be >= 1"),
    (["trainer.limit_val_batches=-1"], "trainer.limit_val_batches=-1 is out of range: a batch count must be >= 0"),
    (["trainer.devices=0"], "trainer.devices=0 is not a device count: must be >= 1, -1 (all), 'auto', or a list of device indices like [0, 1]"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0 is out of range: must be >= 1"),
    (["trainer.deterministic=sometimes"], "trainer.deterministic='sometimes' is not true or false or 'warn' or null"),
    # optim and scheduler
    (["optim.lr=-1"], "optim.lr=-1 is out of range: must be > 0"),
    (["optim.lr=0"], "optim.lr=0 is out of range: must be > 0"),
    (["optim.lr=fast"], "optim.lr='fast' is not a number"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 is out of range: must be >= 0"),
    (["optim.betas=[0.9,1.0]"], "optim.betas[1]=1.0 is out of range: must be >= 0 and < 1"),
    (["optim.betas=[0.9]"], "optim.betas=[0.9] must be a list of 2 values"),
    (["optim.eps=0"], "optim.eps=0 is out of range: must be > 0"),
    (["optim=sgd", "optim.momentum=-0.9"], "optim.momentum=-0.9 is out of range: must be >= 0"),
    (["scheduler.num_warmup_steps=-1"], "scheduler.num_warmup_steps=-1 is out of range: must be >= 0"),
    # data
    (["data.max_length=1"], "data.max_length=1 is out of range: must be >= 2"),
    (["data.batch_size=0"], "data.batch_size=0 is out of range: must be >= 1"),
    (["data.batch_size=abc"], "data.batch_size='abc' is not an int"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0 is out of range: must be >= 1"),
    (["data.num_workers=-1"], "data.num_workers=-1 is out of range: must be >= 0"),
    (["data.cache=maybe"], "data.cache='maybe' is not true or false"),
    # eval
    (["eval.num_prompts=-1"], "eval.num_prompts=-1 is out of range: must be >= 0"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens=0 is out of range: must be >= 1"),
    (["eval.temperature=0"], "eval.temperature=0 is out of range: must be > 0"),
    (["eval.top_p=0"], "eval.top_p=0 is out of range: must be > 0 and <= 1"),
    (["eval.top_p=1.5"], "eval.top_p=1.5 is out of range: must be > 0 and <= 1"),
    (["eval.top_k=-1"], "eval.top_k=-1 is out of range: must be >= 0"),
    (["eval.best_of_n=0"], "eval.best_of_n=0 is out of range: must be >= 1"),
    # save, checkpoint, top level
    (["save.model=yes"], "save.model='yes' is not true or false"),
    (["checkpoint.every_n_steps=0"], "checkpoint.every_n_steps=0 is out of range: must be >= 1"),
    (["seed=abc"], "seed='abc' is not an int"),
    (["seed=-1"], "seed=-1 is out of range: must be >= 0 and <= 4294967295"),
    # alignx's adapter and model options
    (["adapter=lora", "adapter.r=0"], "adapter.r=0 is out of range: must be >= 1"),
    (["adapter=dora", "adapter.dropout=1.0"], "adapter.dropout=1.0 is out of range: must be >= 0 and < 1"),
    (["model.hidden_size=0"], "model.hidden_size=0 is out of range: must be >= 1"),
    (["model.hidden_size=190"], "model.hidden_size=190 must be divisible by model.num_attention_heads=4"),
    (["model=hf", "model.name_or_path=/m", "model.dtype=fp16"], "model.dtype='fp16' is not a valid value. Valid: auto, float32, bfloat16, float16"),
]


@pytest.mark.parametrize("overrides,message", VALUE_CASES, ids=[" ".join(o) for o, _ in VALUE_CASES])
def test_bad_value_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value) == message


@pytest.mark.parametrize(
    "overrides,start",
    [
        (["trainer.precision=bogus"], "trainer.precision='bogus' is not a valid value. Valid: 64, 32, 16, "),
        (["trainer.precision=16-mixd"], "trainer.precision='16-mixd' is not a valid value. Did you mean '16-mixed'? Valid: "),
        (["trainer.accelerator=gpuu"], "trainer.accelerator='gpuu' is not a valid value. Did you mean 'gpu'? Valid: auto, gpu, cpu"),
        (["trainer.strategy=ddpp"], "trainer.strategy='ddpp' is not a valid value. Did you mean 'ddp'? Valid: auto, ddp, "),
        (["data.truncation=cut"], "data.truncation='cut' is not a valid value. Valid: truncate_prompt, truncate_completion, drop, error"),
        (["data.invalid_rows=skip"], "data.invalid_rows='skip' is not a valid value. Valid: "),
    ],
)
def test_choice_values_list_what_is_valid(overrides, start):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value).startswith(start), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["16-mixed", "bf16-mixed", "32-true", "32", "16", "bf16"])
def test_every_lightning_precision_is_accepted(value):
    validate(compose([f"trainer.precision={value}"]))


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.max_steps=-1", "trainer.max_epochs=2"],  # train by epochs
        ["trainer.val_check_interval=0.5"], ["trainer.val_check_interval=10"], ["trainer.devices=auto"],
        ["trainer.gradient_clip_val=null"], ["checkpoint.every_n_steps=5"], ["eval.top_p=1.0", "eval.top_k=50"],
        ["optim.lr=1"], ["+optim.amsgrad=true"], ["+scheduler.num_cycles=1.5"], ["optimized_metric=[val/loss,eval/win_rate]"],
        ["+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging", "+callbacks.swa.swa_lrs=1e-4"],
    ],
)
def test_good_values_pass(overrides):
    validate(compose(overrides))


# -- _target_ nodes: keys are the target's arguments --------------------------------------------------

@pytest.mark.parametrize(
    "overrides,start",
    [
        (["+optim.lrr=1e-3"], "unknown key 'optim.lrr'. Did you mean 'optim.lr'? Valid keys under 'optim' (arguments of torch.optim.AdamW): "),
        (["optim=sgd", "+optim.betas=[0.9,0.99]"], "unknown key 'optim.betas'. Valid keys under 'optim' (arguments of torch.optim.SGD): "),
        (["+scheduler.num_warmup=3"], "unknown key 'scheduler.num_warmup'. Did you mean 'scheduler.num_warmup_steps'? "
                                      "Valid keys under 'scheduler' (arguments of transformers.get_cosine_schedule_with_warmup): "),
        (["+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging", "+callbacks.swa.swa_lr=1e-4"],
         "unknown key 'callbacks.swa.swa_lr'. Did you mean 'callbacks.swa.swa_lrs'?"),
        (["+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging"],
         "callbacks.swa: lightning.pytorch.callbacks.StochasticWeightAveraging needs swa_lrs (+callbacks.swa.swa_lrs=<value>)"),
        (["+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAverage"],
         "callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAverage cannot be imported: 'lightning.pytorch.callbacks' "
         "has no 'StochasticWeightAverage'. Did you mean 'lightning.pytorch.callbacks.StochasticWeightAveraging'?"),
        (["+callbacks.swa.swa_lrs=1e-4"], "callbacks.swa needs a _target_ (the callback's class path): +callbacks.swa._target_=pkg.Class"),
        (["optim._target_=torch.optim.AdamWW"], "optim._target_=torch.optim.AdamWW cannot be imported: 'torch.optim' has no 'AdamWW'. "
                                                "Did you mean 'torch.optim.AdamW'?"),
        (["optim._target_=nonexistent_pkg.Opt"], "optim._target_=nonexistent_pkg.Opt cannot be imported: no module named 'nonexistent_pkg'"),
        (["trainer.strategy={_target_: lightning.pytorch.strategies.SingleDeviceStrategy, devic: cpu}"],
         "unknown key 'trainer.strategy.devic'. Did you mean 'trainer.strategy.device'? "
         "Valid keys under 'trainer.strategy' (arguments of lightning.pytorch.strategies.SingleDeviceStrategy): "),
    ],
)
def test_target_node_keys_are_checked_against_the_signature(overrides, start):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value).startswith(start), str(err.value)
    assert "\n" not in str(err.value)


def test_target_taking_kwargs_accepts_any_key():
    # FSDPStrategy passes **kwargs on to torch's FSDP: nothing to check the key against
    validate(compose(["trainer=fsdp", "+trainer.strategy.limit_all_gathers=true"]))


# -- mandatory values ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model=hf"], "model.name_or_path is required for model=hf: a hub id or a local directory"),
        (["experiment=rlhf_ppo"], "model.name_or_path is required for model=hf: a hub id or a local directory"),
        (["dataset=jsonl"], "dataset.path is required for dataset=jsonl: the path of the training file"),
        (["dataset=hub"], "dataset.id is required for dataset=hub: a Hugging Face Hub dataset id or a local directory laid out like one"),
        (["+objective.extra=???"], "objective.extra is required for objective=sft: set objective.extra=<value>"),
    ],
)
def test_mandatory_value_left_unset_is_named(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value) == message


# -- mistyped group options (before Hydra composes) ------------------------------------------------

@pytest.mark.parametrize(
    "overrides,start",
    [
        (["objective=dpoo"], "objective=dpoo is not an option of group 'objective'. Did you mean 'dpo'? Options: coh, dapo, distill, dpo, gkd, grpo, gspo, kto, online_dpo, ppo, prm, pro, reinforce_pp, rloo, rm, rrhf, rwr, sft"),
        (["model=tinyy"], "model=tinyy is not an option of group 'model'. Did you mean 'tiny'? Options: hf, small, tiny"),
        (["+adapter=loraa"], "adapter=loraa is not an option of group 'adapter'. Did you mean 'lora'? Options: dora, lora, none"),
        (["adapter@extra=qlora"], "adapter=qlora is not an option of group 'adapter'. Did you mean 'lora'?"),
        (["objective=dpo,ktoo"], "objective=ktoo is not an option of group 'objective'. Did you mean 'kto'?"),
        (["experiment=quickstrat"], "experiment=quickstrat is not an option of group 'experiment'. Did you mean 'quickstart'?"),
        (["hydra/launcher=basik"], "hydra/launcher=basik is not an option of group 'hydra/launcher'. Did you mean 'basic'? Options: "),
    ],
)
def test_mistyped_group_option_is_one_line_with_a_suggestion(overrides, start):
    with pytest.raises(ConfigError) as err:
        check_group_choices(overrides)
    assert str(err.value).startswith(start), str(err.value)


def test_valid_group_choices_pass():
    check_group_choices(["objective=dpo", "+model=tiny", "adapter=lora,dora", "objective=glob(*)", "experiment=null",
                         "~experiment", "objective.beta=0.1", "optim.lr=1e-3", "hydra/launcher=basic", "hydra.run.dir=x"])


# -- LoRA targets that match nothing ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    cfg = compose(["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
                   "model.num_attention_heads=2", "model.num_key_value_heads=2"])
    return build_llama(cfg.model)[0]


@pytest.mark.parametrize(
    "targets,unmatched",
    [(["q_proj", "v_prj"], "'v_prj'"), (["query", "value"], "'query', 'value'"), (".*attention.*", "'.*attention.*'")],
)
def test_unmatched_lora_targets_name_the_patterns_and_the_layers(tiny_model, targets, unmatched):
    with pytest.raises(ConfigError) as err:
        check_target_modules(tiny_model, targets)
    assert str(err.value) == (
        f"adapter.target_modules: {unmatched} match no layer of this LlamaForCausalLM. Its linear layers: "
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head (or adapter.target_modules=all-linear)"
    )


def test_invalid_target_regex_is_a_config_error(tiny_model):
    with pytest.raises(ConfigError, match=r"adapter.target_modules='\(q_proj' is not a valid regular expression"):
        check_target_modules(tiny_model, "(q_proj")


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ".*self_attn\\.(q|v)_proj", "all-linear", ["model.layers.0.mlp.up_proj"]])
def test_matching_lora_targets_adapt_those_layers(tiny_model, targets):
    import copy

    adapter = compose(["adapter=lora"]).adapter
    adapter.target_modules = targets
    wrapped = lora(copy.deepcopy(tiny_model), adapter)
    assert any("lora_A" in name for name, _ in wrapped.named_parameters())


def test_unmatched_lora_targets_stop_the_job_before_any_run_or_cache(tmp_path):
    from alignx.train import train

    cfg = compose([*fast("trainer.max_steps=2", "eval.enabled=false"), "adapter=lora", "adapter.target_modules=[q_proj,v_prj]",
                   f"outputs_root={tmp_path}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"^adapter.target_modules: 'v_prj' match no layer of this LlamaForCausalLM\. Its linear layers: q_proj, "):
        train(cfg)
    assert_nothing_created(tmp_path)
    assert not (tmp_path / "mlflow.db").exists()
    # the base model saved before the adapter is applied is removed with the failed adapter
    assert not (tmp_path / "run" / "base").exists()


# -- the schemas: types and ranges only; every default lives in the YAML ----------------------------

SCHEMAS = sorted({s for s, _ in SECTIONS.values()} | set(ADAPTER_SCHEMAS.values()) | set(MODEL_SCHEMAS.values()) | {ModelSchema},
                 key=lambda s: s.__name__)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_schemas_hold_no_default_values(schema):
    for f in fields(schema):
        # MISSING ('???'): the field declares a type and a range; its value comes from the YAML
        assert f.default == MISSING and f.default_factory is NO_DEFAULT, f"{schema.__name__}.{f.name} has a default"


def test_closed_sections_match_the_yaml_key_for_key():
    cfg = compose([])
    for section, (schema, closed) in SECTIONS.items():
        if closed:
            assert set(cfg[section].keys()) == {f.name for f in fields(schema)}, section


def test_every_trainer_preset_key_is_typed_and_a_trainer_argument():
    """...or one of alignx's own trainer keys (trainer.compile), which the job reads and does not pass on."""
    trainer_args = set(inspect.signature(lightning.Trainer.__init__).parameters)
    typed = {f.name for f in fields(TrainerSchema)}
    assert typed <= trainer_args | TRAINER_EXTRA_KEYS and "compile" not in trainer_args
    for preset in ("cpu", "gpu", "ddp", "fsdp", "deepspeed"):
        assert set(compose([f"trainer={preset}"]).trainer.keys()) <= typed, preset
