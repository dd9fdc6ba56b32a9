"""One authenticated connection: who it is, and its outbox of frames written in order by its own task.

Small frames queued for a peer within one turn of the event loop go out
together, as one batch frame (see ``crowdcompute.wire.framing.Batch``),
when the turn ends (:class:`EndOfTurn`): the results of several tasks that
became ready at once, the tasks a lease round gave one worker. Nothing waits
on a timer to fill a batch. Frames that pile up while a peer reads slowly
are joined the same way as its sender takes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from crowdcompute.sending import Held, batches, corked
from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import FRAGMENT_SIZE, CloseCode, Role

from .credentials import Volunteer

__all__ = [
    "MAX_OUTBOX_BYTES",
    "MAX_OUTBOX_FRAMES",
    "RESULT_LINGER",
    "EndOfTurn",
    "Outbox",
    "Peer",
    "how_it_went",
    "ping",
    "where",
]

log = logging.getLogger("crowdcompute.foreman")

#: Bytes queued for one peer that is not reading; past this it is disconnected
#: (a client reconnects and attaches; nothing is lost).
MAX_OUTBOX_BYTES = 512 * 1024 * 1024
#: Frames queued for one peer that is not reading; past this it is disconnected like the above.
#: (Many small frames cost the foreman more than their bytes: each is an object and a send.)
MAX_OUTBOX_FRAMES = 65536
#: Seconds a task's outcome may wait for others to the same client before it goes: outcomes of
#: tasks that end close together reach the client as one frame (one write here, one wake-up
#: there). A job's last outcome never waits, nor does one that finds others queued in the turn.
RESULT_LINGER = 0.005
#: Seconds the foreman waits for the pong to the ping it sends a worker as it joins.
CONNECT_PING_TIMEOUT = 10.0


# What a peer's outbox holds: its sender task writes these in order.


@dataclass(frozen=True)
class Frame:
    """An encoded message to send, as parts: its header, then its payloads as they arrived (not copied).

    A frame of several parts goes out as a fragmented websocket message, so
    the foreman never joins a payload into a new buffer.
    """

    parts: list[bytes | memoryview]
    size: int
    alone: bool = False  # never joined with others (the Welcome, which a peer reads first, alone)


@dataclass(frozen=True)
class Hangup:
    """Close the connection after what was queued before."""

    code: int
    reason: str


@dataclass(frozen=True)
class ReplayJob:
    """Stream every outcome the journal holds for ``job_id``."""

    job_id: str


@dataclass(frozen=True)
class Stop:
    """The connection is gone: the sender task ends."""


Outgoing = Frame | Hangup | ReplayJob | Stop


class Outbox:
    """What a peer's sender task writes next, in order: a deque and, while the sender waits, a future.

    Not an asyncio.Queue: that holds three deques and an Event per connection
    (about 3 KB), which 10,000 connected workers turn into 30 MB (issue 12).
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Outgoing] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def waiting(self) -> bool:
        """The sender waits on an empty outbox: it is writing nothing now."""
        return self._waiter is not None and not self._waiter.done()

    def put_nowait(self, item: Outgoing) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Outgoing:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def take_frames(self, room: int) -> list[Frame]:
        """The frames next in line that may join a batch, of at most ``room`` bytes in all."""
        taken: list[Frame] = []
        items = self._items
        while items and isinstance(frame := items[0], Frame) and not frame.alone and frame.size <= room:
            items.popleft()
            taken.append(frame)
            room -= frame.size
        return taken


class EndOfTurn:
    """Peers with frames queued in this turn of the event loop: one callback flushes them all after it.

    The callback runs once the loop has run what was ready in this turn (every
    frame read in one wake-up handled): the results of tasks that ended together
    go to their client as one message, and nothing waits on a timer.
    """

    __slots__ = ("_kept", "_peers", "_scheduled")

    def __init__(self) -> None:
        self._peers: list[Peer] = []
        self._kept: list[object] = []
        self._scheduled = False

    def add(self, peer: Peer) -> None:
        self._schedule()
        self._peers.append(peer)

    def keep(self, thing: object) -> None:
        """Hold ``thing`` until this turn's frames are out: freeing a big structure (a collected
        job's tasks and outcomes) does not delay the leases of the job that came with it."""
        self._schedule()
        self._kept.append(thing)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        peers, self._peers = self._peers, []
        for peer in peers:
            peer.flush()
        if self._kept:  # a turn later: after the senders woken for frames that found a backlog
            kept, self._kept = self._kept, []
            asyncio.get_running_loop().call_soon(kept.clear)


#: Streams a job's stored outcomes to a websocket (the server's, which owns the journal).
Replayer = Callable[[ServerConnection, str], Awaitable[None]]


@dataclass
class Peer:
    """One authenticated connection and its outgoing frames."""

    conn_id: str
    role: Role
    name: str
    websocket: ServerConnection
    slots: int = 0
    mismatch: str | None = None  # why its runtime cannot take or give cloudpickle jobs
    volunteer: Volunteer | None = None  # the invite a worker joined with (None: the shared worker token)
    last_seen: float = 0.0  # loop time of its last frame
    outbox: Outbox = field(default_factory=Outbox)
    queued_bytes: int = 0  # in the outbox, not yet written
    pinger: asyncio.Task | None = None  # the ping that measures a joining worker's round trip
    closing: asyncio.Task[None] | None = None  # an immediate close under way
    resources: dict = field(default_factory=dict)  # a worker's resources and labels, from its Hello
    labels: dict = field(default_factory=dict)
    installs: bool = True  # it builds environments (not --no-install)
    renamed: str = ""  # how the foreman changed the name it gave (see handshake.clean_name), to tell it
    shares_files: bool = False  # it proved it reads the payload folder (ShareBlobs): big payloads go as files
    turn: EndOfTurn = field(default_factory=EndOfTurn)  # flushes pending frames (the server shares one)
    pending: list[list[bytes | memoryview]] = field(default_factory=list)  # frames of this turn, not yet queued
    held: Held = field(init=False)  # housekeeping frames waiting to ride along with the next one
    lingering: Held = field(init=False)  # outcomes waiting a moment for more (RESULT_LINGER)

    def __post_init__(self) -> None:
        self.held = Held(self._queue_all)
        self.lingering = Held(self._queue_all, RESULT_LINGER)

    def queue_frame(
        self, parts: list[bytes | memoryview], *, hold: bool = False, linger: bool = False, alone: bool = False
    ) -> None:
        """Queue an encoded message; it goes out when this turn of the event loop ends, with the
        others queued in it (in one batch frame, see the module's docstring). A peer that lets
        MAX_OUTBOX_BYTES or MAX_OUTBOX_FRAMES pile up is closed at once.

        ``hold``: it may wait a moment (HOLD_DELAY) to go out with the next frame, in one write.
        ``linger``: a small one may wait RESULT_LINGER for others (or the next frame) to go with it.
        ``alone``: it goes now, as a frame of its own (the Welcome).
        """
        if hold:
            self.held.hold(parts)
            return
        if linger and not self.pending and p.frame_size(parts) <= p.SMALL_MESSAGE:
            self.lingering.hold(parts)
            return
        if alone:
            self._queue_all(self._take_pending())
            self._queue(parts, alone=True)
            return
        if not self.pending:
            self.turn.add(self)
        self.pending.extend(self.held.take())
        self.pending.extend(self.lingering.take())
        self.pending.append(parts)

    def flush(self) -> None:
        """Queue the frames of this turn (EndOfTurn calls it once the turn ended)."""
        self._queue_all(self._take_pending())

    def _take_pending(self) -> list[list[bytes | memoryview]]:
        frames, self.pending = [*self.pending, *self.held.take(), *self.lingering.take()], []
        return frames

    def _queue_all(self, frames: list[list[bytes | memoryview]]) -> None:
        if len(frames) <= 1:
            if frames:
                self._queue(frames[0])
            return
        written = batches(frames)
        if len(written) == 1:
            self._queue(written[0])
            return
        with corked(self.websocket):  # frames written at once go out together
            for parts in written:
                self._queue(parts)

    def _queue(self, parts: list[bytes | memoryview], alone: bool = False) -> None:
        size = p.frame_size(parts)
        too_big = self.queued_bytes + size > MAX_OUTBOX_BYTES and self.queued_bytes
        if too_big or len(self.outbox) >= MAX_OUTBOX_FRAMES:
            reason = (
                f"{len(self.outbox)} frames ({self.queued_bytes} bytes) wait for this {self.role} to read them "
                f"(the foreman's limits: {MAX_OUTBOX_FRAMES} frames, {MAX_OUTBOX_BYTES} bytes)"
            )
            # Now, not after the backlog: a client comes back and attaches; nothing is lost.
            self.close(CloseCode.POLICY, reason, now=True)
            return
        if size <= p.SMALL_MESSAGE and self.outbox.waiting and self._write_now(parts):
            return
        self.queued_bytes += size
        self.outbox.put_nowait(Frame(parts, size, alone))

    def _write_now(self, parts: list[bytes | memoryview]) -> bool:
        """Write a small frame at once, when nothing is queued or being written before it; False
        when it must wait for the sender (the connection closes, or the socket has a backlog).

        Waking the sender task for every frame was a tenth of the foreman's CPU per task
        (issue 12). This is what ``websocket.send`` does for one frame, minus waiting to drain:
        a frame that finds a backlog goes through the sender, which waits.
        """
        websocket = self.websocket
        transport = websocket.transport
        if websocket.protocol.state is not State.OPEN or transport.is_closing() or transport.get_write_buffer_size():
            return False
        data = p.outgoing(parts, FRAGMENT_SIZE)
        if isinstance(data, list):  # (not for a small frame; a big one is cut by the sender)
            return False
        websocket.protocol.send_binary(data)
        websocket.send_data()
        return True

    def queue_replay(self, job_id: str) -> None:
        self._queue_all(self._take_pending())
        self.outbox.put_nowait(ReplayJob(job_id))

    def stop_sending(self) -> None:
        self._take_pending()  # the connection is gone: nobody will read them
        self.outbox.put_nowait(Stop())

    def close(self, code: int, reason: str, *, now: bool = False, logged: bool = False) -> None:
        """Close the connection after what the outbox holds, or ``now`` (ahead of its backlog).

        ``logged``: the caller (or the scheduler, with a Note) already said why.
        """
        if not logged:
            log.warning("closed %s %s: %s", self.role, self.name, reason)
        if not now:
            self._queue_all(self._take_pending())
            self.outbox.put_nowait(Hangup(code, reason[:120]))
        elif self.closing is None:
            self.closing = asyncio.create_task(self.websocket.close(code, reason[:120]))

    async def send_frames(self, replay: Replayer) -> None:
        """Write the queued frames in order; a slow peer delays only itself."""
        while await self._send_next(replay):
            pass

    async def _send_next(self, replay: Replayer) -> bool:
        """Write the next item of the outbox; False once told to stop. (A call of its own: nothing
        of a frame written, a 200 MB result, say, is held while the next one is awaited.)"""
        item = await self.outbox.get()
        if isinstance(item, Stop):
            return False
        websocket = self.websocket
        try:
            if isinstance(item, Frame):
                # Frames that piled up behind it (a peer reading slowly) go with it, in one batch.
                joined = self.outbox.take_frames(p.BATCH_BYTES - item.size) if not item.alone else []
                parts = p.join_frames([item.parts, *(frame.parts for frame in joined)]) if joined else item.parts
                self.queued_bytes -= item.size + sum(frame.size for frame in joined)
                await websocket.send(p.outgoing(parts, FRAGMENT_SIZE))
            elif isinstance(item, Hangup):
                await websocket.close(item.code, item.reason)
            else:
                await replay(websocket, item.job_id)
        except ConnectionClosed:
            pass  # the reader sees it too and cleans up
        return True


async def ping(websocket: ServerConnection) -> None:
    """One ping, so that ``websocket.latency`` holds a round trip before the first keepalive."""
    try:
        await asyncio.wait_for(await websocket.ping(), CONNECT_PING_TIMEOUT)
    except (ConnectionClosed, asyncio.TimeoutError):
        pass


def how_it_went(websocket: ServerConnection, heartbeat_timeout: float) -> str:
    """How a connection ended, for logs and for the error of a task that kept losing its worker."""
    sent = websocket.protocol.close_sent
    if sent is not None and sent.reason == "keepalive ping timeout":
        return f"went silent (no answer to pings for {heartbeat_timeout:g} s)"
    return "disconnected"


def where(websocket: ServerConnection) -> str:
    """The peer's address, for log lines."""
    address = websocket.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
