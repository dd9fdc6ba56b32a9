"""Pickles whose big buffers travel beside them (pickle protocol 5, out of band), never copied in.

A payload holding big buffers (numpy arrays, ``bytes``, ``bytearray``,
``memoryview`` of at least :data:`OUT_OF_BAND_MIN` bytes) is written as
parts that follow each other::

    +-------+-------+------------------------+-------------------+--------+----------+---
    | MAGIC | count | sizes (count + 1, u64) | kinds (count, u8) | pickle | buffer 1 | ...
    +-------+-------+------------------------+-------------------+--------+----------+---

A buffer's kind is 1 when it becomes ``bytes`` (copied anyway), else 0.

The buffers are the objects' own memory (no copy on the way out); the
reader rebuilds the objects from views of what arrived: a numpy array over
a writable buffer is that buffer (no copy), ``bytes`` are copied once.
Payloads without big buffers stay plain pickles (they start with the
pickle PROTO opcode, ``0x80``, never with MAGIC's zero byte).

Only buffers the pickler hands out (numpy, ``bytearray``) and the top-level
``bytes``/``memoryview`` items of a short list go out of band: pickle
writes ``bytes`` in band whatever it is told, so those are wrapped first.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable
from typing import Any

from ..wire.framing import Pieces

__all__ = ["MAGIC", "OUT_OF_BAND_MIN", "WRAP_ITEMS", "dump_parts", "dumps", "is_buffered", "load_buffered", "loads"]

PICKLE_PROTOCOL = 5
#: The first bytes of a payload with out-of-band buffers (a pickle starts with 0x80, JSON with [ or {).
MAGIC = b"\x00CC5"
#: Buffers smaller than this stay inside the pickle (a part of their own costs more than copying them).
OUT_OF_BAND_MIN = 64 * 1024
#: Lists of at most this many items are looked through for big ``bytes`` to send out of band;
#: longer ones (tiny items) are pickled as they are, at no cost per item.
WRAP_ITEMS = 64

_COUNT = struct.Struct("!I")
_SIZE = struct.Struct("!Q")

Part = bytes | memoryview


class _OutOfBandBytes:
    """A big ``bytes`` (or memoryview) item, pickled as ``bytes(<out-of-band buffer>)``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return bytes, (pickle.PickleBuffer(self.data),)


def _wrap(obj: Any) -> Any:
    """``obj`` with its big top-level ``bytes``/``memoryview`` items wrapped to go out of band;
    ``obj`` itself when it has none."""
    if isinstance(obj, list) and len(obj) <= WRAP_ITEMS:
        wrapped = [_wrap_item(item) for item in obj]
        return wrapped if _OutOfBandBytes in map(type, wrapped) else obj
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], list):  # outcomes: (values, errors)
        values = _wrap(obj[0])
        return obj if values is obj[0] else (values, obj[1])
    return obj


def _wrapped_ids(obj: Any) -> set[int]:
    """The ids of the objects whose memory the wrapped items of ``obj`` export."""
    items = obj[0] if isinstance(obj, tuple) else obj
    if not isinstance(items, list):
        return set()
    return {
        id(item.data.obj if isinstance(item.data, memoryview) else item.data)
        for item in items
        if type(item) is _OutOfBandBytes
    }


def _wrap_item(item: Any) -> Any:
    kind = type(item)
    if kind is bytes and len(item) >= OUT_OF_BAND_MIN:
        return _OutOfBandBytes(item)
    if kind is memoryview and item.nbytes >= OUT_OF_BAND_MIN and item.c_contiguous:
        return _OutOfBandBytes(item)
    return item


def dumps(obj: Any, pickler: type[pickle.Pickler]) -> bytes | Pieces:
    """``obj`` pickled by ``pickler`` (protocol 5): a plain pickle, or, when it holds big
    buffers, :class:`Pieces` in the format above (the buffers not copied). Raises like the pickler."""
    parts = dump_parts(obj, pickler)
    return parts if isinstance(parts, bytes) else Pieces(parts)


def dump_parts(obj: Any, pickler: type[pickle.Pickler]) -> bytes | list[Part]:
    """``obj`` pickled with its big buffers out of band, as parts (see the module docstring),
    or as a plain pickle when it holds no big buffer."""
    wrapped = _wrap(obj)
    wrapped_ids = _wrapped_ids(wrapped) if wrapped is not obj else set()
    buffers: list[pickle.PickleBuffer] = []
    kinds = bytearray()

    def take(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in band
            return True
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(buffer)
        kinds.append(isinstance(raw.obj, (bytes, memoryview)) or id(raw.obj) in wrapped_ids)
        return False  # out of band

    if pickler is pickle.Pickler:  # the same pickler, without a file object (most outcomes are small)
        stream = pickle.dumps(wrapped, PICKLE_PROTOCOL, buffer_callback=take)
    else:
        with io.BytesIO() as file:
            pickler(file, protocol=PICKLE_PROTOCOL, buffer_callback=take).dump(wrapped)
            stream = file.getvalue()
    if not buffers:
        return stream
    views = [buffer.raw() for buffer in buffers]
    table = [_COUNT.pack(len(views)), _SIZE.pack(len(stream)), *(_SIZE.pack(view.nbytes) for view in views)]
    return [MAGIC + b"".join(table) + bytes(kinds), stream, *views]


def is_buffered(payload: Any) -> bool:
    """Whether ``payload`` (a buffer) is one with out-of-band buffers."""
    return len(payload) >= len(MAGIC) and bytes(memoryview(payload)[: len(MAGIC)]) == MAGIC


def loads(payload: Any, unpickler: type[pickle.Unpickler] = pickle.Unpickler) -> Any:
    """The object in ``payload``, a plain pickle or one :func:`dumps` wrote, unpickled by ``unpickler``."""
    if not is_buffered(payload):
        return unpickler(io.BytesIO(payload)).load() if unpickler is not pickle.Unpickler else pickle.loads(payload)
    if unpickler is pickle.Unpickler:
        return load_buffered(payload, lambda stream, buffers: pickle.loads(stream, buffers=buffers))
    return load_buffered(payload, lambda stream, buffers: unpickler(io.BytesIO(stream), buffers=buffers).load())


def load_buffered(payload: Any, load: Callable[[Any, list[memoryview]], Any]) -> Any:
    """The object in a payload :func:`dump_parts` wrote; ``load(pickle_view, buffers)`` unpickles.

    A buffer of a read-only payload is copied once (a numpy array over it
    would be read-only, unlike one from a plain pickle); over a writable
    payload (a bytearray, a private file mapping) it is used as it is.
    """
    view = memoryview(payload).cast("B")
    start = len(MAGIC)
    (count,) = _COUNT.unpack_from(view, start)
    start += _COUNT.size
    sizes = [_SIZE.unpack_from(view, start + n * _SIZE.size)[0] for n in range(count + 1)]
    start += (count + 1) * _SIZE.size
    kinds = bytes(view[start : start + count])
    start += count
    if start + sum(sizes) != len(view):
        raise ValueError(f"a payload with buffers says {sum(sizes)} bytes but holds {len(view) - start}")
    pieces = []
    for size in sizes:
        pieces.append(view[start : start + size])
        start += size
    stream, buffers = pieces[0], pieces[1:]
    if view.readonly:
        buffers = [
            buffer if kind else memoryview(bytearray(buffer)) for buffer, kind in zip(buffers, kinds, strict=True)
        ]
    return load(stream, buffers)
