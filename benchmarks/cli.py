"""CLI start-up: how long ``alignx`` takes to answer when it has no training to do.

Each command runs ``--repeats`` times as a fresh subprocess (the way a user runs it), with every
installed plugin loading as usual; the median wall time is reported next to the baseline measured
in the same run: a bare ``python -c pass`` and ``python -c "import torch"``, so a slow or busy
machine shows up in the baseline too. The target of issue 15 is 2 s or less for each command below.

    python benchmarks/cli.py                # -> benchmarks/results/cli-<machine>.md
    python benchmarks/cli.py --repeats 3    # quick

``--before DIR`` also times every command against an older source tree (``git archive <rev> alignx
conf | tar -x -C DIR``), put first on ``PYTHONPATH``, in the same run, so a change is measured
before and after under the same machine load.
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

#: a jsonl file (written into the run's working directory) whose row 3 lacks the SFT completion
BAD_ROWS = "bad_rows.jsonl"
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
    ("objective key typo, sft (+objective.bta=1)", [ALIGNX, "+objective.bta=1"]),
    ("loss option typo (objective=dpo objective.loss=orpo +objective.orpo_lamda=1)",
     [ALIGNX, "objective=dpo", "objective.loss=orpo", "+objective.orpo_lamda=1"]),
    ("bad _target_ (optim._target_=torch.optim.AdamX)", [ALIGNX, "optim._target_=torch.optim.AdamX"]),
    ("row-level data error (jsonl row 3 lacks completion)", [ALIGNX, "dataset=jsonl", f"dataset.path={BAD_ROWS}"]),
    ("trainer key typo (+trainer.max_stepz=1)", [ALIGNX, "+trainer.max_stepz=1"]),
    # the source does not decide it (GRPO's check_config checks keys itself): the class is imported
    ("objective key typo, grpo (+objective.bta=1)", [ALIGNX, "objective=grpo", "+objective.bta=1"]),
    # SPIN (a plugin) asks the registry before super().check_config: the source does not decide it
    ("objective key typo, spin plugin (+objective.bta=1; left to the class)", [ALIGNX, "objective=spin", "+objective.bta=1"]),
]
BASELINES: list[tuple[str, list[str]]] = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
]


def timed(argv: list[str], cwd: str, repeats: int, source: Path | None = None) -> tuple[float, int, str]:
    """Median seconds over ``repeats`` runs, the exit status and the last stderr line of the last run
    (``source``: a source tree put first on ``PYTHONPATH``)."""
    times, proc = [], None
    env = {**os.environ, "ALIGNX_OUTPUTS": os.path.join(cwd, "outputs")}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), *filter(None, [os.environ.get("PYTHONPATH")])])
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return statistics.median(times), proc.returncode, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / f"cli-{platform.node() or 'cpu'}.md")
    parser.add_argument("--before", type=Path, help="an older source tree (alignx/ and conf/) to time too")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        Path(cwd, BAD_ROWS).write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n'
                                       '{"prompt": "e"}\n')
        for label, argv in [*BASELINES, *COMMANDS]:
            seconds, rc, last = timed(argv, cwd, args.repeats)
            before = timed(argv, cwd, args.repeats, args.before)[0] if args.before and argv[0] == ALIGNX else None
            rows.append((label, seconds, rc, last, before))
            was = f"  (before: {before:.2f} s)" if before is not None else ""
            print(f"{seconds:6.2f} s  rc={rc}  {label}{was}", flush=True)
    base, torch_s = rows[0][1], rows[1][1]
    lines = [
        "# alignx CLI start-up",
        "",
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"median of {args.repeats} fresh subprocesses each; installed plugins load as usual."
        + (" 'before': the same command on the older source tree, timed in the same run." if args.before else ""),
        "",
        "| command | median (s) | x `python -c pass` | x `import torch` |"
        + (" before (s) |" if args.before else "") + " exit | last stderr line |",
        "|---|---:|---:|---:|" + ("---:|" if args.before else "") + "---:|---|",
    ]
    for label, seconds, rc, last, before in rows:
        was = (f" {before:.2f} |" if before is not None else " |") if args.before else ""
        lines.append(f"| {label} | {seconds:.2f} | {seconds / base:.1f} | {seconds / torch_s:.2f} |{was} {rc} | "
                     f"{last[:110].replace('|', '/')} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
