"""On-disk cache of tokenised datasets, shared by the jobs of a sweep.

The key covers everything that determines the encoded items:

* the rows themselves (after validation) and the tokenizer (its full serialisation and chat template);
* the encoding settings ``data.max_length``, ``data.truncation``, ``data.completion_only_loss``,
  ``data.chat_template`` (:data:`ENCODING_KEYS`) and the objective's declared
  :attr:`~alignx.objectives.Objective.encode_keys` -- exactly what ``encode`` is given;
* the encoder's code (:func:`encoder_code`): the source of every package that defines the
  objective class or an ``encode`` it inherits (a plugin's package and alignx itself), and the
  objective's :attr:`~alignx.objectives.Objective.encode_version`, which its author bumps when
  the encoder depends on code outside those packages.

Jobs that differ only in, say, learning rate share one entry. Entries live in an
:class:`alignx.store.Store`: writes are atomic and guarded by a per-key file lock, so parallel
jobs never read a half-written entry and only one of them does the tokenising; a damaged entry
is named in a warning, discarded and rebuilt.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import marshal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from alignx.data.tokenize import EncodeStats
from alignx.store import Entry, Store, digest, file_lock

__all__ = [
    "ENCODING_KEYS", "FORMAT_VERSION", "EncoderCode", "cache_key", "cached_encode", "encoder_code", "file_lock",
    "tokenizer_fingerprint",
]

log = logging.getLogger("alignx")

#: data settings that change how a row is encoded (batching settings do not); ``encode`` sees these only
ENCODING_KEYS = ("max_length", "truncation", "completion_only_loss", "chat_template")
#: schema of an entry's record (2: written through alignx.store, with a validated envelope)
FORMAT_VERSION = 2
CACHE_NAME = "tokenised-data cache"
#: files of a package that are its code (compiled and extension modules included, caches not)
_CODE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of everything about a tokenizer that can change its output."""
    # a fast tokenizer serialises completely; a slow one is known by its vocabulary
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else tokenizer.get_vocab()
    return digest(vocab, [type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id,
                          tokenizer.pad_token_id, getattr(tokenizer, "chat_template", None)], length=64)


@dataclass(frozen=True)
class EncoderCode:
    """The part of the cache key that stands for an objective's encoder (see :func:`encoder_code`)."""

    #: ``module.Class`` of the objective
    objective: str
    #: the objective's ``encode_version``
    version: str
    #: what was read -> its digest: a package (every code file under it), a module, or
    #: ``<qualname> (bytecode)`` when no source could be found
    code: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One phrase for log lines, e.g. ``the code of alignx, alignx_spin (encode_version 1)``."""
        return f"the code of {', '.join(self.code)} (encode_version {self.version})"


def _code_root(module_name: str) -> tuple[str, str] | None:
    """(name, digest) of the outermost regular package holding ``module_name`` (all its code
    files, by path relative to it), or of the module's file when it is in no package; None when
    it has no file (``__main__`` of a script, an interactive session)."""
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        module = sys.modules.get(name)
        spec = module.__spec__ if module is not None else None
        # namespace packages have no location: their regular subpackages are the unit
        if spec is None or not spec.has_location or not spec.origin:
            continue
        origin = Path(spec.origin)
        if spec.submodule_search_locations is None:
            files = [origin]
        else:
            files = sorted(
                f for f in origin.parent.rglob("*")
                if f.suffix in _CODE_SUFFIXES and "__pycache__" not in f.parts and f.is_file()
            )
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(origin.parent)}\0".encode())
            h.update(f.read_bytes())
            h.update(b"\0")
        return name, h.hexdigest()[:32]
    return None


def encoder_code(objective_cls: type) -> EncoderCode:
    """What of ``objective_cls``'s encoder the cache key covers, so an edited encoder is never served stale items.

    Read: the code of every package defining ``objective_cls`` or a class of its MRO that defines
    ``encode`` (for a plugin objective: the plugin's package and alignx, whose base classes and
    encoders it builds on) -- all code files under the outermost regular package, so helpers in
    sibling modules are covered too; a module outside any package is read alone. When neither a
    file nor source can be found, the bytecode of each ``encode`` is used. Code elsewhere (another
    library the encoder calls) is not read: its author bumps ``objective_cls.encode_version``.
    ``prepare_items`` is not covered because its output is not cached (it runs on every job).
    """
    definers = [c for c in objective_cls.__mro__ if "encode" in vars(c)]
    modules = sorted({objective_cls.__module__, *(c.__module__ for c in definers)})
    code: dict[str, str] = {}
    for module_name in modules:
        root = _code_root(module_name)
        if root is not None:
            code[root[0]] = root[1]
            continue
        module = sys.modules.get(module_name)
        try:
            code[module_name] = digest(inspect.getsource(module))
        except (OSError, TypeError):  # no source anywhere: what runs is the bytecode
            for cls in definers:
                if cls.__module__ == module_name:
                    raw = vars(cls)["encode"]
                    fn = inspect.unwrap(raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw)
                    code[f"{cls.__qualname__}.encode (bytecode)"] = digest(marshal.dumps(fn.__code__))
    return EncoderCode(f"{objective_cls.__module__}.{objective_cls.__qualname__}", str(objective_cls.encode_version), code)


def cache_key(rows: Sequence[Mapping], tokenizer: Any, encoder: EncoderCode, settings: Mapping[str, Any]) -> str:
    """The key of the encoded ``rows``: format, encoder code, the settings ``encode`` sees, tokenizer and the rows."""
    return digest([FORMAT_VERSION, encoder.objective, encoder.version, encoder.code, dict(settings)],
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
    covers: str = "",
) -> tuple[list[dict], EncodeStats, bool]:
    """Return (items, stats, hit): from ``cache_dir/<key>.json`` if present and intact, else encode and store.

    A damaged entry is named in a warning, discarded and encoded again. ``label`` (the split) and
    ``covers`` (what the key stands for) go into the hit/miss log line.
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
    if covers:  # the whole list on every job would drown the console; `alignx -v` shows it
        log.debug("tokenised-data cache key %s covers %s", key[:12], covers)
    return items, stats, hit
