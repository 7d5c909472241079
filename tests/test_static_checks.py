"""Checks answered from source before the training stack loads (alignx.config.static / .early).

The static reader is compared with the real, imported classes and specs; dynamic declarations
must answer "unknown" (None), never a guess; and the command line must answer an objective key
typo, a missing ``_target_`` and a row-level data error with the same line as the job's own check,
without importing Lightning (checked in a subprocess that runs the CLI in-process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alignx.builtins import OBJECTIVES, PREFERENCE_LOSSES
from alignx.config import compose
from alignx.config import static
from alignx.config.early import OBJECTIVE_BASE, check_targets_static, target_problem
from alignx.config.targets import check_targets, import_target
from alignx.errors import ConfigError
from alignx.registry import load_plugins

# -- the reader on alignx's own classes --------------------------------------------------------


def _imported(target: str):
    module, _, attr = target.partition(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_declarations_equal_the_imported_class(name):
    target = OBJECTIVES[name]
    cls = _imported(target)
    assert static.class_attribute(target, "config_keys", stop=OBJECTIVE_BASE) == cls.config_keys
    assert static.class_attribute(target, "data_kind", stop=OBJECTIVE_BASE) == cls.data_kind
    assert static.class_attribute(target, "option_keys_from", stop=OBJECTIVE_BASE) == cls.option_keys_from
    assert static.class_attribute(target, "row_kinds", stop=OBJECTIVE_BASE) == cls.row_kinds


@pytest.mark.parametrize(("name", "overrides"), [(n, []) for n in sorted(OBJECTIVES)] + [("rm", ["objective.data_kind=ranked"])])
def test_static_row_kind_equals_the_class_row_kind(name, overrides):
    """The command line validates rows by the kind it reads from source: the kind the job would use."""
    from alignx.config.early import static_row_kind

    from alignx.objectives.base import Objective

    cfg = compose([f"objective={name}", *overrides])
    cls = _imported(OBJECTIVES[name])
    if cls.stages.__func__ is not Objective.stages.__func__:
        # a multi-stage objective (online_dpo): its stages' rows are checked when each stage runs
        assert static_row_kind(cfg, load_plugins()) is None
    else:
        assert static_row_kind(cfg, load_plugins()) == cls.row_kind(cfg.objective)


def test_a_row_kind_key_outside_its_row_kinds_is_left_to_the_class():
    from alignx.config.early import static_row_kind
    from alignx.objectives.rm import RewardModel

    cfg = compose(["objective=rm", "objective.data_kind=triples"])
    assert static_row_kind(cfg, load_plugins()) is None
    with pytest.raises(ConfigError, match=r"objective.data_kind='triples' is not a row kind objective=rm trains on. "
                                          r"Valid: pairs, ranked"):
        RewardModel.row_kind(cfg.objective)


def test_the_chain_is_trusted_only_up_to_the_alignx_base():
    """Above Objective are Lightning's classes (several bases): without ``stop`` nothing is decided."""
    assert static.class_attribute(OBJECTIVES["dpo"], "config_keys") is None


def test_dpo_config_keys_and_option_rule_read_from_source():
    from alignx.objectives.dpo import DPO

    keys = static.class_attribute(OBJECTIVES["dpo"], "config_keys", stop=OBJECTIVE_BASE)
    assert keys == DPO.config_keys and isinstance(keys, frozenset)
    assert static.class_attribute(OBJECTIVES["dpo"], "option_keys_from", stop=OBJECTIVE_BASE) == {"loss": "preference_loss"}
    owners = static.method_owners(OBJECTIVES["dpo"], "check_config", stop=OBJECTIVE_BASE)
    assert [o.target for o, _ in owners] == ["alignx.objectives.dpo:DPO", OBJECTIVE_BASE]
    assert static.calls_super_first_level(owners[0][1])


def test_grpo_union_of_imported_sets():
    """GRPO's config_keys is ``ONLINE_KEYS | FAMILY_KEYS | {...}``, ONLINE_KEYS imported from another module."""
    from alignx.objectives.grpo import GRPO, RLOO

    assert static.class_attribute(OBJECTIVES["grpo"], "config_keys", stop=OBJECTIVE_BASE) == GRPO.config_keys
    assert static.class_attribute(OBJECTIVES["rloo"], "config_keys", stop=OBJECTIVE_BASE) == RLOO.config_keys
    assert "clip_range_high" in GRPO.config_keys and "clip_range_high" not in RLOO.config_keys


def test_method_owners_along_the_chain():
    rm = static.method_owners(OBJECTIVES["rm"], "prepare_model", stop=OBJECTIVE_BASE)
    assert [o.target for o, _ in rm] == ["alignx.objectives.rm:RewardModel", OBJECTIVE_BASE]
    sft = static.method_owners(OBJECTIVES["sft"], "row_kind", stop=OBJECTIVE_BASE)
    assert [o.target for o, _ in sft] == [OBJECTIVE_BASE]
    # the online objectives' check_config starts with super().check_config: their keys are the base rule's
    grpo = static.method_owners(OBJECTIVES["grpo"], "check_config", stop=OBJECTIVE_BASE)
    assert [o.target for o, _ in grpo] == ["alignx.objectives.online:OnlineObjective", OBJECTIVE_BASE]
    assert static.calls_super_first_level(grpo[0][1])


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_preference_loss_options_equal_the_real_spec(name):
    target = PREFERENCE_LOSSES[name]
    assert static.preference_loss_options(target) == _imported(target).options


def test_sigmoid_options():
    from alignx.losses.dpo_family import SIGMOID

    assert static.preference_loss_options(PREFERENCE_LOSSES["sigmoid"]) == SIGMOID.options == ("beta", "label_smoothing")


# -- dynamic declarations answer unknown -----------------------------------------------------------


@pytest.fixture()
def sources(tmp_path, monkeypatch):
    """A package ``stx_pkg`` on sys.path, written but never imported."""
    pkg = tmp_path / "stx_pkg"
    pkg.mkdir()
    files = {
        "__init__.py": "",
        "keys.py": """
            BASE = frozenset({"a"})
            MORE = ("c",) + ("d",)
        """,
        "objs.py": """
            import random
            from .keys import BASE, MORE
            from stx_pkg import keys as k

            def compute():
                return frozenset({"z"})

            KEYS = compute()
            if random.random() > 2:
                FLAG = "x"
            else:
                FLAG = "y"
            TWICE = frozenset({"a"})
            TWICE = frozenset({"b"})

            def deco(cls):
                cls.config_keys = frozenset({"changed"})
                return cls

            class Base:
                config_keys = BASE | {"b"} | frozenset(MORE)
                data_kind = k.BASE
                option_keys_from = {"loss": "preference_loss"}

            class Child(Base):
                pass

            class Dynamic(Base):
                config_keys = KEYS

            class Conditional(Base):
                data_kind = FLAG

            class Rebound(Base):
                config_keys = TWICE

            @deco
            class Decorated(Base):
                pass

            class Mixin:
                data_kind = "other"

            class TwoBases(Mixin, Base):
                pass

            class Patched(Base):
                pass

            Patched.config_keys = frozenset({"patched"})

            class Hooked:
                def __init_subclass__(cls):
                    cls.config_keys = frozenset({"hooked"})

            class FromHook(Hooked):
                config_keys = frozenset({"declared"})

            class Checked(Base):
                @classmethod
                def check_config(cls, cfg):
                    'Looks the loss up first, then the inherited key check.'
                    spec = lookup(str(cfg.objective.loss))
                    super().check_config(cfg)

            class Pops(Base):
                @classmethod
                def check_config(cls, cfg):
                    cfg.objective.pop("legacy", None)
                    super().check_config(cfg)

            class Opens(Base):
                @classmethod
                def check_config(cls, cfg):
                    with open_dict(cfg):
                        cfg.objective.legacy = 1
                    super().check_config(cfg)

            class Sometimes(Base):
                @classmethod
                def check_config(cls, cfg):
                    if cfg.objective.strict:
                        super().check_config(cfg)

            class Never(Base):
                @classmethod
                def check_config(cls, cfg):
                    check_known_keys(cfg.objective.keys(), cls.config_keys, "objective.")
        """,
        "losses.py": """
            import functools
            from alignx.losses.dpo_family import PreferenceLoss

            def good(x, *, beta, gamma):
                return x

            def with_default(x, *, beta=0.1):
                return x

            @functools.wraps(good)
            def wrapped(x, *, beta):
                return x

            GOOD = PreferenceLoss("good", fn=good)
            DEFAULTED = PreferenceLoss("d", with_default)
            WRAPPED = PreferenceLoss("w", wrapped)
            LAMBDA = PreferenceLoss("l", lambda x, *, beta: x)
            NOT_A_CALL = good
        """,
        "star.py": "from os.path import *\n",
        "lazy.py": "def __getattr__(name):\n    return name\n",
        "glob.py": "globals()['made'] = 1\n",
        "plain.py": "import os\nfrom . import keys\nVALUE = 1\n__all__ = ['VALUE', 'listed']\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "stx_pkg"
    assert not [m for m in sys.modules if m.startswith("stx_pkg")], "the reader imported the package"


def test_static_values_follow_imports_and_bases(sources):
    assert static.class_attribute("stx_pkg.objs:Child", "config_keys") == {"a", "b", "c", "d"}
    assert static.class_attribute("stx_pkg.objs:Child", "data_kind") == {"a"}
    assert static.class_attribute("stx_pkg.objs:Child", "option_keys_from") == {"loss": "preference_loss"}
    assert static.preference_loss_options("stx_pkg.losses:GOOD") == ("beta", "gamma")


@pytest.mark.parametrize(
    ("target", "attr"),
    [
        ("stx_pkg.objs:Dynamic", "config_keys"),      # a function call
        ("stx_pkg.objs:Conditional", "data_kind"),    # bound in if/else
        ("stx_pkg.objs:Rebound", "config_keys"),      # bound twice
        ("stx_pkg.objs:Decorated", "config_keys"),    # a decorator may change it
        ("stx_pkg.objs:TwoBases", "config_keys"),     # several bases: no MRO walk
        ("stx_pkg.objs:Patched", "config_keys"),      # assigned after the class statement
        ("stx_pkg.objs:FromHook", "config_keys"),     # __init_subclass__ in the chain
        ("stx_pkg.objs:compute", "config_keys"),      # not a class
        ("stx_pkg.nope:Child", "config_keys"),        # no such module
    ],
)
def test_dynamic_declarations_are_unknown(sources, target, attr):
    assert static.class_attribute(target, attr) is None


@pytest.mark.parametrize(("name", "runs_super"),
                         [("Checked", True), ("Pops", False), ("Opens", False), ("Sometimes", False), ("Never", False)])
def test_an_override_keeps_the_inherited_key_check_only_when_visibly_called_first(sources, name, runs_super):
    """The CLI trusts the inherited check only when the override calls it as a statement of its own,
    after statements that only bind local names (a node changed in place first would make the
    early answer wrong)."""
    owners = static.method_owners(f"stx_pkg.objs:{name}", "check_config")
    assert [o.target for o, _ in owners] == [f"stx_pkg.objs:{name}"]
    assert static.calls_super_first_level(owners[0][1]) is runs_super


@pytest.mark.parametrize("target", ["stx_pkg.losses:DEFAULTED", "stx_pkg.losses:WRAPPED", "stx_pkg.losses:LAMBDA",
                                    "stx_pkg.losses:NOT_A_CALL", "stx_pkg.objs:Child"])
def test_undecidable_loss_options_are_unknown(sources, target):
    assert static.preference_loss_options(target) is None


def test_module_names(sources):
    assert static.module_defines("stx_pkg.plain", "VALUE") is True
    assert static.module_defines("stx_pkg.plain", "os") is True
    assert static.module_defines("stx_pkg.plain", "keys") is True
    assert static.module_defines("stx_pkg.plain", "VALU") is False
    assert static.module_defines("stx_pkg.plain", "listed") is None  # only in __all__
    assert static.module_defines("stx_pkg", "objs") is True  # a submodule
    for module in ("stx_pkg.star", "stx_pkg.lazy", "stx_pkg.glob"):
        assert static.module_defines(module, "anything") is None
    assert target_problem("stx_pkg.plain.VALU") == "'stx_pkg.plain' has no 'VALU'. Did you mean 'stx_pkg.plain.VALUE'?"
    assert target_problem("stx_pkg.lazy.anything") is None


# -- _target_: the same line as the import-time check ---------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["torch.optim.AdamX", "nope_not_a_module.optim.AdamW", "alignx.objectives.dpo.DPX", "torch.optim.sgdd"],
)
def test_missing_target_message_equals_import_time_check(path):
    with pytest.raises(ConfigError) as real:
        import_target(path, "optim")
    problem = target_problem(path)
    assert problem is not None
    assert f"optim._target_={path} cannot be imported: {problem}" == str(real.value)


@pytest.mark.parametrize("path", ["torch.optim.AdamW", "transformers.get_linear_schedule_with_warmup", "torch.optim"])
def test_existing_or_undecidable_targets_pass(path):
    assert target_problem(path) is None


def test_config_target_check_equals_check_targets():
    cfg = compose(["optim._target_=torch.optim.AdamX"])
    with pytest.raises(ConfigError) as fast:
        check_targets_static(cfg)
    with pytest.raises(ConfigError) as slow:
        check_targets(cfg)
    assert str(fast.value) == str(slow.value)
    check_targets_static(compose([]))  # the shipped config passes


# -- the command line: same lines, and Lightning never imported ----------------------------------

# runs the CLI in-process and reports its exit status and whether Lightning/torch were imported
_IN_PROCESS = """
import sys
from alignx.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(f"exit={code} lightning={'lightning' in sys.modules} torch={'torch' in sys.modules}")
"""


def _cli_in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ALIGNX_OUTPUTS": str(cwd / "outputs"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _IN_PROCESS, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _bad_rows(tmp_path: Path) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{"prompt": "e"}\n')
    return str(path)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["+objective.bta=1"], "alignx: error: unknown key 'objective.bta'. Valid keys under 'objective': name"),
        (["objective=dpo", "+objective.bta=1"],
         "alignx: error: unknown key 'objective.bta'. Did you mean 'objective.beta'? Valid keys under 'objective': "
         "beta, label_smoothing, loss, name, orpo_lambda, precompute_ref_logps, simpo_gamma"),
        (["objective=dpo", "objective.loss=orpo", "+objective.orpo_lamda=1"],
         "alignx: error: unknown key 'objective.orpo_lamda'. Did you mean 'objective.orpo_lambda'? Valid keys under "
         "'objective': beta, label_smoothing, loss, name, orpo_lambda, precompute_ref_logps, simpo_gamma"),
        (["objective=ppo", "+objective.clip_rang=0.1"],
         "alignx: error: unknown key 'objective.clip_rang'. Did you mean 'objective.clip_range'?"),
        (["optim._target_=torch.optim.AdamX"],
         "alignx: error: optim._target_=torch.optim.AdamX cannot be imported: 'torch.optim' has no 'AdamX'. "
         "Did you mean 'torch.optim.Adam'?"),
        (["objective=rm", "objective.data_kind=ranked", "dataset=jsonl", "dataset.path={ranked}"],
         "alignx: error: {ranked}, row 2, column 'completions': a ranked row needs at least 2 completions, got 1"),
        (["dataset=jsonl", "dataset.path={rows}"],
         "alignx: error: {rows}, row 3, column 'completion': missing column (or give 'messages' instead); "
         "the row has columns ['prompt']"),
    ],
    ids=["sft-key", "dpo-key", "dpo-loss-option", "ppo-key", "target", "rm-ranked-row", "row"],
)
def test_cli_answers_without_importing_lightning(tmp_path, args, line):
    rows = _bad_rows(tmp_path)
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text('{"prompt": "a", "completions": ["x", "y"], "ranks": [0, 1]}\n{"prompt": "c", "completions": ["x"]}\n')
    args = [a.replace("{rows}", rows).replace("{ranked}", str(ranked)) for a in args]
    proc = _cli_in_process(args, tmp_path)
    want = line.replace("{rows}", rows).replace("{ranked}", str(ranked))
    assert proc.stderr.strip().splitlines()[-1].startswith(want), proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "exit=2 lightning=False torch=False", proc.stdout + proc.stderr


def test_cli_falls_back_to_the_class_when_the_source_does_not_decide(tmp_path):
    """SPIN (the spin plugin) asks the registry before its super().check_config call: the CLI leaves
    it to the imported class, which still gives the line."""
    proc = _cli_in_process(["objective=spin", "+objective.bta=1"], tmp_path)
    assert "alignx: error: unknown key 'objective.bta'. Did you mean 'objective.beta'?" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "exit=2 lightning=True torch=True", proc.stdout + proc.stderr


def test_registry_entries_stay_lazy_after_the_static_checks():
    """Reading declarations from source imports nothing a lazy entry names."""
    from alignx.config.early import check_objective_keys_static, static_row_kind

    registry = load_plugins()
    before = {(e.kind, e.name): e.loaded for e in registry.entries()}
    cfg = compose(["objective=dpo"])
    assert check_objective_keys_static(cfg, registry) is True
    assert static_row_kind(cfg, registry) == "pairs"
    assert static_row_kind(compose(["objective=rm"]), registry) == "pairs"  # RewardModel declares row_kind_key
    assert check_objective_keys_static(compose(["objective=grpo"]), registry) is True
    assert check_objective_keys_static(compose(["objective=spin"]), registry) is False  # left to the class
    assert {(e.kind, e.name): e.loaded for e in registry.entries()} == before


def test_base_check_config_applies_option_keys_from():
    """The shared rule on the imported side: a subclass declaring ``option_keys_from`` gets the
    selected component's options as keys, and an unset selector is named."""
    from omegaconf import OmegaConf

    from alignx.objectives.base import Objective

    class Picky(Objective):
        name = "picky"
        config_keys = frozenset({"loss"})
        option_keys_from = {"loss": "preference_loss"}

    def node(**keys):
        return OmegaConf.create({"objective": {"name": "picky", **keys}})

    Picky.check_config(node(loss="orpo", orpo_lambda=1.0))
    with pytest.raises(ConfigError, match=r"unknown key 'objective.beta'\. Valid keys under 'objective': loss, name, orpo_lambda$"):
        Picky.check_config(node(loss="orpo", beta=0.1))
    with pytest.raises(ConfigError, match="objective.loss must be set: it selects the preference_loss"):
        Picky.check_config(node())
