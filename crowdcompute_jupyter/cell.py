"""``%%crowdcompute`` cells: which names a cell reads, and running one on a worker.

This module imports only the standard library: :func:`run_cell` travels to
workers by reference (cloudpickle pickles a function of an installed module
by its name), so a worker needs ``crowdcompute_jupyter`` importable, not
IPython.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import linecache
from typing import Any

__all__ = ["CellRun", "function_names", "names_read", "run_cell"]


def names_read(source: str) -> set[str]:
    """The names ``source`` reads anywhere: in its statements, functions and comprehensions.

    A name read after the cell assigns it is still a name it reads; sending
    its notebook value along is harmless. Raises SyntaxError.
    """
    read: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            read.add(node.id)  # Load, and Del (which needs the name to exist)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            read.add(node.target.id)  # x += 1 reads x first
    return read


def function_names(source: str) -> list[str]:
    """The names of the functions ``source`` defines at top level, in order. Raises SyntaxError."""
    return [node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]


def run_cell(source: str, inputs: dict[str, Any], filename: str | None = None) -> Any:
    """Execute ``source`` with ``inputs`` as its globals; return its last expression's value.

    Runs on the worker. The source is registered with ``linecache`` under
    ``filename`` (the notebook's name for the cell, so that the client shows
    its frames as ``Cell In[n]``; default: a name of its own) so that a
    traceback shows the failing line.
    """
    filename = filename or f"<crowdcompute cell {hashlib.sha1(source.encode()).hexdigest()[:8]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tree = ast.parse(source, filename)
    last = None
    final = tree.body[-1] if tree.body else None
    if isinstance(final, ast.Expr):
        tree.body.pop()
        last = ast.Expression(final.value)
    namespace = {"__name__": "__main__", "__builtins__": builtins, **inputs}
    exec(compile(tree, filename, "exec"), namespace)
    if last is None:
        return None
    return eval(compile(last, filename, "eval"), namespace)


class CellRun:
    """:func:`run_cell` under a name of its own: the job's name on the status page and in ``%crowdstatus``."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, source: str, inputs: dict[str, Any], filename: str | None = None) -> Any:
        return run_cell(source, inputs, filename)
