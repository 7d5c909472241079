"""Reference log-probabilities computed once before training and cached on disk.

With ``objective.precompute_ref_logps=true`` a reference-based objective (DPO family, KTO) needs
no reference forward during training: at fit start the policy has not moved, so it *is* the
reference, and its log-probs of every train and validation sequence are computed once. They are
cached under ``<outputs_root>/cache/ref_logps``, keyed by the reference weights, the tokenised
items and the numeric precision, so a rerun or every job of a sweep that shares them (say, a
learning-rate sweep) reuses the entry. A hit is logged and recorded as a metric. Entries live in
an :class:`alignx.store.Store`: a small JSON record plus a ``[items, k]`` float32 tensor file,
written atomically under a per-key lock; a damaged entry is named, discarded and recomputed.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.pytorch.callbacks import Callback

from alignx.models.adapters import is_peft
from alignx.store import Entry, Store, digest

log = logging.getLogger("alignx")

#: schema of an entry (2: a record and a tensor file written through alignx.store)
FORMAT_VERSION = 2
CACHE_NAME = "reference log-prob cache"
TENSOR = "ref_logps"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A digest of the weights that define the reference.

    With adapters only the frozen base weights count (the reference is the model with adapters
    disabled, so freshly initialised adapter weights must not change the key).
    """
    peft = is_peft(model)
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if peft and p.requires_grad:
            continue
        t = p.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def items_fingerprint(items: Sequence[dict]) -> str:
    """A digest of tokenised items (data and tokenisation), ignoring attached reference values."""
    return digest(*({k: v for k, v in it.items() if k != "ref_logps"} for it in items), length=64)


@torch.no_grad()
def compute_reference_logps(
    objective: Any, items: Sequence[dict], batch_size: int, *, desc: str = "", progress: bool = True
) -> list[list[float]]:
    """Reference log-probs of every sequence of every item, in item order: ``[[v_0, ..., v_k-1], ...]``.

    Batches are made with the objective's own collate function, whose layout is ``k`` blocks of
    ``B`` sequences (k sequences per item).
    """
    from tqdm.auto import tqdm

    collate = objective.collate_fn(objective.tokenizer)
    out: list[list[float]] = []
    starts = range(0, len(items), batch_size)
    trainer = getattr(objective, "_trainer", None)
    context = trainer.precision_plugin.forward_context if trainer is not None else _null
    for start in tqdm(starts, desc=desc or "reference log-probs", disable=not progress, unit="batch"):
        chunk = [{k: v for k, v in it.items() if k != "ref_logps"} for it in items[start : start + batch_size]]
        batch = {k: v.to(objective.device) for k, v in collate(chunk).items()}
        with context():
            values = objective.reference_logps(batch, at_start=True).float().cpu()
        k = values.numel() // len(chunk)
        out.extend(values.view(k, len(chunk)).t().tolist())
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class PrecomputeReferenceLogps(Callback):
    """At fit start, attach ``ref_logps`` to every train and validation item (from the cache if present)."""

    def __init__(self, cache_dir: Path | None, batch_size: int, progress: bool = True) -> None:
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.progress = progress
        #: split -> whether its values came from the cache
        self.hits: dict[str, bool] = {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        dm = trainer.datamodule
        weights = weights_fingerprint(pl_module.model)
        metrics = {}
        for split, items in (("train", dm.train_items), ("val", dm.val_items)):
            if not items:
                continue
            key = digest([FORMAT_VERSION, type(pl_module).__name__, weights, items_fingerprint(items),
                          str(trainer.precision)])
            values, hit = self._values(pl_module, items, key, split)
            for it, v in zip(items, values):
                it["ref_logps"] = v
            self.hits[split] = hit
            metrics[f"data/{split}/ref_logps_cache_hit"] = float(hit)
        if trainer.logger is not None and metrics:
            trainer.logger.log_metrics(metrics, step=0)

    def _values(self, pl_module: Any, items: list[dict], key: str, split: str) -> tuple[list[list[float]], bool]:
        def compute() -> list[list[float]]:
            return compute_reference_logps(
                pl_module, items, self.batch_size, desc=f"reference log-probs ({split})",
                progress=self.progress and pl_module.global_rank == 0,
            )

        if self.cache_dir is None:
            return compute(), False
        store = Store(self.cache_dir, name=CACHE_NAME, version=FORMAT_VERSION, fields={"items": int}, tensors=(TENSOR,))
        fresh: list[list[list[float]]] = []

        def compute_entry() -> tuple[dict, dict]:
            fresh.append(compute())
            return {"items": len(fresh[0])}, {TENSOR: torch.tensor(fresh[0], dtype=torch.float32)}

        def fits(entry: Entry) -> str | None:
            n, shape = entry.data["items"], list(entry.tensors[TENSOR].shape)
            if n != len(items) or len(shape) != 2 or shape[0] != n:
                return f"it holds {n} items of shape {shape}, the {split} data has {len(items)} items"
            return None

        entry, hit = store.get_or_compute(key, compute_entry, check=fits)
        if hit:
            # float32 -> float is exact, so a hit gives the very values a miss computed
            values = entry.tensors[TENSOR].tolist()
            log.info("reference log-prob cache hit %s: %d %s items from %s", key[:12], len(values), split, entry.path)
            return values, True
        log.info("reference log-prob cache miss %s: computed %d %s items into %s", key[:12], len(fresh[0]), split, entry.path)
        return fresh[0], False
