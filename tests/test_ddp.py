"""trainer=ddp on CPU (gloo, 2 processes): one job is one MLflow run, written by rank 0 only."""

from mlflow import MlflowClient

from conftest import fast, run_cli


def test_two_process_ddp_job_is_one_run(tmp_path):
    proc = run_cli(
        [*fast("trainer=ddp", "trainer.devices=2", "trainer.max_steps=4", "adapter=lora"),
         f"hydra.run.dir={tmp_path / 'run'}", f"outputs_root={tmp_path}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in out  # really two processes
    assert out.count("alignx: results") == 1  # only rank 0 reports
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert len(client.get_metric_history(runs[0].info.run_id, "train/loss")) == 4
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").is_file()
