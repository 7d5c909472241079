"""The ``alignx`` command end to end: Hydra help, ``--cfg job``, a real run and its outputs,
``train`` vs bare, multirun, and the error messages for unknown options and mistyped keys.

Every test runs the installed console script in a subprocess, from a temp working directory,
with every output path pointed into a temp dir.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import Future
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import fast, require_example_plugin, run_cli, start_background_fixtures, sweep_runs

NO_AUTOLOAD_ENV = {"ALIGNX_DISABLE_PLUGIN_AUTOLOAD": None, "ALIGNX_PLUGINS": None}
TRAINER_KEYS = ("accelerator", "devices", "max_epochs", "max_steps", "precision")


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def alignx(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(args, cwd, NO_AUTOLOAD_ENV)


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


# -- slow runs, started together at module setup (see start_background_fixtures) -------------


@pytest.fixture(scope="module")
def bg_train(pool, tmp_path_factory) -> tuple[Future, Path]:
    """``alignx train`` with MLflow tracking into a temp outputs_root."""
    tmp = tmp_path_factory.mktemp("train")
    args = ["train", *fast(), f"hydra.run.dir={tmp / 'run'}", f"outputs_root={tmp}"]
    return pool.submit(alignx, args, tmp), tmp


@pytest.fixture(scope="module")
def bg_multirun(pool, tmp_path_factory) -> tuple[Future, Path]:
    """Bare ``alignx -m`` with Hydra's basic (sequential, in-process) launcher."""
    tmp = tmp_path_factory.mktemp("multirun")
    args = ["-m", *fast("data.batch_size=8,16", "tracking=none"), f"hydra.sweep.dir={tmp / 'sw'}", f"outputs_root={tmp}"]
    return pool.submit(alignx, args, tmp), tmp


@pytest.fixture(scope="module")
def bg_experiment_typo(pool, tmp_path_factory) -> tuple[Future, Path]:
    """An experiment file (on an extra search path) that sets the mistyped key data.batchsize."""
    tmp = tmp_path_factory.mktemp("experiment")
    conf = tmp / "myconf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\ndata:\n  batchsize: 3\n")
    args = [f"hydra.searchpath=[file://{conf}]", "experiment=typo", *fast("tracking=none"),
            f"hydra.run.dir={tmp / 'run'}", f"outputs_root={tmp}"]
    return pool.submit(alignx, args, tmp), tmp


@pytest.fixture(scope="module", autouse=True)
def _start_slow_runs_early(request: pytest.FixtureRequest) -> None:
    start_background_fixtures(request, ["bg_multirun", "bg_train", "bg_experiment_typo"])


# -- help and --cfg --------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [[], ["train"]], ids=["bare", "train"])
def test_help_lists_config_groups(prefix: list[str], tmp_path: Path):
    require_example_plugin()
    proc = alignx([*prefix, "--help"], tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "== Configuration groups ==" in proc.stdout, explain(proc)
    groups = dict(
        (m.group(1), m.group(2).split(", ")) for m in re.finditer(r"^(\w+): (\w[\w, ]*)$", proc.stdout, re.M)
    )
    assert groups.get("model") == ["hf", "small", "tiny"], explain(proc)
    assert {"sft", "sft_ls"} <= set(groups.get("objective", ())), "plugin config options must be listed too"
    assert {"none", "lora", "dora"} <= set(groups.get("adapter", ()))
    assert {"sentiment", "arithmetic", "jsonl", "parquet"} <= set(groups.get("dataset", ()))
    for group in ("optim", "scheduler", "trainer", "tracking", "eval", "experiment"):
        assert group in groups, f"group '{group}' missing from --help"
    assert "== Config ==" in proc.stdout and "max_steps:" in proc.stdout
    assert list(tmp_path.iterdir()) == [], "--help must not write anything"


def test_cfg_job_prints_config_and_does_nothing_else(tmp_path: Path):
    run = tmp_path / "run"
    proc = alignx(["--cfg", "job", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, explain(proc)
    cfg = OmegaConf.create(proc.stdout)
    assert "objective:" in proc.stdout and "name: sft" in proc.stdout
    assert cfg.objective.name == "sft" and cfg.model.name == "tiny"
    assert "hydra" not in cfg, "--cfg job shows the job config, not Hydra's"
    assert "alignx: results" not in output(proc), "no training may run"
    assert list(tmp_path.iterdir()) == [], "--cfg job must write no outputs"


def test_cfg_job_applies_group_choice(tmp_path: Path):
    proc = alignx(["--cfg", "job", "model=small"], tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "hidden_size: 512" in proc.stdout
    assert OmegaConf.create(proc.stdout).model.hidden_size == 512
    assert list(tmp_path.iterdir()) == []


def test_bare_alignx_and_alignx_train_are_the_same_command(tmp_path: Path):
    require_example_plugin()
    overrides = ["--cfg", "job", "objective=sft_ls", "model=small", "data.batch_size=7", "trainer.max_steps=3"]
    bare = alignx(overrides, tmp_path)
    sub = alignx(["train", *overrides], tmp_path)
    assert bare.returncode == 0 and sub.returncode == 0, explain(bare) + explain(sub)
    assert bare.stdout == sub.stdout
    cfg = OmegaConf.create(bare.stdout)
    assert (cfg.objective.name, cfg.model.hidden_size, cfg.data.batch_size, cfg.trainer.max_steps) == ("sft_ls", 512, 7, 3)


# -- real runs -------------------------------------------------------------------------------


def test_train_writes_model_config_and_hydra_dir_and_prints_mlflow_ui(bg_train: tuple[Future, Path]):
    future, tmp = bg_train
    proc = future.result()
    assert proc.returncode == 0, explain(proc)
    run = tmp / "run"
    assert (run / "model" / "config.json").is_file()
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.trainer.max_steps == 6 and saved.objective.name == "sft"
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (run / ".hydra" / name).is_file(), f".hydra/{name} missing"
    assert "trainer.max_steps=6" in (run / ".hydra" / "overrides.yaml").read_text()
    match = re.search(r"mlflow ui --backend-store-uri sqlite:///(\S+)", proc.stdout)
    assert match, "the summary must say how to open MLflow\n" + explain(proc)
    db = Path(match.group(1))
    assert db.is_absolute(), f"the store path must be absolute, got {match.group(1)!r}"
    assert db == (tmp / "mlflow.db").resolve() and db.is_file()
    assert not (tmp / "outputs").exists()
    # a single job is one top-level run: no sweep parent, no parent tag
    parents, children = sweep_runs(tmp)
    assert parents == [] and children == []


def test_multirun_with_basic_launcher_runs_every_job(bg_multirun: tuple[Future, Path]):
    future, tmp = bg_multirun
    proc = future.result()
    assert proc.returncode == 0, explain(proc)
    jobs = job_dirs(tmp / "sw")
    assert [j.name for j in jobs] == ["0", "1"], explain(proc)
    for job in jobs:
        assert (job / "model" / "config.json").is_file(), f"{job} saved no model"
    assert [OmegaConf.load(j / "config.yaml").data.batch_size for j in jobs] == [8, 16]


# -- errors ----------------------------------------------------------------------------------


def test_unknown_group_option_lists_available_options(tmp_path: Path):
    run = tmp_path / "run"
    proc = alignx(["model=tinyy", *fast("tracking=none"), f"hydra.run.dir={run}", f"outputs_root={tmp_path}"], tmp_path)
    assert proc.returncode != 0, explain(proc)
    text = output(proc)
    # alignx's own line, before Hydra: the closest option and every option of the group
    errors = [line for line in text.splitlines() if line.startswith("alignx: error:")]
    assert errors == ["alignx: error: model=tinyy is not an option of group 'model'. Did you mean 'tiny'? "
                      "Options: hf, small, tiny"], explain(proc)
    assert proc.returncode == 2 and "Traceback" not in text
    assert not run.exists()


@pytest.mark.parametrize("prefix", [[], ["train"]], ids=["bare", "train"])
def test_mistyped_key_is_rejected_with_suggestion_before_any_work(prefix: list[str], tmp_path: Path):
    run = tmp_path / "run"
    proc = alignx([*prefix, "trainer.max_stepz=3", *fast("tracking=none"), f"hydra.run.dir={run}", f"outputs_root={tmp_path}"], tmp_path)
    assert proc.returncode != 0, explain(proc)
    text = output(proc)
    assert "unknown key 'trainer.max_stepz'" in text, explain(proc)
    assert "Did you mean 'trainer.max_steps'?" in text
    assert all(key in text for key in TRAINER_KEYS), "the valid keys must be listed"
    assert "Traceback" not in text
    assert not run.exists(), "nothing may run before the key check"
    assert list(tmp_path.iterdir()) == []


def test_mistyped_key_in_experiment_file_is_caught_by_validate(bg_experiment_typo: tuple[Future, Path]):
    future, tmp = bg_experiment_typo
    proc = future.result()
    assert proc.returncode != 0, explain(proc)
    text = output(proc)
    assert "unknown key 'data.batchsize'" in text, explain(proc)
    assert "Did you mean 'data.batch_size'?" in text
    assert all(key in text for key in ("batch_size", "max_length", "truncation", "eval_batch_size")), explain(proc)
    assert "Traceback" not in text
    assert not (tmp / "run" / "model").exists(), "nothing may be trained"
    assert not (tmp / "mlflow.db").exists()
