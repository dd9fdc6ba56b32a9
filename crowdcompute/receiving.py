"""Reading one frame from a websocket, for the client and the worker (the foreman forwards pieces).

A big frame comes as a fragmented websocket message: its header alone, then
its payloads cut in pieces of at most ``FRAGMENT_SIZE``
(:func:`~crowdcompute.wire.framing.outgoing`). Kept as a list and joined at
the end, a 200 MB result would be held twice at once; :func:`read_frame`
adds each piece to one buffer as it comes and lets it go, and the payloads
are views of that buffer (:func:`~crowdcompute.wire.framing.decode_parts`).
"""

from __future__ import annotations

from typing import Any

from .wire import messages as p

__all__ = ["read_frame"]


async def read_frame(websocket: Any) -> list[bytes | bytearray | str]:
    """The pieces of the next message on ``websocket`` (its ``recv_streaming``), for ``decode_parts``.

    Raises websockets' ConnectionClosed as ``recv_streaming`` does.
    """
    pieces: list[bytes | bytearray | str] = []
    body: bytearray | None = None  # the payloads after a header that came alone
    async for piece in websocket.recv_streaming():
        if body is not None:
            body += piece  # (grown in place: glibc moves a big buffer's pages, not its bytes)
        elif len(pieces) == 1 and p.header_only(pieces[0]) and not isinstance(piece, str):
            body = bytearray(piece)
            pieces.append(body)
        else:
            pieces.append(piece)
    return pieces
