"""``alignx compare`` on one real sweep: table, CSV, plots, artifacts on the parent, and errors.

The sweep (4 jobs of 3 steps) runs once per module as a real subprocess; its store is the
default one, ``<tmp>/outputs/mlflow.db``, so plain ``alignx compare`` run from ``<tmp>`` finds it.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from conftest import fast, run_cli, seed_store

PNG = b"\x89PNG\r\n\x1a\n"
#: no inherited $ALIGNX_OUTPUTS: the default store must be ./outputs of the cwd
ENV = {"ALIGNX_OUTPUTS": None}


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, empty_store) -> Path:
    """A finished 2x2 sweep (adapter x optim.lr), evaluated at every step; returns the directory it was launched from."""
    tmp = tmp_path_factory.mktemp("compare")
    seed_store(empty_store, tmp / "outputs")
    args = ["-m", *fast("optim.lr=1e-3,3e-3", "adapter=none,lora", "trainer.max_steps=3", "eval.every_n_steps=1")]
    proc = run_cli([*args, f"hydra.sweep.dir={tmp / 'sweep'}", f"outputs_root={tmp / 'outputs'}"], tmp, ENV)
    assert proc.returncode == 0, explain(proc)
    return tmp


@pytest.fixture(scope="module")
def client(sweep):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{sweep / 'outputs' / 'mlflow.db'}")


@pytest.fixture(scope="module")
def parent_id(client) -> str:
    exp = client.get_experiment_by_name("alignx")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`alignx.sweep` = 'true'")
    return parent.info.run_id


@pytest.fixture(scope="module")
def compared(sweep) -> subprocess.CompletedProcess:
    """Plain ``alignx compare`` (latest sweep, default store) from the sweep's launch directory."""
    return run_cli(["compare"], sweep, ENV)


@pytest.fixture(scope="module")
def by_dir(sweep, compared, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``alignx compare <sweep dir> --out <dir>`` from another directory, in a 100-column terminal
    (after plain ``alignx compare`` wrote the sweep's own compare/); the process and its --out dir."""
    elsewhere = tmp_path_factory.mktemp("compare_by_dir")
    out = elsewhere / "by_dir"
    return run_cli(["compare", str(sweep / "sweep"), "--out", str(out)], elsewhere, {**ENV, "COLUMNS": "100"}), out


def test_compare_latest_sweep_writes_table_plots_and_artifacts(sweep, compared, client, parent_id):
    assert compared.returncode == 0, explain(compared)
    out = sweep / "sweep" / "compare"  # next to the jobs, since the sweep dir exists
    rows = read_csv(out / "compare.csv")
    assert len(rows) == 4
    metric = "eval/gold_reward_sampled"  # the first default metric ranks
    for col in ("job", "status", "adapter", "optim.lr", metric, "eval/gold_reward_greedy", "eval/perplexity", "best"):
        assert col in rows[0], col
    assert {(r["adapter"], float(r["optim.lr"])) for r in rows} == {
        ("none", 1e-3), ("none", 3e-3), ("lora", 1e-3), ("lora", 3e-3)
    }
    assert all(r["status"] == "FINISHED" for r in rows)
    best = [r for r in rows if r["best"] == "*"]
    assert len(best) == 1 and float(best[0][metric]) == max(float(r[metric]) for r in rows)
    assert [r for r in rows if r["best"] not in ("*", "")] == []

    pngs = ["metric_vs_adapter.png", "metric_vs_optim.lr.png", "curves_train_loss.png",
            "eval_curve_eval_gold_reward_sampled.png", "trajectory_eval_gold_reward_sampled_vs_eval_kl_to_reference.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG, name
        assert str(out / name) in compared.stdout  # the paths are printed, whole
    assert "optim.lr" in compared.stdout and best[0]["job"] in compared.stdout  # the rich table

    logged = {a.path for a in client.list_artifacts(parent_id, "compare")}
    assert logged >= {"compare/compare.csv", *(f"compare/{n}" for n in pngs)}


def test_by_parent_id_and_by_sweep_dir_give_the_same_rows(sweep, compared, by_dir, parent_id, tmp_path):
    from alignx.compare import compare

    assert compared.returncode == 0, explain(compared)
    by_id = compare(
        parent_id, tracking_uri=f"sqlite:///{sweep / 'outputs' / 'mlflow.db'}", out=tmp_path / "by_id", log_artifacts=False
    )
    assert by_id.parent_run_id == parent_id
    assert by_id.params == ["adapter", "optim.lr"]
    # by directory, from elsewhere: the sweep dir's record names the store, no --tracking-uri
    proc, out = by_dir
    assert proc.returncode == 0, explain(proc)
    dir_rows = read_csv(out / "compare.csv")
    assert dir_rows == read_csv(by_id.paths[0])
    assert {r["run_id"] for r in dir_rows} == {r["run_id"] for r in by_id.rows}
    assert read_csv(sweep / "sweep" / "compare" / "compare.csv") == dir_rows


def test_loss_like_metric_ranks_by_min(sweep, compared, parent_id, tmp_path):
    from alignx.compare import compare, infer_mode

    assert (infer_mode("val/loss"), infer_mode("eval/perplexity"), infer_mode("eval/gold_reward_greedy")) == (
        "min", "min", "max"
    )
    result = compare(
        str(sweep / "sweep"), metrics=["eval/perplexity", "no/such_metric"], out=tmp_path, log_artifacts=False
    )
    assert result.metric == "eval/perplexity" and result.mode == "min"
    assert result.metrics == ["eval/perplexity"] and any("no/such_metric" in n for n in result.notes)
    values = [r["eval/perplexity"] for r in result.rows]
    assert result.best == values.index(min(values))
    assert [r["best"] for r in result.rows].count("*") == 1


def test_frontier_plots_every_job_at_x_y_one_series_per_method(sweep, compared, parent_id, tmp_path):
    """The reward-vs-KL frontier plot, here on this sweep's (perplexity, gold reward), one series per adapter."""
    from alignx.compare import CompareError, compare

    result = compare(str(sweep / "sweep"), out=tmp_path, log_artifacts=False,
                     frontier=["eval/perplexity", "eval/gold_reward_sampled"], by="adapter")
    plot = tmp_path / "frontier_eval_gold_reward_sampled_vs_eval_perplexity.png"
    assert plot in result.paths and plot.read_bytes()[:8] == PNG
    assert all("eval/perplexity" in r and "eval/gold_reward_sampled" in r for r in result.rows)
    with pytest.raises(CompareError, match="--by 'objective' is not a swept param of this sweep. Swept: "):
        compare(str(sweep / "sweep"), out=tmp_path, log_artifacts=False, frontier=["a", "b"], by="objective")


def test_unknown_run_id_is_a_clear_error(sweep, compared, parent_id):
    proc = run_cli(["compare", "0123456789abcdef0123456789abcdef"], sweep, ENV)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.startswith("alignx: error: no run '0123456789abcdef0123456789abcdef'"), explain(proc)
    assert parent_id in proc.stderr  # lists the sweeps that do exist
    assert "Traceback" not in proc.stderr


def test_no_store_is_a_clear_error(tmp_path):
    proc = run_cli(["compare"], tmp_path, ENV)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.startswith("alignx: error: no MLflow store at"), explain(proc)
    assert str(tmp_path / "outputs" / "mlflow.db") in proc.stderr
    assert not (tmp_path / "outputs").exists()  # looking did not create an empty store


# -- plots a person can read at a glance ------------------------------------------------------


def palette_colours_in(png: Path) -> set[str]:
    """The compare palette's colours drawn in ``png`` (at least 5 pixels of exactly that colour)."""
    import numpy as np
    from matplotlib.image import imread

    from alignx.compare.plots import PALETTE

    pixels = imread(png)[..., :3]
    found = set()
    for colour in PALETTE:
        rgb = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        if (np.abs(pixels - rgb).max(axis=-1) < 0.01).sum() >= 5:
            found.add(colour)
    return found


def png_size(png: Path) -> tuple[int, int]:
    data = png.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_one_colour_per_value_in_every_plot(sweep, compared, tmp_path):
    """Colours follow the adapter (the non-numeric swept key): none and lora each keep one colour in
    every plot, and no other palette colour appears anywhere."""
    from alignx.compare import compare
    from alignx.compare.plots import PALETTE

    result = compare(str(sweep / "sweep"), out=tmp_path, log_artifacts=False,
                     frontier=["eval/kl_to_reference", "eval/gold_reward_sampled"])
    assert result.colour_key == "adapter"
    assert result.colours == {"none": PALETTE[0], "lora": PALETTE[1]}
    plots = [p for p in result.paths if p.suffix == ".png"]
    assert {p.name for p in plots} >= {"metric_vs_adapter.png", "metric_vs_optim.lr.png", "curves_train_loss.png",
                                       "frontier_eval_gold_reward_sampled_vs_eval_kl_to_reference.png",
                                       "eval_curve_eval_gold_reward_sampled.png",
                                       "trajectory_eval_gold_reward_sampled_vs_eval_kl_to_reference.png"}
    for png in plots:
        assert palette_colours_in(png) == {PALETTE[0], PALETTE[1]}, png.name


def test_eval_during_training_gives_curves_and_standard_errors(sweep, compared, client):
    """eval.every_n_steps=1 over 3 steps: eval/* at steps 1, 2 (periodic) and 3 (end of job), which
    the eval-curve and trajectory plots draw; the gold reward's standard error is a CSV column and
    a ± in the table."""
    out = sweep / "sweep" / "compare"
    rows = read_csv(out / "compare.csv")
    for row in rows:
        history = client.get_metric_history(row["run_id"], "eval/gold_reward_sampled")
        assert sorted(m.step for m in history) == [1, 2, 3]
        assert float(row["eval/gold_reward_sampled_stderr"]) >= 0.0
    # rich wraps the table's title to the table's width, which depends on the values: compare words, not lines
    assert "±" in compared.stdout and "95% interval over prompts" in " ".join(compared.stdout.split())


def test_table_fits_the_terminal(by_dir):
    proc, _ = by_dir  # run with COLUMNS=100
    assert proc.returncode == 0, explain(proc)
    table = proc.stdout.split("\nnote:")[0].split("\nbest:")[0]
    assert max(len(line) for line in table.splitlines()) <= 100


def test_losses_of_different_objectives_get_a_panel_each(tmp_path, empty_store):
    """DPO's and KTO's losses are different quantities: train/loss is drawn in one panel per
    objective (a figure twice as wide as one panel's)."""
    from alignx.compare import compare

    seed_store(empty_store, tmp_path / "outputs")
    proc = run_cli(["-m", *fast("objective=dpo,kto", "trainer.max_steps=2", "save.model=false"),
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", f"outputs_root={tmp_path / 'outputs'}"], tmp_path, ENV)
    assert proc.returncode == 0, explain(proc)
    result = compare(str(tmp_path / "sweep"), out=tmp_path / "out", log_artifacts=False)
    assert result.colour_key == "objective"
    curves = tmp_path / "out" / "curves_train_loss.png"
    width, _ = png_size(curves)
    assert width >= 1100  # two panels (a single panel is 680 px wide)
    assert len(palette_colours_in(curves)) == 2


def test_compare_names_the_winner_on_the_parent_run(sweep, compared, client, parent_id):
    """The parent run records the job compare marked best: its run id, its metrics as best/<metric>."""
    rows = read_csv(sweep / "sweep" / "compare" / "compare.csv")
    (best,) = [r for r in rows if r["best"] == "*"]
    parent = client.get_run(parent_id)
    assert parent.data.tags["alignx.best_run_id"] == best["run_id"]
    assert parent.data.tags["alignx.best_metric"] == "eval/gold_reward_sampled"
    assert parent.data.metrics["best/eval/gold_reward_sampled"] == pytest.approx(float(best["eval/gold_reward_sampled"]))
