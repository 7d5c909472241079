"""Reward over-optimisation in miniature (Coste et al. 2023): GRPO against one learned reward model
vs against a conservative ensemble of three, with the builtin gold reward as ground truth.

Stages, all ordinary ``alignx`` commands run from ``--work`` (default ``outputs/overoptimisation/``,
git-ignored; a stage whose output exists is reused, ``--fresh`` retrains everything):

1. the policy's start: the README's quickstart SFT model (``experiment=quickstart``);
2. K = 3 reward models, one sweep over the seed (on a builtin task each seed also draws its own
   training pairs and label noise)::

       alignx -m objective=rm seed=0,1,2 dataset=sentiment dataset.label_noise=0.25 ...

3. one GRPO sweep from the SFT model: ``reward=ensemble reward.aggregate=<--aggregate>`` with
   ``reward.paths=[rm0]`` (one RM: with one member min and mean are that RM) or
   ``[rm0,rm1,rm2]`` (the ensemble), x ``--seeds``, evaluated every ``--every`` steps
   (``eval.every_n_steps``) by the gold reward and by rm0 (``eval.reward_model``);
4. ``alignx compare`` of that sweep (gold reward, rm0's reward, the optimised training reward and
   the ensemble's std against step); the four panels are stitched into ``docs/img/overoptimisation.png``
   and the numbers written to ``benchmarks/results/overoptimisation-cpu.md`` (+ ``.jsonl``).

    python benchmarks/overoptimisation.py                         # seeds 0 1 2, min, 30 steps
    python benchmarks/overoptimisation.py --aggregate mean --seeds 0 --sft <quickstart dir>/model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

# one intra-op thread per job (the jobs run one after another; a shared CPU is not oversubscribed)
os.environ.setdefault("OMP_NUM_THREADS", "1")
for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_key] = "1"

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["trainer.enable_progress_bar=false", "hydra/job_logging=quiet"]
#: the K reward models: small models (smaller than the policy) from scratch on noisy sentiment pairs
#: (Coste et al. use 25% label noise); each seed draws its own pairs and noise
RM = ["objective=rm", "dataset=sentiment", "dataset.label_noise=0.25", "trainer.max_steps=150", "data.batch_size=16",
      "optim.lr=1e-3", "eval.enabled=false", "model.hidden_size=64", "model.intermediate_size=128",
      "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=2"]
#: GRPO with a small KL penalty and a high learning rate: room to over-optimise in a few dozen steps
GRPO = ["objective=grpo", "dataset=sentiment", "optim.lr=3e-4", "objective.beta=0.01", "data.batch_size=16",
        "objective.mini_batch_size=16", "eval.num_prompts=64", "objective.log_samples_every_n_steps=0",
        "trainer.log_every_n_steps=1", "save.model=false", "scheduler=linear", "scheduler.num_warmup_steps=0",
        "eval.max_new_tokens=24"]
#: compare's plots -> the panel title in docs/img/overoptimisation.png
PANELS = {
    "eval_curve_eval_gold_reward_sampled.png": "gold reward (ground truth), held-out samples",
    "eval_curve_eval_rm_reward_sampled.png": "proxy: rm0's reward, held-out samples",
    "curves_reward_ensemble.png": "optimised reward (training rollouts)",
    "curves_reward_ensemble_std.png": "ensemble std (disagreement), training rollouts",
}


def alignx(args: list[str], cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "alignx.cli", *args], cwd=cwd, check=True)


def history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "overoptimisation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="GRPO seeds per setting")
    parser.add_argument("--steps", type=int, default=30, help="GRPO iterations per job")
    parser.add_argument("--every", type=int, default=5, help="eval.every_n_steps")
    # not uncertainty: the sweep crosses the aggregate with both legs, and one RM has no std to penalise
    parser.add_argument("--aggregate", default="min", choices=["min", "mean"], help="reward.aggregate of both legs")
    parser.add_argument("--fresh", action="store_true", help="retrain the SFT start and the reward models")
    parser.add_argument("--sft", type=Path, help="an existing experiment=quickstart model dir to start from "
                        "(copied into --work; default: train it)")
    parser.add_argument("--report-only", action="store_true",
                        help="do not train: evaluate the start, compare the existing sweep and write the results")
    parser.add_argument("--img", type=Path, default=ROOT / "docs" / "img" / "overoptimisation.png")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "overoptimisation-cpu")
    args = parser.parse_args()

    work = args.work.resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    store = [f"outputs_root={work / 'outputs'}"]
    t_start = time.time()

    sft = work / "sft" / "model"
    if args.sft and not sft.is_dir():
        shutil.copytree(args.sft, sft)
    if not sft.is_dir():
        t0 = time.time()
        alignx(["experiment=quickstart", f"output_dir={work / 'sft'}", "eval.enabled=false", *QUIET, *store], work)
        print(f"SFT start: {time.time() - t0:.0f}s", flush=True)
    rms = [work / "rms" / str(i) / "model" for i in range(3)]
    if not all(p.is_dir() for p in rms):
        t0 = time.time()
        alignx(["-m", "seed=0,1,2", *RM, *QUIET, *store, f"hydra.sweep.dir={work / 'rms'}"], work)
        print(f"3 reward models: {time.time() - t0:.0f}s", flush=True)
    for i, path in enumerate(rms):  # short names: the sweep's legend shows reward.paths
        link = work / f"rm{i}"
        if not link.exists():
            link.symlink_to(path)

    sweep = work / f"grpo_{args.aggregate}"
    if not args.report_only:
        if sweep.exists():
            shutil.rmtree(sweep)
        run_sweep(args, work, sft, store, sweep)
    report(args, work, sft, sweep, t_start)
    return 0


def run_sweep(args: argparse.Namespace, work: Path, sft: Path, store: list[str], sweep: Path) -> None:
    t0 = time.time()
    # seed first: Hydra varies the last swept key fastest, so each seed's pair of jobs finishes together
    alignx(["-m", f"seed={','.join(map(str, args.seeds))}", *GRPO, "reward=ensemble", f"reward.aggregate={args.aggregate}",
            "reward.paths=[rm0],[rm0,rm1,rm2]", "model=hf",
            f"model.name_or_path={sft}", f"trainer.max_steps={args.steps}", f"eval.every_n_steps={args.every}",
            "eval.reward_model=rm0", *QUIET, *store, f"hydra.sweep.dir={sweep}"], work)
    print(f"GRPO sweep: {time.time() - t0:.0f}s", flush=True)


def baseline(work: Path, sft: Path, seeds: list[int]) -> dict:
    """Step 0: the SFT start's gold and rm0 reward, evaluated with each seed of the sweep, and each
    reward model's accuracy on clean held-out pairs."""
    from alignx.evaluation.command import evaluate_model

    common = ["dataset=sentiment", "eval.num_prompts=64", "eval.max_new_tokens=24", "tracking=none",
              f"outputs_root={work / 'outputs'}"]
    start = {}
    for seed in seeds:
        metrics, _, _ = evaluate_model(str(sft), [*common, f"seed={seed}", f"eval.reward_model={work / 'rm0'}"], track=False)
        start[seed] = {"gold": round(metrics["eval/gold_reward_sampled"], 4), "proxy_rm0": round(metrics["eval/rm_reward_sampled"], 4)}
    accuracy = [round(evaluate_model(str(work / f"rm{i}"), common, track=False)[0]["eval/rm_accuracy"], 4) for i in range(3)]
    return {"start": start, "rm_accuracy": accuracy}


def report(args: argparse.Namespace, work: Path, sft: Path, sweep: Path, t_start: float) -> None:
    from alignx.compare import compare

    written: dict[str, Path] = {}
    for metrics, curve in ((["eval/gold_reward_sampled"], "reward/ensemble"),
                           (["eval/rm_reward_sampled"], "reward/ensemble/std")):
        result = compare(sweep, metrics=metrics, curve=curve, out=sweep / "compare" / metrics[0].split("/")[1])
        written.update({p.name: p for p in result.paths})

    # the numbers: per job, each curve at the first and last evaluation, and the gold peak
    from mlflow import MlflowClient

    from alignx.compare.runs import job_runs

    client = MlflowClient(result.tracking_uri)
    records = []
    for run in job_runs(client, client.get_run(result.parent_run_id)):
        params = run.data.params
        gold = history(client, run.info.run_id, "eval/gold_reward_sampled")
        proxy = history(client, run.info.run_id, "eval/rm_reward_sampled")
        kl = history(client, run.info.run_id, "eval/kl_to_reference")
        std = history(client, run.info.run_id, "reward/ensemble/std")
        steps = sorted(gold)
        peak = max(steps, key=lambda s: gold[s])
        members = params["reward.paths"].count("rm")
        records.append({
            "setting": "one RM" if members == 1 else f"ensemble of {members}, {args.aggregate}",
            "seed": int(params["seed"]), "steps": steps,
            "gold": [round(gold[s], 4) for s in steps], "proxy_rm0": [round(proxy[s], 4) for s in steps],
            "kl": [round(kl[s], 3) for s in steps if s in kl],
            "gold_peak": round(gold[peak], 4), "gold_peak_step": peak,
            "gold_final": round(gold[steps[-1]], 4), "drop_from_peak": round(gold[peak] - gold[steps[-1]], 4),
            "proxy_final": round(proxy[steps[-1]], 4),
            "std_first": round(std[min(std)], 4) if std else None, "std_last": round(std[max(std)], 4) if std else None,
        })
    records.sort(key=lambda r: (r["setting"] != "one RM", r["seed"]))
    base = baseline(work, sft, args.seeds)
    write_results(args, records, base, time.time() - t_start)
    stitch(written, args.img)


def write_results(args: argparse.Namespace, records: list[dict], base: dict, total_s: float) -> None:
    args.results.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.results}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [base, *records]))
    lines = [
        "# Over-optimisation: GRPO against one learned RM vs a conservative ensemble",
        "",
        f"`python benchmarks/overoptimisation.py --aggregate {args.aggregate} --seeds "
        f"{' '.join(map(str, args.seeds))} --steps {args.steps} --every {args.every}` on {platform.machine()} "
        f"({os.cpu_count()} cores, shared), this invocation {total_s:.0f}s.",
        "Start: quickstart SFT model (model=tiny). Reward models: 3 x objective=rm (hidden 64, 2 layers), seeds 0/1/2, "
        "sentiment pairs with 25% flipped labels, 150 steps. GRPO: " + " ".join(GRPO[1:5]) + f", {args.steps} iterations.",
        "gold = eval/gold_reward_sampled (builtin sentiment gold reward, 64 held-out prompts, one sample each);",
        "proxy = eval/rm_reward_sampled (rm0, the single RM, scoring the same samples).",
        f"Reward models' accuracy on clean held-out pairs (eval/rm_accuracy): rm0/rm1/rm2 = "
        f"{' / '.join(f'{a:.3f}' for a in base['rm_accuracy'])}.",
        "Step 0 (the SFT start, `alignx eval` with the same seeds): " + "; ".join(
            f"seed {s}: gold {v['gold']:.3f}, rm0 {v['proxy_rm0']:.3f}" for s, v in base["start"].items()) + ".",
        "",
        "| setting | seed | gold at each eval step | gold peak (step) | gold final | drop from peak | rm0 final | "
        "KL final | ensemble std first -> last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['setting']} | {r['seed']} | {' '.join(f'{g:.3f}' for g in r['gold'])} | {r['gold_peak']:.3f} "
            f"({r['gold_peak_step']}) | {r['gold_final']:.3f} | {r['drop_from_peak']:.3f} | {r['proxy_final']:.3f} | "
            f"{r['kl'][-1] if r['kl'] else 'n/a'} | {r['std_first']} -> {r['std_last']} |"
        )
    lines.append("")
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        mean = lambda key: sum(r[key] for r in rs) / len(rs)  # noqa: E731 - a one-line helper
        lines.append(f"- {setting}: over {len(rs)} seeds, gold final {mean('gold_final'):.3f}, gold peak "
                     f"{mean('gold_peak'):.3f}, drop from peak {mean('drop_from_peak'):.3f}, rm0 final {mean('proxy_final'):.3f}")
    Path(f"{args.results}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def stitch(written: dict[str, Path], img: Path) -> None:
    """The compare plots of :data:`PANELS`, side by side in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = [(name, title) for name, title in PANELS.items() if name in written]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, title) in zip(axes.flat, found):
        ax.imshow(plt.imread(written[name]))
        ax.set_title(title, fontsize="medium")
    fig.suptitle("GRPO against one learned reward model vs a conservative ensemble (alignx compare)", fontsize="large")
    fig.tight_layout()
    img.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(img, dpi=90)
    plt.close(fig)
    print(f"wrote {img}")


if __name__ == "__main__":
    sys.exit(main())
