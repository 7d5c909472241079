"""DPO throughput and peak memory: LoRA vs full fine-tuning, live vs precomputed reference.

Every setup trains the same batches of builtin ``sentiment`` pairs for a few optimizer steps with
alignx's own objectives (forward, backward, AdamW step) and reports pairs/s and peak memory.
The baseline, measured in the same run, is SFT on the very same token sequences (each pair's
chosen and rejected completion as two SFT examples) with the same adapter: the memory DPO adds
on top of it is the reference policy's cost.

Each setup runs in its own subprocess so peak memory is not polluted by the previous one:
CUDA peak allocated memory on a GPU, peak resident set size (minus the process's RSS once the
model is built) on CPU.

    python benchmarks/preference.py                       # tiny and small, CPU or the GPU
    python benchmarks/preference.py --models tiny --steps 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SETUPS = [
    # name, objective, adapter, precompute
    ("sft-lora", "sft", "lora", False),
    ("dpo-lora", "dpo", "lora", False),
    ("dpo-lora-precomputed", "dpo", "lora", True),
    ("sft-full", "sft", "none", False),
    ("dpo-full", "dpo", "none", False),
    ("dpo-full-precomputed", "dpo", "none", True),
]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(model_name: str, setup: str, steps: int, warmup: int, batch_size: int, n_pairs: int, device: str) -> dict:
    """Train ``steps`` timed steps of one setup; returns its measurements."""
    import torch
    from hydra.utils import instantiate

    from alignx.config import compose
    from alignx.objectives.dpo import DPO
    from alignx.objectives.sft import SFT
    from alignx.registry import load_plugins
    from alignx.tasks import BUILTIN_TASKS

    _, objective_name, adapter, precompute = next(s for s in SETUPS if s[0] == setup)
    torch.manual_seed(0)
    cfg = compose([f"model={model_name}", f"adapter={adapter}", "objective=dpo",
                   f"objective.precompute_ref_logps={str(precompute).lower()}"])
    registry = load_plugins()
    model, tok = registry.get("model", str(cfg.model.kind))(cfg.model)
    model = registry.get("adapter", adapter)(model, cfg.adapter)
    dev = torch.device(device)
    model.to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated() / 2**20
    else:
        base_mem = _rss_mb()

    rows = BUILTIN_TASKS["sentiment"]().rows("pairs", "train", n_pairs, seed=0)
    pair_items = [DPO.encode(r, tok, cfg.data, {})[0] for r in rows]
    if objective_name == "dpo":
        cls, items = DPO, pair_items
        obj_cfg = cfg.objective
    else:  # the same sequences as SFT examples: a batch of B pairs is 2B sequences here too
        cls, obj_cfg = SFT, compose(["objective=sft"]).objective
        items = [{"input_ids": it[f"{s}_input_ids"], "labels": it[f"{s}_labels"]} for it in pair_items for s in ("chosen", "rejected")]
        batch_size *= 2
    objective = cls(model, tok, obj_cfg, optimizer=instantiate(cfg.optim))
    objective.to(dev)
    if hasattr(objective, "on_fit_start"):
        objective.on_fit_start()  # moves a frozen reference copy to the device, as Lightning would
    optimizer = objective.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    precompute_s = 0.0
    if precompute:
        from alignx.models.reference import compute_reference_logps

        t = time.perf_counter()
        for it, v in zip(items, compute_reference_logps(objective, items, batch_size, progress=False)):
            it["ref_logps"] = v
        precompute_s = time.perf_counter() - t
    collate = cls.collate_fn(tok)
    batches = [collate(items[i : i + batch_size]) for i in range(0, len(items) - batch_size + 1, batch_size)]
    objective.train()

    def train_step(batch: dict) -> None:
        batch = {k: v.to(dev) for k, v in batch.items()}
        loss, _ = objective.step(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        train_step(batches[i % len(batches)])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        train_step(batches[(warmup + i) % len(batches)])
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elapsed = time.perf_counter() - t
    pairs = steps * (batch_size if objective_name == "dpo" else batch_size // 2)
    return {
        "model": model_name, "setup": setup, "device": str(dev), "steps": steps,
        "pairs_per_s": pairs / elapsed, "peak_mb": peak, "peak_over_model_mb": peak - base_mem,
        "precompute_s": precompute_s, "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--setups", nargs="+", default=[s[0] for s in SETUPS])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per batch")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one setup
        model_name, setup = args.one.split(":")
        print(json.dumps(run_one(model_name, setup, args.steps, args.warmup, args.batch_size, args.pairs, args.device)))
        return
    results = []
    for model_name in args.models:
        for setup in args.setups:
            cmd = [sys.executable, __file__, "--one", f"{model_name}:{setup}", "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--pairs", str(args.pairs),
                   "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                sys.exit(f"{model_name}:{setup} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"  {model_name:5s} {setup:22s} {r['pairs_per_s']:8.1f} pairs/s  peak {r['peak_mb']:8.1f} MB", file=sys.stderr)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def table(results: list[dict]) -> str:
    """Markdown table with ratios against the same run's baselines (SFT memory, live-reference speed)."""
    by = {(r["model"], r["setup"]): r for r in results}
    mem_key = "peak_mb" if results and results[0]["device"].startswith("cuda") else "peak_over_model_mb"
    mem_label = "peak MB" if mem_key == "peak_mb" else "peak MB over model (RSS)"
    lines = [
        f"device: {results[0]['device'] if results else '?'}",
        "",
        f"| model | setup | pairs/s | speed vs live ref | {mem_label} | memory vs SFT (same adapter) | ref precompute s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        adapter = "lora" if "lora" in r["setup"] else "full"
        sft = by.get((r["model"], f"sft-{adapter}"))
        live = by.get((r["model"], f"dpo-{adapter}"))
        mem_ratio = f"{r[mem_key] / sft[mem_key]:.2f}x" if sft and sft[mem_key] > 0 else "-"
        speed = f"{r['pairs_per_s'] / live['pairs_per_s']:.2f}x" if live and r["setup"].startswith("dpo") else "-"
        lines.append(
            f"| {r['model']} | {r['setup']} | {r['pairs_per_s']:.1f} | {speed} | {r[mem_key]:.0f} | {mem_ratio} | "
            f"{r['precompute_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
