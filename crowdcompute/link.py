"""A client's connection to the foreman that survives drops.

Frames go out through one queue and one writer, in order. When the
connection drops, the link redials with exponential backoff and jitter for
``reconnect_timeout`` seconds; once back, it tells its owner (who re-attaches
its jobs) and resumes writing what was queued meanwhile. After the budget,
or if the foreman now refuses the token, the owner learns it is lost for good.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from typing import cast

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .dialing import Backoff, RetryNotices, dial
from .errors import AuthenticationError, ConnectionLostError, CrowdComputeError, ProtocolError
from .receiving import read_frame
from .sending import Held, write_frames
from .wire import messages as p
from .wire.addresses import Address
from .wire.blobs import BLOB_THRESHOLD, SharedFolder, join_folder, parse_reference, payload_parts

__all__ = ["Link", "RECONNECT_DELAY_MAX"]

log = logging.getLogger("crowdcompute.client")

#: First and largest pause between attempts to reach the foreman again, in seconds.
RECONNECT_DELAY_MIN = 0.05
RECONNECT_DELAY_MAX = 2.0


class Link:
    """Frames to and from one foreman, across reconnects."""

    def __init__(
        self,
        address: Address,
        hello: p.Hello,
        *,
        timeout: float,
        reconnect_timeout: float,
        cafile: str | None,
        on_message: Callable[[p.Message], None],
        on_reconnect: Callable[[], None],
        on_drop: Callable[[], None] = lambda: None,
        on_lost: Callable[[ConnectionLostError], None],
        busy: Callable[[], bool] = lambda: False,
        refused: str | None = None,
    ) -> None:
        self.address = address
        self.hello = hello
        self.refused = refused  # what an AuthenticationError says: where the token came from
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.cafile = cafile
        self.welcome: p.Welcome | None = None
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._on_drop = on_drop  # the connection dropped and is being redialed
        self._on_lost = on_lost
        self._busy = busy  # the owner follows jobs: an idle close must not leave them waiting
        self._websocket: ClientConnection | None = None
        self._frames: deque[list[bytes | memoryview]] = deque()  # waiting to go out, in order
        self._held = Held(self._queue)  # housekeeping frames riding along with the next one
        self._queued = asyncio.Event()  # set when _frames is not empty
        self._drained = asyncio.Event()  # set when _frames is empty
        self._drained.set()
        self._tasks: list[asyncio.Task] = []
        self._recovery: asyncio.Task | None = None
        self.closed = False
        self.lost = False
        self._dormant = False  # the foreman closed us for being idle: redial on the next send
        self.shared: SharedFolder | None = None  # the foreman's payload folder, when this host shares it

    @property
    def usable(self) -> bool:
        """Open, or trying to reopen: frames sent now will go out."""
        return not self.closed and not self.lost

    async def open(self) -> p.Welcome:
        """Dial the foreman. Raises ForemanUnavailableError, AuthenticationError."""
        self._websocket, self.welcome = await dial(
            self.address, self.hello, timeout=self.timeout, cafile=self.cafile, refused=self.refused
        )
        self._start()
        return self.welcome

    def send(self, msg: p.Message, *, hold: bool = False) -> None:
        """Queue a message; it goes out in order, after a reconnect if need be.

        A big task input goes as a file in the foreman's payload folder when this host shares it.
        ``hold``: it may wait a moment (HOLD_DELAY) to go out with the next message.
        """
        if isinstance(msg, p.SubmitTask) and self.shared is not None:
            msg = self._as_file(msg)
        if hold:
            self._held.hold(p.encode_parts(msg))
            return
        self._queue([*self._held.take(), p.encode_parts(msg)])

    def _queue(self, frames: list[list[bytes | memoryview]]) -> None:
        self._frames.extend(frames)
        self._queued.set()
        self._drained.clear()
        if self._dormant and not self.closed:
            self._dormant = False
            self._recovery = asyncio.create_task(self._recover(waking=True))

    async def close(self) -> None:
        """Send what is queued (within ``timeout``), then close; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._recovery is not None:
            self._recovery.cancel()
        if self._held:
            self._queue(self._held.take())
        if self._websocket is not None and not self.lost:
            try:
                await asyncio.wait_for(self._drained.wait(), self.timeout)
            except asyncio.TimeoutError:
                pass
            await self._websocket.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start(self) -> None:
        joined = join_folder(self.welcome.blobs) if self.welcome is not None else None
        self.shared = None if joined is None else joined[0]
        if joined is not None:  # first on this connection, before any reference
            self._frames.appendleft(p.encode_parts(p.ShareBlobs(joined[1])))
            self._queued.set()
            self._drained.clear()
        self._tasks = [asyncio.create_task(self._read_frames()), asyncio.create_task(self._send_frames())]

    def _as_file(self, msg: p.SubmitTask) -> p.SubmitTask:
        """``msg`` with its input written to the shared folder, if it is big (and not in pieces)."""
        if self.shared is None or msg.pieces or len(msg.payload) < BLOB_THRESHOLD:
            return msg
        try:
            return dataclasses.replace(msg, payload=self.shared.write(msg.job_id, payload_parts(msg.payload), "in"))
        except OSError as exc:  # a full disk, say: the bytes go inline
            log.warning("cannot write a payload file in %s (%s): sending it inline", self.shared.path, exc)
            return msg

    def _as_bytes(self, msg: p.Message) -> p.Message:
        """A result whose payload is a file reference, with the file's bytes (mapped, not read)."""
        if self.shared is None or not isinstance(msg, p.TaskResult):
            return msg
        try:
            if parse_reference(msg.payload) is None:
                return msg
            return dataclasses.replace(msg, payload=cast(bytes, self.shared.read(msg.payload)))
        except (OSError, ValueError) as exc:
            log.warning("cannot read a result's payload file: %s", exc)
            return msg

    async def _send_frames(self) -> None:
        websocket = self._websocket
        if websocket is None:
            return  # never started before open()
        while True:
            if not self._frames:
                self._queued.clear()
                self._drained.set()
                await self._queued.wait()
                continue
            try:
                # All queued frames at once. A big payload is not joined to its header, and goes in
                # pieces, so that no side buffers a whole one in its websocket layer (framing.outgoing).
                await write_frames(websocket, self._frames)
            except ConnectionClosed:
                return  # the frame being written stays first in line for the next connection

    async def _read_frames(self) -> None:
        websocket = self._websocket
        if websocket is None:
            return  # never started before open()
        try:
            while True:
                # (A call of its own: nothing of this frame is held while the next one is awaited.)
                self._take(await read_frame(websocket))
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            log.error("bad frame from the foreman: %s", exc)
            await websocket.close(1002, str(exc)[:120])
        if self.closed:
            return
        if websocket.close_code == 1000 and websocket.close_reason == "idle":
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            if self._frames or self._busy():  # work crossed the foreman's close: come back now
                self._recovery = asyncio.create_task(self._recover(waking=True))
            else:
                self._dormant = True  # nothing to follow: come back when there is something to send
            return
        self._recovery = asyncio.create_task(self._recover())

    def _take(self, fragments: list[bytes | bytearray | str]) -> None:
        """Hand on the messages of one frame (a batch: one by one, as if each came alone)."""
        for msg in p.unbatch(p.decode_parts(fragments)):
            self._on_message(self._as_bytes(msg))

    async def _recover(self, waking: bool = False) -> None:
        """Redial until the budget runs out; then tell the owner the link is lost."""
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        backoff = Backoff(RECONNECT_DELAY_MIN, RECONNECT_DELAY_MAX)
        reason = "the connection dropped"
        notices = RetryNotices(lambda text: log.warning("%s (retrying)", text))
        if not waking:
            log.warning("lost the foreman at %s; reconnecting for up to %g s", self.address.url, self.reconnect_timeout)
            self._on_drop()
        while not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                self._websocket, self.welcome = await dial(
                    self.address,
                    self.hello,
                    timeout=min(self.timeout, remaining),
                    cafile=self.cafile,
                    refused=self.refused,
                )
            except AuthenticationError as exc:
                reason = str(exc)
                break
            except CrowdComputeError as exc:
                reason = str(exc)
                notices.failed(reason)
                await asyncio.sleep(min(backoff.next(), max(0.0, deadline - loop.time())))
                continue
            if not waking:
                log.warning("reconnected to the foreman at %s", self.address.url)
            self._start()
            self._on_reconnect()
            return
        if not self.closed:
            self.lost = True
            self._on_lost(
                ConnectionLostError(
                    f"lost the connection to the foreman at {self.address.url} and could not reconnect "
                    f"within reconnect_timeout={self.reconnect_timeout:g} s ({reason})"
                )
            )
