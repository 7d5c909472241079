"""What a person sees: a job's console through the real ``alignx`` command.

One step-based progress bar (no ``Epoch 3/-2``), each log line once, no Lightning advertising or
default restatements, no transformers progress bars, no deprecation notices from library
internals; ``-q`` leaves warnings, errors and the results table; ``-v`` adds alignx's DEBUG lines.
Also: a job shorter than one epoch still validates (``val/loss``) with the default
``trainer.val_check_interval`` (null).
"""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import pytest
from conftest import fast, run_cli, start_background_fixtures

# 160 training rows at batch 16 = 10 batches per epoch, longer than the 4-step job
SHORT = fast("trainer.max_steps=4", "dataset.n_train=160")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console")


@pytest.fixture(scope="module")
def bg_default(pool, runs) -> Future:
    # tracking on, into a fresh store: MLflow's schema-creation lines must not reach the console either
    return pool.submit(run_cli, [*SHORT, "trainer.enable_progress_bar=true", f"hydra.run.dir={runs}/default",
                                 f"outputs_root={runs}/default_outputs"], runs)


@pytest.fixture(scope="module")
def bg_quiet(pool, runs) -> Future:
    return pool.submit(run_cli, ["-q", *SHORT, "tracking=none", f"hydra.run.dir={runs}/quiet"], runs)


@pytest.fixture(scope="module")
def bg_verbose(pool, runs) -> Future:
    return pool.submit(run_cli, ["-v", *SHORT, "tracking=none", f"hydra.run.dir={runs}/verbose"], runs)


@pytest.fixture(scope="module", autouse=True)
def _start_early(request: pytest.FixtureRequest) -> None:
    start_background_fixtures(request, ["bg_default", "bg_quiet", "bg_verbose"])


def _explain(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def test_default_console_has_one_step_bar_and_no_noise(bg_default: Future):
    proc = bg_default.result()
    assert proc.returncode == 0, _explain(proc)
    assert "MLflow run:" in proc.stdout, "this job tracks, so MLflow's own logging had its chance"
    console = proc.stdout + proc.stderr
    for noise in ("Epoch ", "💡", "litlogger", "limit_val_batches", "TPU available", "Writing model shards",
                  "Loading weights", "is deprecated", "Creating initial MLflow database", "stopped: `max_steps="):
        assert noise not in console, f"{noise!r} reached the console:\n{_explain(proc)}"
    # the progress bar counts optimizer steps of the job and ends at max_steps
    assert re.search(r"train: 100%.*\b4/4\b", proc.stderr), _explain(proc)
    # stderr is a pipe here, as in CI or `make run > log`: the bar is drawn at its start and end,
    # not once per step
    assert proc.stderr.count("train:") <= 3, _explain(proc)
    # each log line once (Lightning's own handler used to print every INFO line a second time)
    lines = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if LOG_LINE.match(line)]
    assert lines, _explain(proc)
    repeated = [line for line, n in Counter(lines).items() if n > 1]
    assert not repeated, repeated
    assert not any(line.startswith("INFO: ") for line in console.splitlines())


def test_a_job_shorter_than_an_epoch_validates(bg_default: Future):
    """10 batches per epoch, 4 steps, val_check_interval null: validation still ran (at the last step)."""
    proc = bg_default.result()
    assert proc.returncode == 0, _explain(proc)
    assert re.search(r"│ val/loss\s+│\s+\d+\.\d+ │", proc.stdout), _explain(proc)


def test_quiet_leaves_results_and_no_info_lines(bg_quiet: Future, runs: Path):
    proc = bg_quiet.result()
    assert proc.returncode == 0, _explain(proc)
    assert "alignx: results" in proc.stdout and "eval/gold_reward_greedy" in proc.stdout
    assert not any(LOG_LINE.match(line) and " INFO " in line for line in proc.stdout.splitlines()), _explain(proc)
    assert "train:" not in proc.stderr, "no progress bar in quiet mode"
    # the log file keeps everything the console left out
    assert "INFO" in (runs / "quiet" / "alignx.log").read_text()


def test_verbose_adds_alignx_debug_lines(bg_verbose: Future):
    proc = bg_verbose.result()
    assert proc.returncode == 0, _explain(proc)
    debug = [line for line in proc.stdout.splitlines() if LOG_LINE.match(line) and " DEBUG " in line]
    assert any("imported objective 'sft' from alignx.objectives.sft:SFT" in line for line in debug), _explain(proc)
    assert any("Trainer arguments" in line for line in debug), _explain(proc)
