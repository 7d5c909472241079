"""On-disk cache of tokenised datasets, shared by the jobs of a sweep.

The key covers everything that determines the encoded items: the rows themselves, the
tokenizer (its full serialisation and chat template), the objective's encoding, and the
formatting settings. Jobs that differ only in, say, learning rate share one entry. Writes are
atomic and guarded by a file lock, so parallel jobs never read a half-written entry and only
one of them does the tokenising.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from alignx.data.tokenize import EncodeStats

log = logging.getLogger("alignx")

#: data settings that change how a row is encoded (batching settings do not)
ENCODING_KEYS = ("max_length", "truncation", "completion_only_loss", "chat_template")
FORMAT_VERSION = 1


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of everything about a tokenizer that can change its output."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(
        [type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
         getattr(tokenizer, "chat_template", None)], default=str).encode())
    return h.hexdigest()


def cache_key(rows: Sequence[Mapping], tokenizer: Any, encoder: str, data_cfg: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, encoder, {k: data_cfg.get(k) for k in ENCODING_KEYS}], default=str).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(json.dumps(list(rows), sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block; blocks until free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_encode(
    cache_dir: Path | None,
    key: str,
    encode: Callable[[], tuple[list[dict], EncodeStats]],
    label: str = "",
) -> tuple[list[dict], EncodeStats, bool]:
    """Return (items, stats, hit): from ``cache_dir/<key>.json`` if present, else encode and store."""
    if cache_dir is None:
        items, stats = encode()
        return items, stats, False
    entry = cache_dir / f"{key}.json"
    with file_lock(cache_dir / f"{key}.lock"):
        if entry.is_file():
            data = json.loads(entry.read_text())
            stats = EncodeStats()
            stats.counts.update(data["counts"])
            log.info("tokenised-data cache hit %s: %d %s items from %s", key[:12], len(data["items"]), label, entry)
            return data["items"], stats, True
        items, stats = encode()
        tmp = entry.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"items": items, "counts": dict(stats.counts)}))
        os.replace(tmp, entry)
        log.info("tokenised-data cache miss %s: encoded %d %s items into %s", key[:12], len(items), label, entry)
        return items, stats, False
