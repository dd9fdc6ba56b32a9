"""Writing frames to a websocket, several at a time: what every writer (client, foreman, worker) shares.

A writer that finds several frames queued hands them all to
:func:`write_frames`. It writes them with the socket corked (``TCP_CORK``,
where the system has it): the kernel sends what was written as full
segments, and the rest at once when uncorked, so that the reader wakes
once for the lot rather than once per frame. Each frame still goes as its
own websocket message (:func:`~crowdcompute.wire.framing.outgoing`).

:class:`Held` keeps housekeeping frames (a ReleaseJob, a CollectJob) for
up to ``HOLD_DELAY`` seconds, so that they ride along with the next frame
to the same peer instead of costing a write and a wake-up of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .wire.constants import FRAGMENT_SIZE
from .wire.framing import outgoing

__all__ = ["HOLD_DELAY", "Held", "corked", "write_frames"]

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


async def write_frames(websocket: Any, frames: deque[Parts]) -> None:
    """Send ``frames`` (each an encoded message as parts) in order, several in one segment,
    taking each off the left of ``frames`` once written (frames added meanwhile go too).

    Raises websockets' ConnectionClosed like ``websocket.send``: the frame
    being written, and those after it, are then still in ``frames``.
    """
    if len(frames) == 1:
        await websocket.send(outgoing(frames[0], FRAGMENT_SIZE))
        frames.popleft()
        return
    with corked(websocket):
        while frames:
            await websocket.send(outgoing(frames[0], FRAGMENT_SIZE))
            frames.popleft()


class Held:
    """Frames that may wait (up to HOLD_DELAY) to go out with the next one.

    ``release`` is called with the held frames, in order, when the delay
    passes; the owner calls :meth:`take` before queueing any other frame,
    so that held frames keep their place ahead of it.
    """

    def __init__(self, release: Callable[[list[Parts]], None]) -> None:
        self._release = release
        self._frames: list[Parts] = []
        self._timer: asyncio.TimerHandle | None = None

    def __bool__(self) -> bool:
        return bool(self._frames)

    def hold(self, parts: Parts) -> None:
        self._frames.append(parts)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(HOLD_DELAY, self._due)

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
