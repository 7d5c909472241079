"""Checkpoint cost: alignx's safetensors checkpoints vs Lightning's default torch.save pickles.

A real training checkpoint (``model=small``, full fine-tuning with AdamW: weights + two moment
buffers, plus loop and scheduler state) is captured from a 2-step ``alignx.train.train`` job, then
written and read back ``--repeats`` times with each format:

* ``torch.save`` / ``torch.load(weights_only=True)`` - Lightning's default (the baseline);
* ``alignx.checkpoint.save_checkpoint`` / ``load_checkpoint`` - one safetensors file, streamed
  tensor by tensor, fsynced and renamed into place.

Medians are reported, with the ratio to the baseline measured in the same run; plus the file sizes
and each writer's peak extra resident memory (RSS growth during the write, measured in a fresh
subprocess per format so one does not pollute the other). The alignx writer fsyncs (it must, to be
crash-safe); for a like-for-like comparison the torch.save timing includes an fsync too.

    python benchmarks/checkpoint.py                  # -> benchmarks/results/checkpoint-<device>.md
    python benchmarks/checkpoint.py --model tiny --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def capture(model: str, workdir: Path) -> Path:
    """Train 2 steps with checkpoint.every_n_steps=2 and return the checkpoint file."""
    from alignx.config import compose
    from alignx.train import train

    cfg = compose([f"model={model}", "trainer.max_steps=2", "checkpoint.every_n_steps=2", "eval.enabled=false",
                   "save.model=false", "trainer.enable_progress_bar=false", "dataset.n_train=64", "dataset.n_val=8",
                   "data.batch_size=8", "tracking=none", f"output_dir={workdir / 'job'}", f"outputs_root={workdir}"])
    train(cfg)
    return workdir / "job" / "checkpoints" / "step-000002.ckpt"


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def worker(fmt: str, source: str, target: str, repeats: int) -> dict:
    """Time writing and reading one checkpoint in format ``fmt`` (runs in its own process)."""
    import torch

    from alignx.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(source)
    before = _rss_kb()
    writes, reads = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        if fmt == "torch":
            with open(target, "wb") as fh:
                torch.save(ckpt, fh)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            save_checkpoint(ckpt, target)
        writes.append(time.perf_counter() - t)
        t = time.perf_counter()
        back = torch.load(target, weights_only=True) if fmt == "torch" else load_checkpoint(target)
        reads.append(time.perf_counter() - t)
        del back
    return {"write_s": statistics.median(writes), "read_s": statistics.median(reads),
            "size_mb": os.path.getsize(target) / 2**20, "peak_extra_mb": (_rss_kb() - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", nargs=3, metavar=("FORMAT", "SOURCE", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = capture(args.model, tmp)
        results = {}
        for fmt in ("torch", "alignx"):
            proc = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--worker", fmt,
                                   str(source), str(tmp / f"{fmt}.ckpt")], capture_output=True, text=True, check=True)
            results[fmt] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results["torch"]
    lines = [
        f"# Checkpoint write/read: model={args.model} (full fine-tuning, AdamW)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
        f"median of {args.repeats}; ratios against torch.save/torch.load(weights_only=True) measured in the same run.",
        "",
        "| format | file MB | write s | write vs torch | read s | read vs torch | writer peak extra RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt, label in (("torch", "torch.save pickle (Lightning default)"), ("alignx", "alignx safetensors (atomic)")):
        r = results[fmt]
        lines.append(f"| {label} | {r['size_mb']:.1f} | {r['write_s']:.3f} | {r['write_s'] / base['write_s']:.2f}x | "
                     f"{r['read_s']:.3f} | {r['read_s'] / base['read_s']:.2f}x | {r['peak_extra_mb']:.0f} |")
    lines += ["", "Notes: the alignx read memory-maps the file (safetensors' safe_open): pages are read on first use, so",
              "its read time is parsing and mapping. Peak RSS counts the pages a writer touched. Both writers fsync."]
    text = "\n".join(lines) + "\n"
    print(text)
    device = "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu"
    out = args.out or HERE / "results" / f"checkpoint-{device}.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
