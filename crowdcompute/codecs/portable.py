"""Portable jobs: the function as source text, inputs and results as JSON.

cloudpickle ties a job to the client's Python and cloudpickle versions. A
portable job (``serializer="portable"``) runs on any worker: its function
travels as source (from its file or notebook cell, via ``inspect``), and
the names it reads travel with it: functions and classes from the user's own
code as source too, modules and names importable from installed packages as
imports, and JSON values as themselves. Anything else is a
SerializationError before sending, naming the name.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import SerializationError
from .origins import is_installed, users_module

__all__ = [
    "dumps_portable_function",
    "dumps_portable_items",
    "load_portable_function",
]


# --- on the client -------------------------------------------------------------


def dumps_portable_function(func: Callable, call: bool = False) -> bytes:
    """The function's source and the names it reads, as JSON bytes; raises SerializationError.

    ``call``: each item is ``[args, kwargs]`` for one call (how ``run`` travels).
    """
    name = getattr(func, "__name__", repr(func))
    if not inspect.isfunction(func):
        raise SerializationError(f"{name}", "portable jobs need a plain function defined with def")
    if name == "<lambda>":
        raise SerializationError("a lambda", "portable jobs need a function defined with def (its source travels)")
    found = _Closure(func)
    source = found.add_function(func)
    document = {
        "name": name,
        "source": source,
        "helpers": found.helpers,
        "modules": found.modules,
        "imports": found.imports,
        "values": found.values,
        "call": call,
    }
    return json.dumps(document).encode()


class _Closure:
    """Everything a portable function reads, sorted by how it travels.

    Names read by the function are found in its source (``math.hypot`` reads
    ``math``, not ``hypot``). Functions and classes from the user's own code
    (a script, a notebook, a project module) travel as source, with what they
    read in turn; modules, and functions and classes importable from
    installed packages, travel as imports; anything else must be a JSON value.
    """

    def __init__(self, func: Callable) -> None:
        self.main = func
        self.helpers: list[str] = []  # sources, dependencies first
        self.modules: dict[str, str] = {}
        self.imports: dict[str, list[str]] = {}
        self.values: dict[str, Any] = {}
        self._bound: dict[str, Any] = {}  # name -> the object it means in the shipped namespace
        self._seen: set[int] = {id(func)}

    def add_function(self, func: Callable) -> str:
        """The source of ``func`` (decorators dropped: they would need their own names on the worker)."""
        definition = _definition(func, (ast.FunctionDef, ast.AsyncFunctionDef))
        assert isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef))
        definition.decorator_list = []
        closure = inspect.getclosurevars(func)
        namespace = {**func.__globals__, **closure.nonlocals}
        for var in sorted(_free_names(definition)):
            self._add_name(var, namespace, func)
        return ast.unparse(definition)

    def _add_class(self, cls: type) -> str:
        definition = _definition(cls, (ast.ClassDef,))
        namespace = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
        for var in sorted(_free_names(definition)):
            self._add_name(var, namespace, cls)
        return ast.unparse(definition)

    def _add_name(self, var: str, namespace: dict, reader: Any) -> None:
        if var not in namespace:
            return  # a builtin, or a name the code binds itself
        value = namespace[var]
        if value is self.main and var == self.main.__name__:
            return  # it calls itself
        if var in self._bound:
            if self._bound[var] is not value and not _same_value(self._bound[var], value):
                raise SerializationError(
                    f"{var!r} used by {_what(reader)}",
                    f"it means different things in the functions that travel together ({self.main.__name__} and "
                    "its helpers share one namespace on the worker); rename one of them",
                )
            return
        self._bound[var] = value
        if inspect.ismodule(value):
            self.modules[var] = value.__name__
        elif (inspect.isfunction(value) or inspect.isclass(value)) and _users_own(value):
            if id(value) in self._seen:
                return
            self._seen.add(id(value))
            source = self.add_function(value) if inspect.isfunction(value) else self._add_class(value)
            self.helpers.append(source)
            if var != value.__name__:  # read under another name
                self.helpers.append(f"{var} = {value.__name__}")
        elif _importable(value):
            self.imports[var] = [value.__module__, value.__qualname__]
        else:
            try:
                if json.loads(json.dumps(value)) != value:
                    raise TypeError("it changes when it goes through JSON (a tuple, say)")
            except (TypeError, ValueError) as exc:
                raise SerializationError(
                    f"{var!r} used by {_what(reader)}",
                    "a portable job can carry only JSON values, modules, importable names and functions "
                    f"and classes from your own code ({exc})",
                ) from None
            self.values[var] = value


def _what(reader: Any) -> str:
    return f"{'class' if inspect.isclass(reader) else 'function'} {getattr(reader, '__name__', reader)}"


def _same_value(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _definition(obj: Any, kinds: tuple[type, ...]) -> ast.AST:
    """The ``def`` or ``class`` statement of ``obj``, parsed from its source."""
    what = _what(obj)
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError) as exc:
        raise SerializationError(what, f"its source is not available ({exc})") from exc
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise SerializationError(what, f"its source does not parse on its own ({exc.msg})") from exc
    definitions = [node for node in tree.body if isinstance(node, kinds)]
    if not definitions:
        raise SerializationError(what, "its source holds no def or class statement")
    return definitions[0]


def _free_names(definition: ast.AST) -> set[str]:
    """Names the definition reads and does not bind itself: the globals (and closure names) it needs.

    Attributes are not names: ``math.hypot`` reads ``math`` only. A name bound
    anywhere inside (a parameter, an assignment, an import, a nested def) is
    taken as local, as Python does for a function's own scope.
    """
    loaded: set[str] = set()
    bound: set[str] = set()
    declared_global: set[str] = set()
    for node in ast.walk(definition):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not definition:
            bound.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Global):
            declared_global.update(node.names)
    return loaded - (bound - declared_global)


def _users_own(value: Any) -> bool:
    """True for a function or class from the user's own code: a script, a notebook, a project module,
    or one defined inside another function. Those travel as source."""
    module = getattr(value, "__module__", None)
    if module == "__main__" or "<locals>" in getattr(value, "__qualname__", ""):
        return True
    return users_module(module) is not None


def _importable(value: Any) -> bool:
    """True for a function or class that an installed module exposes under its own name."""
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str) or not is_installed(module_name):
        return False
    if "<locals>" in qualname or module_name.startswith("__"):
        return False
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return False
    return found is value


def dumps_portable_items(items: Sequence, first_index: int = 0) -> bytes:
    """A chunk of items as JSON bytes; raises SerializationError naming the first bad item."""
    try:
        return json.dumps(list(items)).encode()
    except (TypeError, ValueError):
        for offset, item in enumerate(items):
            try:
                json.dumps(item)
            except (TypeError, ValueError) as exc:
                raise SerializationError(
                    f"item {first_index + offset}", f"a portable job's inputs must be JSON values ({exc})"
                ) from None
        raise


# --- on the worker ---------------------------------------------------------------


def load_portable_function(document: bytes) -> Callable:
    """Rebuild a portable function: import its modules and names, then run its source."""
    spec = json.loads(bytes(document))
    namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "__crowdcompute_portable__"}
    for var, module in spec["modules"].items():
        namespace[var] = importlib.import_module(module)
    for var, (module, qualname) in spec["imports"].items():
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
        namespace[var] = found
    namespace.update(spec["values"])
    for number, helper in enumerate(spec.get("helpers", [])):  # the user's own functions and classes it reads
        exec(compile(helper, f"<portable {spec['name']} helper {number}>", "exec"), namespace)
    exec(compile(spec["source"], f"<portable {spec['name']}>", "exec"), namespace)
    func = namespace[spec["name"]]
    if spec.get("call"):
        return lambda call: func(*call[0], **call[1])
    return func
