"""alignx against TRL, side by side: SFT, DPO and RM on the same weights and rows, rows/s and peak RSS.

TRL comes with the optional ``bench`` extra (it pins the TRL release the table was measured with):

    pip install -e ".[bench]"
    python benchmarks/trl_side_by_side.py                                  # both models, 3 alternations
    python benchmarks/trl_side_by_side.py --models tiny-byte --repeats 1 --steps 4     # a smoke run
    python benchmarks/trl_side_by_side.py --alignx-only                     # no TRL needed

Without TRL the script says so and exits 0 (unless ``--alignx-only``, which measures alignx alone).

The workload (each model is built once in code, saved with ``save_pretrained`` into a temporary
directory and loaded from there by both sides, so the weights are identical):

* ``tiny-byte``: a ~3.3M-parameter Llama on alignx's byte tokenizer (259 ids), max length 128,
  builtin ``sentiment`` rows (short: ~20-60 tokens), 64 optimizer steps.
* ``32k``: a ~25M-parameter Llama whose vocabulary is padded to 32,000 ids (the byte tokenizer's
  ids; the rest are never used by the text, but the LM head and the logits are 32,000 wide), max
  length 512, rows of uneven length: each row's total length is drawn uniformly from 32..500
  bytes (= tokens), half of it the completion (the row's own ``sentiment`` completion repeated to
  that length), the other half the prompt (builtin prompts concatenated, from a different offset
  per row); 18 optimizer steps.

Both sides: fp32, AdamW at lr 1e-4 with a linear schedule and no warm-up, batch 8 (rows for SFT,
pairs for DPO/RM), gradient clipping at 1.0, no evaluation, saving, logging or tracking, exactly
one epoch over ``steps x 8`` rows (each side's own default batch order: alignx's length-bucketed
shuffle, TRL's random shuffle). DPO is the sigmoid loss at beta 0.1 with a live reference (a
frozen copy of the policy, full fine-tuning); RM is Bradley-Terry on pairs (TRL's
``AutoModelForSequenceClassification`` head and alignx's reward head are each initialised by
their own code; the backbone is the same). alignx runs its real training path: the registered
objective under a Lightning Trainer built by ``alignx.job.build`` with alignx's length-bucketing
data module, configured through ``alignx.config.compose``; TRL runs ``SFTTrainer``,
``DPOTrainer`` and ``RewardTrainer`` with their defaults except where the workload says otherwise
(``bf16=False`` and ``gradient_checkpointing=False``, which TRL turns on by default).

Every run is its own subprocess (so peak RSS is the run's own), the sides alternate
(TRL, alignx configs, TRL, ...) ``--repeats`` times, and the table reports medians. Throughput is
over fit time only: the clock starts when the ``--warmup``-th optimizer step ends and stops when
the last one ends (model loading, tokenisation and TRL's dataset map are outside it). Memory is
the child's peak resident set size (``ru_maxrss``) and that peak minus the RSS when training
begins (model, reference copy and tokenised data already in memory).

alignx configurations (``--alignx-configs``; ``a+b`` combines two): ``plain`` (defaults),
``chunked`` (``model.logprob_chunk_size``), ``padding_free``, ``checkpointing``, ``compile``.
A configuration whose config keys this alignx does not have is skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 8
LR = 1e-4

MODELS: dict[str, dict[str, Any]] = {
    # ~3.3M parameters on the 259-id byte vocabulary
    "tiny-byte": dict(vocab_size=None, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=4, max_length=128, steps=64, warmup=2),
    # ~25M parameters: 12.3M in the tied 32,000 x 384 embedding, 13M in the 8 blocks
    "32k": dict(vocab_size=32000, hidden_size=384, intermediate_size=896, num_hidden_layers=8,
                num_attention_heads=6, max_length=512, steps=18, warmup=2),
}

#: alignx configurations: the config overrides each adds to the common workload
ALIGNX_CONFIGS: dict[str, list[str]] = {
    "plain": [],
    "chunked": ["model.logprob_chunk_size={chunk}"],
    "padding_free": ["model.padding_free=true", "model.logprob_chunk_size={chunk}"],
    "checkpointing": ["model.gradient_checkpointing=true"],
    "compile": ["trainer.compile=true"],
}

OBJECTIVES = ("sft", "dpo", "rm")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------------------------- workload


def build_model_dir(name: str, dest: Path) -> dict[str, Any]:
    """Build model ``name`` in code (seeded) and save it with its byte tokenizer into ``dest``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignx.models.tokenizer import build_byte_tokenizer

    spec = MODELS[name]
    tok = build_byte_tokenizer(model_max_length=spec["max_length"])
    config = LlamaConfig(
        vocab_size=spec["vocab_size"] or len(tok),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_attention_heads"],
        max_position_embeddings=spec["max_length"],
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return {"params": sum(p.numel() for p in model.parameters()), "vocab_size": config.vocab_size}


def _repeat_to(text: str, n: int) -> str:
    return (text * (n // max(1, len(text)) + 1))[:n]


def build_rows(model: str, objective: str, n: int) -> list[dict]:
    """``n`` rows for ``objective`` (prompt/completion for SFT, prompt/chosen/rejected otherwise)."""
    from alignx.tasks import BUILTIN_TASKS

    task = BUILTIN_TASKS["sentiment"]()
    kind = "sft" if objective == "sft" else "pairs"
    rows = task.rows(kind, "train", n, seed=0)
    if model == "tiny-byte":
        return rows
    # 32k: uneven lengths over 32..500 tokens (bytes), half prompt, half completion
    rng = random.Random(0)
    pool = " ".join(r["prompt"] + (r.get("completion") or r.get("chosen")) for r in rows) + " "
    out = []
    for i, r in enumerate(rows):
        total = rng.randint(32, 500)
        c = total // 2
        start = rng.randrange(len(pool))
        prompt = _repeat_to(pool[start:] + pool[:start], total - c)
        if kind == "sft":
            out.append({"prompt": prompt, "completion": _repeat_to(r["completion"], c)})
        else:
            out.append({"prompt": prompt, "chosen": _repeat_to(r["chosen"], c),
                        "rejected": _repeat_to(r["rejected"], rng.randint(c // 2, c))})
    return out


# ------------------------------------------------------------------------------------------ child: TRL


def run_trl(spec: dict) -> dict:
    """One TRL run (in this process): the trainer of ``spec['objective']``, timed by a callback."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    import trl

    torch.manual_seed(0)
    model_dir, objective, warmup = spec["model_dir"], spec["objective"], spec["warmup"]
    rows = json.loads(Path(spec["rows_file"]).read_text())
    tok = AutoTokenizer.from_pretrained(model_dir)
    common = dict(
        output_dir=spec["out_dir"], per_device_train_batch_size=BATCH, learning_rate=LR, num_train_epochs=1,
        max_steps=spec["steps"], lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, seed=0, data_seed=0,
        report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, max_length=spec["max_length"],
    )
    data = Dataset.from_list(rows)
    if objective == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if objective == "sft":
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common), train_dataset=data, processing_class=tok)
    elif objective == "dpo":
        trainer = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common, beta=0.1, loss_type=["sigmoid"]),
                                 train_dataset=data, processing_class=tok)
    else:
        trainer = trl.RewardTrainer(model=model, args=trl.RewardConfig(**common), train_dataset=data, processing_class=tok)
    tokens = _trl_tokens(trainer.train_dataset, objective)

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.step_ends: list[float] = []
            self.rss_begin = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.rss_begin = _rss_mb()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_ends.append(time.perf_counter())

    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
    return _result(spec, clock.step_ends, clock.rss_begin, tokens, extra={
        "ref_model": objective == "dpo" and trainer.ref_model is not None,
        "params": sum(p.numel() for p in trainer.model.parameters()),
    })


def _trl_tokens(dataset: Any, objective: str) -> float:
    """Mean tokens per row (both sequences of a pair) after TRL's tokenisation."""
    cols = dataset.column_names
    if objective == "sft":
        lengths = [len(x) for x in dataset["input_ids"]]
    else:  # DPO keeps the prompt apart (it is in both sequences); the reward trainer prepends it
        lengths = [len(c) + len(r) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
        if "prompt_ids" in cols:
            lengths = [n + 2 * len(p) for n, p in zip(lengths, dataset["prompt_ids"])]
    return sum(lengths) / max(1, len(lengths))


# --------------------------------------------------------------------------------------- child: alignx


def alignx_overrides(spec: dict) -> list[str]:
    """The compose overrides of one alignx run: the common workload plus the configuration's own."""
    out = [
        "model=hf", f"model.name_or_path={spec['model_dir']}", "model.dtype=float32", "adapter=none",
        f"objective={spec['objective']}", "tracking=none", "seed=0",
        f"optim.lr={LR}", "optim.weight_decay=0.0", "scheduler=linear", "scheduler.num_warmup_steps=0",
        f"data.batch_size={BATCH}", f"data.max_length={spec['max_length']}", "data.cache=false",
        f"trainer.max_steps={spec['steps']}", "trainer.gradient_clip_val=1.0", "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1000000", "save.model=false",
        f"output_dir={spec['out_dir']}", f"outputs_root={spec['out_dir']}",
    ]
    if spec["objective"] == "dpo":
        out += ["objective.loss=sigmoid", "objective.beta=0.1", "objective.precompute_ref_logps=false"]
    if spec["objective"] == "rm":
        # the post-training reward normalisation pass is alignx-only work outside the comparison
        out += ["objective.data_kind=pairs", "objective.normalize=false"]
    for name in spec["config"].split("+"):
        out += [o.format(chunk=spec["chunk"]) for o in ALIGNX_CONFIGS[name]]
    return out


def run_alignx(spec: dict) -> dict:
    """One alignx run (in this process): build_policy -> build_objective -> build_trainer -> fit."""
    import lightning as L
    import torch

    from alignx.config import compose
    from alignx.data.rows import encode_split
    from alignx.job.build import build_objective, build_policy, build_trainer
    from alignx.objectives.base import JobContext
    from alignx.registry import load_plugins
    from alignx.tracking import Tracker

    torch.manual_seed(0)
    cfg = compose(alignx_overrides(spec))
    registry = load_plugins()
    objective_cls = registry.get("objective", str(cfg.objective.name))
    objective_cls.check_config(cfg)
    L.seed_everything(0, verbose=False)
    out_dir = Path(spec["out_dir"])
    rows = json.loads(Path(spec["rows_file"]).read_text())
    model, tok, _ = build_policy(cfg, registry, out_dir, objective_cls)
    items, _, _ = encode_split(objective_cls, rows, tok, cfg.data, None, "train", objective_cfg=cfg.objective)
    items = objective_cls.prepare_items(items, cfg.objective, 0)
    tokens = _alignx_tokens(items, spec["objective"])
    objective = build_objective(cfg, objective_cls, model, tok, len(items))
    objective.bind(JobContext(cfg, registry, items, [], out_dir, auxiliary={}, outputs_root=out_dir))

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.step_ends: list[float] = []
            self.rss_begin = 0.0

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.rss_begin = _rss_mb()

        def on_train_batch_end(self, *args: Any) -> None:
            self.step_ends.append(time.perf_counter())

    clock = Clock()
    trainer = build_trainer(cfg, Tracker(), out_dir, [clock], manual_optimization=not objective.automatic_optimization,
                            model=model)
    trainer.fit(objective, datamodule=objective_cls.datamodule(items, [], tok, cfg))
    return _result(spec, clock.step_ends, clock.rss_begin, tokens, extra={
        "ref_model": spec["objective"] == "dpo" and objective.ref_model is not None,
        "params": sum(p.numel() for p in model.parameters()),
    })


def _alignx_tokens(items: list[dict], objective: str) -> float:
    if objective == "sft":
        lengths = [len(it["input_ids"]) for it in items]
    elif objective == "dpo":
        lengths = [len(it["chosen_input_ids"]) + len(it["rejected_input_ids"]) for it in items]
    else:
        lengths = [sum(len(s) for s in it["seqs"]) for it in items]
    return sum(lengths) / max(1, len(lengths))


def _result(spec: dict, step_ends: list[float], rss_begin: float, tokens: float, extra: dict) -> dict:
    import torch

    warmup = spec["warmup"]
    if len(step_ends) != spec["steps"]:
        raise RuntimeError(f"{spec['side']}: {len(step_ends)} optimizer steps ran, expected {spec['steps']}")
    elapsed = step_ends[-1] - step_ends[warmup - 1] if warmup > 0 else None
    timed_rows = (spec["steps"] - warmup) * BATCH
    peak = _peak_mb()
    return {
        **{k: spec[k] for k in ("side", "model", "objective", "config", "steps", "warmup")},
        "rows_per_s": timed_rows / elapsed, "fit_s": elapsed, "peak_rss_mb": peak,
        "rss_train_begin_mb": rss_begin, "peak_over_begin_mb": peak - rss_begin,
        "tokens_per_row": tokens, "threads": torch.get_num_threads(), **extra,
    }


# ---------------------------------------------------------------------------------------------- parent


def trl_available() -> bool:
    return importlib.util.find_spec("trl") is not None


def config_available(name: str, chunk: int) -> str | None:
    """None when every override of configuration ``name`` composes; else why not."""
    from alignx.config import compose

    overrides = [o.format(chunk=chunk) for part in name.split("+") for o in ALIGNX_CONFIGS[part]]
    try:
        compose(overrides)
    except Exception as exc:  # an unknown key is a Hydra composition error
        return str(exc).splitlines()[0]
    return None


def run_child(spec: dict, timeout: float, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(spec)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['side']} {spec['model']} {spec['objective']} {spec['config']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def table(results: list[dict], model: str, configs: list[str], info: dict) -> str:
    """One markdown table for ``model``: medians per side and configuration, ratios alignx/TRL."""
    lines = [f"### {model} ({info['params'] / 1e6:.1f}M parameters, vocabulary {info['vocab_size']}, "
             f"max length {MODELS[model]['max_length']}, {info['steps']} steps of which {info['steps'] - info['warmup']} timed)", ""]
    head = ["objective", "TRL rows/s"] + [f"alignx {c} rows/s" for c in configs]
    head += ["alignx plain / TRL", "best alignx / TRL", "TRL peak RSS MB", "alignx peak RSS MB (best config)", "RSS ratio",
             "TRL peak over train-begin MB", "alignx peak over train-begin MB", "tokens/row TRL, alignx", "runs"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for obj in OBJECTIVES:
        trl = [r for r in results if r["model"] == model and r["objective"] == obj and r["side"] == "trl"]
        ax = {c: [r for r in results if r["model"] == model and r["objective"] == obj and r["side"] == "alignx"
                  and r["config"] == c] for c in configs}
        if not any(ax.values()):
            continue
        ax_speed = {c: median(rs, "rows_per_s") for c, rs in ax.items() if rs}
        best = max(ax_speed, key=ax_speed.get)
        unit = " pairs" if obj != "sft" else ""
        cells = [obj.upper() + (" (pairs/s)" if unit else ""), f"{median(trl, 'rows_per_s'):.3g}" if trl else "-"]
        cells += [f"{ax_speed[c]:.3g}" if c in ax_speed else "-" for c in configs]
        plain = f"{ax_speed['plain'] / median(trl, 'rows_per_s'):.2f}x" if trl and "plain" in ax_speed else "-"
        cells += [plain, f"{ax_speed[best] / median(trl, 'rows_per_s'):.2f}x ({best})" if trl else f"- ({best})"]
        t_peak = median(trl, "peak_rss_mb") if trl else None
        a_peak = median(ax[best], "peak_rss_mb")
        cells += [f"{t_peak:.0f}" if trl else "-", f"{a_peak:.0f}", f"{a_peak / t_peak:.2f}x" if trl else "-"]
        cells += [f"{median(trl, 'peak_over_begin_mb'):.0f}" if trl else "-", f"{median(ax[best], 'peak_over_begin_mb'):.0f}"]
        cells.append(f"{median(trl, 'tokens_per_row'):.0f}, {median(ax[best], 'tokens_per_row'):.0f}" if trl
                     else f"-, {median(ax[best], 'tokens_per_row'):.0f}")
        cells.append(str(min([len(trl)] * bool(trl) + [len(rs) for rs in ax.values() if rs])))
        lines.append("| " + " | ".join(cells) + " |")
    # peak RSS per configuration: which optimisation bought what in memory
    lines += ["", "alignx peak RSS MB by configuration (median; train-begin to peak in brackets):", ""]
    lines += ["| objective | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    for obj in OBJECTIVES:
        cells = []
        for c in configs:
            rs = [r for r in results if r["model"] == model and r["objective"] == obj and r["side"] == "alignx" and r["config"] == c]
            cells.append(f"{median(rs, 'peak_rss_mb'):.0f} ({median(rs, 'peak_over_begin_mb'):.0f})" if rs else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {obj.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(jsonl: Path) -> str:
    """The tables of the runs recorded in ``jsonl`` (e.g. of a measurement cut short), per model."""
    results = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    sections = []
    for model in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == model]
        configs = list(dict.fromkeys(r["config"] for r in runs if r["side"] == "alignx"))
        policy = next((r for r in runs if r["side"] == "alignx" and r["objective"] != "rm"), runs[0])
        info = {"params": policy["params"], "vocab_size": MODELS[model]["vocab_size"] or 259,
                "steps": runs[0]["steps"], "warmup": runs[0]["warmup"]}
        sections.append(table(runs, model, configs, info))
    return "\n\n".join(sections)


def versions() -> str:
    import torch
    import transformers

    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    if trl_available():
        import trl

        parts.append(f"trl {trl.__version__}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny-byte,32k", help="comma-separated: " + ",".join(MODELS))
    parser.add_argument("--objectives", default="sft,dpo,rm")
    parser.add_argument("--alignx-configs", default="plain,chunked,padding_free,checkpointing,compile",
                        help="comma-separated; a+b combines two; unavailable ones are skipped with a note")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of TRL and alignx per model and objective")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: the model's, 64 / 18)")
    parser.add_argument("--warmup", type=int, help="steps before the clock starts (default 2)")
    parser.add_argument("--chunk", type=int, default=128, help="model.logprob_chunk_size of the chunked configurations")
    parser.add_argument("--alignx-only", action="store_true", help="measure alignx alone (TRL not needed)")
    parser.add_argument("--out", type=Path, help="write the markdown here (default: print only)")
    parser.add_argument("--jsonl", type=Path, help="append every run's raw measurements here")
    parser.add_argument("--note", default="", help="a line added under the header (e.g. what else loaded the machine)")
    parser.add_argument("--threads", type=int, help="torch threads of every run (OMP_NUM_THREADS; default: torch's own "
                        "choice, one per core). On a machine shared with other work, fewer threads than cores avoids "
                        "OpenMP threads spinning against the other load")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    parser.add_argument("--render", type=Path, help="only print the tables of the runs in this --jsonl file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child: one run, its measurements as the last stdout line
        spec = json.loads(args.one)
        print(json.dumps(run_trl(spec) if spec["side"] == "trl" else run_alignx(spec)))
        return
    if args.render:
        print(render(args.render))
        return

    with_trl = not args.alignx_only
    if with_trl and not trl_available():
        print("TRL is not installed: `pip install -e \".[bench]\"` for the side-by-side, or pass --alignx-only "
              "to measure alignx alone. Skipping.")
        return
    models = [m for m in args.models.split(",") if m]
    objectives = [o for o in args.objectives.split(",") if o]
    for name in models:
        if name not in MODELS:
            sys.exit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    for o in objectives:
        if o not in OBJECTIVES:
            sys.exit(f"unknown objective {o!r}; choose from {', '.join(OBJECTIVES)}")
    configs, notes = [], []
    for c in [c for c in args.alignx_configs.split(",") if c]:
        unknown = [p for p in c.split("+") if p not in ALIGNX_CONFIGS]
        if unknown:
            sys.exit(f"unknown alignx configuration {unknown[0]!r}; choose from {', '.join(ALIGNX_CONFIGS)} (a+b combines)")
        why = config_available(c, args.chunk)
        if why:
            notes.append(f"alignx configuration `{c}` skipped: this alignx does not compose it ({why})")
            print(notes[-1], file=sys.stderr)
        else:
            configs.append(c)

    import torch

    started = datetime.datetime.now(datetime.timezone.utc)
    results: list[dict] = []
    sections: list[str] = []
    with tempfile.TemporaryDirectory(prefix="alignx-trl-bench-") as tmp:
        for model in models:
            spec_m = MODELS[model]
            steps = args.steps or spec_m["steps"]
            warmup = min(steps - 1, args.warmup if args.warmup is not None else spec_m["warmup"])
            model_dir = Path(tmp) / model
            info = {**build_model_dir(model, model_dir), "steps": steps, "warmup": warmup}
            for objective in objectives:
                rows_file = Path(tmp) / f"{model}-{objective}.json"
                rows_file.write_text(json.dumps(build_rows(model, objective, steps * BATCH)))
                sides = ([("trl", None)] if with_trl else []) + [("alignx", c) for c in configs]
                for rep in range(args.repeats):
                    for side, config in sides:
                        out_dir = Path(tmp) / f"run-{len(results)}"
                        spec = dict(side=side, model=model, objective=objective, config=config, model_dir=str(model_dir),
                                    rows_file=str(rows_file), steps=steps, warmup=warmup, out_dir=str(out_dir),
                                    max_length=spec_m["max_length"], chunk=args.chunk)
                        r = run_child(spec, args.timeout, args.threads)
                        r["repeat"] = rep
                        results.append(r)
                        if args.jsonl:
                            with args.jsonl.open("a") as f:
                                f.write(json.dumps(r) + "\n")
                        print(f"  {model:9s} {objective:3s} {side:6s} {config or '':24s} {r['rows_per_s']:8.2f} rows/s  "
                              f"peak {r['peak_rss_mb']:7.0f} MB  (+{r['peak_over_begin_mb']:.0f} over train begin)",
                              file=sys.stderr, flush=True)
            sections.append(table(results, model, configs, info))
    minutes = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60
    command = "python benchmarks/trl_side_by_side.py " + shlex.join(sys.argv[1:])
    header = [
        "# alignx vs TRL, side by side (CPU)", "",
        f"{started:%Y-%m-%d %H:%M} UTC, {minutes:.0f} min; {versions()}; torch threads per run "
        f"{results[0]['threads'] if results else torch.get_num_threads()} "
        f"(of {os.cpu_count()} CPUs); fp32, batch 8, lr 1e-4; {args.repeats} alternation(s), medians; "
        f"chunked configurations at model.logprob_chunk_size={args.chunk}.", "",
        f"Command: `{command}`", "",
        "Rows/s is over fit time only (from the end of the warm-up steps to the end of the last step); pairs/s for "
        "DPO and RM. Peak RSS is the run's own (one subprocess per run); 'over train-begin' is the peak minus the RSS "
        "when training begins (models, reference copy and tokenised data loaded). 'tokens/row' counts the tokens each "
        "side trains per row (both sequences of a pair) after its own tokenisation, to show the work is the same.",
    ]
    if args.note:
        header += ["", args.note]
    header += [f"\n{n}" for n in notes]
    text = "\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
