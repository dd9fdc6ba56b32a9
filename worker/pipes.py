"""Several messages on a task process's pipe in one write.

The pipe is a ``multiprocessing`` Connection: each message is a 4-byte
length and its bytes. Written one ``send`` at a time, a task's header and
its input are two writes, and the reader may wake up for each. Small
messages written together here are read back one by one by the other end's
ordinary ``recv``/``recv_bytes``, but cost one write and one wake-up.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["TOGETHER_BYTES", "pickled", "send_together"]

#: Messages up to this many bytes in all go in one write; bigger ones one by one, never joined.
TOGETHER_BYTES = 64 * 1024

_LENGTH = struct.Struct("!i")  # multiprocessing's own message header


def pickled(message: Any) -> bytes:
    """``message`` pickled for the other end's ``Connection.recv``: a plain tuple of plain values
    (header fields, bytes), for which pickle's own ``dumps`` is what ``Connection.send`` would
    write, without building a ForkingPickler each time (7 % of the agent's time per task)."""
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def send_together(conn: Connection[Any, Any], messages: Sequence[bytes | memoryview]) -> None:
    """Send each of ``messages`` as if by ``conn.send_bytes``; when they are small, in one write.

    Raises OSError (BrokenPipeError) like ``send_bytes`` when the other end is gone.
    """
    views = [memoryview(message).cast("B") for message in messages]  # lengths in bytes, whatever the item type
    if sum(len(view) for view in views) > TOGETHER_BYTES:
        for view in views:
            conn.send_bytes(view)
        return
    buffer = bytearray()
    for view in views:
        buffer += _LENGTH.pack(len(view))
        buffer += view
    view = memoryview(buffer)
    fd = conn.fileno()
    while view:
        written = os.write(fd, view)
        view = view[written:]
