"""Functions and inputs pickled with cloudpickle, so that lambdas, closures and
functions defined in a notebook travel.

Used by the SDK to encode a job and by the worker to decode it; the outcome
format both share is in :mod:`.outcomes`.
"""

from __future__ import annotations

import inspect
import io
import pickle
import types
from collections import ChainMap
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from ..errors import SerializationError
from ..sizes import RAISE_FRAME_LIMIT, format_mib
from ..wire.framing import Pieces
from . import buffers
from .origins import users_module
from .outcomes import ITEM_REPR_LIMIT, PICKLE_PROTOCOL, short_repr

__all__ = [
    "PICKLE_PROTOCOL",
    "Apply",
    "dumps_chunks",
    "dumps_function",
    "dumps_items",
    "dumps_pieced_chunks",
    "loads",
    "loads_items",
]


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
    module = _own_module(_unwrap(func))
    if module is not None:
        cloudpickle.register_pickle_by_value(module)
    try:
        with io.BytesIO() as file:
            _SourcePickler(file, protocol=PICKLE_PROTOCOL).dump(func)
            return file.getvalue()
    except Exception as exc:
        raise SerializationError(_describe(func), _explain_function(func, exc)) from exc
    finally:
        if module is not None:
            cloudpickle.unregister_pickle_by_value(module)


def _reduce_code_keeping_its_file(code: types.CodeType) -> tuple:
    """cloudpickle's reduction of a code object, with its file name kept (cloudpickle drops it).

    The file name is what lets the client show a remote frame with its source
    (``Cell In[3], line 4``): the worker has no notebook, the client does.
    """
    constructor, args = _CLOUDPICKLE_CODE_REDUCE(code)
    return constructor, tuple(code.co_filename if arg == "<dynamic-code>" else arg for arg in args)


_CLOUDPICKLE_CODE_REDUCE = cloudpickle.Pickler.dispatch_table[types.CodeType]


class _SourcePickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _reduce_code_keeping_its_file}, cloudpickle.Pickler.dispatch_table)


def _own_module(func: Callable):
    """The module of ``func`` if it is the user's own (not installed, not ours), else None."""
    return users_module(getattr(func, "__module__", None))


def _unwrap(func: Callable) -> Callable:
    """The user's function inside our wrappers (Apply, WithModules)."""
    while type(func).__module__.startswith("crowdcompute.codecs") and hasattr(func, "func"):
        func = func.func
    return func


def _explain_function(func: Callable, exc: Exception) -> str:
    """Find the global or closure variable of ``func`` that does not pickle."""
    target = _unwrap(func)
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


#: Item types pickled alike by pickle and cloudpickle, with no buffer to send out of band: a chunk of
#: them skips cloudpickle's per-call set-up (3 us against 0.3 us for a piece of two floats).
_PLAIN = frozenset({int, float, str, bool, type(None)})


def dumps_items(items: list, first_index: int = 0) -> bytes | Pieces:
    """Pickle a chunk of items, big buffers out of band (:mod:`.buffers`); raise
    SerializationError naming the first bad item."""
    if all(type(item) in _PLAIN for item in items):  # nothing for cloudpickle to do: pickle's C code
        return pickle.dumps(items, protocol=PICKLE_PROTOCOL)
    try:
        return buffers.dumps(items, cloudpickle.Pickler)
    except Exception as exc:
        for offset, item in enumerate(items):
            try:
                cloudpickle.dumps(item, protocol=PICKLE_PROTOCOL)
            except Exception as inner:
                what = f"item {first_index + offset} ({short_repr(item)})"
                raise SerializationError(what, f"{type(inner).__name__}: {inner}") from inner
        raise SerializationError(f"items {first_index}..", f"{type(exc).__name__}: {exc}") from exc


def dumps_chunks(
    items: Sequence,
    size: int,
    limit: int,
    dump: Callable[[list, int], bytes] | None = None,
    target: int | None = None,
) -> list[tuple[int, int, bytes]]:
    """Serialize ``items`` in chunks of ``size`` with ``dump`` (default: pickle): (first index, count, payload).

    A chunk over ``limit`` bytes is split, and so is one over ``target``
    bytes (when given: big items make small tasks, so that the foreman holds
    a few of them at a time); a single item over the limit raises
    SerializationError saying which and how large.
    """
    chunks: list[tuple[int, int, bytes]] = []
    bound = limit if target is None else min(target, limit)
    if size == 1 and dump is None and all(type(item) in _PLAIN for item in items):
        # A plain item per task (chunksize=1, the usual choice for slow items): pickle's C code in
        # one pass, a fifth of the time of a call through _dump_range per item.
        chunks = [(index, 1, pickle.dumps([item], protocol=PICKLE_PROTOCOL)) for index, item in enumerate(items)]
        for index, _, payload in chunks:
            if len(payload) > limit:  # a huge str: the error that names it
                _dump_range(items, index, 1, limit, bound, [], dumps_items)
        return chunks
    start = 0
    while start < len(items):
        count = min(size, len(items) - start)
        # A chunk that had to be split sets the size of the next ones: each item is pickled about once.
        size = min(size, _dump_range(items, start, count, limit, bound, chunks, dump or dumps_items))
        start += count
    return chunks


def dumps_pieced_chunks(
    items: Sequence, size: int, piece: int, limit: int, target: int | None = None
) -> list[tuple[int, int, bytes, list[list[int]] | None]]:
    """Chunks of ``size`` items made of pickled pieces of ``piece`` items, one after another:
    (first index, count, payload, ``[items, bytes]`` of each piece, or None for one piece).

    The foreman may cut a queued chunk between pieces when more slots join
    than the chunks were sized for; :func:`loads_items` reads any number of
    pieces. Neither a chunk nor a piece exceeds ``limit`` bytes (nor ``target``,
    when given, unless a single item does: see :func:`dumps_chunks`).
    """
    chunks: list[tuple[int, int, bytes, list[list[int]] | None]] = []
    pieces = dumps_chunks(items, max(1, min(piece, size)), limit, target=target)
    bound = limit if target is None else min(target, limit)
    group: list[tuple[int, int, bytes]] = []

    def close_group() -> None:
        if group:
            payload = group[0][2] if len(group) == 1 else b"".join(blob for _, _, blob in group)
            sizes = [[count, len(blob)] for _, count, blob in group] if len(group) > 1 else None
            chunks.append((group[0][0], sum(count for _, count, _ in group), payload, sizes))
            group.clear()

    held = held_bytes = 0
    for start, count, blob in pieces:
        if isinstance(blob, Pieces):  # out-of-band buffers: a task of its own, never cut
            close_group()
            held = held_bytes = 0
            chunks.append((start, count, blob, None))
            continue
        if group and (held + count > size or held_bytes + len(blob) > bound):
            close_group()
            held = held_bytes = 0
        group.append((start, count, blob))
        held += count
        held_bytes += len(blob)
    close_group()
    return chunks


def _dump_range(items: Sequence, start: int, count: int, limit: int, bound: int, out: list, dump: Callable) -> int:
    """Append the chunks of ``items[start:start + count]``; return the largest count that fitted."""
    payload = dump(list(items[start : start + count]), start)
    if len(payload) <= bound or (count == 1 and len(payload) <= limit):
        out.append((start, count, payload))
        return count
    if count == 1:
        raise SerializationError(
            f"item {start} ({short_repr(items[start])})",
            f"it pickles to {format_mib(len(payload))}, over the foreman's limit of {format_mib(limit)} per task; "
            f"send a path or a smaller piece instead, or {RAISE_FRAME_LIMIT}",
        )
    # Split into pieces of about ``bound`` bytes at once (items are usually alike), not by halves.
    pieces = min(count, -(-len(payload) // bound))
    step = -(-count // pieces)
    del payload
    fitted = step
    for first in range(start, start + count, step):
        fitted = min(fitted, _dump_range(items, first, min(step, start + count - first), limit, bound, out, dump))
    return fitted


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def loads_items(data: bytes | bytearray | memoryview) -> list:
    """A task's items: one pickled list, or several one after another (a task made of pieces),
    or one with out-of-band buffers (:mod:`.buffers`)."""
    if buffers.is_buffered(data):
        return buffers.loads(data)
    stream = io.BytesIO(data)
    items = pickle.load(stream)
    while stream.tell() < len(data):
        items.extend(pickle.load(stream))
    return items
