"""On-disk cache of tokenised datasets, shared by the jobs of a sweep.

The key covers everything that determines the encoded items: the rows themselves, the
tokenizer (its full serialisation and chat template), the objective's encoding, and the
formatting settings. Jobs that differ only in, say, learning rate share one entry. Entries live
in an :class:`alignx.store.Store`: writes are atomic and guarded by a per-key file lock, so
parallel jobs never read a half-written entry and only one of them does the tokenising; a
damaged entry is named in a warning, discarded and rebuilt.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from alignx.data.tokenize import EncodeStats
from alignx.store import Entry, Store, digest, file_lock

__all__ = ["ENCODING_KEYS", "FORMAT_VERSION", "cache_key", "cached_encode", "file_lock", "tokenizer_fingerprint"]

log = logging.getLogger("alignx")

#: data settings that change how a row is encoded (batching settings do not)
ENCODING_KEYS = ("max_length", "truncation", "completion_only_loss", "chat_template")
#: schema of an entry's record (2: written through alignx.store, with a validated envelope)
FORMAT_VERSION = 2
CACHE_NAME = "tokenised-data cache"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of everything about a tokenizer that can change its output."""
    # a fast tokenizer serialises completely; a slow one is known by its vocabulary
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else tokenizer.get_vocab()
    return digest(vocab, [type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id,
                          tokenizer.pad_token_id, getattr(tokenizer, "chat_template", None)], length=64)


def cache_key(rows: Sequence[Mapping], tokenizer: Any, encoder: str, data_cfg: Mapping[str, Any]) -> str:
    """The key of the encoded ``rows``: format, encoder, encoding settings, tokenizer and the rows."""
    return digest([FORMAT_VERSION, encoder, {k: data_cfg.get(k) for k in ENCODING_KEYS}],
                  tokenizer_fingerprint(tokenizer), list(rows))


def _well_formed(entry: Entry) -> str | None:
    if not all(isinstance(it, dict) for it in entry.data["items"]):
        return "its 'items' are not all objects"
    if not all(isinstance(n, int) for n in entry.data["counts"].values()):
        return "its 'counts' are not all integers"
    return None


def cached_encode(
    cache_dir: Path | None,
    key: str,
    encode: Callable[[], tuple[list[dict], EncodeStats]],
    label: str = "",
) -> tuple[list[dict], EncodeStats, bool]:
    """Return (items, stats, hit): from ``cache_dir/<key>.json`` if present and intact, else encode and store.

    A damaged entry is named in a warning, discarded and encoded again.
    """
    if cache_dir is None:
        items, stats = encode()
        return items, stats, False
    store = Store(cache_dir, name=CACHE_NAME, version=FORMAT_VERSION, fields={"items": list, "counts": dict})
    fresh: list[EncodeStats] = []

    def compute() -> tuple[dict, None]:
        items, stats = encode()
        fresh.append(stats)
        return {"items": items, "counts": dict(stats.counts)}, None

    entry, hit = store.get_or_compute(key, compute, check=_well_formed)
    items = entry.data["items"]
    if hit:
        stats = EncodeStats()
        stats.counts.update(entry.data["counts"])
        log.info("tokenised-data cache hit %s: %d %s items from %s", key[:12], len(items), label, entry.path)
    else:
        stats = fresh[0]
        log.info("tokenised-data cache miss %s: encoded %d %s items into %s", key[:12], len(items), label, entry.path)
    return items, stats, hit
