"""Padding-free batches against padded ones: the time of a training step (forward and backward)
of SFT and DPO on the same batches, with and without length bucketing.

Batches of 8 rows (DPO: 8 pairs = 16 sequences) whose lengths are drawn uniformly from 32..500
tokens, half prompt, half completion, on ``model=small`` (a ~25M-parameter Llama built in code),
completion log-probs by chunks of 256 (``model.logprob_chunk_size``, as a big-vocabulary job
would run). "bucketed" sorts a pool of 64 rows by length before cutting it into batches, as
``data.length_bucketing`` does; "random" batches rows in drawn order, as a trainer without
bucketing does. The settings alternate (padded, padding-free, padded, ...), each timed over the
same batches, and the table reports the median of ``--repeats`` rounds.

    python benchmarks/padding_free.py                 # writes benchmarks/results/padding-free-cpu.md
    python benchmarks/padding_free.py --steps 2 --repeats 1 --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import time
from pathlib import Path

import torch

from alignx.config import compose
from alignx.data.batching import collate_pairs, collate_sft
from alignx.models.loading import build_llama
from alignx.objectives.base import JobContext
from alignx.registry import load_plugins

BATCH = 8


def rows(n: int, seed: int) -> list[tuple[list[int], int]]:
    """``n`` (token ids, prompt length) with total lengths uniform over 32..500."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        total = rng.randint(32, 500)
        out.append(([rng.randint(3, 250) for _ in range(total)], total // 2))
    return out


def batches(objective: str, bucketed: bool, steps: int, pad_id: int) -> tuple[list[dict], float]:
    """The step batches and their padding fraction."""
    per = 2 * BATCH if objective == "dpo" else BATCH
    n_batches = max(steps, 8)
    data = rows(per * n_batches, seed=0)
    if bucketed:  # as BucketBatchSampler: sort a pool of 8 batches' rows by length, then cut
        data = sorted(data, key=lambda r: len(r[0]))
    out, real, slots = [], 0, 0
    for i in range(steps):
        k = i * n_batches // steps  # batches spread over the pool: short, middle and long alike
        chunk = data[k * per : (k + 1) * per]
        items = [{"input_ids": ids, "labels": [-100] * p + ids[p:]} for ids, p in chunk]
        if objective == "dpo":
            pairs = [{"chosen_input_ids": a["input_ids"], "chosen_labels": a["labels"],
                      "rejected_input_ids": b["input_ids"], "rejected_labels": b["labels"]}
                     for a, b in zip(items[:BATCH], items[BATCH:])]
            batch = collate_pairs(pairs, pad_id)
        else:
            batch = collate_sft(items, pad_id)
        real += int(batch["attention_mask"].sum())
        slots += batch["attention_mask"].numel()
        out.append(batch)
    return out, 1 - real / slots


def step_time(objective: str, padding_free: bool, data: list[dict]) -> float:
    """Seconds for forward + backward of every batch (after one untimed warm-up batch)."""
    cfg = compose(["model=small", f"objective={objective}", f"model.padding_free={str(padding_free).lower()}",
                   "model.logprob_chunk_size=256"])
    registry = load_plugins()
    model, tok = build_llama(cfg.model)
    obj = registry.get("objective", objective)(model, tok, cfg.objective, optimizer=None)
    obj.bind(JobContext(cfg, registry, [], []))
    loss, _ = obj.step(data[0])
    loss.backward()
    start = time.perf_counter()
    for batch in data:
        model.zero_grad(set_to_none=True)
        loss, _ = obj.step(batch)
        loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "padding-free-cpu.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pad_id = build_llama(compose(["model=small"]).model)[1].pad_token_id
    lines = [f"# benchmarks/padding_free.py on {datetime.date.today()}, CPU, torch {torch.__version__}, "
             f"{args.threads} thread(s), {args.steps} steps x {args.repeats} rounds (median), `model=small`, "
             "lengths 32..500, `model.logprob_chunk_size=256`", "",
             f"`python benchmarks/padding_free.py --steps {args.steps} --repeats {args.repeats} --threads {args.threads}`", "",
             "| objective | batches | padding | padded s/step | padding-free s/step | speed-up |", "|---|---|---|---|---|---|"]
    for objective in ("sft", "dpo"):
        for bucketed in (False, True):
            data, padding = batches(objective, bucketed, args.steps, pad_id)
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeats):
                for free in (False, True):
                    times[free].append(step_time(objective, free, data) / args.steps)
            padded, free = statistics.median(times[False]), statistics.median(times[True])
            line = (f"| {objective.upper()} | {'bucketed' if bucketed else 'random'} | {padding:.1%} | {padded:.2f} | "
                    f"{free:.2f} | {padded / free:.2f}x |")
            print(line, flush=True)
            lines.append(line)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
