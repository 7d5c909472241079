"""Completion log-probs from hidden states: plain [N, V] logits vs alignx.ops.chunked, time and peak memory.

For N completion positions with hidden size H and a V-token vocabulary, one forward + backward of
``sum_i w_i · log p(label_i)`` two ways:

- plain: ``logits = hidden @ weight.T`` ([N, V]) then ``token_logprobs`` (what ``sequence_logps``
  does after selecting the completion positions);
- chunked: :func:`alignx.ops.chunked_token_logprobs`, ``chunk_size`` positions at a time.

Each is measured with a trainable LM head (full fine-tuning: gradients for hidden and weight) and a
frozen one (LoRA: gradient for hidden only). Time: median of ``--repeats`` runs, plain and chunked
alternating in one process so load on the machine hits both alike. Peak memory: a fresh subprocess
per measurement; on CPU the growth of peak RSS (``ru_maxrss``) over the RSS once the inputs exist,
on CUDA ``torch.cuda.max_memory_allocated`` over the allocation once the inputs exist.

    python benchmarks/chunked_logprobs.py                      # N in {1024, 4096}, V=32000, H=512
    python benchmarks/chunked_logprobs.py --sizes 1024 --repeats 3 --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "chunked-logprobs-cpu.md"
HEADS = ("trainable", "frozen")
METHODS = ("plain", "chunked")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _inputs(n: int, h: int, v: int, head: str, device: str):
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(n, h, generator=g) / h**0.5).to(device).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(device).requires_grad_(head == "trainable")
    labels = torch.randint(0, v, (n,), generator=g).to(device)
    weights = torch.linspace(0.5, 1.5, n).to(device)  # distinct per-position upstream gradients
    return hidden, weight, labels, weights


def _step(method: str, hidden, weight, labels, weights, chunk_size: int):
    """One forward + backward; returns the log-probs (detached) and the gradients."""
    import torch

    from alignx.ops import chunked_token_logprobs, token_logprobs

    hidden.grad = weight.grad = None
    if method == "plain":
        lp = token_logprobs((hidden @ weight.T).unsqueeze(0), labels.unsqueeze(0)).squeeze(0)
    else:
        lp = chunked_token_logprobs(hidden, weight, labels, chunk_size=chunk_size)
    (lp * weights).sum().backward()
    if hidden.is_cuda:
        torch.cuda.synchronize()
    return lp.detach(), hidden.grad, weight.grad


def worker_time(n: int, h: int, v: int, head: str, chunk_size: int, repeats: int, device: str) -> dict:
    """Median seconds per forward+backward, plain and chunked alternating, plus their largest difference."""
    hidden, weight, labels, weights = _inputs(n, h, v, head, device)
    results = {m: _step(m, hidden, weight, labels, weights, chunk_size) for m in METHODS}  # warm-up, and the check
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(results["plain"], results["chunked"])
        if a is not None and b is not None
    )
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(repeats):
        for m in METHODS if i % 2 == 0 else METHODS[::-1]:
            t0 = time.perf_counter()
            _step(m, hidden, weight, labels, weights, chunk_size)
            times[m].append(time.perf_counter() - t0)
    return {"median_s": {m: statistics.median(ts) for m, ts in times.items()}, "times_s": times, "max_abs_diff": diff}


def worker_memory(n: int, h: int, v: int, head: str, method: str, chunk_size: int, device: str) -> dict:
    """Peak memory (MB) one forward + backward adds on top of its inputs, in this fresh process."""
    import torch

    hidden, weight, labels, weights = _inputs(n, h, v, head, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(method, hidden, weight, labels, weights, chunk_size)
        return {"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
    base = _rss_mb()
    _step(method, hidden, weight, labels, weights, chunk_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"peak_mb": peak - base}


def _run_worker(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="numbers of completion positions N")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per peak-memory figure (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--note", default="", help="a line about the machine's load, written into the results")
    p.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    if a.worker is not None:
        kind, n, head, *rest = a.worker
        if kind == "time":
            res = worker_time(int(n), a.hidden, a.vocab, head, a.chunk_size, a.repeats, a.device)
        else:
            res = worker_memory(int(n), a.hidden, a.vocab, head, rest[0], a.chunk_size, a.device)
        print(json.dumps(res))
        return

    common = ["--hidden", str(a.hidden), "--vocab", str(a.vocab), "--chunk-size", str(a.chunk_size),
              "--repeats", str(a.repeats), "--threads", str(a.threads), "--device", a.device]
    rows = []
    for n in a.sizes:
        for head in HEADS:
            t = _run_worker([*common, "--worker", "time", str(n), head])
            mem = {
                m: statistics.median(
                    _run_worker([*common, "--worker", "memory", str(n), head, m])["peak_mb"] for _ in range(a.memory_repeats)
                )
                for m in METHODS
            }
            row = {"n": n, "head": head, **t, "peak_mb": mem}
            rows.append(row)
            print(json.dumps(row), flush=True)

    logits_mb = {n: n * a.vocab * 4 / 2**20 for n in a.sizes}
    lines = [
        (f"# benchmarks/chunked_logprobs.py on {datetime.now(UTC):%Y-%m-%d}, {a.device}, "
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, {a.threads} torch thread(s)"),
        "",
        (f"`python benchmarks/chunked_logprobs.py --sizes {' '.join(map(str, a.sizes))} --chunk-size {a.chunk_size} "
        f"--repeats {a.repeats} --memory-repeats {a.memory_repeats} --threads {a.threads}`"),
        "",
        (f"One forward + backward of the weighted sum of N completion log-probs, V={a.vocab}, H={a.hidden}, float32, "
        f"chunk_size={a.chunk_size}. plain = `hidden @ weight.T` then `token_logprobs` on the [N, V] logits; "
        "chunked = `chunked_token_logprobs`. Head trainable = gradients for hidden and weight (full fine-tuning); "
        "frozen = hidden only (LoRA). Time: median of "
        f"{a.repeats}, plain and chunked alternating in one process. Peak: growth of peak memory over the inputs, "
        f"median of {a.memory_repeats} fresh processes per figure (CPU: `ru_maxrss`)."),
        "",
        ("This is the LM-head op alone, on the N completion positions. Inside an objective the plain path also "
        "projects every prompt and padding position (the model's [B, T, V] logits) and copies the completion rows "
        "out of them, which the chunked path never does, so there the saving is larger than shown here."),
        "",
    ]
    if a.note:
        lines += [a.note, ""]
    lines += [
        "| N | head | plain s | chunked s | time chunked/plain | plain peak MB | chunked peak MB | peak chunked/plain | [N, V] fp32 logits MB | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms, pk = r["median_s"], r["peak_mb"]
        lines.append(
            f"| {r['n']} | {r['head']} | {ms['plain']:.2f} | {ms['chunked']:.2f} | {ms['chunked'] / ms['plain']:.2f}x | "
            f"{pk['plain']:.0f} | {pk['chunked']:.0f} | {pk['chunked'] / pk['plain']:.2f}x | {logits_mb[r['n']]:.0f} | "
            f"{r['max_abs_diff']:.1e} |"
        )
    lines += ["", "Raw times (s), in measurement order per method:", ""]
    for r in rows:
        lines.append(f"- N={r['n']} {r['head']}: " + "; ".join(
            f"{m} " + ", ".join(f"{x:.2f}" for x in r["times_s"][m]) for m in METHODS))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
