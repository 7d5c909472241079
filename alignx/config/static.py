"""Reading declarations from source without importing it: what the command line checks before the
training stack loads.

An objective class subclasses Lightning's ``LightningModule``, so importing it costs seconds; its
declarations (``data_kind``, ``config_keys``, which methods a class overrides), a preference loss's
options and whether a ``_target_`` names something that exists are plain text in its module. This
module evaluates them with :mod:`ast`, the way :func:`alignx.config.values._trainer_args_from_source`
reads Lightning's ``Trainer`` arguments, and follows ``from x import y`` (relative too) and class
bases to other modules' sources the same way.

It supports literals (str, numbers, bool, None), set/frozenset/tuple/list/dict literals,
``frozenset(...)``/``set(...)``/``tuple(...)`` of those, ``|``/``&``/``-`` of sets and ``+`` of
tuples/lists, names bound once at module level (or in the class body) to such values, names
imported from other modules, and single-base class chains. Anything else -- a name bound twice or
conditionally, a decorated class, a metaclass, ``__init_subclass__``, ``from x import *``, a module
``__getattr__``, ``globals()``, a C extension -- answers :data:`UNKNOWN` (None), and the caller
falls back to importing the code. An answer is never a guess.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from alignx.registry import find_spec_no_import

#: what every function here returns when the source does not decide the question
UNKNOWN = None
#: how many imports/bases deep a lookup follows before it gives up (a cycle, or a deep re-export chain)
_MAX_DEPTH = 24
#: calls that make a module's namespace or a class's attributes impossible to read from its text
_DYNAMIC_NAMES = frozenset({"globals", "vars", "locals", "exec", "eval", "__import__"})


class _Unknown(Exception):
    """Raised inside the evaluator; every public function turns it into :data:`UNKNOWN`."""


@dataclass(frozen=True)
class ModuleRef:
    """A module, by its dotted name."""

    name: str


@dataclass(frozen=True)
class ClassRef:
    """A class statement of a module's top level."""

    module: str
    name: str

    @property
    def target(self) -> str:
        return f"{self.module}:{self.name}"


@dataclass(frozen=True)
class FuncRef:
    """A ``def`` of a module's top level."""

    module: str
    name: str


@dataclass(frozen=True)
class CallRef:
    """A call at a module's top level (``X = Factory(...)``): what is called, and the call's text."""

    module: str
    callee: Any
    node: ast.Call


@dataclass
class _Module:
    name: str
    package: str  # what relative imports are relative to
    tree: ast.Module
    #: name -> the one simple top-level statement binding it; names bound in several places or
    #: conditionally map to None
    bindings: dict[str, ast.stmt | None]
    #: every name bound anywhere at module level (also conditionally), for "does it exist"
    all_bound: frozenset[str]
    deleted: frozenset[str]
    #: the namespace cannot be read from the text (``import *``, ``__getattr__``, ``globals()`` ...)
    dynamic: bool
    #: names some function rebinds with ``global``
    global_names: frozenset[str]


# ---------------------------------------------------------------- modules


@lru_cache(maxsize=256)
def _module(name: str) -> _Module | None:
    """The parsed source of module ``name``, found without importing it (None: no ``.py`` source)."""
    try:
        spec = find_spec_no_import(name)
    except Exception:  # noqa: BLE001 - a finder that raises leaves the question open
        return None
    origin = spec.origin if spec is not None else None
    if not origin or not str(origin).endswith(".py"):
        return None  # namespace package, extension module, frozen or built-in
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    is_package = spec.submodule_search_locations is not None
    package = name if is_package else name.rpartition(".")[0]
    return _index(name, package, tree)


def _index(name: str, package: str, tree: ast.Module) -> _Module:
    simple: dict[str, list[ast.stmt]] = {}
    all_bound: set[str] = set()
    deleted: set[str] = set()
    dynamic = False
    conditional: set[str] = set()

    def bound_by(stmt: ast.stmt) -> list[str]:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return [stmt.name]
        if isinstance(stmt, ast.Import):
            return [a.asname or a.name.split(".")[0] for a in stmt.names]
        if isinstance(stmt, ast.ImportFrom):
            return [a.asname or a.name for a in stmt.names if a.name != "*"]
        if isinstance(stmt, ast.Assign):
            return [n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            return [stmt.target.id] if isinstance(stmt.target, ast.Name) else []
        return []

    for stmt in tree.body:
        for n in bound_by(stmt):
            simple.setdefault(n, []).append(stmt)
        if isinstance(stmt, ast.ImportFrom):
            if any(a.name == "*" for a in stmt.names):
                dynamic = True
            # importing a submodule binds it as an attribute of its package (``from .sub import x``)
            if stmt.level == 1 and stmt.module and package == name:
                all_bound.add(stmt.module.split(".")[0])
            elif stmt.level == 0 and stmt.module and stmt.module.startswith(name + "."):
                all_bound.add(stmt.module[len(name) + 1:].split(".")[0])
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "__getattr__":
            dynamic = True
        if isinstance(stmt, ast.Delete):
            deleted.update(n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name))
        if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom,
                                 ast.Assign, ast.AnnAssign, ast.Expr, ast.Delete, ast.Pass)):
            # if/try/for/with at top level: whatever they bind is bound conditionally
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    conditional.add(node.id)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    conditional.add(node.name)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    conditional.update(bound_by(node))
                    if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
                        dynamic = True
                elif isinstance(node, ast.ExceptHandler) and node.name:
                    conditional.add(node.name)
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.Expr)):
            for node in ast.walk(stmt):  # walrus and comprehension targets at module level
                if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
                    conditional.add(node.target.id)
    global_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _DYNAMIC_NAMES:
            dynamic = True
        elif isinstance(node, ast.Attribute) and node.attr == "modules" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            dynamic = True  # sys.modules[__name__] = ... replaces the module
        elif isinstance(node, ast.Global):
            global_names.update(node.names)
    for stmt in tree.body:  # setattr/delattr at top level may target the module itself
        for node in ast.walk(stmt) if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ():
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
                dynamic = True
    all_bound.update(simple)
    all_bound.update(conditional)
    bindings: dict[str, ast.stmt | None] = {}
    for n, stmts in simple.items():
        ok = len(stmts) == 1 and n not in conditional and n not in deleted and n not in global_names
        bindings[n] = stmts[0] if ok else None
    for n in conditional | deleted | global_names:
        bindings.setdefault(n, None)
    return _Module(name, package, tree, bindings, frozenset(all_bound), frozenset(deleted), dynamic,
                   frozenset(global_names))


def _absolute(mod: _Module, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    parts = mod.package.split(".") if mod.package else []
    if level - 1 > len(parts):
        raise _Unknown
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _lookup(module_name: str, name: str, depth: int) -> Any:
    """The value of top-level ``name`` of ``module_name`` (a plain value or a *Ref)."""
    if depth > _MAX_DEPTH:
        raise _Unknown
    mod = _module(module_name)
    if mod is None or mod.dynamic:
        raise _Unknown
    if name not in mod.bindings:
        raise _Unknown  # a builtin, or bound by something this reader does not see
    stmt = mod.bindings[name]
    if stmt is None:
        raise _Unknown
    if isinstance(stmt, ast.ClassDef):
        return ClassRef(module_name, name)
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if stmt.decorator_list:
            raise _Unknown  # a decorator may return anything
        return FuncRef(module_name, name)
    if isinstance(stmt, ast.Import):
        for a in stmt.names:
            if a.asname == name:
                return ModuleRef(a.name)
            if a.asname is None and a.name.split(".")[0] == name:
                return ModuleRef(name)
        raise _Unknown
    if isinstance(stmt, ast.ImportFrom):
        source = _absolute(mod, stmt.level, stmt.module)
        for a in stmt.names:
            if (a.asname or a.name) == name:
                return _import_from(source, a.name, depth + 1)
        raise _Unknown
    if isinstance(stmt, ast.Assign):
        if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
            raise _Unknown
        return _eval(stmt.value, module_name, None, depth + 1)
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return _eval(stmt.value, module_name, None, depth + 1)
    raise _Unknown


def _import_from(source: str, name: str, depth: int) -> Any:
    """``from source import name``: the module's attribute, else its submodule of that name."""
    mod = _module(source)
    if mod is not None and not mod.dynamic and name in mod.bindings:
        return _lookup(source, name, depth)
    if mod is not None and not mod.dynamic and name not in mod.all_bound:
        try:
            if find_spec_no_import(f"{source}.{name}") is not None:
                return ModuleRef(f"{source}.{name}")
        except Exception:  # noqa: BLE001
            raise _Unknown from None
    raise _Unknown


# ---------------------------------------------------------------- expressions

_SET_OPS = {ast.BitOr: lambda a, b: a | b, ast.BitAnd: lambda a, b: a & b, ast.Sub: lambda a, b: a - b}
_CONVERTERS = {"frozenset": frozenset, "set": frozenset, "tuple": tuple, "list": list}


def _eval(node: ast.expr, module: str, cls: ast.ClassDef | None, depth: int) -> Any:
    """Statically evaluate ``node`` in ``module``'s namespace (``cls``: inside that class body)."""
    if depth > _MAX_DEPTH:
        raise _Unknown
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
        items = [_eval(e, module, cls, depth + 1) for e in node.elts]
        if isinstance(node, ast.Set):
            return frozenset(items)  # set literals compare equal to frozensets; hashable for unions
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _Unknown  # {**other}
        return {_eval(k, module, cls, depth + 1): _eval(v, module, cls, depth + 1) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, module, cls, depth + 1), _eval(node.right, module, cls, depth + 1)
        if type(node.op) in _SET_OPS and isinstance(left, frozenset) and isinstance(right, frozenset):
            return frozenset(_SET_OPS[type(node.op)](left, right))
        if isinstance(node.op, ast.Add) and type(left) is type(right) and isinstance(left, (tuple, list, str)):
            return left + right
        raise _Unknown
    if isinstance(node, ast.Name):
        if cls is not None:
            stmt = _class_binding(cls, node.id)
            if stmt is not None:
                return _eval(_assigned_value(stmt), module, cls, depth + 1)
        return _name(module, node.id, depth + 1)
    if isinstance(node, ast.Attribute):
        owner = _eval(node.value, module, cls, depth + 1)
        if isinstance(owner, ModuleRef):
            return _import_from(owner.name, node.attr, depth + 1)
        raise _Unknown
    if isinstance(node, ast.Call):
        callee = _callee(node.func, module, cls, depth + 1)
        if isinstance(callee, str):  # a builtin converter
            if node.keywords or len(node.args) > 1 or any(isinstance(a, ast.Starred) for a in node.args):
                raise _Unknown
            value = _eval(node.args[0], module, cls, depth + 1) if node.args else ()
            if not isinstance(value, (frozenset, tuple, list, str)):
                raise _Unknown
            return frozenset(value) if callee in ("frozenset", "set") else _CONVERTERS[callee](value)
        if isinstance(callee, ClassRef):
            return CallRef(module, callee, node)
    raise _Unknown


def _callee(func: ast.expr, module: str, cls: ast.ClassDef | None, depth: int) -> Any:
    if isinstance(func, ast.Name) and func.id in _CONVERTERS:
        mod = _module(module)
        if mod is None or mod.dynamic:
            raise _Unknown
        if func.id not in mod.all_bound and (cls is None or _class_binding(cls, func.id) is None):
            return func.id  # the builtin: nothing in the module shadows it
        raise _Unknown
    return _eval(func, module, cls, depth)


def _name(module: str, name: str, depth: int) -> Any:
    return _lookup(module, name, depth)


def _assigned_value(stmt: ast.stmt) -> ast.expr:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.value
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return stmt.value
    raise _Unknown


# ---------------------------------------------------------------- classes


def _class_node(ref: ClassRef) -> ast.ClassDef:
    mod = _module(ref.module)
    stmt = mod.bindings.get(ref.name) if mod is not None else None
    if not isinstance(stmt, ast.ClassDef):
        raise _Unknown
    return stmt


def _class_statements(cls: ast.ClassDef, name: str) -> list[ast.stmt]:
    """Statements of the class body binding ``name`` (compound statements count, as unknown)."""
    found = []
    for stmt in cls.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if stmt.name == name:
                found.append(stmt)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                found.append(stmt)
        elif not isinstance(stmt, (ast.Expr, ast.Pass)):
            if any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store) for n in ast.walk(stmt)) or \
                    any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name for n in ast.walk(stmt)):
                found.append(stmt)
    return found


def _class_binding(cls: ast.ClassDef, name: str) -> ast.stmt | None:
    """The one statement binding ``name`` in the class body; None when it binds none; unknown when
    several or a conditional one do."""
    found = _class_statements(cls, name)
    if not found:
        return None
    if len(found) > 1 or not isinstance(found[0], (ast.Assign, ast.AnnAssign, ast.FunctionDef, ast.AsyncFunctionDef)):
        raise _Unknown
    return found[0]


def _checked_class(ref: ClassRef, attr: str) -> ast.ClassDef:
    """The class statement, refused when something may set ``attr`` outside its body."""
    node = _class_node(ref)
    if node.decorator_list or node.keywords:
        raise _Unknown  # a decorator may replace the class; a metaclass may add attributes
    if _class_statements(node, "__init_subclass__"):
        raise _Unknown  # it may set attributes on every subclass
    mod = _module(ref.module)
    for n in ast.walk(mod.tree):  # Class.attr = ... anywhere in its module
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, (ast.Store, ast.Del)) and n.attr == attr \
                and isinstance(n.value, ast.Name) and n.value.id == ref.name:
            raise _Unknown
    return node


def _base(ref: ClassRef, node: ast.ClassDef, depth: int) -> ClassRef | None:
    """The single base class of ``ref`` (None: it derives from object only)."""
    bases = [b for b in node.bases if not (isinstance(b, ast.Name) and b.id == "object")]
    if not bases:
        return None
    if len(bases) > 1:
        raise _Unknown  # the method resolution order of several bases is not followed
    base = _eval(bases[0], ref.module, None, depth + 1)
    if not isinstance(base, ClassRef):
        raise _Unknown
    return base


def _chain(ref: ClassRef, attr: str, stop: str | None) -> list[tuple[ClassRef, ast.ClassDef]]:
    """``ref`` and its bases, nearest first, up to the class ``stop`` names (a ``module:Class``
    target, trusted not to be changed by its own bases) or to a class deriving from ``object``
    only; unknown when a base cannot be resolved first, or when something in the chain may set
    ``attr`` outside a class body (see :func:`_checked_class`)."""
    chain: list[tuple[ClassRef, ast.ClassDef]] = []
    current: ClassRef | None = ref
    while current is not None:
        if len(chain) > _MAX_DEPTH:
            raise _Unknown
        node = _checked_class(current, attr)
        chain.append((current, node))
        if current.target == stop:
            break
        current = _base(current, node, len(chain))
    return chain


def _chain_definers(ref: ClassRef, attr: str, stop: str | None) -> list[tuple[ClassRef, ast.stmt]]:
    """The classes of :func:`_chain` that bind ``attr`` in their body, nearest first."""
    found = []
    for owner, node in _chain(ref, attr, stop):
        stmt = _class_binding(node, attr)
        if stmt is not None:
            found.append((owner, stmt))
    return found


def resolve_class(target: str) -> ClassRef | None:
    """The class a ``"pkg.module:Class"`` registry target names, found in source (UNKNOWN if not a
    class statement read from a ``.py`` file)."""
    module, _, attr = target.partition(":")
    if not attr or "." in attr:
        return UNKNOWN
    try:
        value = _lookup(module, attr, 0)
    except _Unknown:
        return UNKNOWN
    return value if isinstance(value, ClassRef) else UNKNOWN


def class_attribute(target: str | ClassRef, attr: str, *, stop: str | None = None) -> Any:
    """The value of class attribute ``attr`` (``data_kind``, ``config_keys``, ...) of a class, read
    from the nearest class of its chain (up to ``stop``, see :func:`method_owners`) that assigns it;
    UNKNOWN when not statically decidable, also when no class of the chain assigns it."""
    definers = _definers_of(target, attr, stop)
    if not definers:
        return UNKNOWN
    owner, stmt = definers[0]
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return UNKNOWN
    try:
        value = _eval(_assigned_value(stmt), owner.module, _class_node(owner), 0)
    except _Unknown:
        return UNKNOWN
    return None if isinstance(value, (ModuleRef, ClassRef, FuncRef, CallRef)) else value


def _definers_of(target: str | ClassRef, attr: str, stop: str | None) -> list[tuple[ClassRef, ast.stmt]] | None:
    """:func:`_chain_definers` from a registry target or a class, UNKNOWN when not decidable."""
    ref = resolve_class(target) if isinstance(target, str) else target
    if ref is None:
        return UNKNOWN
    try:
        return _chain_definers(ref, attr, stop)
    except _Unknown:
        return UNKNOWN


def attribute_owner(target: str | ClassRef, attr: str, *, stop: str | None = None) -> ClassRef | None:
    """The nearest class of the chain (as :func:`class_attribute` walks it) that assigns ``attr``;
    UNKNOWN when not decidable or none does. It tells a class attribute assigned ``None`` (whose
    :func:`class_attribute` is None too) from one the source does not decide."""
    definers = _definers_of(target, attr, stop)
    return definers[0][0] if definers else UNKNOWN


def method_owners(target: str | ClassRef, method: str, *, stop: str | None = None) -> list[tuple[ClassRef, ast.FunctionDef]] | None:
    """The classes along ``target``'s chain that define ``method``, nearest first, each with its
    ``def``. The chain ends at the class ``stop`` names (a ``module:Class`` target: its own bases,
    e.g. Lightning's, are trusted not to set what is asked) or at a class deriving from ``object``
    only; UNKNOWN when a base cannot be resolved before that, a class of the chain is decorated,
    has a metaclass or ``__init_subclass__`` may set it, or ``method`` is bound to a non-function."""
    definers = _definers_of(target, method, stop)
    if definers is None or not all(isinstance(stmt, ast.FunctionDef) for _, stmt in definers):
        return UNKNOWN
    return definers  # type: ignore[return-value]


#: method names whose call may change a config node in place (``node.pop(...)``, ``open_dict(node)``)
_MUTATORS = frozenset({
    "pop", "popitem", "update", "merge", "merge_with", "setdefault", "clear", "remove", "append", "extend",
    "insert", "set_struct", "set_readonly", "set_flag", "open_dict", "read_write", "setattr", "delattr",
    "__setitem__", "__delitem__", "__setattr__", "__delattr__",
})


def _binds_only(stmt: ast.stmt) -> bool:
    """A docstring, or ``name = <expression>`` whose calls are plain calls (none that may change a
    node in place, none of an unknown callee)."""
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True
    if not isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        return False
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    if not all(isinstance(t, ast.Name) for t in targets):
        return False
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name is None or name in _MUTATORS:
                return False
    return True


def calls_super_first_level(func: ast.FunctionDef) -> bool:
    """Whether the method runs ``super().<its name>(<its first argument after cls>)`` as a statement
    of its own (not inside an ``if``, ``try`` or loop), preceded only by statements that bind local
    names without changing anything in place: the inherited check then runs on the node as given,
    unless an earlier statement raises."""
    params = [a.arg for a in [*func.args.posonlyargs, *func.args.args]]
    if len(params) < 2:
        return False
    for stmt in func.body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == func.name
            and isinstance(call.func.value, ast.Call)
            and isinstance(call.func.value.func, ast.Name)
            and call.func.value.func.id == "super"
            and not call.func.value.args
            and len(call.args) == 1
            and not call.keywords
            and isinstance(call.args[0], ast.Name)
            and call.args[0].id == params[1]
        ):
            return True
        if not _binds_only(stmt):
            return False
    return False


# ---------------------------------------------------------------- preference losses

#: the class whose calls declare a preference loss, and its parameters in order
PREFERENCE_LOSS_CLASS = "alignx.losses.dpo_family:PreferenceLoss"
_PREFERENCE_LOSS_PARAMS = ("name", "fn", "needs_reference", "length_normalised", "needs_nll")


def preference_loss_options(target: str) -> tuple[str, ...] | None:
    """The options (keyword-only parameters of ``fn``) of the ``PreferenceLoss(name, fn, ...)`` a
    registry target names; UNKNOWN unless the target is such a call at module level whose ``fn`` is
    a plain ``def`` taking one positional argument and keyword-only options without defaults
    (anything else would fail when the real spec is built, which the slow path reports)."""
    module, _, attr = target.partition(":")
    if not attr or "." in attr:
        return UNKNOWN
    try:
        value = _lookup(module, attr, 0)
        if not isinstance(value, CallRef) or value.callee.target != PREFERENCE_LOSS_CLASS:
            return UNKNOWN
        call = value.node
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            return UNKNOWN
        given = dict(zip(_PREFERENCE_LOSS_PARAMS, call.args))
        given.update({k.arg: k.value for k in call.keywords})
        if "fn" not in given or len(call.args) > len(_PREFERENCE_LOSS_PARAMS):
            return UNKNOWN
        fn = _eval(given["fn"], value.module, None, 0)
        if not isinstance(fn, FuncRef):
            return UNKNOWN
        node = _module(fn.module).bindings[fn.name]
    except (_Unknown, KeyError, AttributeError):
        return UNKNOWN
    args = node.args
    if len([*args.posonlyargs, *args.args]) != 1 or args.vararg or args.kwarg or args.defaults:
        return UNKNOWN
    if any(d is not None for d in args.kw_defaults):
        return UNKNOWN
    return tuple(a.arg for a in args.kwonlyargs)


# ---------------------------------------------------------------- module attributes


def module_exists(name: str) -> bool | None:
    """Whether module ``name`` can be found (without importing it or its parents); UNKNOWN when a
    finder fails."""
    try:
        return find_spec_no_import(name) is not None
    except Exception:  # noqa: BLE001
        return UNKNOWN


def module_defines(module: str, name: str) -> bool | None:
    """Whether module ``module`` binds top-level ``name`` (def, class, assignment, import, also a
    conditional one) or has a submodule ``name``; UNKNOWN when its source cannot tell (no ``.py``
    source, ``import *``, a module ``__getattr__``, ``globals()``, a ``del`` of it, a name only in
    ``__all__``, ...)."""
    mod = _module(module)
    if mod is None or mod.dynamic:
        return UNKNOWN
    if name in mod.deleted or name in mod.global_names:
        return UNKNOWN
    if name in mod.all_bound:
        return True
    if name in _declared_all(mod):
        return UNKNOWN  # listed but bound by nothing this reader sees
    exists = module_exists(f"{module}.{name}")
    return None if exists is None else bool(exists)


def _declared_all(mod: _Module) -> frozenset[str]:
    stmt = mod.bindings.get("__all__")
    try:
        value = _eval(_assigned_value(stmt), mod.name, None, 0) if stmt is not None else ()
    except _Unknown:
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, (tuple, list, frozenset)) else frozenset()


def public_names(module: str) -> list[str] | None:
    """The public names module ``module`` binds at top level, as ``dir()`` of the imported module
    would list them (UNKNOWN when its source cannot tell)."""
    mod = _module(module)
    if mod is None or mod.dynamic:
        return UNKNOWN
    return sorted(n for n in mod.all_bound - mod.deleted if not n.startswith("_"))


def closest_name(module: str, name: str) -> str | None:
    """The public top-level name of ``module`` closest to ``name`` (as ``import_target`` suggests it)."""
    names = public_names(module) or []
    close = difflib.get_close_matches(name, names, n=1)
    return close[0] if close else None
