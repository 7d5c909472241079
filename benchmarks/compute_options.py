"""``model.gradient_checkpointing`` and ``trainer.compile`` against the plain step: SFT training-step
time and peak memory on ``model=small`` (a ~25M-parameter Llama built in code), batches of 8 rows
of 32..500 tokens, length-bucketed, completion log-probs by chunks of 256.

Each setting runs in its own subprocess (peak RSS is its own); settings alternate for ``--repeats``
rounds and the table reports medians. ``compile`` reports the first steps (which compile) apart
from the steady-state steps that follow.

    python benchmarks/compute_options.py                  # writes benchmarks/results/compute-options-cpu.md
    python benchmarks/compute_options.py --steps 2 --repeats 1 --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "plain": [],
    "checkpointing": ["model.gradient_checkpointing=true"],
    "compile": ["trainer.compile=true"],
}
WARMUP = 2


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(setting: str, steps: int, threads: int) -> dict:
    """One setting in this process: warm-up steps (compilation, if any), then ``steps`` timed steps."""
    import torch

    from alignx.config import compose
    from alignx.models.compute import enable_gradient_checkpointing
    from alignx.models.loading import build_llama
    from alignx.objectives.base import JobContext
    from alignx.registry import load_plugins

    sys.path.insert(0, str(Path(__file__).parent))
    from padding_free import batches

    torch.set_num_threads(threads)
    cfg = compose(["model=small", "objective=sft", "model.logprob_chunk_size=256", *SETTINGS[setting]])
    registry = load_plugins()
    model, tok = build_llama(cfg.model)
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    obj = registry.get("objective", "sft")(model, tok, cfg.objective, optimizer=None)
    obj.bind(JobContext(cfg, registry, [], []))
    data, _ = batches("sft", True, WARMUP + steps, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rss_begin = _rss_mb()
    ends = [time.perf_counter()]
    for batch in data:
        loss, _ = obj.step(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"setting": setting, "warmup_s": ends[WARMUP] - ends[0], "step_s": (ends[-1] - ends[WARMUP]) / steps,
            "peak_rss_mb": peak, "peak_over_begin_mb": peak - rss_begin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compute-options-cpu.md"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.threads)))
        return
    import torch

    results: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for _ in range(args.repeats):
        for setting in SETTINGS:
            cmd = [sys.executable, __file__, "--one", setting, "--steps", str(args.steps), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if proc.returncode:
                raise SystemExit(f"{setting} failed:\n{proc.stderr[-3000:]}")
            results[setting].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(results[setting][-1], flush=True)
    med = {s: {k: statistics.median(r[k] for r in rs) for k in ("warmup_s", "step_s", "peak_rss_mb", "peak_over_begin_mb")}
           for s, rs in results.items()}
    base = med["plain"]
    lines = [f"# benchmarks/compute_options.py on {datetime.date.today()}, CPU, torch {torch.__version__}, "
             f"{args.threads} thread(s), SFT on `model=small`, batch 8, lengths 32..500 bucketed, "
             f"`model.logprob_chunk_size=256`; {WARMUP} warm-up + {args.steps} timed steps, median of {args.repeats}", "",
             f"`python benchmarks/compute_options.py --steps {args.steps} --repeats {args.repeats} --threads {args.threads}`", "",
             "| setting | first 2 steps s | s/step after | speed vs plain | peak RSS MB | peak over start MB | memory vs plain |",
             "|---|---|---|---|---|---|---|"]
    for s, m in med.items():
        lines.append(f"| {s} | {m['warmup_s']:.1f} | {m['step_s']:.2f} | {base['step_s'] / m['step_s']:.2f}x | "
                     f"{m['peak_rss_mb']:.0f} | {m['peak_over_begin_mb']:.0f} | {m['peak_over_begin_mb'] / base['peak_over_begin_mb']:.2f}x |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
