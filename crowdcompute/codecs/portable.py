"""Portable jobs: the function as source text, inputs and results as JSON.

cloudpickle ties a job to the client's Python and cloudpickle versions. A
portable job (``serializer="portable"``) runs on any worker: its function
travels as source (from its file or notebook cell, via ``inspect``), and
the names it reads travel with it when they are JSON values, modules, or
things importable from installed modules. Anything else is a
SerializationError before sending, naming the name.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import json
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import SerializationError

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
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as exc:
        raise SerializationError(f"function {name}", f"its source is not available ({exc})") from exc
    tree = ast.parse(source)
    defs = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not defs:
        raise SerializationError(f"function {name}", "its source holds no def statement")
    definition = defs[0]
    definition.decorator_list = []  # decorators would need their own names on the worker
    found = inspect.getclosurevars(func)
    names: dict[str, Any] = {**found.globals, **found.nonlocals}
    modules, imports, values = {}, {}, {}
    for var, value in sorted(names.items()):
        if inspect.ismodule(value):
            modules[var] = value.__name__
        elif _importable(value):
            imports[var] = [value.__module__, value.__qualname__]
        else:
            try:
                if json.loads(json.dumps(value)) != value:
                    raise TypeError("it changes when it goes through JSON (a tuple, say)")
            except (TypeError, ValueError) as exc:
                raise SerializationError(
                    f"{var!r} used by function {name}",
                    f"a portable job can carry only JSON values, modules and importable names ({exc})",
                ) from None
            values[var] = value
    document = {
        "name": definition.name,
        "source": ast.unparse(definition),
        "modules": modules,
        "imports": imports,
        "values": values,
        "call": call,
    }
    return json.dumps(document).encode()


def _importable(value: Any) -> bool:
    """True for a function or class that an installed module exposes under its own name."""
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str) or module_name == "__main__":
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
    exec(compile(spec["source"], f"<portable {spec['name']}>", "exec"), namespace)
    func = namespace[spec["name"]]
    if spec.get("call"):
        return lambda call: func(*call[0], **call[1])
    return func
