"""Resumable checkpoints that are safe to load and never half-written.

A Lightning checkpoint is a nested dict (weights, optimizer and scheduler state, loop counters,
callback state, RNG state). Lightning writes it with ``torch.save``, a pickle: loading one runs
whatever code its author put in it. alignx writes the same dict as **one safetensors file**:
every tensor is a named safetensors entry and everything else (numbers, strings, lists, dicts
with int keys, tuples) is JSON in the file's metadata. Loading parses JSON and raw tensor
bytes; nothing is unpickled.

Writes are atomic: the file is written under a temporary name next to the target, flushed to
disk, then renamed over it. A process killed mid-save leaves the previous checkpoint intact (and
a stray ``.<name>.tmp-<pid>`` file that the next save removes). ``last.ckpt`` is a symlink to the
newest ``step-NNNNNN.ckpt``, swapped atomically, so it costs no second write.

Older pickled checkpoints still load, through ``torch.load(weights_only=True)``: torch's
restricted unpickler, which accepts tensors and plain containers and refuses anything else.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from alignx.errors import AlignxError

log = logging.getLogger("alignx")

FORMAT = "alignx-checkpoint/1"
_META_KEY = "alignx.checkpoint"
#: the tag of a tensor reference inside the JSON skeleton
_TENSOR = "$t"
_SAFETENSORS_MAGIC_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(AlignxError):
    """A checkpoint cannot be written or read (unsupported value, corrupt or unsafe file)."""


# -- encoding --------------------------------------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str, seen: dict[Any, str]) -> Any:
    """JSON-able skeleton of ``obj``; tensors move into ``tensors`` under fresh names."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and view in seen:  # the same tensor twice (tied weights): stored once
            return {_TENSOR: seen[view]}
        name = str(len(tensors))
        # safetensors refuses distinct tensors sharing storage: views of a seen storage are copied
        shares = t.numel() and any(v[0] == view[0] for v in seen if isinstance(v, tuple))
        tensors[name] = t.clone() if shares else t.contiguous()
        if t.numel():
            seen[view] = name
        return {_TENSOR: name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}", seen) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise CheckpointError(f"checkpoint key {where}[{k!r}]: keys must be str, int, float or bool, not {type(k).__name__}")
            items.append([k, _encode(v, tensors, f"{where}[{k!r}]", seen)])
        return {"$dict": items}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors, f"{where}[{i}]", seen) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]", seen) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return {"$set": [_encode(v, tensors, f"{where}[*]", seen) for v in sorted(obj, key=repr)]}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.Size):
        return {"$tuple": list(obj)}
    if type(obj).__module__ == "numpy":
        import numpy as np

        if isinstance(obj, np.ndarray):
            return _encode(torch.from_numpy(np.ascontiguousarray(obj)), tensors, where, seen)
        if isinstance(obj, np.generic):
            return obj.item()
    raise CheckpointError(
        f"checkpoint value at {where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint may hold "
        f"tensors, numbers, strings, None and lists/tuples/dicts of them (anything else would need pickle to load)"
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (tag, value), = obj.items()
            if tag == _TENSOR:
                return tensors[value]
            if tag == "$dict":
                return {k: _decode(v, tensors) for k, v in value}
            if tag == "$tuple":
                return tuple(_decode(v, tensors) for v in value)
            if tag == "$set":
                return {_decode(v, tensors) for v in value}
            if tag == "$dtype":
                return getattr(torch, value)
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def flatten(checkpoint: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of a checkpoint dict."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(checkpoint, tensors, "checkpoint", {})
    return tensors, {_META_KEY: json.dumps({"format": FORMAT, "skeleton": skeleton}, allow_nan=True)}


def _header_len(head: bytes, source: str) -> int:
    if len(head) < 8:
        raise CheckpointError(f"checkpoint '{source}' is truncated ({len(head)} bytes)")
    n = int.from_bytes(head[:8], "little")
    if n <= 0 or n > _SAFETENSORS_MAGIC_MAX_HEADER:
        raise CheckpointError(f"checkpoint '{source}' is not a safetensors file (header length {n})")
    return n


def _read_metadata(header: bytes, source: str) -> dict[str, Any]:
    try:
        meta = json.loads(header[8:]).get("__metadata__", {}) or {}
        payload = json.loads(meta[_META_KEY])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint '{source}' is a safetensors file but not an alignx checkpoint ({exc})") from None
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{source}' has format {payload.get('format')!r}; this alignx reads {FORMAT}")
    return payload


# -- files -----------------------------------------------------------------------------------


_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def write_safetensors(fh: Any, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Stream ``tensors`` into ``fh`` in the safetensors format, one tensor at a time.

    ``safetensors.torch.save`` builds the whole file in memory first (a second copy of every
    weight); this writes each tensor's bytes straight from its storage.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise CheckpointError(f"checkpoint tensor {name} has dtype {t.dtype}, which safetensors cannot store")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    fh.write(len(raw).to_bytes(8, "little"))
    fh.write(raw)
    for t in tensors.values():
        if t.numel():
            fh.write(memoryview(t.contiguous().view(-1).view(torch.uint8).numpy()))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove_stale_tmps(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            stale.unlink()
        except OSError:
            pass


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, metadata = flatten(checkpoint)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            write_safetensors(fh, tensors, metadata)
            fh.flush()
            os.fsync(fh.fileno())
        if path.is_symlink():
            path.unlink()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    _remove_stale_tmps(path)
    return path


def is_pickle(path: Path) -> bool:
    """A torch.save file (a zip archive, torch >= 1.6, or a raw pickle stream), not a safetensors one."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if 0 < n <= _SAFETENSORS_MAGIC_MAX_HEADER and head[8:9] == b"{":
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (or, safely, a legacy torch.save one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at '{path}'")
    if is_pickle(path):
        # a checkpoint from before alignx wrote safetensors, or from another tool
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"refusing to load pickled checkpoint '{path}': it holds objects beyond tensors and plain "
                f"containers ({first[:200]}), and unpickling those would run code from the file. alignx writes "
                f"checkpoints as safetensors; re-create it with alignx, or load it yourself if you trust its origin"
            ) from None
    from safetensors import safe_open

    with open(path, "rb") as fh:
        head = fh.read(8)
        header = head + fh.read(_header_len(head, str(path)))
    meta = _read_metadata(header, str(path))
    tensors: dict[str, torch.Tensor] = {}
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    except Exception as exc:
        raise CheckpointError(f"checkpoint '{path}' is corrupt: {exc}") from None
    return _decode(meta["skeleton"], tensors)


def checkpoint_global_step(path: str | os.PathLike) -> int:
    """A checkpoint's ``global_step`` (training steps done), read from its header alone."""
    path = Path(path)
    if path.is_dir():  # a DeepSpeed checkpoint directory: its step is in its name
        m = STEP_FILE.match(path.resolve().name)
        return int(m.group(1)) if m else 0
    if is_pickle(path):
        return int(load_checkpoint(path).get("global_step", 0))
    with open(path, "rb") as fh:
        head = fh.read(8)
        header = head + fh.read(_header_len(head, str(path)))
    return int(_read_metadata(header, str(path))["skeleton"].get("global_step", 0))


STEP_FILE = re.compile(r"^step-(\d+)\.ckpt$")


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from in a ``checkpoints/`` dir: ``last.ckpt``, else the highest ``step-N.ckpt``."""
    directory = Path(directory)
    last = directory / "last.ckpt"
    if last.exists():  # follows the symlink: a dangling one does not count (a dir: DeepSpeed's format)
        return last
    steps = sorted(
        ((int(m.group(1)), p) for p in directory.glob("step-*.ckpt") if (m := STEP_FILE.match(p.name)) and p.exists()),
        reverse=True,
    )
    return steps[0][1] if steps else None


def relink(target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` (relative symlink) atomically: readers see the old or the new one."""
    tmp = _tmp_name(link)
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(target, link.parent), tmp)
    except OSError:  # filesystems without symlinks: an atomic copy instead
        import shutil

        shutil.copyfile(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


# -- RNG state --------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states, as checkpoint-safe values."""
    import random

    import numpy as np

    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA only where this process has the same devices)."""
    import random

    import numpy as np

    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(cuda))


# -- Lightning glue --------------------------------------------------------------------------


def checkpoint_io() -> Any:
    """A Lightning ``CheckpointIO`` plugin that reads and writes alignx checkpoints."""
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    class SafetensorsCheckpointIO(CheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            save_checkpoint(checkpoint, path)

        def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict[str, Any]:
            return load_checkpoint(path, map_location or "cpu")

        def remove_checkpoint(self, path: Any) -> None:
            Path(path).unlink(missing_ok=True)

    return SafetensorsCheckpointIO()


def model_checkpoint(dirpath: Path, every_n_steps: int) -> Any:
    """Lightning's ModelCheckpoint saving ``step-NNNNNN.ckpt`` every N steps, ``last.ckpt`` as an atomic link."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class AtomicModelCheckpoint(ModelCheckpoint):
        @staticmethod
        def _link_checkpoint(trainer: Any, filepath: str, linkpath: str) -> None:
            # Lightning removes the old link before creating the new one: a kill in between
            # would leave no last.ckpt. Swapping a new link into place leaves no such gap.
            if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
                relink(Path(filepath), Path(linkpath))
            trainer.strategy.barrier()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            # the end of training is a checkpoint too (to train on, or to branch from), whether
            # or not max_steps is a multiple of every_n_steps
            if not self._should_skip_saving_checkpoint(trainer):
                candidates = self._monitor_candidates(trainer)
                self._save_checkpoint(trainer, self.format_checkpoint_name(candidates))
                self._save_last_checkpoint(trainer, candidates)

    return AtomicModelCheckpoint(
        dirpath=str(dirpath),
        filename="step-{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=int(every_n_steps),
        save_top_k=-1,
        save_last="link",
        enable_version_counter=False,
    )


def save_checkpoint_now(trainer: Any) -> Path | None:
    """Write the job's checkpoint for the current step now (``step-NNNNNN.ckpt`` and ``last.ckpt``),
    as the periodic checkpoint would; None when the job does not checkpoint (``checkpoint.every_n_steps``)."""
    cb = trainer.checkpoint_callback
    if cb is None or not trainer.checkpoint_callbacks:
        return None
    candidates = cb._monitor_candidates(trainer)
    path = cb.format_checkpoint_name(candidates)
    cb._save_checkpoint(trainer, path)
    cb._save_last_checkpoint(trainer, candidates)
    return Path(path)
