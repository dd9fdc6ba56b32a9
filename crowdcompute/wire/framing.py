"""Frames: a small JSON header plus raw payloads, and the Message base class. No I/O.

A frame is one binary websocket message::

    +----------------+----------------------+-----------+-----------+---
    | header length  | header (UTF-8 JSON)  | payload 1 | payload 2 | ...
    | 4 bytes, big   | {"type": ..., ...,   |  raw bytes, never base64
    | endian         |  "sizes": [n1, ...]} |
    +----------------+----------------------+-----------+-----------+---

A message is a frozen dataclass registered with :func:`message`: its
``bytes`` fields travel as raw payloads after the header, every other field
in the header, type-checked on the way in. Decoded payloads are read-only
memoryviews into the frame (no copy). ``encode`` and ``decode`` are pure;
anything that does not decode raises one :class:`ProtocolError` whose text
says what was wrong. The messages themselves are in :mod:`crowdcompute.wire.messages`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import struct
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10: the marker only matters to type checkers

    def dataclass_transform(**kwargs: Any) -> Callable[[_T], _T]:
        return lambda decorated: decorated


from ..errors import ProtocolError

__all__ = [
    "MAX_HEADER_SIZE",
    "Message",
    "Pieces",
    "decode",
    "decode_parts",
    "encode",
    "encode_parts",
    "frame_parts",
    "frame_size",
    "message",
    "outgoing",
    "require",
    "split_parts",
    "SMALL_MESSAGE",
]

#: Largest JSON header a frame may carry; payloads are limited separately.
MAX_HEADER_SIZE = 64 * 1024
#: Bytes up to which a message goes as one websocket frame, its parts joined (see :func:`outgoing`).
SMALL_MESSAGE = 64 * 1024

_T = TypeVar("_T")
_LENGTH = struct.Struct("!I")
_MESSAGES: dict[str, type[Message]] = {}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # message class -> its fields' names, in order


@dataclass(frozen=True)
class Message:
    """Base of every message: subclasses are dataclasses with a ``TYPE`` tag."""

    TYPE: ClassVar[str]
    _checks: ClassVar[dict[str, Callable[[Any], bool]]]
    _payloads: ClassVar[tuple[str, ...]]
    _enums: ClassVar[dict[str, type[enum.Enum]]]

    def validate(self) -> None:
        """Check field values beyond their types; raise ProtocolError."""


M = TypeVar("M", bound=Message)


@dataclass_transform(frozen_default=True)
def message(cls: type[M]) -> type[M]:
    """Class decorator: make ``cls`` a frozen dataclass and register its TYPE."""
    cls = dataclass(frozen=True)(cls)
    hints = typing.get_type_hints(cls)
    checks: dict[str, Callable[[Any], bool]] = {}
    payloads = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if hint is bytes:
            payloads.append(f.name)
        else:
            checks[f.name] = _type_check(hint)
    cls._checks = checks
    cls._enums = {name: hint for name, hint in hints.items() if isinstance(hint, type) and issubclass(hint, enum.Enum)}
    cls._payloads = tuple(payloads)
    if cls.TYPE in _MESSAGES:
        raise RuntimeError(f"message type {cls.TYPE!r} defined twice")
    _MESSAGES[cls.TYPE] = cls
    return cls


def _type_check(hint: Any) -> Callable[[Any], bool]:
    """A predicate saying whether a decoded JSON value fits ``hint``."""
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = {member.value for member in hint}
        return lambda v: not isinstance(v, bool) and isinstance(v, (str, int)) and v in values
    if hint is bool:
        return lambda v: isinstance(v, bool)
    if hint is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is str:
        return lambda v: isinstance(v, str)
    if hint is dict or typing.get_origin(hint) is dict:
        return lambda v: isinstance(v, dict)
    if hint is list or typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        item_ok: Callable[[Any], bool] = (lambda v: True) if item is Any else _type_check(item)
        return lambda v: isinstance(v, list) and all(item_ok(x) for x in v)
    args = typing.get_args(hint)
    if args and type(None) in args:  # X | None
        inner = [a for a in args if a is not type(None)]
        inner_ok = _type_check(inner[0])
        return lambda v: v is None or inner_ok(v)
    raise TypeError(f"unsupported field type {hint!r}")


def _wrong_field(kind: str, name: str, value: Any, enum_type: type[enum.Enum] | None) -> str:
    """The sentence for a header field whose value does not fit its type."""
    if enum_type is not None and isinstance(value, (str, int)) and not isinstance(value, bool):
        allowed = ", ".join(repr(member.value) for member in enum_type)
        return f"{kind}: field {name!r} has unknown value {value!r} (expected one of {allowed})"
    return f"{kind}: field {name!r} has the wrong type ({type(value).__name__})"


def _finite_number(text: str) -> float:
    """Parse a JSON number; NaN and infinities are not JSON and no field may hold one."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _header_encoder() -> Callable[[dict[str, Any]], str]:
    """One JSON encoder for every header, made once.

    ``json.dumps(..., separators=...)`` builds an encoder, and then its C
    encoder, on every call: a fifth of the foreman's CPU per task (issue 12).
    Headers are plain data made by ``encode_parts``, so the C encoder needs no
    check for cycles; where there is no C encoder, the pure one is used.
    """
    encoder = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    try:
        chunks = make(None, encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
        sample = {"type": "x", "n": [1, 2.5, None, True], "s": "é\n"}
        if "".join(chunks(sample, 0)) != encoder.encode(sample):
            return encoder.encode
    except TypeError:  # another signature in this Python
        return encoder.encode
    return lambda header: "".join(chunks(header, 0))


_encode_json = _header_encoder()
# One decoder for every header: json.loads given options builds a new one on every call.
_decode_json = json.JSONDecoder(parse_float=_finite_number, parse_constant=_finite_number).decode


def require(condition: bool, sentence: str) -> None:
    """Raise ProtocolError with ``sentence`` unless ``condition``."""
    if not condition:
        raise ProtocolError(sentence)


# --- encoding ---------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """Return the frame for ``msg``: length, JSON header, raw payloads."""
    return b"".join(encode_parts(msg))  # a header alone is returned as it is, not copied


def encode_parts(msg: Message) -> list[bytes | memoryview]:
    """The frame for ``msg`` as buffers that follow each other: length and header, then each
    non-empty payload as it is (not copied). Written one after the other, they are the frame."""
    header: dict[str, Any] = {"type": msg.TYPE}
    payloads = []
    names = _FIELD_NAMES.get(type(msg))
    if names is None:
        names = _FIELD_NAMES[type(msg)] = tuple(f.name for f in dataclasses.fields(msg))
    for name in names:
        value = getattr(msg, name)
        if name in msg._payloads:
            payloads.append(value)
        else:
            header[name] = value
    if payloads:
        header["sizes"] = [len(p) for p in payloads]
    head = _encode_json(header).encode()
    parts: list[bytes | memoryview] = [_LENGTH.pack(len(head)) + head]
    for payload in payloads:
        if isinstance(payload, Pieces):
            parts.extend(payload.pieces)
        elif len(payload):
            parts.append(payload)
    return parts


class Pieces:
    """A payload kept as the fragments it arrived in, never joined: what the foreman forwards.

    Its length is the payload's; :func:`encode_parts` sends the pieces as
    they are; ``bytes()`` joins them (for whoever needs one buffer).
    """

    __slots__ = ("pieces",)

    def __init__(self, pieces: Sequence[bytes | memoryview]) -> None:
        self.pieces = tuple(pieces)

    def __len__(self) -> int:
        return sum(len(piece) for piece in self.pieces)

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Pieces, bytes, bytearray, memoryview)):
            return bytes(self) == bytes(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Pieces: {len(self)} bytes in {len(self.pieces)}>"


def frame_size(parts: list[bytes | memoryview]) -> int:
    """Bytes of a frame given as parts."""
    return sum(len(part) for part in parts)


def decode(frame: bytes | bytearray | memoryview | str) -> Message:
    """Return the message in ``frame``; raise ProtocolError saying what was wrong."""
    if isinstance(frame, str):
        raise ProtocolError("expected a binary frame, got a text frame")
    return _decode(memoryview(frame), None)


def decode_parts(fragments: Sequence[bytes | bytearray | memoryview | str], join: bool = True) -> Message:
    """The message in a frame received in pieces (a fragmented websocket message), like :func:`decode`.

    When the pieces are those :func:`encode_parts` made (the header, then each
    non-empty payload), a payload that is one piece is that piece; one that
    came in several is joined once, or with ``join=False`` (the foreman, which
    only forwards and stores payloads) kept as :class:`Pieces`.
    """
    parts: list[memoryview] = []
    for part in fragments:
        if isinstance(part, str):
            raise ProtocolError("expected a binary frame, got a text frame")
        if len(part):  # the last piece of a fragmented message is empty
            parts.append(memoryview(part))
    if len(parts) <= 1:
        return _decode(parts[0] if parts else memoryview(b""), None)
    if len(parts[0]) < _LENGTH.size:  # not cut where we cut: join (a proxy may re-fragment)
        return _decode(memoryview(b"".join(parts)), None)
    return _decode(parts[0], parts[1:], join)


def _decode(view: memoryview, pieces: list[memoryview] | None, join: bool = True) -> Message:
    """The message whose frame is ``view`` followed by ``pieces`` (None: the frame is ``view``)."""
    total = len(view) + sum(len(piece) for piece in pieces or ())
    if len(view) < _LENGTH.size:
        raise ProtocolError(f"frame of {len(view)} bytes is too short to hold a header")
    (head_size,) = _LENGTH.unpack_from(view)
    if head_size > MAX_HEADER_SIZE:
        raise ProtocolError(f"header of {head_size} bytes exceeds {MAX_HEADER_SIZE}")
    end = _LENGTH.size + head_size
    if end > total:
        raise ProtocolError(f"header says {head_size} bytes but the frame is truncated")
    if end > len(view) and pieces:  # the header is split across pieces: join them (not what we send)
        view, pieces = memoryview(b"".join([view, *pieces])), None
    try:
        raw = bytes(view[_LENGTH.size : end])
        header = _decode_json(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        raise ProtocolError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    kind = header.pop("type", None)
    cls = _MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    sizes = header.pop("sizes", [])
    if (
        not isinstance(sizes, list)
        or len(sizes) != len(cls._payloads)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)
    ):
        raise ProtocolError(f"{kind}: 'sizes' must list {len(cls._payloads)} payload lengths")
    if end + sum(sizes) != total:
        raise ProtocolError(f"{kind}: payloads should take {sum(sizes)} bytes but {total - end} follow the header")
    fields: dict[str, Any] = {}
    for name, check in cls._checks.items():
        if name in header:
            value = header.pop(name)
            if not check(value):
                raise ProtocolError(_wrong_field(kind, name, value, cls._enums.get(name)))
            enum_type = cls._enums.get(name)
            fields[name] = value if enum_type is None else enum_type(value)
    if header:
        raise ProtocolError(f"{kind}: unknown fields {sorted(header)}")
    if pieces is not None:
        payloads = _payload_pieces(pieces, sizes, join) if len(view) == end else None
        if payloads is not None:
            fields.update(zip(cls._payloads, payloads, strict=True))
            return _build(cls, kind, fields)
        view = memoryview(b"".join([view, *pieces]))  # cut elsewhere (by a proxy, say)
    offset = end
    for name, size in zip(cls._payloads, sizes, strict=True):
        # A view into the frame, not a copy: a 100 MB input crosses the foreman without being copied here.
        fields[name] = view[offset : offset + size]
        offset += size
    return _build(cls, kind, fields)


def _payload_pieces(pieces: list[memoryview], sizes: list[int], join: bool) -> list[memoryview | Pieces] | None:
    """Each payload from the pieces after the header, if no piece straddles two payloads, else None.

    A payload that is one piece is that piece (no copy); one sent in several
    pieces (see :func:`split_parts`) is joined once, or kept as Pieces unless ``join``.
    """
    payloads: list[memoryview | Pieces] = []
    position = 0
    for size in sizes:
        run: list[memoryview] = []
        taken = 0
        while taken < size and position < len(pieces):
            run.append(pieces[position])
            taken += len(pieces[position])
            position += 1
        if taken != size:
            return None
        if len(run) > 1:
            # Joined into a bytearray: numpy arrays sent out of band are then writable where they land.
            payloads.append(memoryview(bytearray().join(run)) if join else Pieces(run))
        else:
            payloads.append(run[0] if run else memoryview(b""))
    return payloads if position == len(pieces) else None


def frame_parts(frame: bytes) -> list[bytes | memoryview]:
    """An encoded frame as parts, like :func:`encode_parts`: its header, then the rest (views, no copy).

    Raises ProtocolError for a frame too short to hold its header.
    """
    view = memoryview(frame)
    if len(view) < _LENGTH.size:
        raise ProtocolError(f"frame of {len(view)} bytes is too short to hold a header")
    end = _LENGTH.size + _LENGTH.unpack_from(view)[0]
    if end > len(view):
        raise ProtocolError("the header runs past the end of the frame")
    return [view[:end], view[end:]] if end < len(view) else [view]


def outgoing(parts: list[bytes | memoryview], largest: int) -> bytes | memoryview | list[bytes | memoryview]:
    """What to hand ``websocket.send`` for a frame given as parts.

    A small message (at most SMALL_MESSAGE bytes) is joined into one websocket
    frame: the copy costs far less than the two more frames (and writes) that
    sending its header and its payload as fragments takes. A bigger one goes as
    a fragmented message (see :func:`split_parts`), never joined.
    """
    if len(parts) == 1:
        part = parts[0]
        return part if len(part) <= largest else split_parts(parts, largest)
    if frame_size(parts) <= SMALL_MESSAGE:
        return b"".join(parts)
    return split_parts(parts, largest)


def split_parts(parts: list[bytes | memoryview], largest: int) -> list[bytes | memoryview]:
    """``parts`` with each payload over ``largest`` bytes cut into views of at most that size.

    Sent as fragments, a big payload then never needs a buffer of its full
    size in the websocket layer (which copies each fragment it writes).
    """
    if all(len(part) <= largest for part in parts):
        return parts
    pieces: list[bytes | memoryview] = []
    for part in parts:
        if len(part) <= largest:  # Pieces were expanded by encode_parts: parts are buffers
            pieces.append(part)
        else:
            view = memoryview(part)
            pieces.extend(view[start : start + largest] for start in range(0, len(view), largest))
    return pieces


def _build(cls: type[Message], kind: str, fields: dict[str, Any]) -> Message:
    try:
        msg = cls(**fields)
    except TypeError as exc:
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in fields and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        raise ProtocolError(f"{kind}: missing fields {missing}") from exc
    msg.validate()
    return msg
