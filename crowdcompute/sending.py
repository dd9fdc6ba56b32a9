"""Writing frames to a websocket, several at a time: what every writer (client, foreman, worker) shares.

A writer that finds several frames queued hands them all to
:func:`write_frames`. Small ones go together as one websocket message, a
batch of at most ``BATCH_BYTES`` (:func:`take_batch`,
:func:`~crowdcompute.wire.framing.join_frames`): the reader decodes one
frame and wakes once for the lot. A bigger frame goes alone, as its own
message (:func:`~crowdcompute.wire.framing.outgoing`), never copied into a
batch. When that makes several websocket messages, they are written with
the socket corked (``TCP_CORK``, where the system has it): the kernel
sends what was written as full segments, and the rest at once when uncorked.

:class:`Held` keeps housekeeping frames (a ReleaseJob, a CollectJob) for
up to ``HOLD_DELAY`` seconds, so that they ride along with the next frame
to the same peer instead of costing a write and a wake-up of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .wire.constants import FRAGMENT_SIZE
from .wire.framing import BATCH_BYTES, frame_size, join_frames, outgoing

__all__ = ["HOLD_DELAY", "Held", "batches", "corked", "take_batch", "write_frames"]

#: Seconds a held frame waits for another frame to the same peer before it goes alone.
HOLD_DELAY = 0.05

_CORK: int | None = getattr(socket, "TCP_CORK", None)

Parts = list[bytes | memoryview]


def _socket(websocket: Any) -> Any:
    """The websocket's TCP socket, or None where it cannot be had."""
    transport = getattr(websocket, "transport", None)  # the asyncio transport websockets writes to
    return transport.get_extra_info("socket") if transport is not None else None


@contextlib.contextmanager
def corked(websocket: Any) -> Iterator[None]:
    """Writes within go out together when the block ends (``TCP_CORK``); a no-op where there is none."""
    sock = _socket(websocket) if _CORK is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        except OSError:  # not TCP (a Unix socket), or closed
            sock = None
    try:
        yield
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)


def take_batch(frames: Sequence[Parts], start: int = 0) -> tuple[Parts, int]:
    """The first frame to write from ``frames[start:]`` and how many of them it holds: the small ones
    that come first joined as one batch of at most BATCH_BYTES, or a bigger one alone."""
    first = frames[start]
    size = frame_size(first)
    end = start + 1
    if size <= BATCH_BYTES:
        while end < len(frames):
            size += frame_size(frames[end])
            if size > BATCH_BYTES:
                break
            end += 1
    if end == start + 1:
        return first, 1
    return join_frames([frames[n] for n in range(start, end)]), end - start  # (a deque has no slices)


def batches(frames: Sequence[Parts]) -> list[Parts]:
    """``frames`` as the frames to write, in order: small ones joined in batches (see take_batch)."""
    written = []
    start = 0
    while start < len(frames):
        parts, count = take_batch(frames, start)
        written.append(parts)
        start += count
    return written


async def write_frames(websocket: Any, frames: deque[Parts], *, batch: bool = True) -> None:
    """Send ``frames`` (each an encoded message as parts) in order, small ones in batches, taking
    each off the left of ``frames`` once written (frames added meanwhile go too).

    ``batch=False``: each frame as a websocket message of its own.
    Raises websockets' ConnectionClosed like ``websocket.send``: the frames
    being written, and those after them, are then still in ``frames``.
    """
    parts, count = take_batch(frames) if batch else (frames[0], 1)
    if count == len(frames):  # one websocket message: nothing to cork
        await websocket.send(outgoing(parts, FRAGMENT_SIZE))
        for _ in range(count):
            frames.popleft()
        return
    with corked(websocket):
        while frames:
            parts, count = take_batch(frames) if batch else (frames[0], 1)
            await websocket.send(outgoing(parts, FRAGMENT_SIZE))
            for _ in range(count):
                frames.popleft()


class Held:
    """Frames that may wait (up to ``delay``, HOLD_DELAY unless told) to go out with the next one.

    ``release`` is called with the held frames, in order, when the delay
    passes; the owner calls :meth:`take` before queueing any other frame,
    so that held frames keep their place ahead of it.
    """

    def __init__(self, release: Callable[[list[Parts]], None], delay: float = HOLD_DELAY) -> None:
        self._release = release
        self._delay = delay
        self._frames: list[Parts] = []
        self._timer: asyncio.TimerHandle | None = None

    def __bool__(self) -> bool:
        return bool(self._frames)

    def hold(self, parts: Parts) -> None:
        self._frames.append(parts)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._due)

    def take(self) -> list[Parts]:
        """The held frames (now the caller's to send), in order; none are held after."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        frames, self._frames = self._frames, []
        return frames

    def _due(self) -> None:
        self._timer = None
        frames = self.take()
        if frames:
            self._release(frames)
