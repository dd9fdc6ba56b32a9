"""Turning functions, inputs and outcomes into bytes and back.

Clients serialize with cloudpickle so that lambdas, closures and functions
defined in a notebook travel. Workers run a chunk of items and report its
outcomes as ``(values, errors)``: a list with one value per item (None where
the item failed) and a dict from the failed items' offsets to their errors,
each a dict with the remote exception's type name, message and traceback
text. A flat list of values is the cheapest thing to pickle and unpickle
when every item succeeds. The foreman never calls anything here.
"""

from __future__ import annotations

import builtins
import inspect
import pickle
import sys
import sysconfig
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cloudpickle

from .errors import (
    CrowdComputeError,
    QuorumError,
    SerializationError,
    TaskError,
    TaskTimeoutError,
    UntrustedPayloadError,
    WorkerCrashedError,
)

__all__ = [
    "PICKLE_PROTOCOL",
    "Apply",
    "build_task_error",
    "decode_outcomes",
    "dumps_chunks",
    "dumps_function",
    "dumps_items",
    "loads",
    "run_items",
]

PICKLE_PROTOCOL = 5
#: Longest repr of a failing input that an error message shows.
ITEM_REPR_LIMIT = 80


class Apply:
    """Calls ``func(*args, **kwargs)`` for an item ``(args, kwargs)``: how ``run`` travels."""

    def __init__(self, func: Callable) -> None:
        self.func = func

    def __call__(self, call: tuple[tuple, dict]) -> Any:
        args, kwargs = call
        return self.func(*args, **kwargs)

    @property
    def __name__(self) -> str:  # so that errors name the user's function
        return getattr(self.func, "__name__", repr(self.func))


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"function {name}" if name else f"{type(obj).__name__} object"


def dumps_function(func: Callable) -> bytes:
    """Pickle ``func`` with cloudpickle; raise SerializationError naming what failed.

    A function from one of the user's own modules (a script or project file
    that workers may not have) travels by value, like one from ``__main__``;
    functions from installed packages travel by reference.
    """
    if not callable(func):
        raise SerializationError(repr(func)[:ITEM_REPR_LIMIT], "it is not callable")
    module = _own_module(func.func if isinstance(func, Apply) else func)
    if module is not None:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(func, protocol=PICKLE_PROTOCOL)
    except Exception as exc:
        raise SerializationError(_describe(func), _explain_function(func, exc)) from exc
    finally:
        if module is not None:
            cloudpickle.unregister_pickle_by_value(module)


_INSTALLED = tuple(
    {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
)
#: Our own packages are on every worker: they always travel by reference.
_OURS = ("crowdcompute", "crowdcompute_jupyter", "foreman", "worker")


def _own_module(func: Callable):
    """The module of ``func`` if it is the user's own (not installed, not ours), else None."""
    name = getattr(func, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    path = getattr(module, "__file__", None)
    if module is None or name == "__main__" or path is None or name.split(".")[0] in _OURS:
        return None
    resolved = Path(path).resolve()
    if any(resolved.is_relative_to(root) for root in _INSTALLED):
        return None
    return module


def _explain_function(func: Callable, exc: Exception) -> str:
    """Find the global or closure variable of ``func`` that does not pickle."""
    target = func.func if isinstance(func, Apply) else func
    try:
        found = inspect.getclosurevars(target)
        names = {**found.globals, **found.nonlocals}
    except (TypeError, ValueError):
        names = {}
    for name, value in names.items():
        if inspect.ismodule(value):
            continue
        try:
            cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
        except Exception as inner:
            return (
                f"it uses {name!r} ({type(value).__name__}), which cannot be pickled "
                f"({type(inner).__name__}: {inner}); create it inside the function instead"
            )
    return f"{type(exc).__name__}: {exc}"


def dumps_items(items: list, first_index: int = 0) -> bytes:
    """Pickle a chunk of items; raise SerializationError naming the first bad item."""
    try:
        return cloudpickle.dumps(items, protocol=PICKLE_PROTOCOL)
    except Exception as exc:
        for offset, item in enumerate(items):
            try:
                cloudpickle.dumps(item, protocol=PICKLE_PROTOCOL)
            except Exception as inner:
                what = f"item {first_index + offset} ({_short_repr(item)})"
                raise SerializationError(what, f"{type(inner).__name__}: {inner}") from inner
        raise SerializationError(f"items {first_index}..", f"{type(exc).__name__}: {exc}") from exc


def dumps_chunks(
    items: Sequence, size: int, limit: int, dump: Callable[[list, int], bytes] | None = None
) -> list[tuple[int, int, bytes]]:
    """Serialize ``items`` in chunks of ``size`` with ``dump`` (default: pickle): (first index, count, payload).

    A chunk over ``limit`` bytes is split; a single item over the limit raises
    SerializationError saying which and how large.
    """
    chunks: list[tuple[int, int, bytes]] = []
    for start in range(0, len(items), size):
        _dump_range(items, start, min(size, len(items) - start), limit, chunks, dump or dumps_items)
    return chunks


def _dump_range(items: Sequence, start: int, count: int, limit: int, out: list, dump: Callable) -> None:
    payload = dump(list(items[start : start + count]), start)
    if len(payload) <= limit:
        out.append((start, count, payload))
        return
    if count == 1:
        raise SerializationError(
            f"item {start} ({_short_repr(items[start])})",
            f"it pickles to {_megabytes(len(payload))}, over the foreman's limit of {_megabytes(limit)} "
            "per task (its max frame size); send a path or a smaller piece instead",
        )
    half = count // 2
    _dump_range(items, start, half, limit, out, dump)
    _dump_range(items, start + half, count - half, limit, out, dump)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= ITEM_REPR_LIMIT else text[: ITEM_REPR_LIMIT - 3] + "..."


# --- on the worker -----------------------------------------------------------


def describe_exception(exc: BaseException, pickled: bool = True) -> dict:
    """The remote exception as plain data, plus a pickle of it when it pickles (and ``pickled``)."""
    try:
        data = cloudpickle.dumps(exc, protocol=PICKLE_PROTOCOL) if pickled else None
    except Exception:
        data = None
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "exception": data,
    }


def run_items(
    func: Callable, items: Iterable, on_item: Callable[[int], None] | None = None
) -> tuple[bytes, int]:
    """Call ``func`` on each item; return (pickled ``(values, errors)``, number that raised)."""
    values: list[Any] = []
    errors: dict[int, dict] = {}
    append = values.append
    for offset, item in enumerate(items):
        if on_item is not None:
            on_item(offset)
        try:
            append(func(item))
        except Exception as exc:  # the user's error travels back; KeyboardInterrupt does not
            exc.__traceback__ = exc.__traceback__.tb_next if exc.__traceback__ else None
            append(None)
            errors[offset] = describe_exception(exc)
    return dumps_outcomes(values, errors), len(errors)


def dumps_outcomes(values: list, errors: dict[int, Any]) -> bytes:
    """Pickle ``(values, errors)``: plain pickle when it can (fast), cloudpickle when it must;
    a value that pickles with neither becomes its item's error."""
    try:
        return pickle.dumps((values, errors), protocol=PICKLE_PROTOCOL)
    except Exception:
        pass
    try:
        return cloudpickle.dumps((values, errors), protocol=PICKLE_PROTOCOL)
    except Exception:
        pass
    for offset, value in enumerate(values):
        if offset in errors:
            continue
        try:
            cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
        except Exception as exc:
            error = SerializationError(f"the result ({type(value).__name__})", f"{type(exc).__name__}: {exc}")
            values[offset] = None
            errors[offset] = describe_exception(error)
    return cloudpickle.dumps((values, errors), protocol=PICKLE_PROTOCOL)


# --- back on the client --------------------------------------------------------

#: What a result may hold when workers are not trusted: plain data and numpy arrays.
_PLAIN = {("builtins", name) for name in (
    "list", "dict", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray", "bool",
    "slice", "range",
)} | {
    (module, name)
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
    for name in ("ndarray", "dtype", "_reconstruct", "_frombuffer", "scalar")
}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: anything that would import or call other code is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        raise UntrustedPayloadError(
            f"a worker's result refers to {module}.{name}, which is not plain data; with trust_workers=False "
            "results may hold only builtin containers and scalars and numpy arrays"
        )


def decode_outcomes(
    payload: bytes, count: int, trusted: bool = True, portable: bool = False
) -> tuple[list[Any], dict[int, Any]]:
    """A task's ``(values, errors)`` for ``count`` items; never raises.

    A payload that cannot be decoded (or, untrusted, holds more than plain
    data, or has the wrong shape) becomes an UntrustedPayloadError for each item.
    """
    try:
        if portable:  # JSON: plain data whoever sent it
            from .portable import loads_portable_outcomes

            outcomes = loads_portable_outcomes(payload)
        elif trusted:
            outcomes = pickle.loads(payload)
        else:
            import io

            outcomes = _PlainUnpickler(io.BytesIO(payload)).load()
        if not (
            isinstance(outcomes, tuple)
            and len(outcomes) == 2
            and isinstance(outcomes[0], list)
            and len(outcomes[0]) == count
            and isinstance(outcomes[1], dict)
            and all(isinstance(k, int) and 0 <= k < count for k in outcomes[1])
        ):
            raise UntrustedPayloadError(f"a worker sent a result that is not {count} outcomes")
    except CrowdComputeError as exc:
        reason = str(exc)
    except Exception as exc:  # e.g. a class this process cannot import
        reason = f"cannot decode a worker's result here: {type(exc).__name__}: {exc}"
    else:
        return outcomes
    return [None] * count, {offset: UntrustedPayloadError(reason) for offset in range(count)}


def build_task_error(error: dict, index: int | None, item: Any = None, trusted: bool = True) -> TaskError:
    """A TaskError for a remote failure, also an instance of the original type when safe.

    The original type is rebuilt when it is a builtin exception, or when the
    remote exception unpickles (``trusted`` results only) into a class that can
    be mixed with TaskError. Otherwise a plain TaskError carries its name.
    """
    type_name = str(error.get("type", "Exception"))
    message = str(error.get("message", ""))
    tb_text = str(error.get("traceback", ""))
    original: type | None = None
    builtin = getattr(builtins, type_name, None)
    if error.get("module") == "builtins" and isinstance(builtin, type) and issubclass(builtin, Exception):
        original = builtin
    elif trusted and error.get("exception"):
        try:
            original = type(pickle.loads(error["exception"]))
        except Exception:
            original = None
    kwargs = dict(
        index=index,
        exc_type=type_name,
        remote_traceback=tb_text,
        item_repr=None if item is None else _short_repr(item),
    )
    if original is not None and not issubclass(original, TaskError):
        cls = _mixed_class(original)
        if cls is not None:
            try:
                return cls(message, **kwargs)
            except Exception:
                pass
    return TaskError(message, **kwargs)


_MIXED: dict[type, type | None] = {}


def _mixed_class(original: type) -> type | None:
    """A class deriving from TaskError and ``original``, or None if they cannot mix."""
    if original not in _MIXED:
        try:
            _MIXED[original] = type(
                original.__name__,
                (TaskError, original),
                {"__module__": "crowdcompute.remote", "__init__": TaskError.__init__, "__str__": TaskError.__str__},
            )
        except TypeError:  # incompatible layouts (e.g. some C exception types)
            _MIXED[original] = None
    return _MIXED[original]


def build_failed_task_error(error: str, reason: str, index: int | None, attempts: int) -> TaskError:
    """The error for each item of a task that timed out, kept crashing or found no majority."""
    if error == "timeout":
        return TaskTimeoutError(reason, index=index, exc_type="TaskTimeoutError")
    if error == "disagreement":
        return QuorumError(reason, index=index, exc_type="QuorumError")
    what = "the task" if index is None else f"the task holding item {index}"
    return WorkerCrashedError(
        f"{what} killed its process {attempts} times; last cause: {reason}",
        attempts=attempts,
        cause=reason,
        index=index,
    )
