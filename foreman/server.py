"""The foreman's websocket server: reads frames, calls the scheduler, sends what it says.

All decisions live in :mod:`foreman.scheduler`; this module only does I/O:
authenticate each connection, decode its frames, hand the messages to the
scheduler, and queue the frames it returns on the right connection.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from crowdcompute.errors import ProtocolError
from crowdcompute.wire import messages as p
from crowdcompute.wire.addresses import Address
from crowdcompute.wire.constants import AUTH_FAILURE_DELAY, CLOSE_TIMEOUT, FRAGMENT_SIZE, CloseCode, Role
from crowdcompute.wire.runtime import runtime_mismatch

from .credentials import CredentialRefused, Volunteer
from .http import StatusPages
from .journal import Journal, read_outcome_frame, read_outcome_ids
from .limits import MAX_SLOTS_PER_WORKER
from .scheduler import RESULT_TTL, Action, Scheduler
from .state import Close, Note, Replay, Send

__all__ = [
    "AUTH_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_FRAME_SIZE",
    "MAX_HELLO_SIZE",
    "MAX_OUTBOX_BYTES",
    "ForemanServer",
]

log = logging.getLogger("crowdcompute.foreman")

#: Seconds a new connection has to send its Hello.
AUTH_TIMEOUT = 10.0
#: Largest first frame (the Hello) the foreman reads from a connection, in bytes.
MAX_HELLO_SIZE = 64 * 1024
#: Largest frame the foreman accepts from an authenticated client or worker, in bytes.
MAX_FRAME_SIZE = 256 * 1024 * 1024
#: Open connections the foreman serves at once; more are closed with 1013 (try again later).
MAX_CONNECTIONS = 4096
#: Bytes queued for one peer that is not reading; past this it is disconnected
#: (a client reconnects and attaches; nothing is lost).
MAX_OUTBOX_BYTES = 512 * 1024 * 1024

#: Seconds the foreman waits for the pong to the ping it sends a worker as it joins.
CONNECT_PING_TIMEOUT = 10.0
#: Websocket frames the foreman reads ahead of its handler per connection, before it stops reading.
READ_AHEAD_FRAMES = 4

#: Seconds between purges of jobs older than the result TTL (and idle checks).
EXPIRE_INTERVAL = 60.0
#: Seconds between two ticks of the scheduler's clock (deadlines, quorum timeouts, what jobs wait for).
TICK_INTERVAL = 1.0
#: Seconds a client with no running job may stay silent before it is closed (1000, "idle").
IDLE_TIMEOUT = 3600.0

M = TypeVar("M", bound=p.Message)
Handler = Callable[[Scheduler, str, Any], list[Action]]


@dataclass(frozen=True)
class Route:
    """Which role may send a message type, and the scheduler call that handles it."""

    message_type: type[p.Message]
    role: Role
    handler: Handler


def _route(message_type: type[M], role: Role, handler: Callable[[Scheduler, str, M], list[Action]]) -> Route:
    """A table entry whose handler type-checks against its message type."""
    return Route(message_type, role, handler)


#: Every message a peer may send after its Hello, by type: who may send it and what handles it.
ROUTES: dict[type[p.Message], Route] = {
    route.message_type: route
    for route in (
        _route(p.SubmitJob, Role.CLIENT, lambda s, conn, msg: s.submit_job(conn, msg)),
        _route(p.SubmitTask, Role.CLIENT, lambda s, conn, msg: s.submit_task(conn, msg)),
        _route(p.CancelJob, Role.CLIENT, lambda s, conn, msg: s.cancel_job(conn, msg.job_id)),
        _route(p.StatusRequest, Role.CLIENT, lambda s, conn, msg: [Send(conn, p.StatusReply.of(s.status()))]),
        _route(p.AttachJob, Role.CLIENT, lambda s, conn, msg: s.attach_job(conn, msg.job_id, msg.resume)),
        _route(p.CollectJob, Role.CLIENT, lambda s, conn, msg: s.collect_job(conn, msg.job_id)),
        _route(p.AckResults, Role.CLIENT, lambda s, conn, msg: s.ack_results(conn, msg.job_id, msg.task_ids)),
        # Admin requests on a client connection (the client token is the admin's): see foreman.credentials.
        _route(p.InviteVolunteer, Role.CLIENT, lambda s, conn, msg: s.invite_volunteer(conn, msg)),
        _route(p.RevokeVolunteer, Role.CLIENT, lambda s, conn, msg: s.revoke_volunteer(conn, msg)),
        _route(p.ListVolunteers, Role.CLIENT, lambda s, conn, msg: s.list_volunteers(conn)),
        _route(p.TaskDone, Role.WORKER, lambda s, conn, msg: s.task_done(conn, msg)),
        _route(p.TaskCrashed, Role.WORKER, lambda s, conn, msg: s.task_crashed(conn, msg)),
        _route(p.TaskOutput, Role.WORKER, lambda s, conn, msg: s.task_output(conn, msg)),
        _route(p.TaskProgress, Role.WORKER, lambda s, conn, msg: s.task_output(conn, msg)),
        _route(p.WorkerDraining, Role.WORKER, lambda s, conn, msg: s.worker_draining(conn)),
        _route(p.EnvironmentStatus, Role.WORKER, lambda s, conn, msg: s.environment_status(conn, msg)),
    )
}


# What a peer's outbox holds: its sender task writes these in order.


@dataclass(frozen=True)
class Frame:
    """An encoded message to send, as parts: its header, then its payloads as they arrived (not copied).

    A frame of several parts goes out as a fragmented websocket message, so
    the foreman never joins a payload into a new buffer.
    """

    parts: list[bytes | memoryview]
    size: int


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


@dataclass
class _Peer:
    """One authenticated connection and its outgoing frames."""

    conn_id: str
    role: Role
    name: str
    websocket: ServerConnection
    slots: int = 0
    mismatch: str | None = None  # why its runtime cannot take or give cloudpickle jobs
    volunteer: Volunteer | None = None  # the invite a worker joined with (None: the shared worker token)
    last_seen: float = 0.0  # loop time of its last frame
    outbox: asyncio.Queue[Outgoing] = field(default_factory=asyncio.Queue)
    queued_bytes: int = 0  # in the outbox, not yet written
    pinger: asyncio.Task | None = None  # the ping that measures a joining worker's round trip
    closing: asyncio.Task[None] | None = None  # an immediate close under way
    resources: dict = field(default_factory=dict)  # a worker's resources and labels, from its Hello
    labels: dict = field(default_factory=dict)
    installs: bool = True  # it builds environments (not --no-install)


class ForemanServer:
    """A foreman listening on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str,
        worker_token: str | None = None,
        heartbeat_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        journal: Journal | Callable[[int], Journal] | None = None,
        result_ttl: float | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        sock: socket.socket | None = None,
        max_slots_per_worker: int = MAX_SLOTS_PER_WORKER,
        backup_tasks: bool = True,
    ) -> None:
        """``journal``: a Journal, or a function of the bound port that opens one."""
        if not token:
            raise ValueError("the foreman never runs without a token")
        self.host = host
        self.port = port
        self.sock = sock  # already bound and listening (handed over by a parent), or None
        self.token = token
        self.worker_token = worker_token or token
        self.heartbeat_timeout = heartbeat_timeout
        self.ssl_context = ssl_context
        self.max_frame_size = max_frame_size
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._connections = 0
        self._open_journal = journal
        self.journal: Journal | None = None
        self.scheduler = Scheduler(
            journaled=journal is not None,
            result_ttl=RESULT_TTL if result_ttl is None else result_ttl,
            max_slots_per_worker=max_slots_per_worker,
            backup_tasks=backup_tasks,
        )
        self._peers: dict[str, _Peer] = {}
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._expiry: asyncio.Task | None = None
        self._ticker: asyncio.Task | None = None
        # GET /, /api/status and /healthz on the same port (see foreman.http).
        self.status_pages = StatusPages(self.scheduler, token, secure=ssl_context is not None)

    @property
    def address(self) -> Address:
        return Address(self.host, self.port, self.ssl_context is not None)

    async def start(self) -> Address:
        """Start listening, resume what the journal holds; return the address with the real port."""
        where = {"sock": self.sock} if self.sock is not None else {"host": self.host, "port": self.port}
        self._server = await serve(
            self._handle,
            **where,
            ssl=self.ssl_context,
            compression=None,  # payloads are pickles: compression costs CPU and buys little
            # Every peer of ours sends fragments of at most FRAGMENT_SIZE; a message may
            # reach max_frame_size only after authentication (see _read_hello).
            max_size=(self.max_frame_size, FRAGMENT_SIZE),
            # Frames read ahead per connection (each at most FRAGMENT_SIZE): a bound on the foreman's memory.
            max_queue=READ_AHEAD_FRAMES,
            # A peer that answers no ping within the heartbeat timeout is dropped,
            # and a dropped worker's tasks go to others: a ping goes out every third
            # of it, and the wait for its pong plus the closing handshake after an
            # unanswered one (CLOSE_TIMEOUT, not websockets' 10 s) fit in the rest.
            ping_interval=self.heartbeat_timeout / 3,
            ping_timeout=max(self.heartbeat_timeout * 2 / 3 - CLOSE_TIMEOUT, self.heartbeat_timeout / 3),
            close_timeout=CLOSE_TIMEOUT,
            process_request=self.status_pages.process_request,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        # No handler has run yet (none could without awaiting): restoring now
        # happens before any peer is served.
        journal = self._open_journal
        self.journal = journal(self.port) if callable(journal) else journal
        if self.journal is not None:
            jobs, ended = self.journal.load()
            self._execute(self.scheduler.restore(jobs, ended, self.journal.load_volunteers()))
            if jobs:
                log.info("resumed %d unfinished jobs from %s", len(jobs), self.journal.path)
        self._expiry = asyncio.create_task(self._expire_regularly())
        self._ticker = asyncio.create_task(self._tick_regularly())
        self.status_pages.start()
        return self.address

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._expiry is not None:
            self._expiry.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        self.status_pages.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.journal is not None:
            self.journal.close()

    async def _tick_regularly(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            self._execute(self.scheduler.tick())

    async def _expire_regularly(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(EXPIRE_INTERVAL, self.idle_timeout / 2))
            self._execute(self.scheduler.expire())
            busy = self.scheduler.busy_clients()
            for peer in list(self._peers.values()):
                idle = loop.time() - peer.last_seen
                if peer.role == Role.CLIENT and peer.conn_id not in busy and idle > self.idle_timeout:
                    log.info("closed idle client %s (silent for %.0f s)", peer.name, idle)
                    self._close_peer(peer, CloseCode.NORMAL, "idle", logged=True)

    # --- connections -------------------------------------------------------

    async def _handle(self, websocket: ServerConnection) -> None:
        if self._connections >= self.max_connections:
            log.warning("refused %s: already %d connections", _where(websocket), self._connections)
            await websocket.close(
                CloseCode.TRY_AGAIN_LATER, f"the foreman serves at most {self.max_connections} connections"
            )
            return
        self._connections += 1
        try:
            await self._serve_peer(websocket)
        finally:
            self._connections -= 1

    async def _serve_peer(self, websocket: ServerConnection) -> None:
        peer = await self._authenticate(websocket)
        if peer is None:
            return
        sender = asyncio.create_task(self._send_frames(peer))
        self._peers[peer.conn_id] = peer
        self._queue_frame(
            peer,
            p.encode_parts(
                p.Welcome(
                    p.PROTOCOL_VERSION,
                    peer.conn_id,
                    workers=len(self.scheduler.workers),
                    slots=self.scheduler.total_slots,
                    max_frame_size=self.max_frame_size,
                    max_queued_tasks=self.scheduler.max_queued_tasks,
                    max_queued_bytes=self.scheduler.max_queued_bytes,
                    notice=self._notice(peer),
                )
            ),
        )
        if peer.role == Role.WORKER:  # its round trip sizes its prefetch: measure it now, not at the first keepalive
            peer.pinger = asyncio.create_task(_ping(websocket))
        try:
            if peer.role == Role.WORKER:
                who = f" (volunteer {peer.volunteer.name})" if peer.volunteer else ""
                log.info("worker %s%s connected from %s", peer.name, who, _where(websocket))
            self._execute(self._joined(peer))
            await self._read_frames(peer)
        finally:
            if peer.pinger is not None:
                peer.pinger.cancel()
            del self._peers[peer.conn_id]
            if peer.role == Role.WORKER:
                how = _how_it_went(peer.websocket, self.heartbeat_timeout)
                log.info("worker %s %s", peer.name, how)
                self._execute(self.scheduler.remove_worker(peer.conn_id, how))
            else:
                self._execute(self.scheduler.remove_client(peer.conn_id))
            peer.outbox.put_nowait(Stop())
            await sender

    def _notice(self, peer: _Peer) -> str:
        """What the peer should tell its user: it runs portable jobs only, it was granted fewer slots."""
        notices = [f"{peer.mismatch}; it runs portable jobs only"] if peer.mismatch else []
        if peer.role == Role.WORKER:
            granted = self.scheduler.granted_slots(max(1, peer.slots), peer.volunteer)
            if granted < peer.slots:
                notices.append(f"the foreman grants it {granted} of its {peer.slots} slots")
        return "; ".join(notices)

    async def _authenticate(self, websocket: ServerConnection) -> _Peer | None:
        """Read the Hello; return the peer, or refuse and close and return None."""
        try:
            frame = await asyncio.wait_for(_read_hello(websocket), AUTH_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("closed %s: no hello within %s s", _where(websocket), AUTH_TIMEOUT)
            await websocket.close(CloseCode.POLICY, f"authenticate within {AUTH_TIMEOUT:g} seconds")
            return None
        except ConnectionClosed:
            return None
        if frame is None:
            # Read fragment by fragment: an unauthenticated peer never makes the foreman hold more.
            reason = f"the first frame (hello) may be at most {MAX_HELLO_SIZE} bytes"
            log.warning("refused %s: %s", _where(websocket), reason)
            await websocket.close(CloseCode.TOO_BIG, reason)
            return None
        try:
            hello = p.decode(frame)
            if not isinstance(hello, p.Hello):
                raise ProtocolError(f"the first message must be hello, not {hello.TYPE}")
        except ProtocolError as exc:
            log.warning("refused %s: %s", _where(websocket), exc)
            await self._refuse(websocket, "protocol", str(exc), CloseCode.PROTOCOL_ERROR)
            return None
        if hello.protocol_version != p.PROTOCOL_VERSION:
            reason = (
                f"protocol version mismatch: the {hello.role} speaks version "
                f"{hello.protocol_version}, this foreman speaks version {p.PROTOCOL_VERSION}; "
                "install the same crowdcompute version on both sides"
            )
            log.warning("refused %s: %s", _where(websocket), reason)
            await self._refuse(websocket, "version", reason, CloseCode.PROTOCOL_ERROR)
            return None
        expected = self.token if hello.role == Role.CLIENT else self.worker_token
        volunteer = None
        if not hmac.compare_digest(hello.token.encode(), expected.encode()):
            try:
                if hello.role != Role.WORKER:
                    raise CredentialRefused("wrong or missing client token")
                volunteer = self.scheduler.volunteers.authenticate(hello.token, self.scheduler.clock())
            except CredentialRefused as refused:
                # Never the token itself: the log names the volunteer only when the credential was once valid.
                log.warning("refused %s %s: %s", hello.role, _where(websocket), refused.reason)
                await asyncio.sleep(AUTH_FAILURE_DELAY)
                if refused.name is not None:
                    await self._refuse(websocket, "revoked", refused.reason, CloseCode.POLICY)
                else:
                    reason = f"the foreman refused this {hello.role} token"
                    await self._refuse(websocket, "auth", reason, CloseCode.POLICY)
                return None
        conn_id = f"{hello.role[0]}{next(self._ids)}"
        name = hello.name or conn_id
        # Another Python or cloudpickle: cloudpickle jobs cannot cross, portable ones can.
        mismatch = runtime_mismatch(hello.role, hello.python, hello.cloudpickle)
        if mismatch is not None:
            log.warning("%s %s gets portable jobs only: %s", hello.role, name, mismatch)
        return _Peer(
            conn_id,
            hello.role,
            name,
            websocket,
            hello.slots,
            mismatch=mismatch,
            volunteer=volunteer,
            resources=dict(hello.resources),
            labels=dict(hello.labels),
            installs=hello.installs,
        )

    async def _refuse(self, websocket: ServerConnection, code: str, reason: str, close_code: int) -> None:
        try:
            await websocket.send(p.encode(p.Refused(code, reason)))
            await websocket.close(close_code, reason[:120])
        except ConnectionClosed:
            pass

    def _joined(self, peer: _Peer) -> list[Action]:
        if peer.role == Role.WORKER:
            return self.scheduler.add_worker(
                peer.conn_id,
                peer.name,
                max(1, peer.slots),
                bool(peer.mismatch),
                volunteer=peer.volunteer,
                resources=peer.resources,
                labels=peer.labels,
                installs=peer.installs,
            )
        return self.scheduler.add_client(peer.conn_id, peer.mismatch)

    async def _read_frames(self, peer: _Peer) -> None:
        loop = asyncio.get_running_loop()
        peer.last_seen = loop.time()
        try:
            while True:
                if self.journal is not None:
                    await self.journal.wait_for_room()  # a disk slower than the network slows the peers
                # Piece by piece: a payload that came as a fragment of its own is used as it is, not joined.
                fragments = [fragment async for fragment in peer.websocket.recv_streaming()]
                peer.last_seen = loop.time()
                try:
                    msg = p.decode_parts(fragments, join=False)  # payloads are forwarded, never read
                except ProtocolError as exc:
                    code = CloseCode.UNSUPPORTED if isinstance(fragments[0], str) else CloseCode.PROTOCOL_ERROR
                    self._close_peer(peer, code, str(exc))
                    return
                route = ROUTES.get(type(msg))
                if route is None or route.role != peer.role:
                    self._close_peer(peer, CloseCode.POLICY, f"a {peer.role} may not send {msg.TYPE}")
                    return
                if isinstance(msg, p.TaskDone):  # the latest ping's round trip sizes the worker's prefetch
                    self.scheduler.note_latency(peer.conn_id, peer.websocket.latency)
                self._execute(route.handler(self.scheduler, peer.conn_id, msg))
        except ConnectionClosed:
            pass

    def _close_peer(self, peer: _Peer, code: int, reason: str, *, now: bool = False, logged: bool = False) -> None:
        """Close a peer's connection after what its outbox holds, or ``now`` (ahead of its backlog).

        ``logged``: the caller (or the scheduler, with a Note) already said why.
        """
        if not logged:
            log.warning("closed %s %s: %s", peer.role, peer.name, reason)
        if not now:
            peer.outbox.put_nowait(Hangup(code, reason[:120]))
        elif peer.closing is None:
            peer.closing = asyncio.create_task(peer.websocket.close(code, reason[:120]))

    def _execute(self, actions: list[Action]) -> None:
        """Carry out the scheduler's actions in order; commit the journal once at the end.

        A JobAccepted goes out only once the batch that journaled its job is
        committed (the journal writes in its own thread): "accepted" means durable.
        """
        accepted: list[Send] = []
        for action in actions:
            if isinstance(action, Note):
                log.warning("%s", action.text)
            elif isinstance(action, (Send, Close, Replay)):
                peer = self._peers.get(action.to)
                if peer is None:
                    continue  # the connection went away; the scheduler learns it in its finally
                if isinstance(action, Close):
                    self._close_peer(peer, action.code, action.reason, logged=True)
                elif isinstance(action, Replay):
                    peer.outbox.put_nowait(ReplayJob(action.job_id))
                elif self.journal is not None and isinstance(action.message, p.JobAccepted):
                    accepted.append(action)
                else:
                    self._queue_frame(peer, p.encode_parts(action.message))
            elif self.journal is not None:
                self.journal.apply(action)
        if self.journal is not None:
            if accepted:
                loop = asyncio.get_running_loop()
                self.journal.commit(lambda: loop.call_soon_threadsafe(self._send_after_commit, accepted))
            else:
                self.journal.commit()

    def _send_after_commit(self, sends: list[Send]) -> None:
        for action in sends:
            peer = self._peers.get(action.to)
            if peer is not None:
                self._queue_frame(peer, p.encode_parts(action.message))

    def _queue_frame(self, peer: _Peer, parts: list[bytes | memoryview]) -> None:
        size = p.frame_size(parts)
        if peer.queued_bytes + size > MAX_OUTBOX_BYTES and peer.queued_bytes:
            reason = f"{peer.queued_bytes} bytes wait for this {peer.role} to read them"
            # Now, not after the backlog: a client comes back and attaches; nothing is lost.
            self._close_peer(peer, CloseCode.POLICY, reason, now=True)
            return
        peer.queued_bytes += size
        peer.outbox.put_nowait(Frame(parts, size))

    async def _send_frames(self, peer: _Peer) -> None:
        """Write the peer's queued frames in order; a slow peer delays only itself."""
        websocket = peer.websocket
        while True:
            item = await peer.outbox.get()
            if isinstance(item, Stop):
                return
            try:
                if isinstance(item, Frame):
                    peer.queued_bytes -= item.size
                    parts = p.split_parts(item.parts, FRAGMENT_SIZE)
                    await websocket.send(parts[0] if len(parts) == 1 else parts)
                elif isinstance(item, Hangup):
                    await websocket.close(item.code, item.reason)
                else:
                    await self._replay(websocket, item.job_id)
            except ConnectionClosed:
                pass  # the reader sees it too and cleans up

    async def _replay(self, websocket: ServerConnection, job_id: str) -> None:
        """Send a job's stored outcomes one by one, so a big job never sits in memory whole."""
        if self.journal is None:
            return
        for task_id in await self.journal.call_async(read_outcome_ids, job_id):
            frame = await self.journal.call_async(read_outcome_frame, job_id, task_id, self.journal.blobs)
            if frame is not None:
                parts = p.split_parts(p.frame_parts(frame), FRAGMENT_SIZE)
                await websocket.send(parts[0] if len(parts) == 1 else parts)


async def _ping(websocket: ServerConnection) -> None:
    """One ping, so that ``websocket.latency`` holds a round trip before the first keepalive."""
    try:
        await asyncio.wait_for(await websocket.ping(), CONNECT_PING_TIMEOUT)
    except (ConnectionClosed, asyncio.TimeoutError):
        pass


def _how_it_went(websocket: ServerConnection, heartbeat_timeout: float) -> str:
    """How a connection ended, for logs and for the error of a task that kept losing its worker."""
    sent = websocket.protocol.close_sent
    if sent is not None and sent.reason == "keepalive ping timeout":
        return f"went silent (no answer to pings for {heartbeat_timeout:g} s)"
    return "disconnected"


def _where(websocket: ServerConnection) -> str:
    address = websocket.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


async def _read_hello(websocket: ServerConnection) -> bytes | str | None:
    """The first message, read a fragment at a time; None once it passes MAX_HELLO_SIZE.

    websockets assembles a message up to ``max_size`` before ``recv`` returns;
    streaming it lets the foreman stop at the Hello's own limit instead.
    """
    pieces: list[bytes | str] = []
    size = 0
    async for fragment in websocket.recv_streaming():
        size += len(fragment)
        if size > MAX_HELLO_SIZE:
            return None
        pieces.append(fragment)
    if pieces and isinstance(pieces[0], str):
        return "".join(str(piece) for piece in pieces)
    return b"".join(piece for piece in pieces if isinstance(piece, bytes))
