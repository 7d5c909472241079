"""A built wheel carries conf/ (as alignx.conf) and declares alignx's own entry points."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_wheel_ships_config_groups_and_entry_points(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        REPO, src, ignore=shutil.ignore_patterns(".venv", "outputs", ".git", "__pycache__", "*.egg-info", "build", "plugins", "tests")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every config group directory is a listed package: setuptools warns (a page per directory, on
    # every fresh install) about an importable directory that is not
    assert "is absent from the `packages` configuration" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("alignx-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        yamls = {Path(n).relative_to("alignx/conf").as_posix() for n in names if n.startswith("alignx/conf/") and n.endswith(".yaml")}
        shipped = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
        assert yamls == shipped
        # every alignx subpackage ships (a package missing from the list is left out without a word)
        modules = {Path(n).parent.as_posix() for n in names if n.startswith("alignx/") and n.endswith("/__init__.py")}
        expected = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "alignx").rglob("__init__.py")}
        assert expected <= modules, sorted(expected - modules)
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[alignx.plugins]\nalignx = alignx.builtins:register" in entry_points
    assert "[alignx.conf]\nalignx = alignx.conf" in entry_points
    assert "alignx = alignx.cli:main" in entry_points
