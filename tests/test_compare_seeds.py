"""Seeds as an axis of ``alignx compare``: the statistics by hand, the grouping, and one real sweep.

The statistics are checked against values computed by hand (t quantiles from a printed t table);
the end-to-end test runs a real 2 (lr) x 2 (seed) sweep of 2-step jobs and ``alignx compare``
through the installed command, then recomputes every group's mean and interval from the per-job CSV.
"""

from __future__ import annotations

import csv
import math
import subprocess
from pathlib import Path

import pytest

from conftest import fast, run_cli, seed_store

from alignx.compare import (
    CI_SUFFIX,
    N_SUFFIX,
    format_summary,
    group_rows,
    mean,
    sample_sd,
    summarize,
    t_half_width,
    t_quantile_975,
)

PNG = b"\x89PNG\r\n\x1a\n"
ENV = {"ALIGNX_OUTPUTS": None}
METRIC = "eval/gold_reward_sampled"


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# -- the statistics, by hand -----------------------------------------------------------------


def test_mean_sd_and_half_width_of_1_2_3():
    # mean 2; sd sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1; half-width t_{0.975,2} / sqrt(3) = 4.302653 * 0.577350
    assert mean([1.0, 2.0, 3.0]) == 2.0
    assert sample_sd([1.0, 2.0, 3.0]) == 1.0
    assert t_half_width([1.0, 2.0, 3.0]) == pytest.approx(2.484138, abs=1e-6)
    s = summarize([3.0, 1.0, 2.0])
    assert (s.mean, s.n) == (2.0, 3) and s.half_width == pytest.approx(2.484138, abs=1e-6)
    assert s.interval == pytest.approx((2.0 - 2.484138, 2.0 + 2.484138), abs=1e-6)


def test_two_seeds_use_t_with_one_degree_of_freedom():
    # [0.2, 0.4]: mean 0.3, sd sqrt(2 * 0.1^2 / 1) = 0.141421, half-width 12.706205 * 0.141421 / sqrt(2) = 1.2706205
    s = summarize([0.2, 0.4])
    assert s.mean == pytest.approx(0.3, abs=1e-12)
    assert sample_sd([0.2, 0.4]) == pytest.approx(0.1414214, abs=1e-7)
    assert s.half_width == pytest.approx(1.2706205, abs=1e-6)
    # equal values: a zero-width interval, not a missing one
    assert summarize([0.5, 0.5, 0.5]).half_width == 0.0


def test_one_value_has_no_interval():
    s = summarize([0.7])
    assert (s.mean, s.half_width, s.n, s.interval) == (0.7, None, 1, None)
    assert t_half_width([0.7]) is None
    with pytest.raises(ValueError, match="no values"):
        mean([])
    with pytest.raises(ValueError, match="at least 2 values"):
        sample_sd([1.0])


def test_t_quantiles_from_the_table_and_beyond_it():
    # printed t tables (two-sided 95%): df 1, 2, 4, 10, 30; then 40, 60, 120 beyond alignx's table
    for df, expected in [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042),
                         (40, 2.021), (60, 2.000), (120, 1.980)]:
        assert t_quantile_975(df) == pytest.approx(expected, abs=6e-4), df
    assert t_quantile_975(31) < t_quantile_975(30)  # no jump where the table ends
    assert t_quantile_975(10**6) == pytest.approx(1.959964, abs=1e-5)  # the normal quantile in the limit
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


# -- grouping --------------------------------------------------------------------------------


def job(num: int, lr: str, seed: int, value: float | None, status: str = "FINISHED") -> dict:
    return {"job": f"{num}: optim.lr={lr} seed={seed}", "status": status, "optim.lr": lr, "seed": str(seed),
            METRIC: value, "run_id": f"run{num}"}


def test_jobs_that_differ_only_by_seed_form_one_row():
    jobs = [job(0, "1e-3", 0, 1.0), job(1, "1e-3", 1, 2.0), job(2, "1e-3", 2, 3.0),
            job(3, "3e-3", 0, 0.5), job(4, "3e-3", 1, None, status="FAILED"), job(5, "3e-3", 2, 0.7)]
    rows = group_rows(jobs, ["optim.lr"], [METRIC])
    assert [r["optim.lr"] for r in rows] == ["1e-3", "3e-3"]  # job order
    first, second = rows
    assert (first["jobs"], first["seed"], first["n"], first["status"]) == ("0,1,2", "0,1,2", 3, "FINISHED")
    assert first[METRIC] == 2.0 and first[METRIC + CI_SUFFIX] == pytest.approx(2.484138, abs=1e-6)
    assert first[METRIC + N_SUFFIX] == 3 and first["run_ids"] == "run0 run1 run2"
    # the failed job has no value: mean and interval of the other two, and n says so
    assert second["status"] == "FINISHED x2, FAILED x1" and second["n"] == 3
    assert second[METRIC] == pytest.approx(0.6) and second[METRIC + N_SUFFIX] == 2
    assert second[METRIC + CI_SUFFIX] == pytest.approx(12.706205 * math.sqrt(0.02) / math.sqrt(2), abs=1e-6)


def test_summary_cells():
    assert format_summary(0.51234, 0.03456, 3, 3) == "0.5123 ± 0.035"
    assert format_summary(0.51234, 0.03456, 2, 3) == "0.5123 ± 0.035 (n=2)"
    assert format_summary(0.51234, None, 1, 1) == "0.5123 (n=1, no CI)"
    assert format_summary(None, None, 0, 3) == ""


# -- one real sweep over lr and seed ---------------------------------------------------------


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory, empty_store) -> Path:
    """A finished sweep: optim.lr=1e-3,3e-3 x seed=0,1 (2-step jobs); the directory it ran from."""
    tmp = tmp_path_factory.mktemp("compare_seeds")
    seed_store(empty_store, tmp / "outputs")
    args = ["-m", *fast("optim.lr=1e-3,3e-3", "seed=0,1", "trainer.max_steps=2", "eval.num_prompts=4")]
    proc = run_cli([*args, f"hydra.sweep.dir={tmp / 'sweep'}", f"outputs_root={tmp / 'outputs'}"], tmp, ENV)
    assert proc.returncode == 0, explain(proc)
    return tmp


def test_compare_groups_seeds_with_mean_and_interval(seed_sweep):
    x, y = "eval/perplexity", METRIC
    proc = run_cli(["compare", "--frontier", x, y], seed_sweep, ENV)
    assert proc.returncode == 0, explain(proc)
    out = seed_sweep / "sweep" / "compare"

    jobs = read_csv(out / "compare_jobs.csv")
    assert len(jobs) == 4 and {(float(j["optim.lr"]), j["seed"]) for j in jobs} == {
        (1e-3, "0"), (1e-3, "1"), (3e-3, "0"), (3e-3, "1")
    }
    rows = read_csv(out / "compare.csv")
    assert len(rows) == 2
    for col in ("jobs", "status", "optim.lr", "seed", "n", METRIC, METRIC + CI_SUFFIX, METRIC + N_SUFFIX,
                "best", "run_ids"):
        assert col in rows[0], col
    for row in rows:
        members = [j for j in jobs if j["run_id"] in row["run_ids"].split()]
        assert len(members) == 2 and row["n"] == "2"
        assert {m["optim.lr"] for m in members} == {row["optim.lr"]} and sorted(row["seed"].split(",")) == ["0", "1"]
        for name in (METRIC, x):
            assert row[name + N_SUFFIX] == "2"
            values = [float(m[name]) for m in members]
            # two values: mean (a + b) / 2, half-width t_{0.975,1} * (|a - b| / sqrt(2)) / sqrt(2)
            assert float(row[name]) == pytest.approx(sum(values) / 2, rel=1e-9)
            assert float(row[name + CI_SUFFIX]) == pytest.approx(12.706205 * abs(values[0] - values[1]) / 2, rel=1e-6)
        # the seeds did change the jobs: their held-out perplexities differ, so the interval is not empty
        assert float(row[x + CI_SUFFIX]) > 0
    best = [r for r in rows if r["best"] == "*"]
    assert len(best) == 1 and float(best[0][METRIC]) == max(float(r[METRIC]) for r in rows)
    # the per-job table marks the members of the best setting
    assert {j["run_id"] for j in jobs if j["best"] == "*"} == set(best[0]["run_ids"].split())

    assert "mean ± 95% CI over seed" in proc.stdout
    ppl = float(rows[0][x]), float(rows[0][x + CI_SUFFIX])
    assert f"{ppl[0]:.4g} ± {ppl[1]:.2g}" in proc.stdout  # the table's cell: mean ± half-width
    assert f"best:        optim.lr={best[0]['optim.lr']} ({METRIC} = " in proc.stdout
    for name in ("metric_vs_optim.lr.png", "frontier_eval_gold_reward_sampled_vs_eval_perplexity.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
        assert str(out / name) in proc.stdout
    assert not (out / "metric_vs_seed.png").exists()  # seeds are averaged, not plotted against


def test_frontier_cannot_be_split_by_the_averaged_seed(seed_sweep, tmp_path):
    from alignx.compare import CompareError, compare

    with pytest.raises(CompareError, match="--by 'seed': the jobs of this sweep are averaged over seed; name another"):
        compare(str(seed_sweep / "sweep"), out=tmp_path, log_artifacts=False,
                frontier=["eval/perplexity", METRIC], by="seed")
    result = compare(str(seed_sweep / "sweep"), out=tmp_path, log_artifacts=False)
    assert result.grouped_by == "seed" and result.params == ["optim.lr"] and len(result.jobs) == 4
    assert [r["n"] for r in result.rows] == [2, 2]


def test_per_job_rows_when_asked(seed_sweep, tmp_path):
    from alignx.compare import compare

    result = compare(str(seed_sweep / "sweep"), out=tmp_path, log_artifacts=False, group_seeds=False)
    assert result.grouped_by is None and result.params == ["optim.lr", "seed"]
    assert len(result.rows) == 4 and result.rows == result.jobs
    assert result.columns[:4] == ["job", "status", "optim.lr", "seed"] and result.columns[-1] == "run_id"
    assert not (tmp_path / "compare_jobs.csv").exists() and (tmp_path / "metric_vs_seed.png").exists()


def test_per_job_flag_of_the_command(seed_sweep, tmp_path):
    proc = run_cli(["compare", "--per-job", "--out", str(tmp_path)], seed_sweep, ENV)
    assert proc.returncode == 0, explain(proc)
    rows = read_csv(tmp_path / "compare.csv")
    assert len(rows) == 4 and {r["seed"] for r in rows} == {"0", "1"}
    assert not (tmp_path / "compare_jobs.csv").exists()
