"""PPO's KL coefficient x seed on builtin ``sentiment`` (reward = gold), before and after the PPO start-up fix.

From one SFT model (``experiment=quickstart``: 300 SFT steps of model=tiny, trained once and cached
in ``--sft-dir``), every run trains PPO with the settings of the sentiment proof in
``tests/test_rl_aligns.py`` (20 iterations of 32 rollouts, lr 3e-4 annealed linearly to 0) at one
``objective.beta`` and one ``seed``, and reports the held-out sampled gold reward
(``eval/gold_reward_sampled``, 64 prompts, the same sampling seed as the SFT model's evaluation)
and the KL from the SFT model measured at the end (``eval/kl_to_reference``).

Variants (``--variants``):

- ``before``: PPO as it was configured before the fix (``objective.score_norm=none``, which puts
  the raw gold score in ``[0, 1]`` in front of a value head that starts at 0);
- ``after``: PPO at its current defaults (``conf/objective/ppo.yaml``);
- the other candidates measured while choosing (``center``, ``whiten``, ``whiten_rewards``) and
  the same two at lr 1e-4 (``before_lr1e-4``, ``after_lr1e-4``): opt-in with ``--variants``.

Each finished run is appended as one JSON line to ``--jsonl`` (so an interrupted sweep keeps what
it measured, and a rerun skips the runs already there); the markdown table is rewritten from that
file after every run.

    OMP_NUM_THREADS=1 python benchmarks/ppo_beta.py                       # the full grid
    OMP_NUM_THREADS=1 python benchmarks/ppo_beta.py --betas 0.03 0.3 --seeds 0 1 2
    python benchmarks/ppo_beta.py --report-only                           # rewrite the table from the JSON lines
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: variant -> Hydra overrides on top of the proof's settings
VARIANTS = {
    "before": ["objective.score_norm=none"],
    "after": [],
    # the candidates compared to choose the default (opt-in with --variants)
    "center": ["objective.score_norm=center"],
    "whiten": ["objective.score_norm=whiten"],
    "whiten_rewards": ["objective.score_norm=none", "objective.whiten_rewards=true"],
    # a smaller policy step: the proof's lr 3e-4 moves the policy ~6 nats of KL in its first iteration
    "before_lr1e-4": ["objective.score_norm=none", "optim.lr=1e-4"],
    "after_lr1e-4": ["optim.lr=1e-4"],
}
#: the sentiment proof's settings (tests/test_rl_aligns.py)
PROOF = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "scheduler=linear",
         "scheduler.num_warmup_steps=0", "eval.num_prompts=64", "objective.log_samples_every_n_steps=0",
         "dataset=sentiment", "model=hf", "objective=ppo", "trainer.max_steps=20", "optim.lr=3e-4", "tracking=none"]


def sft_model(sft_dir: Path) -> tuple[Path, dict]:
    """The quickstart SFT model and its eval metrics, trained once into ``sft_dir``."""
    from alignx.config import compose
    from alignx.train import train

    done = sft_dir / "sft_metrics.json"
    if done.exists():
        return sft_dir / "model", json.loads(done.read_text())
    job = train(compose(["experiment=quickstart", "tracking=none", "trainer.enable_progress_bar=false",
                         f"output_dir={sft_dir}", f"outputs_root={sft_dir}"]))
    metrics = {k: float(v) for k, v in job.metrics.items() if k.startswith("eval/")}
    done.write_text(json.dumps(metrics))
    return Path(job.model_dir), metrics


def run_one(model_dir: Path, work: Path, variant: str, beta: float, seed: int) -> dict:
    """Train one PPO job; returns its eval metrics, the mean training score of its last 5 iterations and its time."""
    from alignx.config import compose
    from alignx.train import train

    out = work / f"{variant}-b{beta}-s{seed}"
    t0 = time.perf_counter()
    job = train(compose([*PROOF, f"model.name_or_path={model_dir}", f"objective.beta={beta}", f"seed={seed}",
                         f"output_dir={out}", f"outputs_root={out}", *VARIANTS[variant]]))
    m = job.metrics
    return {"variant": variant, "beta": beta, "seed": seed, "gold_sampled": float(m["eval/gold_reward_sampled"]),
            "gold_greedy": float(m["eval/gold_reward_greedy"]), "kl": float(m["eval/kl_to_reference"]),
            "seconds": round(time.perf_counter() - t0, 1)}


def report(rows: list[dict], sft: dict, threads: str) -> str:
    """Markdown: one row per (variant, beta) with each seed's gold/KL, the mean, and whether every seed beat SFT."""
    base = sft["eval/gold_reward_sampled"]
    lines = [
        "# PPO: KL coefficient x seed on builtin sentiment (reward = gold)",
        "",
        f"Written by `benchmarks/ppo_beta.py` on {platform.machine()} CPU, OMP_NUM_THREADS={threads}. From the quickstart "
        f"SFT model (held-out sampled gold **{base:.3f}**, greedy {sft['eval/gold_reward_greedy']:.3f}), PPO with the "
        "sentiment proof's settings (20 iterations x 32 rollouts, lr 3e-4 linear to 0). Per run: held-out sampled gold "
        "reward (64 prompts) / KL from the SFT model at the end, in nats per completion. Seeds change the "
        "training and the evaluation's sampling seed (the SFT figure is at seed 0). Variants (overrides on top):",
        "",
        *[f"- `{name}`: `{' '.join(VARIANTS[name]) or '(the current defaults)'}`"
          for name in VARIANTS if any(r["variant"] == name for r in rows)],
        "",
        "| variant | beta | per seed: gold / KL | mean gold | mean KL | runs above SFT |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["variant"], r["beta"]) for r in rows}, key=lambda k: (list(VARIANTS).index(k[0]), k[1]))
    for variant, beta in keys:
        runs = sorted((r for r in rows if r["variant"] == variant and r["beta"] == beta), key=lambda r: r["seed"])
        per = ", ".join(f"s{r['seed']}: {r['gold_sampled']:.3f} / {r['kl']:.1f}" for r in runs)
        above = sum(r["gold_sampled"] > base for r in runs)
        lines.append(f"| {variant} | {beta} | {per} | {statistics.mean(r['gold_sampled'] for r in runs):.3f} | "
                     f"{statistics.mean(r['kl'] for r in runs):.1f} | {above}/{len(runs)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sft-dir", type=Path, default=Path("/tmp/alignx-ppo-beta/sft"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/alignx-ppo-beta/runs"))
    parser.add_argument("--jsonl", type=Path, default=ROOT / "benchmarks/results/ppo-beta-cpu.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ppo-beta-cpu.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite --out from --jsonl and exit")
    args = parser.parse_args(argv)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")

    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines()] if args.jsonl.exists() else []
    model_dir, sft = sft_model(args.sft_dir)
    if not args.report_only:
        done = {(r["variant"], r["beta"], r["seed"]) for r in rows}
        # seeds outermost: a sweep cut short still covers every (variant, beta) with some seeds
        for seed in args.seeds:
            for beta in args.betas:
                for variant in args.variants:
                    if (variant, beta, seed) in done:
                        continue
                    row = run_one(model_dir, args.work, variant, beta, seed)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
                    with args.jsonl.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    args.out.write_text(report(rows, sft, threads))
    args.out.write_text(report(rows, sft, threads))
    print(args.out.read_text())


if __name__ == "__main__":
    sys.exit(main())
