"""Regenerate the ``alignx compare`` plots shown in the README (``docs/img/compare_*.png``).

First trains the README's quickstart SFT model (``experiment=quickstart``, ``--sft-steps``), then
runs one small sweep from it on the builtin ``sentiment`` task: DPO and KTO at two values of
``objective.beta``, evaluated every ``--every`` steps during training (``eval.every_n_steps``),
then ``alignx compare`` with the reward-vs-KL frontier, and copies the PNGs it wrote into
``docs/img/`` under ``compare_`` names. ``--seeds 0 1 2`` repeats each setting per seed (compare
then shows 95% intervals over seeds). ``--sft-steps 0`` starts the sweep from a shrunken
``model=tiny``'s random weights instead (faster; the rewards then stay at the untrained level, so
the plots show only what ``compare`` draws). About 8 minutes on a 2-core CPU.

    python benchmarks/compare_example.py                              # SFT, sweep, compare, copy to docs/img/
    python benchmarks/compare_example.py --work /tmp/cmp --steps 40   # elsewhere, longer

The sweep's outputs (its MLflow store, job dirs and the full compare output) stay in ``--work``
(default ``outputs/compare_example/``, git-ignored): ``alignx compare <work>/sweep``
redraws from them without training again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the sweep: colour = objective, a line along beta, seeds averaged into 95% intervals
SWEEP = ["objective=dpo,kto", "objective.beta=0.1,0.5"]
#: a model small enough for the sweep to take minutes on a CPU
SMALL = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_hidden_layers=2",
         "model.num_attention_heads=2", "model.num_key_value_heads=2"]
#: what the README shows, as compare names them -> the name under docs/img/
SHOWN = {
    "frontier_eval_gold_reward_sampled_vs_eval_kl_to_reference.png": "compare_frontier.png",
    "eval_curve_eval_gold_reward_sampled.png": "compare_eval_curve.png",
    "trajectory_eval_gold_reward_sampled_vs_eval_kl_to_reference.png": "compare_trajectory.png",
    "curves_train_loss.png": "compare_train_loss.png",
    "metric_vs_objective.png": "compare_metric_vs_objective.png",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "compare_example")
    parser.add_argument("--steps", type=int, default=30, help="training steps per job of the sweep")
    parser.add_argument("--every", type=int, default=5, help="eval.every_n_steps")
    parser.add_argument("--sft-steps", type=int, default=300, help="steps of the SFT start (0: random weights)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per setting")
    parser.add_argument("--img", type=Path, default=ROOT / "docs" / "img", help="where the README's PNGs go")
    args = parser.parse_args()

    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    model = ["model=tiny", *SMALL]
    if args.sft_steps > 0:
        sft = [f"trainer.max_steps={args.sft_steps}", f"output_dir={work / 'sft'}", f"outputs_root={work / 'outputs'}",
               "trainer.enable_progress_bar=false", "eval.enabled=false"]
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "alignx.cli", "experiment=quickstart", *sft], cwd=work, env=env, check=True)
        print(f"SFT start: {time.time() - t0:.0f}s")
        model = ["model=hf", f"model.name_or_path={work / 'sft' / 'model'}", "optim.lr=1e-4"]
    overrides = [
        *SWEEP, *([f"seed={','.join(map(str, args.seeds))}"] if len(args.seeds) > 1 else [f"seed={args.seeds[0]}"]),
        *model, "dataset=sentiment", f"trainer.max_steps={args.steps}", f"eval.every_n_steps={args.every}",
        "eval.num_prompts=32", "eval.max_new_tokens=12", "dataset.n_train=192", "data.batch_size=16",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "save.model=false",
        f"hydra.sweep.dir={work / 'sweep'}", f"outputs_root={work / 'outputs'}",
    ]
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "alignx.cli", "-m", *overrides], cwd=work, env=env, check=True)
    print(f"sweep: {time.time() - t0:.0f}s")

    from alignx.compare import compare, print_result

    result = compare(work / "sweep", frontier=("eval/kl_to_reference", "eval/gold_reward_sampled"), by="objective")
    print_result(result)
    args.img.mkdir(parents=True, exist_ok=True)
    written = {p.name: p for p in result.paths}
    for name, target in SHOWN.items():
        if name in written:
            shutil.copyfile(written[name], args.img / target)
            print(f"copied:      {args.img / target}")
        else:
            print(f"missing:     {name} (not written by this compare)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
