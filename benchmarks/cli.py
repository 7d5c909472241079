"""CLI start-up: how long ``alignx`` takes to answer when it has no training to do.

Each command runs ``--repeats`` times as a fresh subprocess (the way a user runs it), with every
installed plugin loading as usual; the median wall time is reported next to the baseline measured
in the same run: a bare ``python -c pass`` and ``python -c "import torch"``, so a slow or busy
machine shows up in the baseline too. The target of issue 15 is 2 s or less for each command below.

    python benchmarks/cli.py                # -> benchmarks/results/cli-<machine>.md
    python benchmarks/cli.py --repeats 3    # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALIGNX = str(Path(sys.executable).with_name("alignx"))

#: (label, argv); a config or data error must exit 2 with one line, so the exit status is recorded too
COMMANDS: list[tuple[str, list[str]]] = [
    ("alignx --help", [ALIGNX, "--help"]),
    ("alignx plugins", [ALIGNX, "plugins"]),
    ("alignx --cfg job", [ALIGNX, "--cfg", "job"]),
    ("group option typo (objective=dpoo)", [ALIGNX, "objective=dpoo"]),
    ("key typo (optim.lrr=1)", [ALIGNX, "optim.lrr=1"]),
    ("bad value (optim.lr=-1)", [ALIGNX, "optim.lr=-1"]),
    ("bad training length (trainer.max_steps=-1)", [ALIGNX, "trainer.max_steps=-1"]),
    ("unknown model builder (model.kind=nope)", [ALIGNX, "model.kind=nope"]),
    ("missing data file (dataset=jsonl dataset.path=/nope.jsonl)", [ALIGNX, "dataset=jsonl", "dataset.path=/nope.jsonl"]),
    ("objective key typo (+objective.bta=1)", [ALIGNX, "objective=dpo", "+objective.bta=1"]),
    ("trainer key typo (+trainer.max_stepz=1)", [ALIGNX, "+trainer.max_stepz=1"]),
]
BASELINES: list[tuple[str, list[str]]] = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
]


def timed(argv: list[str], cwd: str, repeats: int) -> tuple[float, int, str]:
    """Median seconds over ``repeats`` runs, the exit status and the last stderr line of the last run."""
    times, proc = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, "ALIGNX_OUTPUTS": os.path.join(cwd, "outputs")})
        times.append(time.perf_counter() - t0)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return statistics.median(times), proc.returncode, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / f"cli-{platform.node() or 'cpu'}.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for label, argv in [*BASELINES, *COMMANDS]:
            seconds, rc, last = timed(argv, cwd, args.repeats)
            rows.append((label, seconds, rc, last))
            print(f"{seconds:6.2f} s  rc={rc}  {label}", flush=True)
    base = rows[0][1]
    lines = [
        "# alignx CLI start-up",
        "",
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"median of {args.repeats} fresh subprocesses each; installed plugins load as usual.",
        "",
        "| command | median (s) | x `python -c pass` | exit | last stderr line |",
        "|---|---:|---:|---:|---|",
    ]
    for label, seconds, rc, last in rows:
        lines.append(f"| {label} | {seconds:.2f} | {seconds / base:.1f} | {rc} | {last[:110].replace('|', '/')} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
