"""Hydra launchers beyond the basic one: submitit (local executor = the SLURM code path) and the
SLURM presets, which must compose and give submitit valid parameters without a SLURM cluster.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from alignx.config import compose
from conftest import fast, run_cli

SLURM_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def test_submitit_local_sweep_runs_every_job_in_its_own_process(tmp_path: Path):
    """submitit pickles alignx's task function and runs each job in a fresh process."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", "hydra/launcher=submitit_local", "optim.lr=1e-3,3e-3", *fast("trainer.max_steps=2", "eval.enabled=false"),
         f"hydra.sweep.dir={sweep}", f"outputs_root={tmp_path}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, explain(proc)
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    # submitit's own per-job logs and pickles: the jobs really went through the executor
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2
    for job in ("0", "1"):
        assert (sweep / job / "model" / "model.safetensors").is_file(), job
        assert (sweep / job / "config.yaml").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])
    parents = [r for r in found if r.data.tags.get("alignx.sweep") == "true"]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["alignx.failed_jobs"] == "0"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.params["optim.lr"] for c in children} == {"0.001", "0.003"}


@pytest.mark.parametrize("launcher", ["submitit_slurm", "alignx_slurm"])
def test_slurm_launchers_compose_on_the_command_line(tmp_path: Path, launcher: str):
    proc = run_cli(["--cfg", "hydra", f"hydra/launcher={launcher}"], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    launcher_cfg = OmegaConf.create(proc.stdout).hydra.launcher
    assert launcher_cfg._target_ == SLURM_TARGET
    assert list(tmp_path.iterdir()) == [], "--cfg hydra must write nothing"


def sbatch_script(launcher_params: dict, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sbatch script submitit would submit for these (resolved) launcher params; nothing is submitted."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    # the executor refuses to exist where `srun` is missing
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    params = {k: v for k, v in launcher_params.items() if k != "_target_"}
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -c pass", "uid")


def test_alignx_slurm_preset_gives_submitit_valid_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What SlurmLauncher.launch does before submitting, on the preset: no sbatch needed."""
    cfg = compose(["hydra/launcher=alignx_slurm", f"hydra.sweep.dir={tmp_path}", "hydra.launcher.partition=gpu"],
                  return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["_target_"] == SLURM_TARGET
    assert params["timeout_min"] == 240 and params["gpus_per_node"] == 1 and params["tasks_per_node"] == 1
    assert params["nodes"] == 1 and params["partition"] == "gpu"
    script = sbatch_script(params, monkeypatch)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=240",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB"):
        assert line in script, script


# -- scale-out presets: strategies and the Ray launcher compose; the README's multi-node example is valid --
def test_fsdp_preset_builds_a_strategy_that_wraps_each_transformer_block():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from alignx.models.loading import build_llama
    from alignx.train import build_strategy

    cfg = compose(["trainer=fsdp", "trainer.devices=8", "trainer.num_nodes=2"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    model, _ = build_llama(cfg.model)
    strategy = build_strategy(OmegaConf.to_container(cfg.trainer.strategy), model)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]  # torch's ModuleWrapPolicy over the classes alignx found
    assert set(policy._module_classes) == {LlamaDecoderLayer}
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "full"


def test_deepspeed_preset_names_real_arguments_and_a_missing_install_is_named_before_any_run(tmp_path: Path):
    import inspect
    from importlib.util import find_spec

    from hydra.utils import get_class

    from alignx.config import validate
    from alignx.errors import ConfigError

    cfg = compose(["trainer=deepspeed"])
    cls = get_class(cfg.trainer.strategy._target_)
    params = inspect.signature(cls.__init__).parameters
    assert {k for k in cfg.trainer.strategy if k != "_target_"} <= set(params)
    if find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match=r"needs an optional dependency .*pip install 'alignx\[deepspeed\]'"):
            validate(cfg)
    else:
        validate(cfg)
    bad = compose(["trainer=deepspeed", "+trainer.strategy.stag=3"])
    with pytest.raises(ConfigError, match=r"trainer.strategy.stag|alignx\[deepspeed\]"):
        validate(bad)
    typo = compose(["trainer=fsdp", "trainer.strategy._target_=lightning.pytorch.strategies.NoSuchStrategy"])
    with pytest.raises(ConfigError, match=r"_target_=lightning.pytorch.strategies.NoSuchStrategy cannot be imported"):
        validate(typo)


def test_ray_launcher_preset_composes_and_a_missing_plugin_is_named(tmp_path: Path):
    from importlib.util import find_spec

    proc = run_cli(["--cfg", "hydra", "hydra/launcher=ray"], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    launcher = OmegaConf.create(proc.stdout).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert launcher.ray.init.address is None and launcher.ray.remote.num_gpus == 0
    if find_spec("hydra_plugins.hydra_ray_launcher") is None:
        proc = run_cli(["-m", "hydra/launcher=ray", "optim.lr=1e-3,3e-3"], cwd=tmp_path)
        assert proc.returncode == 2
        assert "hydra/launcher=ray needs a launcher plugin that is not installed: pip install 'alignx[ray]'" in proc.stderr
        assert list(tmp_path.iterdir()) == []


def _readme_multinode_command() -> list[str]:
    import re
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```bash\n(alignx -m hydra/launcher=alignx_slurm [^`]*?trainer=fsdp[^`]*?)```", text)
    assert block, "README lost its multi-node example"
    return shlex.split(block.group(1).replace("\\\n", " "))[1:]


def test_readme_multi_node_example_composes_to_2_nodes_x_8_gpus_with_fsdp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    args = _readme_multinode_command()
    assert args[0] == "-m"
    sweeps = [a for a in args[1:] if "," in a.split("=", 1)[1]]
    assert len(sweeps) == 2  # objective x optim.lr: 4 jobs
    # one job of the sweep (first value of each swept key), as Hydra composes it
    first = [a.split(",")[0] if a in sweeps else a for a in args[1:]]
    cfg = compose([a.replace("/shared/sweeps", str(tmp_path)) for a in first], return_hydra_config=True)
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.FSDPStrategy"
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    # Lightning's world size must equal the number of SLURM tasks
    assert cfg.trainer.num_nodes * cfg.trainer.devices == launcher.nodes * launcher.tasks_per_node == 16
    assert cfg.resume == "auto" and cfg.checkpoint.every_n_steps == 200
    assert cfg.tracking.uri.startswith("http://")

    script = sbatch_script(OmegaConf.to_container(launcher, resolve=True), monkeypatch)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --time=720"):
        assert line in script, script
