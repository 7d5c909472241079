"""Each default lives in exactly one place: the YAML under conf/, read strictly by the code.

Two checks keep code and YAML from drifting apart again (as RM's ``normalize`` once did: YAML
``true``, code falling back to ``False``):

* no ``<config>.get("key", <literal>)`` anywhere in alignx: a second default next to the YAML's;
* every objective's ``config_keys`` and its YAML hold exactly the same keys, so each key an
  objective reads has its one default in the YAML.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from alignx.config import compose
from alignx.registry import load_plugins

PACKAGE = Path(__file__).resolve().parents[1] / "alignx"

#: receivers that are config objects: cfg, config, *_cfg, *_config, self.cfg, job.cfg, cfg.<group>, cfg["x"]
CONFIG_NAMES = ("cfg", "config")
CONFIG_SUFFIXES = ("_cfg", "_config")


def _is_config(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in CONFIG_NAMES or node.id.endswith(CONFIG_SUFFIXES)
    if isinstance(node, ast.Attribute):
        return node.attr in CONFIG_NAMES or node.attr.endswith(CONFIG_SUFFIXES) or _is_config(node.value)
    if isinstance(node, ast.Subscript):
        return _is_config(node.value)
    return False


def _literal_default(call: ast.Call) -> bool:
    """Whether ``call`` (a ``.get``) passes a default that is a literal other than None."""
    default = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "default"), None)
    if default is None:
        return False
    try:
        return ast.literal_eval(default) is not None
    except ValueError:  # a computed default (another config value, a variable) is not a second copy
        return False


def config_get_defaults(source: str) -> list[tuple[int, str]]:
    """(line, code) of every ``<config>.get("<key>", <non-None literal>)`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and _is_config(node.func.value)
            and _literal_default(node)
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_scan_finds_literal_defaults_on_config_objects_only():
    code = """
a = cfg.get("normalize", False)
b = self.cfg.get("beta", 0.1)
c = job.cfg.trainer.get("max_steps", -1)
d = data_cfg.get("max_length", 128)
e = cfg["objective"].get("loss", "sigmoid")
f = cfg.get("scheduler")
g = cfg.get("path", None)
h = row.get("margin", 0.0)
i = cfg.model.get("name_or_path", cfg.model.name)
"""
    assert [line for line, _ in config_get_defaults(code)] == [2, 3, 4, 5, 6]


def test_no_config_default_in_code():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {code}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, code in config_get_defaults(path.read_text())
    ]
    assert not offenders, (
        "config read with a default of its own (the YAML under conf/ holds every default; read the key "
        "strictly, e.g. cfg['key'], and add it to the YAML if it is missing):\n" + "\n".join(offenders)
    )


REGISTRY = load_plugins()


@pytest.mark.parametrize("name", REGISTRY.names("objective"))
def test_objective_yaml_holds_exactly_the_declared_keys(name):
    cls = REGISTRY.get("objective", name)
    # every objective of this repository (built-ins and plugins/) declares its keys; SFT declares none
    assert cls.config_keys is not None, f"objective={name} does not declare config_keys"
    declared = set(cls.config_keys) - {"name"}
    in_yaml = {str(k) for k in compose([f"objective={name}"]).objective.keys()} - {"name"}
    assert not declared - in_yaml, f"objective={name} reads keys its YAML has no default for: {sorted(declared - in_yaml)}"
    assert not in_yaml - declared, f"objective={name}'s YAML sets keys the objective does not declare: {sorted(in_yaml - declared)}"


def test_rm_normalises_by_default_as_its_yaml_says():
    """The disagreement that started this: conf/objective/rm.yaml normalises, and the code obeys it."""
    from alignx.objectives.rm import RewardModel

    node = compose(["objective=rm"]).objective
    assert node.normalize is True
    assert "normalize" in RewardModel.config_keys
