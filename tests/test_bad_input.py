"""Bad input through the real CLI: one clear error naming file/row/column, exit non-zero,
no FINISHED MLflow run and no model presented as a result."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from conftest import FAST, fast, run_alignx, run_cli

GOOD = {"prompt": "Q: 1+1?", "completion": " 2"}


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_on(tmp_path: Path, dataset_args: list[str]):
    fast = [a for a in FAST if not a.startswith("dataset.")]
    return run_alignx(
        [*fast, *dataset_args, f"outputs_root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )


def _assert_nothing_finished(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    if db.exists():
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert all(r.info.status != "FINISHED" for r in runs), [r.info.status for r in runs]
    assert not (tmp_path / "run" / "model").exists()


CASES = {
    "malformed_line": (
        [json.dumps(GOOD), json.dumps(GOOD), '{"prompt": "Q", "completion": ', json.dumps(GOOD)],
        "row 3",
        None,
    ),
    "missing_column": ([json.dumps(GOOD), json.dumps({"prompt": "Q: 2+2?"})], "row 2", "completion"),
    "empty_completion": ([json.dumps(GOOD), json.dumps(GOOD), json.dumps({"prompt": "Q", "completion": ""})], "row 3", "completion"),
    "wrong_type": ([json.dumps({"prompt": "Q", "completion": 5})], "row 1", "completion"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_jsonl_rows(tmp_path, case):
    lines, row, column = CASES[case]
    path = _jsonl(tmp_path / "data.jsonl", lines)
    proc = _run_on(tmp_path, ["dataset=jsonl", f"dataset.path={path}", "dataset.val_fraction=0.3"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("alignx: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert str(path) in errors[0] and row in errors[0]
    if column:
        assert f"column '{column}'" in errors[0]
    assert "Traceback" not in proc.stderr
    _assert_nothing_finished(tmp_path)


def test_bad_parquet_type_names_file_row_column(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"question": ["a", "b", "c"], "answer": ["x", "y", "z"]}), path)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "answer": [1, 2]}), bad)
    proc = _run_on(
        tmp_path,
        ["dataset=parquet", f"dataset.path={bad}", "dataset.columns={prompt: question, completion: answer}"],
    )
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "row 1" in proc.stderr and "column 'answer'" in proc.stderr
    _assert_nothing_finished(tmp_path)


def test_missing_file_is_named(tmp_path):
    proc = _run_on(tmp_path, ["dataset=jsonl", f"dataset.path={tmp_path / 'nope.jsonl'}"])
    assert proc.returncode == 2
    assert "nope.jsonl" in proc.stderr and "does not exist" in proc.stderr
    _assert_nothing_finished(tmp_path)


def test_hub_dataset_without_network_is_a_clear_error(tmp_path):
    proc = _run_on(tmp_path, ["dataset=hub", "dataset.id=nonexistent-org/nonexistent-dataset-xyz"])
    assert proc.returncode == 2
    line = next(l for l in proc.stderr.splitlines() if l.startswith("alignx: error:"))
    assert "nonexistent-org/nonexistent-dataset-xyz" in line and "dataset.id=" in line
    assert "Traceback" not in proc.stderr
    _assert_nothing_finished(tmp_path)


# -- preference data: data.invalid_rows decides between one clear error and a counted drop ----

def _pair_line(i: int) -> str:
    return json.dumps({"prompt": f"Q{i}:", "chosen": " good", "rejected": " bad"})


PAIRS_WITH_TWO_BAD = (
    [_pair_line(i) for i in range(3)]
    + [json.dumps({"prompt": "Q:", "chosen": " same", "rejected": " same"})]  # line 4: chosen == rejected
    + [_pair_line(i) for i in range(3, 10)]
    + [json.dumps({"prompt": "Q:", "chosen": "", "rejected": " bad"})]  # line 12: empty completion
)


def _run_dpo(tmp_path: Path, path: Path, *extra: str):
    args = [a for a in fast("objective=dpo", "trainer.max_steps=2") if not a.startswith("dataset.")]
    return run_cli(
        [*args, "dataset=jsonl", f"dataset.path={path}", "dataset.val_fraction=0.25", "eval.enabled=false", *extra,
         f"outputs_root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )


def test_dpo_bad_pairs_stop_the_job_by_default(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", PAIRS_WITH_TWO_BAD)
    proc = _run_dpo(tmp_path, path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("alignx: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert f"{path}, row 4, column 'rejected'" in errors[0] and "identical" in errors[0]
    assert "Traceback" not in proc.stderr
    _assert_nothing_finished(tmp_path)


def test_dpo_bad_pairs_dropped_and_counted(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", PAIRS_WITH_TWO_BAD)
    proc = _run_dpo(tmp_path, path, "data.invalid_rows=drop")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "2 invalid train row(s) dropped (chosen == rejected: 1, empty text: 1)" in out
    assert f"{path}, row 4, column 'rejected'" in out and f"{path}, row 12, column 'chosen'" in out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.tags["data.train.invalid_dropped"] == "2"  # data counters are tags, not metrics
    assert run.data.tags["data.val.invalid_dropped"] == "0"
