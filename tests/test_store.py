"""alignx.store: one locked, atomic cache; damaged entries are named, discarded and rebuilt."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from alignx.errors import ConfigError
from alignx.store import Store, check_writable, digest

REPO = Path(__file__).resolve().parents[1]


def _store(root: Path, version: int = 1) -> Store:
    return Store(root, name="test cache", version=version, fields={"values": list, "label": str}, tensors=("t",))


def _computer(calls: list):
    def compute():
        calls.append(1)
        return {"values": [1, 2, 3], "label": "x"}, {"t": torch.arange(6, dtype=torch.float32).view(2, 3) / 7}

    return compute


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_digest_is_stable_and_normalised():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest("ab", "c") != digest("a", "bc")
    assert digest([Path("/x")]) == digest(["/x"]) and len(digest(1)) == 32 and len(digest(1, length=64)) == 64
    assert digest({"a": 1}) != digest({"a": 2})


def test_miss_then_hit_returns_the_same_entry_and_leaves_no_temp_files(tmp_path):
    calls: list = []
    store = _store(tmp_path)
    first, hit1 = store.get_or_compute("k", _computer(calls))
    second, hit2 = store.get_or_compute("k", _computer(calls))
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert second.data == first.data == {"values": [1, 2, 3], "label": "x"}
    assert torch.equal(second.tensors["t"], first.tensors["t"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json", "k.lock", "k.safetensors"]


# -- damaged entries ------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _rewrite(path: Path, edit) -> None:
    import json

    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


DAMAGE = {
    # name: (what to do to the entry, what the warning must say)
    "truncated record": (lambda s: _truncate(s.record_path("k")), "not valid JSON"),
    "garbage record": (lambda s: s.record_path("k").write_bytes(b"\xff\xfe\x00garbage\x81"), "not valid JSON"),
    "empty record": (lambda s: s.record_path("k").write_text(""), "not valid JSON"),
    "record is a list": (lambda s: s.record_path("k").write_text("[1, 2]"), "expected a JSON object, found list"),
    "old schema version": (lambda s: _rewrite(s.record_path("k"), lambda r: r.update(version=0)),
                           "schema version 0, expected 1"),
    "no envelope": (lambda s: s.record_path("k").write_text('{"values": [1], "label": "x"}'), "not a test cache entry"),
    "missing field": (lambda s: _rewrite(s.record_path("k"), lambda r: r["data"].pop("label")), "missing field(s) 'label'"),
    "wrong field type": (lambda s: _rewrite(s.record_path("k"), lambda r: r["data"].update(values="abc")),
                         "field 'values' is a str, expected list"),
    "tensor file deleted": (lambda s: s.tensor_path("k").unlink(), "tensor file"),
    "tensor file truncated": (lambda s: _truncate(s.tensor_path("k")), "is unreadable"),
    "tensor file garbage": (lambda s: s.tensor_path("k").write_bytes(os.urandom(64)), "is unreadable"),
    "tensor shape differs": (lambda s: _rewrite(s.record_path("k"), lambda r: r["tensors"].update(t=[3, 2])),
                             "the record says [3, 2]"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_named_discarded_and_rebuilt(tmp_path, caplog, damage):
    store = _store(tmp_path)
    calls: list = []
    clean, _ = store.get_or_compute("k", _computer(calls))
    do, says = DAMAGE[damage]
    do(store)
    with caplog.at_level(logging.WARNING, logger="alignx"):
        rebuilt, hit = store.get_or_compute("k", _computer(calls))
    assert not hit and len(calls) == 2
    (message,) = _warnings(caplog)
    assert str(store.record_path("k")) in message and says in message and "discarding" in message
    assert rebuilt.data == clean.data and torch.equal(rebuilt.tensors["t"], clean.tensors["t"])
    # and the rebuilt entry is good: the next reader hits without a warning
    caplog.clear()
    again, hit = store.get_or_compute("k", _computer(calls))
    assert hit and len(calls) == 2 and not _warnings(caplog) and again.data == clean.data


def test_a_check_can_reject_an_entry(tmp_path, caplog):
    """The stage cache's case: a well-formed record whose model directory is gone."""
    store = Store(tmp_path, name="stage cache", version=1, fields={"model_dir": (str, type(None))})
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with store.lock("s"):
        store.save("s", {"model_dir": str(model_dir)})

    def model_dir_exists(entry):
        d = entry.data["model_dir"]
        return None if d is None or Path(d).exists() else f"its model_dir {d} is gone"

    with store.lock("s"):
        assert store.load("s", check=model_dir_exists).data == {"model_dir": str(model_dir)}
    model_dir.rmdir()
    with caplog.at_level(logging.WARNING, logger="alignx"), store.lock("s"):
        assert store.load("s", check=model_dir_exists) is None
    assert any(f"its model_dir {model_dir} is gone" in m and str(store.record_path("s")) in m for m in _warnings(caplog))
    assert not store.record_path("s").exists()


def test_save_needs_exactly_the_declared_tensors(tmp_path):
    with pytest.raises(ValueError, match=r"carries tensors \['t'\]"):
        _store(tmp_path).save("k", {"values": [], "label": ""}, None)


# -- concurrency and crashes (real processes) --------------------------------------------------------

_WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from alignx.store import Store

    root, counter, me, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    # a barrier: every worker is up before any asks the store, so they really race
    (root.parent / f"ready-{me}").touch()
    while len(list(root.parent.glob("ready-*"))) < n:
        time.sleep(0.01)

    def compute():
        with open(counter, "a") as fh:
            fh.write(me + "\\n")
        time.sleep(0.5)  # long enough that the others arrive while this one computes
        return {"values": [me], "label": "computed by " + me}, None

    store = Store(root, name="race cache", version=1, fields={"values": list, "label": str})
    entry, hit = store.get_or_compute("shared", compute)
    print(json.dumps({"hit": hit, "data": entry.data}))
""")


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_concurrent_processes_compute_an_entry_once(tmp_path):
    import json

    n = 4
    counter = tmp_path / "computed.txt"
    procs = [_python(_WORKER, str(tmp_path / "cache"), str(counter), str(i), str(n)) for i in range(n)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert len(counter.read_text().splitlines()) == 1  # computed by exactly one process
    assert sorted(o["hit"] for o in outs) == [False, True, True, True]
    assert len({json.dumps(o["data"]) for o in outs}) == 1  # everyone got the one computed entry
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


_CRASHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from alignx.store import Store

    store = Store(Path(sys.argv[1]), name="race cache", version=1)
    with store.lock("shared"):
        # a writer killed half way: a partial temporary file, no record yet
        (Path(sys.argv[1]) / "shared.json.tmp-0-dead").write_text('{"format": 1, "cach')
        print("locked", flush=True)
        time.sleep(600)
""")


def test_a_killed_writer_blocks_nobody_and_its_leftovers_are_removed(tmp_path):
    root = tmp_path / "cache"
    crasher = _python(_CRASHER, str(root))
    assert crasher.stdout.readline().strip() == "locked", crasher.stderr.read()
    crasher.send_signal(signal.SIGKILL)
    crasher.wait(timeout=30)
    assert (root / "shared.lock").exists() and (root / "shared.json.tmp-0-dead").exists()
    store = Store(root, name="race cache", version=1)
    t0 = time.monotonic()
    entry, hit = store.get_or_compute("shared", lambda: ({"ok": True}, None))
    assert time.monotonic() - t0 < 10 and not hit and entry.data == {"ok": True}
    assert not list(root.glob("*.tmp-*"))
    crasher.stdout.close()
    crasher.stderr.close()


# -- unwritable locations ----------------------------------------------------------------------------


def test_check_writable_creates_a_missing_directory(tmp_path):
    target = tmp_path / "a" / "b"
    check_writable(target, "output_dir")
    assert target.is_dir() and list(target.iterdir()) == []  # the probe file is gone again


def test_check_writable_under_a_file_names_the_key_and_the_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError) as err:
        check_writable(tmp_path / "afile" / "sub", "outputs_root")
    assert str(err.value) == f"outputs_root={tmp_path / 'afile' / 'sub'} is not writable: {tmp_path / 'afile'} is a file, not a directory"
    with pytest.raises(ConfigError, match=r"^output_dir=.*afile is not writable: .*afile is a file, not a directory$"):
        check_writable(tmp_path / "afile", "output_dir")


def test_an_unwritable_cache_directory_is_a_config_error_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    calls: list = []
    store = _store(tmp_path / "afile" / "cache")
    with pytest.raises(ConfigError) as err:
        store.get_or_compute("k", _computer(calls))
    assert str(err.value) == (f"test cache directory {tmp_path / 'afile' / 'cache'} is not writable: "
                              f"{tmp_path / 'afile'} is a file, not a directory")
    assert calls == []
