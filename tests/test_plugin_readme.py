"""The README's plugin walkthrough, taken literally: its files are copied out of README.md, the
package is built and installed with pip (into its own site directory), and the plugin is listed,
checked and trained through the real ``alignx`` command.

Also the sweep a plugin author would run next (``-m objective=listwise,sft``): the parent run
names the swept objectives, and both jobs report the same evaluation metrics, win rate and KL to
the starting model included, although neither uses a reference while training.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, fast, run_cli, seed_store, sweep_runs

FILE_BLOCK = re.compile(r"```[a-z]*\n# file: (?P<path>\S+)\n(?P<body>.*?)```", re.S)


def plugin_files() -> dict[str, str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Writing a plugin"):readme.index("### Adding a DPO variant")]
    return {m["path"]: m["body"] for m in FILE_BLOCK.finditer(section)}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme_plugin")
    package = root / "alignx-listwise"
    for rel, body in plugin_files().items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(body)
    target = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(package)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return target


def env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(site)}


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def test_readme_shows_every_file_of_the_layout():
    assert set(plugin_files()) == {
        "pyproject.toml", "alignx_listwise/__init__.py", "alignx_listwise/objective.py",
        "alignx_listwise/conf/__init__.py", "alignx_listwise/conf/objective/listwise.yaml",
    }


def test_the_loss_matches_a_hand_computed_plackett_luce_likelihood(site: Path):
    # scores (2, 1, 0) ranked best first: -log P = [log(e^2+e^1+e^0) - 2] + [log(e^1+e^0) - 1]
    expected = (math.log(math.e**2 + math.e + 1) - 2) + (math.log(math.e + 1) - 1)  # 0.720868...
    code = (
        "import torch; from alignx_listwise.objective import plackett_luce_nll as f\n"
        "print(float(f(torch.tensor([[2., 1., 0.]]), torch.tensor([[0., 1., 2.]]))))\n"
        # the same ranking given in another order of the responses
        "print(float(f(torch.tensor([[0., 2., 1.]]), torch.tensor([[2., 0., 1.]]))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env(site)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, explain(proc)
    first, shuffled = (float(x) for x in proc.stdout.split())
    assert first == pytest.approx(expected, abs=1e-6) and shuffled == pytest.approx(expected, abs=1e-6)


def test_alignx_lists_the_plugin_without_importing_its_objective(site: Path, tmp_path: Path):
    proc = run_cli(["plugins", "--kind", "objective"], tmp_path, env(site))
    assert proc.returncode == 0, explain(proc)
    row = next(line for line in proc.stdout.splitlines() if " listwise " in line)
    assert "alignx-listwise" in row and "alignx_listwise.objective:Listwise" in row
    code = ("import sys; from alignx.cli import main; main(['plugins']); "
            "assert 'alignx_listwise.objective' not in sys.modules and 'torch' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, **env(site)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, explain(proc)


def test_a_misspelt_objective_key_names_the_right_one(site: Path, tmp_path: Path):
    proc = run_cli([*fast("objective=listwise", "+objective.temprature=2.0"), f"outputs_root={tmp_path}"], tmp_path, env(site))
    assert proc.returncode == 2, explain(proc)
    assert "Did you mean 'objective.temperature'?" in proc.stderr, explain(proc)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_sweep_over_the_plugin_and_sft_compares_on_the_same_axes(site: Path, tmp_path: Path, empty_store: Path):
    seed_store(empty_store, tmp_path)
    proc = run_cli(["-m", *fast("objective=listwise,sft", "dataset.ranked_k=3", "trainer.max_steps=4"),
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", f"outputs_root={tmp_path}"], tmp_path, env(site))
    assert proc.returncode == 0, explain(proc)
    parents, children = sweep_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].data.tags["alignx.objective"] == "listwise,sft"
    assert parents[0].data.params["objective.name"] == "listwise,sft"  # the parent lists the swept values
    by_objective = {c.data.tags["alignx.objective"]: c for c in children}
    assert set(by_objective) == {"listwise", "sft"}
    assert all(c.info.status == "FINISHED" for c in children)
    evals = {name: {k for k in c.data.metrics if k.startswith("eval/")} for name, c in by_objective.items()}
    assert evals["listwise"] == evals["sft"], evals
    assert {"eval/win_rate", "eval/kl_to_reference", "eval/gold_reward_sampled"} <= evals["listwise"]
    # a 4-step job (shorter than its epoch) still validates
    assert "val/loss" in by_objective["listwise"].data.metrics
    assert "logps/best" in " ".join(by_objective["listwise"].data.metrics)
