"""One locked, atomic on-disk cache: the tokenised-data, reference-log-prob and stage caches use it.

A :class:`Store` is a directory of entries, one per key::

    <root>/<key>.json          the record: {"format", "cache", "version", "data", "tensors"}
    <root>/<key>.safetensors   optional sidecar of named tensors (listed, with shapes, in the record)
    <root>/<key>.lock          per-key lock file (never deleted; an unlocked file blocks nobody)

Why each piece is there:

* **Per-key lock** (``fcntl.flock``): parallel jobs that need the same entry compute it once; the
  others wait and then read it. The kernel drops the lock when its holder dies, so a crashed job
  never blocks a later one; its temporary files are removed by the next holder of the lock.
* **Atomic writes**: every file is written to a temporary name in the same directory and moved
  into place with ``os.replace``; the sidecar goes first and the record last, so a record on
  disk means a complete entry and no reader ever sees half a file.
* **Validated reads**: an entry that is truncated, garbage, of another schema version, missing a
  field or missing/unreadable tensors is logged as a warning naming the file and what was wrong,
  deleted, and treated as a miss, so the caller recomputes it and later jobs see a good entry.
* **Keys** come from :func:`digest`, a sha256 of JSON-normalised parts, so every cache keys the
  same way.

This module sits below data and models: it depends on nothing in alignx except the errors.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import os
import tempfile
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from alignx.errors import ConfigError

log = logging.getLogger("alignx")

#: version of the record envelope written by :class:`Store` (each cache has its own ``version`` too)
STORE_FORMAT = 1
RECORD_SUFFIX = ".json"
TENSOR_SUFFIX = ".safetensors"
LOCK_SUFFIX = ".lock"
TMP_MARK = ".tmp-"


# -- keys -------------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """``obj`` as JSON with sorted keys and no whitespace: equal payloads give equal text.

    Values JSON cannot hold (paths, config nodes, ...) are written as ``str(value)``.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(*parts: Any, length: int = 32) -> str:
    """A hex sha256 of ``parts``, truncated to ``length`` characters.

    ``bytes`` and ``str`` parts are hashed as they are, anything else as :func:`canonical_json`;
    parts are separated, so ``digest("ab", "c") != digest("a", "bc")``.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            h.update(part)
        elif isinstance(part, str):
            h.update(part.encode())
        else:
            h.update(canonical_json(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:length]


# -- locks and writable directories -------------------------------------------------------------


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


def _reason(path: Path, exc: OSError) -> str:
    """Why ``path`` could not be created or written, in words (an ancestor that is a file named)."""
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        for p in (path, *path.parents):
            if p.exists() and not p.is_dir():
                return f"{p} is a file, not a directory"
    return exc.strerror or str(exc)


def check_writable(path: Path | str, key: str = "outputs_root") -> None:
    """Create ``path`` if missing and write (then remove) a file in it; raise ConfigError if that fails.

    ``key`` is the config key the directory came from, named in the error, e.g.
    ``ConfigError: outputs_root=/data/out is not writable: Permission denied``.
    """
    p = Path(path).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".alignx-write-check-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{key}={p} is not writable: {_reason(p, exc)}") from None


# -- the store ----------------------------------------------------------------------------------


@dataclass
class Entry:
    """One cache entry as read back (or as just written): its record and its tensors."""

    key: str
    path: Path
    data: dict[str, Any]
    #: name -> tensor, for a store with tensors; None otherwise
    tensors: dict[str, Any] | None = None


class Store:
    """A directory of validated cache entries, one per key, each guarded by its own file lock.

    ``name`` says what the cache holds in log lines and errors ("tokenised-data cache");
    ``version`` is the cache's schema version, recorded in every entry (an entry of another
    version is discarded); ``fields`` are the record fields every entry must have, with their
    types (e.g. ``{"items": list, "model_dir": (str, type(None))}``); ``tensors`` are the names
    of the tensors every entry carries in its sidecar file.

    Typical use is :meth:`get_or_compute`; a caller that must hold the lock around more than the
    computation (the pipeline's stage cache) uses :meth:`lock`, :meth:`load` and :meth:`save`.
    """

    def __init__(
        self,
        root: Path,
        *,
        name: str,
        version: int,
        fields: Mapping[str, type | tuple[type, ...]] | None = None,
        tensors: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.version = version
        self.fields = dict(fields or {})
        self.tensor_names = tuple(tensors)

    def record_path(self, key: str) -> Path:
        """Where ``key``'s record lives."""
        return self.root / f"{key}{RECORD_SUFFIX}"

    def tensor_path(self, key: str) -> Path:
        """Where ``key``'s tensor sidecar lives."""
        return self.root / f"{key}{TENSOR_SUFFIX}"

    def _unwritable(self, exc: OSError) -> ConfigError:
        return ConfigError(f"{self.name} directory {self.root} is not writable: {_reason(self.root, exc)}")

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock for the block (blocks while another process holds it).

        On entry, temporary files a crashed writer of ``key`` left behind are removed: every
        writer holds this lock, so none of them can still be in use.
        """
        with ExitStack() as stack:
            try:
                stack.enter_context(file_lock(self.root / f"{key}{LOCK_SUFFIX}"))
            except OSError as exc:
                raise self._unwritable(exc) from None
            for leftover in self.root.glob(f"{glob.escape(key)}.*{TMP_MARK}*"):
                leftover.unlink(missing_ok=True)
            yield

    def load(self, key: str, check: Callable[[Entry], str | None] | None = None) -> Entry | None:
        """``key``'s entry, or None when there is none or it was damaged (then it is discarded).

        ``check`` may reject a well-formed entry (a stage whose model directory is gone, values
        that do not fit the data): it returns the reason, or None to accept. A rejected entry is
        discarded like a damaged one. Call this while holding :meth:`lock`.
        """
        path = self.record_path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._discard(key, f"cannot be read ({_reason(path, exc)})")
        entry, problem = self._parse(key, raw)
        if problem is None and check is not None:
            problem = check(entry)
        if problem is not None:
            return self._discard(key, problem)
        return entry

    def _parse(self, key: str, raw: bytes) -> tuple[Entry | None, str | None]:
        """(entry, None) for a good record, else (None, what is wrong with it)."""
        path = self.record_path(key)
        try:
            record = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            return None, f"not valid JSON (truncated or overwritten?): {exc}"
        if not isinstance(record, dict):
            return None, f"expected a JSON object, found {type(record).__name__}"
        if record.get("format") != STORE_FORMAT or record.get("cache") != self.name:
            return None, f"not a {self.name} entry of store format {STORE_FORMAT} (written by another alignx version?)"
        if record.get("version") != self.version:
            return None, f"schema version {record.get('version')!r}, expected {self.version}"
        data = record.get("data")
        if not isinstance(data, dict):
            return None, "its 'data' is missing or not an object"
        missing = [f for f in self.fields if f not in data]
        if missing:
            return None, f"missing field(s) {', '.join(map(repr, missing))}"
        for field_name, types in self.fields.items():
            if not isinstance(data[field_name], types):
                found = type(data[field_name]).__name__
                return None, f"field {field_name!r} is a {found}, expected {_type_names(types)}"
        entry = Entry(key, path, data)
        if self.tensor_names:
            entry.tensors, problem = self._load_tensors(key, record.get("tensors"))
            if problem is not None:
                return None, problem
        return entry, None

    def _load_tensors(self, key: str, listed: Any) -> tuple[dict[str, Any] | None, str | None]:
        if not isinstance(listed, dict) or sorted(listed) != sorted(self.tensor_names):
            return None, f"its tensor list {listed!r} does not name {list(self.tensor_names)}"
        path = self.tensor_path(key)
        if not path.is_file():
            return None, f"its tensor file {path} is missing"
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        # safetensors raises its own SafetensorError (and OSError, ValueError) on a damaged file
        except Exception as exc:  # noqa: BLE001
            return None, f"its tensor file {path} is unreadable: {(str(exc) or type(exc).__name__).splitlines()[0]}"
        for name, shape in listed.items():
            if name not in tensors or list(tensors[name].shape) != shape:
                found = list(tensors[name].shape) if name in tensors else "no such tensor"
                return None, f"its tensor file {path} has {name}: {found}, the record says {shape}"
        return tensors, None

    def _discard(self, key: str, reason: str) -> None:
        """Log and delete a damaged or rejected entry (the record first: a lone sidecar is a miss)."""
        path = self.record_path(key)
        log.warning("%s: discarding entry %s: %s; recomputing it", self.name, path, reason)
        try:
            path.unlink(missing_ok=True)
            self.tensor_path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from None
        return None

    def save(self, key: str, data: Mapping[str, Any], tensors: Mapping[str, Any] | None = None) -> Entry:
        """Write ``key``'s entry atomically (sidecar, then record); call this while holding :meth:`lock`.

        ``data`` must be JSON-serialisable; ``tensors`` (name -> torch tensor) are required exactly
        when the store was made with tensor names.
        """
        names = sorted(tensors or {})
        if names != sorted(self.tensor_names):
            raise ValueError(f"{self.name}: an entry carries tensors {list(self.tensor_names)}, got {names}")
        path = self.record_path(key)
        record = {"format": STORE_FORMAT, "cache": self.name, "version": self.version, "data": dict(data)}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if tensors:
                from safetensors.torch import save_file

                record["tensors"] = {n: list(t.shape) for n, t in tensors.items()}
                contiguous = {n: t.detach().cpu().contiguous() for n, t in tensors.items()}
                _atomic_write(self.tensor_path(key), lambda tmp: save_file(contiguous, str(tmp)))
            text = json.dumps(record)
            _atomic_write(path, lambda tmp: tmp.write_text(text))
        except OSError as exc:
            raise self._unwritable(exc) from None
        return Entry(key, path, dict(data), dict(tensors) if tensors else None)

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], tuple[Mapping[str, Any], Mapping[str, Any] | None]],
        check: Callable[[Entry], str | None] | None = None,
    ) -> tuple[Entry, bool]:
        """(entry, hit): ``key``'s entry if a good one exists, else ``compute()`` -> (data, tensors) stored.

        Holds the key's lock throughout, so concurrent callers compute it once.
        """
        with self.lock(key):
            entry = self.load(key, check)
            if entry is not None:
                return entry, True
            data, tensors = compute()
            return self.save(key, data, tensors), False


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write`` a temporary file next to ``path``, then move it into place (removed on failure)."""
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
