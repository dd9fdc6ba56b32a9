"""Frames: a small JSON header plus raw payloads, one message or a batch of them. No I/O.

A frame is one binary websocket message::

    +----------------+----------------------+-----------+-----------+---
    | header length  | header (UTF-8 JSON)  | payload 1 | payload 2 | ...
    | 4 bytes, big   | {"type": ..., ...,   |  raw bytes, never base64
    | endian         |  "sizes": [n1, ...]} |
    +----------------+----------------------+-----------+-----------+---

A message is a frozen dataclass registered with :func:`message` (see
:mod:`crowdcompute.wire.schema`): its ``bytes`` fields travel as raw
payloads after the header, every other field in the header, type-checked on
the way in. Decoded payloads are read-only
memoryviews into the frame (no copy). ``encode`` and ``decode`` are pure;
anything that does not decode raises one :class:`ProtocolError` whose text
says what was wrong. The messages themselves are in :mod:`crowdcompute.wire.messages`.

A frame may also hold several small messages (a :class:`Batch`): its header
is ``{"type": "batch", "messages": [header 1, header 2, ...]}``, each
message's header as it would be alone (its own ``sizes``), and the payloads
of every message follow in order. Each message in it is checked as if it had
come alone; the reader handles them one after another, in order. Writers make
batches of what they send in one go (:func:`join_frames`), never waiting to
fill one: a message costs each side its websocket layers, its wake-up and its
write once per frame, not once per message (issue 12).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ProtocolError
from .schema import Message, build_message, decode_header, encode_header, message, parse_header, require

__all__ = [
    "BATCH_BYTES",
    "Batch",
    "MAX_HEADER_SIZE",
    "Message",
    "Pieces",
    "decode",
    "decode_parts",
    "encode",
    "encode_parts",
    "frame_parts",
    "frame_size",
    "header_only",
    "join_frames",
    "message",
    "outgoing",
    "require",
    "split_parts",
    "SMALL_MESSAGE",
    "unbatch",
]

#: Largest JSON header a frame may carry; payloads are limited separately.
MAX_HEADER_SIZE = 64 * 1024
#: Bytes up to which a message goes as one websocket frame, its parts joined (see :func:`outgoing`).
SMALL_MESSAGE = 64 * 1024
#: Most bytes of encoded messages one batch frame carries (see :class:`Batch`); a bigger message
#: goes alone, so that a big task input is never copied into a batch. Below SMALL_MESSAGE by room
#: for the batch's own header: a batch is one websocket frame, and its header fits MAX_HEADER_SIZE.
BATCH_BYTES = SMALL_MESSAGE - 1024
#: The type tag of a batch frame.
BATCH = "batch"
#: Messages that never travel in a batch: the handshake's, which each side reads alone, first.
UNBATCHED = frozenset({"hello", "welcome", "refused", BATCH})

_LENGTH = struct.Struct("!I")


# --- encoding ---------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """Return the frame for ``msg``: length, JSON header, raw payloads."""
    return b"".join(encode_parts(msg))  # a header alone is returned as it is, not copied


def encode_parts(msg: Message) -> list[bytes | memoryview]:
    """The frame for ``msg`` as buffers that follow each other: length and header, then each
    non-empty payload as it is (not copied). Written one after the other, they are the frame."""
    if isinstance(msg, Batch):
        return join_frames([encode_parts(inner) for inner in msg.messages])
    values = msg.__dict__
    header: dict[str, Any] = {"type": msg.TYPE}
    defaults = msg._defaults
    for name in msg._header:
        # A field that holds its default is left out (the decoder fills it in): shorter headers
        # cost less to encode and to decode, on every hop of every message.
        value = values[name]
        if name not in defaults or value != defaults[name]:
            header[name] = value
    payloads = [values[name] for name in msg._payloads]
    if payloads:
        header["sizes"] = [len(p) for p in payloads]
    head = encode_header(header).encode()
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


@dataclass(frozen=True)
class Batch(Message):
    """Several messages in one frame, to be read in order as if each had come alone.

    What :func:`decode` returns for a batch frame; :func:`unbatch` gives the
    messages of any decoded frame. No message of UNBATCHED may be in one.
    """

    TYPE: ClassVar[str] = BATCH
    messages: tuple[Message, ...]


def unbatch(msg: Message) -> tuple[Message, ...]:
    """The messages a decoded frame holds, in order: a batch's, or the message itself."""
    return msg.messages if isinstance(msg, Batch) else (msg,)


_BATCH_OPENING = b'{"type":"batch","messages":['


def join_frames(frames: Sequence[list[bytes | memoryview]]) -> list[bytes | memoryview]:
    """Encoded messages (each as :func:`encode_parts` made it, or a batch) as one batch frame, in order.

    Only their headers are copied (into the batch's header); payloads follow as they are.
    The caller keeps the batch within BATCH_BYTES (see ``crowdcompute.sending.take_batch``).
    """
    if len(frames) == 1:
        return frames[0]
    heads = []
    payloads: list[bytes | memoryview] = []
    for parts in frames:
        first = parts[0]
        end = _LENGTH.size + _LENGTH.unpack_from(first)[0]
        head = first[_LENGTH.size : end]
        if head[: len(_BATCH_OPENING)] == _BATCH_OPENING:  # a batch joins as its messages: batches never nest
            head = head[len(_BATCH_OPENING) : -2]
        heads.append(head)
        if len(first) > end:  # a stored frame's header and payloads in one buffer (frame_parts)
            payloads.append(first[end:])
        payloads.extend(parts[1:])
    head = b"".join((_BATCH_OPENING, b",".join(heads), b"]}"))
    return [_LENGTH.pack(len(head)) + head, *payloads]


def frame_size(parts: list[bytes | memoryview]) -> int:
    """Bytes of a frame given as parts."""
    return sum(map(len, parts))


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
        header = decode_header(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        raise ProtocolError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    if header.get("type") == BATCH:
        if pieces is not None:  # a batch is small: one buffer (a proxy may have fragmented it)
            view = memoryview(b"".join([view, *pieces]))
        return _decode_batch(header, view, end)
    cls, kind, sizes, fields = parse_header(header)
    if end + sum(sizes) != total:
        raise ProtocolError(f"{kind}: payloads should take {sum(sizes)} bytes but {total - end} follow the header")
    if pieces is not None:
        payloads = _payload_pieces(pieces, sizes, join) if len(view) == end else None
        if payloads is not None:
            fields.update(zip(cls._payloads, payloads, strict=True))
            return build_message(cls, kind, fields)
        view = memoryview(b"".join([view, *pieces]))  # cut elsewhere (by a proxy, say)
    offset = end
    for name, size in zip(cls._payloads, sizes, strict=True):
        # A view into the frame, not a copy: a 100 MB input crosses the foreman without being copied here.
        fields[name] = view[offset : offset + size]
        offset += size
    return build_message(cls, kind, fields)


def _decode_batch(header: dict[str, Any], view: memoryview, end: int) -> Batch:
    """The batch whose header is ``header`` (its type popped) and whose payloads follow ``end`` in ``view``.

    Every message is checked as if it had come alone; an error names which one it is.
    """
    del header["type"]
    entries = header.pop("messages", None)
    if header:
        raise ProtocolError(f"batch: unknown fields {sorted(header)}")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("batch: 'messages' must list the headers of one or more messages")
    parsed = []
    for number, entry in enumerate(entries, 1):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if not isinstance(entry, dict):
            raise ProtocolError(f"batch: message {number} is not a JSON object")
        if isinstance(kind, str) and kind in UNBATCHED:
            raise ProtocolError(f"batch: message {number} is a {kind!r}, which never travels in a batch")
        try:
            parsed.append(parse_header(entry))
        except ProtocolError as exc:
            raise ProtocolError(f"{exc} (message {number} of a batch)") from None
    expected = sum(sum(sizes) for _, _, sizes, _ in parsed)
    if end + expected != len(view):
        raise ProtocolError(
            f"batch: its messages' payloads should take {expected} bytes but {len(view) - end} follow the header"
        )
    messages = []
    offset = end
    for number, (cls, kind, sizes, fields) in enumerate(parsed, 1):
        for name, size in zip(cls._payloads, sizes, strict=True):
            fields[name] = view[offset : offset + size]
            offset += size
        try:
            messages.append(build_message(cls, kind, fields))
        except ProtocolError as exc:
            raise ProtocolError(f"{exc} (message {number} of a batch)") from None
    return Batch(tuple(messages))


def _payload_pieces(pieces: list[memoryview], sizes: list[int], join: bool) -> list[memoryview | Pieces] | None:
    """Each payload from the pieces after the header (None if they do not add up to ``sizes``).

    A payload within one piece is a view of it (no copy): the piece as it came, or one of the
    payloads that :func:`crowdcompute.receiving.read_frame` gathered in one buffer. One cut across several pieces
    (see :func:`split_parts`) is joined once, or kept as Pieces unless ``join``.
    """
    payloads: list[memoryview | Pieces] = []
    position = offset = 0  # the piece the next payload starts in, and where in it
    for size in sizes:
        run: list[memoryview] = []
        taken = 0
        while taken < size and position < len(pieces):
            piece = pieces[position]
            take = min(size - taken, len(piece) - offset)
            run.append(piece if take == len(piece) else piece[offset : offset + take])
            taken += take
            offset += take
            if offset == len(piece):
                position, offset = position + 1, 0
        if taken != size:
            return None
        if len(run) > 1:
            # Joined into a bytearray: numpy arrays sent out of band are then writable where they land.
            payloads.append(memoryview(bytearray().join(run)) if join else Pieces(run))
        else:
            payloads.append(run[0] if run else memoryview(b""))
    return payloads if position == len(pieces) else None


def header_only(piece: bytes | bytearray | memoryview | str) -> bool:
    """Whether ``piece`` is exactly a frame's header, its length and its JSON: the first piece
    :func:`outgoing` sends of a frame whose payloads follow in pieces of their own."""
    if isinstance(piece, str) or len(piece) < _LENGTH.size:
        return False
    size: int = _LENGTH.unpack_from(piece)[0]
    return _LENGTH.size + size == len(piece)


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
