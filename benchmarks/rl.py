"""Online RL cost: rollout throughput with the KV cache on vs off, and where a PPO/GRPO iteration's time goes.

Two measurements, on each model:

1. Rollouts. ``alignx.generation.sample`` (the one generation path of online RL and evaluation)
   completes a batch of left-padded builtin ``sentiment`` prompts, with the KV cache and without
   it (every step recomputes the whole prefix). One warm-up call, then ``--repeats`` timed calls;
   the median is reported. Generated tokens are ``rollout.response_mask.sum()``: tokens up to and
   including each row's first EOS. Untrained models rarely emit EOS, so this is close to
   batch x max_new_tokens; a finished row still costs compute until every row has finished, so
   tokens/s counts useful tokens, not the work done. The baseline of the speed-up is the
   cache-off run of the same model and length, measured in the same run.

2. Training iterations. Real ``alignx.train.train`` jobs (``objective=ppo`` and ``objective=grpo``
   at their config defaults) log, per iteration, ``time/step_s`` (the whole iteration),
   ``time/generation_s`` (inside model.generate only) and ``time/rollout_s`` (generation + reward
   + the no-grad policy/reference log-prob passes) to an MLflow store in a temporary directory;
   the first ``--rl-warmup`` iterations are skipped and the medians of the rest reported. The
   baseline of the step-time ratio is PPO on the same model, measured in the same run.

Each measurement runs in its own subprocess, so peak memory is not polluted by the previous one:
CUDA peak allocated memory on a GPU; on CPU, peak resident set size (for rollouts minus the RSS
once the model is built, for training jobs the whole process's). No network is used.

    python benchmarks/rl.py                    # tiny and small, CPU or the GPU -> benchmarks/results/rl-<device>.md
    python benchmarks/rl.py --quick            # smoke run (tiny, short rollouts, 8 prompts/iteration); prints only
    python benchmarks/rl.py --models tiny --parts rollout --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: training setups: name -> Hydra overrides (the step-time ratio is against "ppo")
RL_SETUPS = {
    "ppo": ["objective=ppo"],
    "grpo": ["objective=grpo"],
    # opt-in (--rl-setups ... ppo-nocache): what the KV cache saves end to end
    "ppo-nocache": ["objective=ppo", "objective.use_cache=false"],
}
DEFAULT_RL_SETUPS = ["ppo", "grpo"]
RESULT_MARK = "RL_BENCH_RESULT "
ROOT = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- child: rollouts ---------------------------------------------------------------------------


def run_rollout(model_name: str, use_cache: bool, max_new_tokens: int, batch_size: int, repeats: int,
                warmup: int, temperature: float, device: str) -> dict:
    """Time ``repeats`` calls of ``sample`` on one batch of prompts; returns the measurements."""
    import torch

    from alignx.config import compose
    from alignx.generation import encode_prompts, left_pad, sample
    from alignx.registry import load_plugins
    from alignx.tasks import BUILTIN_TASKS

    cfg = compose([f"model={model_name}"])
    model, tok = load_plugins().get("model", str(cfg.model.kind))(cfg.model)
    dev = torch.device(device)
    model.to(dev).eval()
    rows = BUILTIN_TASKS["sentiment"]().rows("prompt", "train", batch_size, seed=0)
    ids, mask = left_pad(encode_prompts(tok, [r["prompt"] for r in rows]), tok.pad_token_id)
    ids, mask = ids.to(dev), mask.to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated() / 2**20
    else:
        base_mem = _rss_mb()

    def call(seed: int):
        return sample(model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                      max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, use_cache=use_cache)

    for i in range(warmup):
        call(10_000 + i)
    times, tokens, eos = [], [], []
    for i in range(repeats):  # seeds 0..repeats-1 for cache on and off alike: the same sampling work
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        rollout = call(i)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        tokens.append(int(rollout.response_mask.sum()))
        eos.append(float(rollout.has_eos.float().mean()))
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _peak_rss_mb()
    tok_per_s = [n / t for n, t in zip(tokens, times)]
    return {
        "part": "rollout", "model": model_name, "use_cache": use_cache, "max_new_tokens": max_new_tokens,
        "batch_size": batch_size, "prompt_width": int(ids.size(1)), "repeats": repeats, "device": str(dev),
        "median_s": statistics.median(times), "tokens_per_call": statistics.median(tokens),
        "tokens_per_s": statistics.median(tok_per_s), "eos_rate": statistics.mean(eos),
        "peak_mb": peak, "peak_over_model_mb": peak - base_mem,
        "params": sum(p.numel() for p in model.parameters()),
    }


# -- child: training iterations ----------------------------------------------------------------


def run_rl(model_name: str, setup: str, iterations: int, warmup: int, extra: list[str], device: str) -> dict:
    """Train ``iterations`` online-RL iterations with alignx.train.train; returns per-iteration timings."""
    import torch
    from mlflow.tracking import MlflowClient

    from alignx.config import compose
    from alignx.train import train

    if iterations <= warmup:
        raise SystemExit(f"{model_name}:{setup}: --iterations ({iterations}) must exceed --rl-warmup ({warmup})")
    tmp = Path(tempfile.mkdtemp(prefix="alignx-rl-bench-"))
    try:
        overrides = [
            *RL_SETUPS[setup], f"model={model_name}", f"trainer.max_steps={iterations}",
            "tracking=mlflow", f"outputs_root={tmp}", f"output_dir={tmp / 'out'}", "eval.enabled=false",
            "save.model=false", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
            *(["trainer=gpu"] if device.startswith("cuda") else []), *extra,
        ]
        cfg = compose(overrides)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        job = train(cfg)
        wall = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _peak_rss_mb()
        client = MlflowClient(job.tracking_uri)

        def history(key: str) -> list[float]:
            points = sorted(client.get_metric_history(job.run_id, key), key=lambda m: m.step)
            if len(points) != iterations:
                raise SystemExit(f"{model_name}:{setup}: {len(points)} values of {key} in MLflow, expected {iterations}")
            return [m.value for m in points][warmup:]

        step, gen, roll, length = (history(k) for k in ("time/step_s", "time/generation_s", "time/rollout_s",
                                                        "completions/mean_length"))
        rollouts = int(cfg.data.batch_size) * int(cfg.objective.get("group_size", 1))
        return {
            "part": "rl", "model": model_name, "setup": setup, "device": device, "iterations": iterations,
            "timed": len(step), "rollouts_per_iteration": rollouts,
            "max_new_tokens": int(cfg.objective.max_new_tokens), "epochs": int(cfg.objective.epochs),
            "mini_batch_size": cfg.objective.get("mini_batch_size"), "overrides": overrides,
            "step_s": statistics.median(step), "generation_s": statistics.median(gen),
            "rollout_s": statistics.median(roll),
            "generation_share": statistics.median(g / s for g, s in zip(gen, step)),
            "rollout_share": statistics.median(r / s for r, s in zip(roll, step)),
            "gen_tokens_per_s": statistics.median(n * rollouts / g for n, g in zip(length, gen)),
            "mean_length": statistics.mean(length), "peak_mb": peak, "job_wall_s": wall,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- parent ------------------------------------------------------------------------------------


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _iterations(specs: list[str], model: str) -> int:
    """``--iterations 10 small=6``: a plain number is the default, ``model=N`` overrides it for one model."""
    default, per_model = None, {}
    for spec in specs:
        if "=" in spec:
            name, n = spec.split("=", 1)
            per_model[name] = int(n)
        else:
            default = int(spec)
    n = per_model.get(model, default)
    if n is None:
        raise SystemExit(f"--iterations gives no count for model {model}: add a plain number or {model}=N")
    return n


def _child(args: argparse.Namespace, spec: str) -> dict:
    cmd = [sys.executable, __file__, "--one", spec, "--device", args.device, "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--temperature", str(args.temperature),
           "--rl-warmup", str(args.rl_warmup), "--iterations", *args.iterations]
    for o in args.override:
        cmd += ["--override", o]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}")
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["process_s"] = time.perf_counter() - t
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", help="model configs (default: tiny small; --quick: tiny)")
    parser.add_argument("--parts", nargs="+", choices=["rollout", "rl"], default=["rollout", "rl"])
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    # rollouts
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per sample call")
    parser.add_argument("--max-new-tokens", type=int, nargs="+", help="rollout lengths (default: 32 64; --quick: 8 16)")
    parser.add_argument("--repeats", type=int, help="timed sample calls per setup, median reported (default 5; --quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed sample calls first")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (conf/objective/ppo.yaml's)")
    # training iterations
    parser.add_argument("--rl-setups", nargs="+", choices=list(RL_SETUPS), default=DEFAULT_RL_SETUPS)
    parser.add_argument("--iterations", nargs="+", metavar="N|MODEL=N",
                        help="iterations per training job, warm-up included (default: 10 small=6; --quick: 2)")
    parser.add_argument("--rl-warmup", type=int, default=1, help="first iterations left out of the medians")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every training job (repeatable); --quick adds data.batch_size=8")
    parser.add_argument("--quick", action="store_true", help="fast smoke run; writes no results file unless --out is given")
    parser.add_argument("--out", type=Path, help="markdown results file (default benchmarks/results/rl-<device>.md)")
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    argv = sys.argv[1:]
    q = args.quick
    args.models = args.models or (["tiny"] if q else ["tiny", "small"])
    args.max_new_tokens = args.max_new_tokens or ([8, 16] if q else [32, 64])
    args.repeats = args.repeats or (2 if q else 5)
    args.iterations = args.iterations or (["2"] if q else ["10", "small=6"])
    if q and not any(o.startswith("data.batch_size=") for o in args.override):
        args.override.append("data.batch_size=8")

    if args.one:  # child process: one measurement
        part, model_name, *rest = args.one.split(":")
        if part == "rollout":
            res = run_rollout(model_name, rest[0] == "on", int(rest[1]), args.batch_size, args.repeats, args.warmup,
                              args.temperature, args.device)
        else:
            res = run_rl(model_name, rest[0], _iterations(args.iterations, model_name), args.rl_warmup, args.override,
                         args.device)
        print(RESULT_MARK + json.dumps(res), flush=True)
        return

    results: list[dict] = []
    t0 = time.perf_counter()
    for model_name in args.models:
        if "rollout" in args.parts:
            for n in args.max_new_tokens:
                for cache in ("off", "on"):
                    r = _child(args, f"rollout:{model_name}:{cache}:{n}")
                    results.append(r)
                    print(f"  {model_name:5s} rollout {n:3d} tokens cache {cache:3s} {r['tokens_per_s']:9.1f} tok/s "
                          f"({r['median_s']:.2f} s/call, {r['process_s']:.0f} s)", file=sys.stderr)
        if "rl" in args.parts:
            for setup in args.rl_setups:
                r = _child(args, f"rl:{model_name}:{setup}")
                results.append(r)
                print(f"  {model_name:5s} {setup:12s} step {r['step_s']:7.2f} s  generation {r['generation_s']:6.2f} s "
                      f"({100 * r['generation_share']:.0f}%)  ({r['process_s']:.0f} s)", file=sys.stderr)
    report = markdown(results, args, argv, time.perf_counter() - t0)
    print(report)
    out = args.out or (None if q else ROOT / "benchmarks" / "results" / f"rl-{'cuda' if args.device.startswith('cuda') else 'cpu'}.md")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")
        print(f"wrote {out}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


# -- report ------------------------------------------------------------------------------------


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{os.cpu_count()}-core CPU ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    if device.startswith("cuda"):
        return f"{text}, GPU {torch.cuda.get_device_name(0)}"
    return f"{text}, no GPU"


def _cell(r: dict | None, key: str, fmt: str) -> str:
    return format(r[key], fmt) if r else "-"


def _command(argv: list[str]) -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ)
    return " ".join(filter(None, [env, "python benchmarks/rl.py", shlex.join(argv)]))


def markdown(results: list[dict], args: argparse.Namespace, argv: list[str], elapsed: float) -> str:
    device = results[0]["device"] if results else args.device
    cuda = device.startswith("cuda")
    lines = [
        f"# benchmarks/rl.py on {time.strftime('%Y-%m-%d')}, {machine(device)}" + (" (--quick smoke run)" if args.quick else ""),
        "",
        f"`{_command(argv)}`  ({elapsed / 60:.1f} min)",
        "",
        f"device: {device}",
    ]
    mem_label = "peak MB (CUDA allocated)" if cuda else "peak MB over model (RSS)"
    mem_key = "peak_mb" if cuda else "peak_over_model_mb"
    rollouts = [r for r in results if r["part"] == "rollout"]
    if rollouts:
        r0 = rollouts[0]
        lines += [
            "",
            (f"## Rollouts: `alignx.generation.sample`, {r0['batch_size']} left-padded sentiment prompts "
             f"(width {r0['prompt_width']}), temperature {args.temperature}, median of {r0['repeats']} calls after "
             f"{args.warmup} warm-up"),
            "",
            ("| model | max_new_tokens | tokens/call | EOS rate | cache off tok/s | cache on tok/s | speed-up (on / off) "
             f"| off: s/call | on: s/call | off: {mem_label} | on: {mem_label} |"),
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        by = {(r["model"], r["max_new_tokens"], r["use_cache"]): r for r in rollouts}
        for model, n in dict.fromkeys((r["model"], r["max_new_tokens"]) for r in rollouts):
            off, on = by.get((model, n, False)), by.get((model, n, True))
            some = on or off
            speed = f"{on['tokens_per_s'] / off['tokens_per_s']:.2f}x" if on and off else "-"
            lines.append(
                f"| {model} | {n} | {some['tokens_per_call']:.0f} | {some['eos_rate']:.2f} | {_cell(off, 'tokens_per_s', '.0f')} "
                f"| {_cell(on, 'tokens_per_s', '.0f')} | {speed} | {_cell(off, 'median_s', '.2f')} | {_cell(on, 'median_s', '.2f')} "
                f"| {_cell(off, mem_key, '.0f')} | {_cell(on, mem_key, '.0f')} |"
            )
        lines += [
            "",
            "tokens/call: generated tokens, `rollout.response_mask.sum()` (up to and including each row's first EOS; "
            "median over calls). Untrained models rarely emit EOS (EOS rate = share of rows that did), so this is close "
            "to batch x max_new_tokens; rows that finished early are still computed until all have, so tok/s counts "
            "useful tokens, not work done. Cache off recomputes the whole prefix at every step. "
            + ("Peak memory: CUDA max allocated during the process." if cuda else
               "Peak memory: peak RSS of the process minus its RSS once the model is built."),
        ]
    rl = [r for r in results if r["part"] == "rl"]
    if rl:
        lines += [
            "",
            (f"## Training iterations: `alignx.train.train`, medians over iterations {args.rl_warmup + 1}..N "
             f"(first {args.rl_warmup} skipped as warm-up)"),
            "",
            ("| model | objective | iterations (timed) | rollouts/iteration | epochs x minibatch | step s | step vs ppo "
             "| generation s | generation share | rollout s | rollout share | generation tok/s | mean length "
             f"| {'peak MB (CUDA allocated)' if cuda else 'peak RSS MB'} |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        base = {r["model"]: r for r in rl if r["setup"] == "ppo"}
        for r in rl:
            b = base.get(r["model"])
            ratio = f"{r['step_s'] / b['step_s']:.2f}x" if b else "-"
            mb = r["mini_batch_size"] if r["mini_batch_size"] is not None else "all"
            lines.append(
                f"| {r['model']} | {r['setup']} | {r['iterations']} ({r['timed']}) | {r['rollouts_per_iteration']} "
                f"| {r['epochs']} x {mb} | {r['step_s']:.2f} | {ratio} | {r['generation_s']:.2f} "
                f"| {100 * r['generation_share']:.0f}% | {r['rollout_s']:.2f} | {100 * r['rollout_share']:.0f}% "
                f"| {r['gen_tokens_per_s']:.0f} | {r['mean_length']:.1f} | {r['peak_mb']:.0f} |"
            )
        extra = sorted({o for r in rl for o in r["overrides"][len(RL_SETUPS[r["setup"]]):] 
                        if not o.startswith(("outputs_root=", "output_dir=", "model=", "trainer.max_steps="))})
        lines += [
            "",
            "step s: `time/step_s`, one whole iteration (rollouts, advantages, every PPO epoch's updates). "
            "generation s: `time/generation_s`, inside model.generate only; generation share = generation_s / step_s "
            "per iteration, then the median. rollout s: `time/rollout_s`, generation + reward + the no-grad policy "
            "(and reference) log-prob passes; rollout share likewise. step vs ppo: step time over objective=ppo's on the "
            "same model in this run. generation tok/s: completions/mean_length x rollouts / generation_s (median per "
            "iteration); mean length: generated tokens per completion, EOS included. Objectives at their "
            "conf/objective defaults unless overridden below (max_new_tokens "
            + "/".join(sorted({str(r["max_new_tokens"]) for r in rl}))
            + "; ppo: 1 completion per prompt, value model; grpo: group_size completions per prompt, no value model). "
            + ("" if not cuda else "On CUDA the timings are host clocks without a final synchronize (HF generate "
               "synchronizes every token, so generation_s is close). ")
            + "Peak memory: of the whole training process.",
            "",
            "Overrides of every training job (besides objective, model, trainer.max_steps and temporary "
            "outputs_root/output_dir): `" + " ".join(extra) + "`",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
