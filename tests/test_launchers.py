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


def test_alignx_slurm_preset_gives_submitit_valid_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What SlurmLauncher.launch does before submitting, on the preset: no sbatch needed."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    # the executor refuses to exist where `srun` is missing; nothing here submits anything
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))

    cfg = compose(["hydra/launcher=alignx_slurm", f"hydra.sweep.dir={tmp_path}", "hydra.launcher.partition=gpu"],
                  return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_") == SLURM_TARGET
    assert params["timeout_min"] == 240 and params["gpus_per_node"] == 1 and params["tasks_per_node"] == 1
    assert params["nodes"] == 1 and params["partition"] == "gpu"
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=240",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB"):
        assert line in script, script
