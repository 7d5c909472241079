"""The layers of alignx import one way, with no cycle and no import hidden in a function (issue 14).

Read from the source with ``ast``: every ``import alignx...``/``from alignx... import`` at module
level or inside a function is an edge. ``cli.py`` is the one place allowed to import lazily: the
entry point loads only what the subcommand needs (``alignx plugins`` must not pay for torch).
"""

from __future__ import annotations

import ast
from pathlib import Path

import alignx

ROOT = Path(alignx.__file__).parent

#: lowest first; a module may import only modules of its own layer or below
LAYERS: list[tuple[str, ...]] = [
    ("alignx.errors", "alignx.secrets", "alignx.store", "alignx.paths", "alignx.registry", "alignx.ops"),
    ("alignx.losses",),
    ("alignx.data", "alignx.models", "alignx.rewards", "alignx.tracking", "alignx.tasks", "alignx.generation",
     "alignx.checkpoint", "alignx.config", "alignx.resume"),
    ("alignx.objectives",),
    ("alignx.evaluation", "alignx.datagen", "alignx.compare", "alignx.builtins", "alignx.labelling"),
    ("alignx.job", "alignx.train", "alignx.pipeline"),
    ("alignx.cli",),
]
LAZY_ALLOWED = {"alignx.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it")


def imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported alignx module, line, inside a function?) for every internal import."""
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        importer = module_name(path)

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets: list[str] = []
                if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                    base = child.module
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
                elif isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                for t in targets:
                    if t == "alignx" or t.startswith("alignx."):
                        out.append((importer, t, child.lineno, in_function))
                visit(child, nested)

        visit(ast.parse(path.read_text()), False)
    return out


def test_no_import_cycle_among_alignx_modules():
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in imports():
        if b != "alignx" and a != b:
            graph.setdefault(a, set()).add(b)
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_layers_import_only_downwards():
    upward = [
        f"{a}:{line} imports {b} (layer {layer(a)} -> {layer(b)})"
        for a, b, line, _ in imports()
        if b != "alignx" and layer(b) > layer(a)
    ]
    assert not upward, "\n".join(upward)


def test_internal_imports_are_at_module_level():
    hidden = [f"{a}:{line} imports {b} inside a function" for a, b, line, lazy in imports() if lazy and a not in LAZY_ALLOWED]
    assert not hidden, f"{len(hidden)} hidden imports:\n" + "\n".join(hidden)


def test_the_layer_test_sees_imports():
    # guards the scanner itself: the job imports the objectives, the cli imports the job lazily
    found = imports()
    assert ("alignx.job.single", "alignx.objectives.base", True) not in [(a, b, lazy) for a, b, _, lazy in found]
    assert any(a == "alignx.job.single" and b.startswith("alignx.objectives") for a, b, _, _ in found)
    assert any(a == "alignx.cli" and b.startswith("alignx.job") and lazy for a, b, _, lazy in found)
