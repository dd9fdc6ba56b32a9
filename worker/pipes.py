"""Several messages on a task process's pipe in one write, and read back in one read.

The pipe is a ``multiprocessing`` Connection: each message is a 4-byte
length and its bytes. Written one ``send`` at a time, a task's header and
its input are two writes, and the reader may wake up for each. Small
messages written together here are read back one by one by the other end's
ordinary ``recv``/``recv_bytes``, but cost one write and one wake-up.
``Connection`` reads each message with two calls (its length, then its
bytes); a :class:`Reader` takes what one write sent with one.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["READ_BYTES", "TOGETHER_BYTES", "Reader", "pickled", "readable", "send_together"]

#: Messages up to this many bytes in all go in one write; bigger ones one by one, never joined.
TOGETHER_BYTES = 64 * 1024
#: Bytes a Reader asks for at a time: what one write of small messages holds.
READ_BYTES = TOGETHER_BYTES

_LENGTH = struct.Struct("!i")  # multiprocessing's own message header
_LONG_LENGTH = struct.Struct("!Q")  # after a length of -1: a message of 2 GiB or more


def pickled(message: Any) -> bytes:
    """``message`` pickled for the other end's ``Connection.recv``: a plain tuple of plain values
    (header fields, bytes), for which pickle's own ``dumps`` is what ``Connection.send`` would
    write, without building a ForkingPickler each time (7 % of the agent's time per task)."""
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def readable(fd: int) -> bool:
    """Whether reading ``fd`` would not block now (data, or the other end closed): one ``poll``
    call (0.8-1.0 us), where ``Connection.poll`` and ``Process.is_alive`` build a selector each
    time (3.7-4.8 us; the agent asks three times a task)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


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


class Reader:
    """Reads the messages of a blocking pipe's file descriptor as ``Connection`` would, through a
    buffer: a task's header and input, written together, come in with one ``read``.

    The buffer is made once (a fresh one per read costs page faults in a process
    that slept); a message bigger than what is buffered is read straight into its place.
    Raises EOFError when the pipe closed, OSError as ``os.readv`` does.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray(READ_BYTES)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0  # the bytes read and not taken yet

    @property
    def buffered(self) -> bool:
        """Whether bytes of a message were read and not taken yet (``recv`` takes the rest)."""
        return self._end > self._start

    def recv(self) -> Any:
        """The next message, unpickled (``Connection.recv``) where it lies, not copied out first."""
        return pickle.loads(self._next())

    def recv_bytes(self) -> bytes | bytearray:
        """The next message's bytes (``Connection.recv_bytes``): a copy of a small one, read whole
        into the buffer that the next read reuses; a bigger one as it was read, in a buffer of its
        own (a 100 MB outcome is not copied again: Connection would hold it twice)."""
        message = self._next()
        return message if isinstance(message, bytearray) else bytes(message)

    def _next(self) -> memoryview | bytearray:
        """The next message: a view of the buffer while it was read whole (good until the next
        read), else a buffer of its own with the rest read straight into it."""
        size = self._length()
        if size <= self._end - self._start:
            start = self._start
            self._start += size
            return self._view[start : self._start]
        target = bytearray(size)
        self._read_into(memoryview(target))
        return target

    def recv_bytes_into(self, target: bytearray | memoryview) -> None:
        """Read the next message into ``target``, which is exactly its size (ValueError if not)."""
        size = self._length()
        view = memoryview(target).cast("B")
        if size != len(view):
            raise ValueError(f"a message of {size} bytes does not fit a buffer of {len(view)}")
        self._read_into(view)

    def _length(self) -> int:
        size = self._unpack(_LENGTH)
        return self._unpack(_LONG_LENGTH) if size == -1 else size

    def _unpack(self, field: struct.Struct) -> int:
        """The next ``field`` of the stream, read where it lies."""
        while self._end - self._start < field.size:
            self._fill()
        value: int = field.unpack_from(self._buffer, self._start)[0]
        self._start += field.size
        return value

    def _read_into(self, view: memoryview) -> None:
        have = min(len(view), self._end - self._start)
        view[:have] = self._view[self._start : self._start + have]
        self._start += have
        done = have
        while done < len(view):  # the rest straight from the pipe
            count = os.readv(self._fd, [view[done:]])
            if count == 0:
                raise EOFError
            done += count

    def _fill(self) -> None:
        """Read what the pipe holds, up to the room after the bytes not taken yet."""
        left = self._end - self._start
        if left == 0:
            self._start = self._end = 0
        elif self._end == len(self._buffer):  # move the bytes not taken yet to the front
            self._view[:left] = self._view[self._start : self._end]
            self._start, self._end = 0, left
        count = os.readv(self._fd, [self._view[self._end :]])
        if count == 0:
            raise EOFError
        self._end += count
