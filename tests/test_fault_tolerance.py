"""Fault tolerance: a job killed with SIGKILL resumes (resume=auto) into the same MLflow run and
ends exactly where an uninterrupted job ends; checkpoints survive a kill mid-save; same seed and
config give identical metrics; nothing loads by unpickling an untrusted file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from alignx.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from alignx.config import compose
from alignx.errors import AlignxError
from alignx.train import train
from conftest import ALIGNX_BIN, fast, seed_store

SUPPORT = Path(__file__).parent / "support"

def _computed(key: str) -> bool:
    """Metrics of the computation (not wall-clock time, not whether a cache was warm)."""
    return not key.startswith("time/") and not key.endswith("cache_hit")


def _histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    run = client.get_run(run_id)
    return {
        key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]
        for key in run.data.metrics
        if _computed(key)
    }


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SUPPORT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([str(ALIGNX_BIN), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before pausing:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run never reached the pause step")
        time.sleep(0.05)


# -- kill and resume -------------------------------------------------------------------------------
@pytest.mark.parametrize("objective,how", [("sft", "same_dir"), ("dpo", "new_dir")])
def test_sigkill_mid_run_then_resume_auto_ends_where_an_uninterrupted_run_ends(tmp_path: Path, objective: str, how: str,
                                                                              empty_store: Path):
    """10 steps, checkpoints every 4; the first attempt is SIGKILLed after step 6, so steps 5-6
    are logged, then redone. ``same_dir``: the relaunch has the same run dir (a requeued job);
    ``new_dir``: it gets a new one, as a plain re-run of the command does, and finds the
    interrupted run through MLflow."""
    common = fast(f"objective={objective}", "trainer.max_steps=10", "checkpoint.every_n_steps=4",
                  "data.batch_size=8", "eval.num_prompts=4")
    # the reference: the same job, never interrupted (in-process); both stores start migrated
    seed_store(empty_store, tmp_path / "ref_store")
    seed_store(empty_store, tmp_path)
    reference = train(compose([*common, f"output_dir={tmp_path / 'reference'}", f"outputs_root={tmp_path / 'ref_store'}"]))

    marker = tmp_path / "paused"
    job_args = [*common, f"outputs_root={tmp_path}", "resume=auto",
                "+callbacks.pause._target_=fault_injection.PauseAtStep", "+callbacks.pause.step=6",
                f"+callbacks.pause.marker={marker}"]
    first = _start([*job_args, f"hydra.run.dir={tmp_path / 'attempt1'}"], cwd=tmp_path)
    _wait_for(marker, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    ckpts = tmp_path / "attempt1" / "checkpoints"
    assert latest_checkpoint(ckpts).resolve().name == "step-000004.ckpt"
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 4

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (killed,) = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])
    assert killed.info.status == "RUNNING"  # SIGKILL: nothing could mark it
    # Lightning logs a step's metrics after its on_train_batch_end hooks, where the run hangs: the
    # losses of steps 1-5 (logged as 0-4) are in; step 5's was computed after the checkpoint of step 4
    assert max(m.step for m in client.get_metric_history(killed.info.run_id, "train/loss")) == 4

    second_dir = tmp_path / ("attempt1" if how == "same_dir" else "attempt2")
    second = _start([*job_args, f"hydra.run.dir={second_dir}"], cwd=tmp_path)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-4000:]

    runs = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])
    assert [r.info.run_id for r in runs] == [killed.info.run_id], "resume must continue the interrupted run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["alignx.resume_count"] == "1" and run.data.tags["alignx.resumed_at_step"] == "4"
    assert run.data.tags["alignx.resumed_from"] == str(ckpts / "last.ckpt")
    # the interrupted job's dir holds the rest of its checkpoints and its model, whatever dir the relaunch got
    assert latest_checkpoint(ckpts).resolve().name == "step-000010.ckpt"

    ref_client = MlflowClient(tracking_uri=reference.tracking_uri)
    expected, got = _histories(ref_client, reference.run_id), _histories(client, run.info.run_id)
    assert set(got) == set(expected)
    assert any(k.startswith("eval/") for k in got) and len(expected["train/loss"]) == 10
    for key in expected:
        assert got[key] == expected[key], key  # every step once, with the uninterrupted value
    final = load_file(tmp_path / "attempt1" / "model" / "model.safetensors")
    ref_final = load_file(reference.model_dir / "model.safetensors")
    assert final.keys() == ref_final.keys()
    assert all(torch.equal(final[k], ref_final[k]) for k in final)


def test_resume_auto_without_a_checkpoint_starts_from_scratch(tmp_path: Path, empty_store: Path):
    seed_store(empty_store, tmp_path)
    job = train(compose(fast("trainer.max_steps=2", "resume=auto", "eval.enabled=false", "save.model=false",
                             f"output_dir={tmp_path / 'out'}", f"outputs_root={tmp_path}")))
    run = MlflowClient(job.tracking_uri).get_run(job.run_id)
    assert run.info.status == "FINISHED" and "alignx.resumed_from" not in run.data.tags
    assert "resume" not in run.data.params


def test_resuming_a_finished_run_starts_a_new_run_that_records_its_origin(tmp_path: Path, empty_store: Path):
    seed_store(empty_store, tmp_path)
    common = fast("trainer.max_steps=2", "checkpoint.every_n_steps=2", "eval.enabled=false", "save.model=false",
                  f"outputs_root={tmp_path}")
    done = train(compose([*common, f"output_dir={tmp_path / 'a'}"]))
    longer = train(compose([*common, "trainer.max_steps=4", f"resume={tmp_path / 'a'}", f"output_dir={tmp_path / 'b'}"]))
    client = MlflowClient(done.tracking_uri)
    assert longer.run_id != done.run_id and longer.output_dir == tmp_path / "b"
    tags = client.get_run(longer.run_id).data.tags
    assert tags["alignx.resumed_from"] == str(tmp_path / "a" / "checkpoints" / "last.ckpt")
    assert [m.step for m in client.get_metric_history(longer.run_id, "train/loss")] == [2, 3]
    assert client.get_run(done.run_id).info.status == "FINISHED"  # untouched


def test_resume_names_a_missing_checkpoint(tmp_path: Path):
    with pytest.raises(AlignxError, match=r"resume=.*nope: no checkpoint at .*checkpoint.every_n_steps"):
        train(compose(fast(f"resume={tmp_path / 'nope'}", f"output_dir={tmp_path / 'o'}", f"outputs_root={tmp_path}")))
    assert not (tmp_path / "mlflow.db").exists()


# -- atomic checkpoints ----------------------------------------------------------------------------
KILL_MID_WRITE = """
import resource, signal, sys, torch
from alignx.checkpoint import save_checkpoint
# the kernel kills this process (SIGXFSZ) when the file being written passes 1 MB
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
save_checkpoint({"global_step": 99, "state_dict": {"w": torch.ones(4 << 20)}}, sys.argv[1])
print("not reached")
"""


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path: Path):
    last = tmp_path / "last.ckpt"
    good = {"global_step": 4, "state_dict": {"w": torch.arange(6.0).view(2, 3)}, "loops": {"a": (1, None)}}
    save_checkpoint(good, last)
    proc = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(last)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGXFSZ, proc.stdout + proc.stderr
    partial = list(tmp_path.glob(".last.ckpt.tmp-*"))
    assert len(partial) == 1 and partial[0].stat().st_size == 1 << 20  # it died mid-write
    back = load_checkpoint(last)
    assert back["global_step"] == 4 and torch.equal(back["state_dict"]["w"], good["state_dict"]["w"])
    assert back["loops"] == {"a": (1, None)}
    save_checkpoint({**good, "global_step": 5}, last)
    assert not list(tmp_path.glob(".last.ckpt.tmp-*"))  # the next save clears the debris


def test_checkpoint_format_round_trips_what_lightning_and_optimizers_store(tmp_path: Path):
    w = torch.randn(3, 4)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.randn(2))], betas=(0.9, 0.95))
    opt.step() if False else None
    ckpt = {
        "state_dict": {"embed.weight": w, "lm_head.weight": w},  # tied: stored once
        "optimizer_states": [opt.state_dict()],
        "loops": {"fit_loop": {"state_dict": {"combined_loader": [{"epoch": 1, "batches_done": 3}]}}},
        "ints": {0: "a", 1: {"x": float("inf")}},
        "dtype": torch.bfloat16,
        "tuple": (1, 2.5, "s"),
    }
    save_checkpoint(ckpt, tmp_path / "c.ckpt")
    back = load_checkpoint(tmp_path / "c.ckpt")
    assert torch.equal(back["state_dict"]["embed.weight"], w) and torch.equal(back["state_dict"]["lm_head.weight"], w)
    assert back["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert back["ints"] == {0: "a", 1: {"x": float("inf")}} and back["dtype"] is torch.bfloat16
    assert back["tuple"] == (1, 2.5, "s") and back["loops"] == ckpt["loops"]
    with pytest.raises(CheckpointError, match=r"checkpoint value at checkpoint\.bad is a .*Thing"):
        save_checkpoint({"bad": type("Thing", (), {})()}, tmp_path / "d.ckpt")
    assert not (tmp_path / "d.ckpt").exists()


# -- determinism -----------------------------------------------------------------------------------
def test_same_seed_and_config_give_identical_metrics_and_a_new_seed_does_not(tmp_path: Path, empty_store: Path):
    seed_store(empty_store, tmp_path)
    common = fast("trainer.max_steps=4", "save.model=false", f"outputs_root={tmp_path}", "eval.num_prompts=4")
    a = train(compose([*common, f"output_dir={tmp_path / 'a'}"]))
    b = train(compose([*common, f"output_dir={tmp_path / 'b'}"]))
    c = train(compose([*common, "seed=1", f"output_dir={tmp_path / 'c'}"]))
    client = MlflowClient(a.tracking_uri)
    ha, hb, hc = (_histories(client, j.run_id) for j in (a, b, c))
    assert any(k.startswith("eval/gold_reward") for k in ha)  # sampling is covered too
    assert ha == hb
    assert ha["train/loss"] != hc["train/loss"]


# -- safe loading ----------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates a file: proof that a loader executed code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_checkpoint_with_code_is_refused_not_run(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"global_step": 1, "state_dict": {}, "x": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"refusing to load pickled checkpoint .*evil\.ckpt.*would run code"):
        train(compose(fast(f"resume={evil}", f"output_dir={tmp_path / 'o'}", f"outputs_root={tmp_path}")))
    assert not marker.exists()
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run was created


def test_a_model_dir_with_pickled_weights_or_remote_code_runs_nothing(tmp_path: Path):
    from alignx.models.loading import build_hf, build_llama

    cfg = compose(fast())
    model, tok = build_llama(cfg.model)
    hf = [o for o in fast("model=hf") if not o.startswith("model.")]
    marker = tmp_path / "pwned"
    pickled = tmp_path / "pickled"
    model.save_pretrained(pickled)
    tok.save_pretrained(pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, pickled / "pytorch_model.bin")
    with pytest.raises(AlignxError, match=r"could not load a causal LM from directory"):
        train(compose([*hf, f"model.name_or_path={pickled}", f"output_dir={tmp_path / 'o'}", f"outputs_root={tmp_path}"]))
    assert not marker.exists()

    remote = tmp_path / "remote"
    model.save_pretrained(remote)
    tok.save_pretrained(remote)
    (remote / "evil_config.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    import json

    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil_config.EvilConfig", "AutoModelForCausalLM": "evil_config.Evil"}
    (remote / "config.json").write_text(json.dumps(config))
    hf_cfg = compose(["model=hf", f"model.name_or_path={remote}"]).model
    assert hf_cfg.trust_remote_code is False
    # a known architecture with an auto_map: transformers' own class is used, the repo's code is not run
    loaded, _ = build_hf(hf_cfg)
    assert type(loaded).__name__ == "LlamaForCausalLM" and not marker.exists()
    # an architecture only the repo's code defines: refused, naming the setting
    config["model_type"] = "evil_llama"
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(AlignxError, match=r"trust_remote_code"):
        build_hf(hf_cfg)
    assert not marker.exists()
