"""The foreman's websocket server: reads frames, calls the scheduler, sends what it says.

All decisions live in :mod:`foreman.scheduler`; this module only does I/O:
authenticate each connection (:mod:`foreman.handshake`), decode its frames,
and hand the messages to the scheduler (:mod:`foreman.routes`);
:mod:`foreman.execution` carries out what it says (frames queued on the
right connection, :mod:`foreman.peer`, and the journal's commits).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
from collections.abc import Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from crowdcompute.errors import ProtocolError
from crowdcompute.processes import HeapRelease
from crowdcompute.wire import messages as p
from crowdcompute.wire.addresses import Address
from crowdcompute.wire.constants import CLOSE_TIMEOUT, FRAGMENT_SIZE, CloseCode, Role

from . import deadlines
from .execution import ActionExecution
from .handshake import AUTH_TIMEOUT, MAX_HELLO_SIZE, authenticate
from .http import StatusPages
from .journal import Journal
from .limits import JOIN_PINGS, MAX_SLOTS_PER_WORKER
from .peer import MAX_OUTBOX_BYTES, EndOfTurn, Peer, how_it_went, ping, where
from .routes import ROUTES
from .scheduler import RESULT_TTL, Action, Scheduler
from .sharing import SharedPayloads

__all__ = [
    "AUTH_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_FRAME_SIZE",
    "MAX_HELLO_SIZE",
    "MAX_OUTBOX_BYTES",
    "ForemanServer",
]

log = logging.getLogger("crowdcompute.foreman")

#: Largest frame the foreman accepts from an authenticated client or worker, in bytes.
MAX_FRAME_SIZE = 256 * 1024 * 1024
#: Open connections the foreman serves at once (``--max-connections``); more are closed with
#: 1013 (try again later). A crowd of 10,000 workers fits (issue 12); each needs a file descriptor.
MAX_CONNECTIONS = 16384
#: Websocket frames the foreman reads ahead of its handler per connection, before it stops reading.
READ_AHEAD_FRAMES = 4

#: Seconds between purges of jobs older than the result TTL (and idle checks).
EXPIRE_INTERVAL = 60.0
#: Seconds between two ticks of the scheduler's clock (deadlines, quorum timeouts, what jobs wait for).
TICK_INTERVAL = 1.0
#: Seconds a client with no running job may stay silent before it is closed (1000, "idle").
IDLE_TIMEOUT = 3600.0


class ForemanServer(ActionExecution):
    """A foreman listening on ``host:port`` (port 0 picks a free one); what it does with the
    scheduler's actions is :class:`foreman.execution.ActionExecution`."""

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
        share_files: bool = True,
    ) -> None:
        """``journal``: a Journal, or a function of the bound port that opens one.

        ``share_files``: offer peers on this host a folder for big payloads (see foreman.sharing).
        """
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
        self.share_files = share_files
        self.payloads: SharedPayloads | None = None
        self.scheduler = Scheduler(
            journaled=journal is not None,
            result_ttl=RESULT_TTL if result_ttl is None else result_ttl,
            max_slots_per_worker=max_slots_per_worker,
            backup_tasks=backup_tasks,
        )
        self._peers: dict[str, Peer] = {}
        self._turn = EndOfTurn()  # flushes the frames queued for peers in one turn of the loop
        self._heap = HeapRelease()  # gives back what big payloads left in the heap
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._expiry: asyncio.Task | None = None
        self._ticker: asyncio.Task | None = None
        self._tails: asyncio.Task | None = None
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
        if self.share_files:
            self.payloads = SharedPayloads(str(self.journal.blobs) if self.journal is not None else None)
        if self.journal is not None:
            jobs, ended = self.journal.load()
            if self.payloads is not None:
                self.payloads.restored(jobs, [summary["id"] for summary in ended])
            self._execute(self.scheduler.restore(jobs, ended, self.journal.load_volunteers()))
            if jobs:
                log.info("resumed %d unfinished jobs from %s", len(jobs), self.journal.path)
        self._expiry = asyncio.create_task(self._expire_regularly())
        self._ticker = asyncio.create_task(self._tick_regularly())
        self._tails = asyncio.create_task(self._check_tails_regularly())
        self.status_pages.start()
        return self.address

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._expiry is not None:
            self._expiry.cancel()
        for timer in (self._ticker, self._tails):
            if timer is not None:
                timer.cancel()
        self.status_pages.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.journal is not None:
            self.journal.close()
        if self.payloads is not None:
            self.payloads.close()

    async def _tick_regularly(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            self._execute(self.scheduler.tick())
            self._heap.tick()  # what forwarded payloads left in the heap, once they stopped

    async def _check_tails_regularly(self) -> None:
        """A job at its tail whose outcomes stopped coming in (its last tasks run long) gets its
        backup runs within TAIL_CHECK_INTERVAL, not at the next tick."""
        while True:
            await asyncio.sleep(deadlines.TAIL_CHECK_INTERVAL)
            if self.scheduler.at_tail():
                self._execute(self.scheduler.tail_check())

    async def _expire_regularly(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(EXPIRE_INTERVAL, self.idle_timeout / 2))
            held = set(self.scheduler.jobs)
            self._execute(self.scheduler.expire())
            self._forget_files(held)
            if self.payloads is not None:
                self.payloads.sweep()
            busy = self.scheduler.busy_clients()
            for peer in list(self._peers.values()):
                idle = loop.time() - peer.last_seen
                if peer.role == Role.CLIENT and peer.conn_id not in busy and idle > self.idle_timeout:
                    log.info("closed idle client %s (silent for %.0f s)", peer.name, idle)
                    peer.close(CloseCode.NORMAL, "idle", logged=True)

    # --- connections -------------------------------------------------------

    async def _handle(self, websocket: ServerConnection) -> None:
        if self._connections >= self.max_connections:
            log.warning("refused %s: already %d connections", where(websocket), self._connections)
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
        peer = await authenticate(
            websocket, token=self.token, worker_token=self.worker_token, scheduler=self.scheduler, ids=self._ids
        )
        if peer is None:
            return
        # websockets keeps the opening handshake's request and response for the life of the
        # connection; nothing reads their headers after it (about 2.5 KB: 25 MB per 10,000 workers).
        for handshake in (websocket.request, websocket.response):
            if handshake is not None:
                handshake.headers.clear()
        sender = asyncio.create_task(peer.send_frames(self._replay))
        self._peers[peer.conn_id] = peer
        peer.turn = self._turn  # one end-of-turn flush for every peer
        peer.queue_frame(
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
                    granted=self._granted(peer),
                    blobs=self.payloads.path if self.payloads is not None else "",
                )
            ),
            alone=True,  # the peer reads it first, alone
        )
        if peer.role == Role.WORKER:  # its round trip sizes its prefetch: measure it now, not at the first keepalive
            peer.pinger = asyncio.create_task(self._measure_round_trip(peer))
        try:
            if peer.role == Role.WORKER:
                who = f" (volunteer {peer.volunteer.name})" if peer.volunteer else ""
                log.info("worker %s%s connected from %s", peer.name, who, where(websocket))
            self._execute(self._joined(peer))
            await self._read_frames(peer)
        finally:
            if peer.pinger is not None:
                peer.pinger.cancel()
            del self._peers[peer.conn_id]
            if peer.role == Role.WORKER:
                how = how_it_went(peer.websocket, self.heartbeat_timeout)
                log.info("worker %s %s", peer.name, how)
                self._execute(self.scheduler.remove_worker(peer.conn_id, how))
            else:
                self._execute(self.scheduler.remove_client(peer.conn_id))
            peer.stop_sending()
            await sender

    def _notice(self, peer: Peer) -> str:
        """What the peer should tell its user: portable jobs only, fewer slots granted, its name changed."""
        notices = [f"{peer.mismatch}; it runs portable jobs only"] if peer.mismatch else []
        if peer.renamed:
            notices.append(peer.renamed)
        granted = self._granted(peer)
        if granted:
            notices.append(f"the foreman grants it {granted} of its {peer.slots} slots")
        return "; ".join(notices)

    def _granted(self, peer: Peer) -> int:
        """A worker's slots that the foreman uses, when fewer than it claims (else 0)."""
        if peer.role != Role.WORKER:
            return 0
        granted = self.scheduler.granted_slots(max(1, peer.slots), peer.volunteer)
        return granted if granted < peer.slots else 0

    def _joined(self, peer: Peer) -> list[Action]:
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

    async def _read_frames(self, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        peer.last_seen = loop.time()
        try:
            while True:
                if self.journal is not None:
                    await self.journal.wait_for_room()  # a disk slower than the network slows the peers
                # Piece by piece: a payload that came as a fragment of its own is used as it is, not joined.
                # (A call of its own: nothing of this frame is held while the next one is awaited.)
                if not self._take(peer, [fragment async for fragment in peer.websocket.recv_streaming()]):
                    return
        except ConnectionClosed:
            pass

    def _take(self, peer: Peer, fragments: list[bytes | str]) -> bool:
        """Handle the messages of one frame from ``peer``; False if it was closed for the frame."""
        peer.last_seen = asyncio.get_running_loop().time()
        if len(fragments) > 2:  # a big frame: its header, its payload in pieces, an empty end
            self._heap.passed(sum(len(fragment) for fragment in fragments))
        try:
            decoded = p.decode_parts(fragments, join=False)  # payloads are forwarded, never read
        except ProtocolError as exc:
            code = CloseCode.UNSUPPORTED if isinstance(fragments[0], str) else CloseCode.PROTOCOL_ERROR
            peer.close(code, str(exc))
            return False
        messages = p.unbatch(decoded)  # a batch: handled one by one, as if each came alone
        for msg in messages:  # (a batch holding one it may not send is refused whole, like a bad frame)
            if not self._may_send(peer, msg):
                peer.close(CloseCode.POLICY, f"a {peer.role} may not send {msg.TYPE}")
                return False
        if len(messages) == 1:
            self._handle_message(peer, messages[0])
            return True
        self.scheduler.hold_assignment()  # one pass for the whole batch (Scheduler.hold_assignment)
        try:
            for msg in messages:
                self._handle_message(peer, msg)
        finally:
            self._execute(self.scheduler.release_assignment())
        return True

    @staticmethod
    def _may_send(peer: Peer, msg: p.Message) -> bool:
        route = ROUTES.get(type(msg))
        return isinstance(msg, p.ShareBlobs) or (route is not None and route.role == peer.role)

    def _handle_message(self, peer: Peer, msg: p.Message) -> None:
        """One message from ``peer`` (allowed to send it): the scheduler's call, and what it says to do."""
        if isinstance(msg, p.ShareBlobs):
            if self.payloads is not None:
                self.payloads.accept(peer, msg)
            return
        if isinstance(msg, p.TaskDone):  # the latest ping's round trip sizes the worker's prefetch
            sized = self.scheduler.note_latency(peer.conn_id, peer.websocket.latency)
            if sized:
                self._execute(sized)
        if self.payloads is not None:
            try:
                msg = self.payloads.incoming(peer, msg, self.scheduler)
            except ValueError as exc:
                # Dropped, not fatal: a frame queued before a reconnect may name a file of a
                # foreman that is gone; the client sends its outstanding tasks again anyway.
                log.warning("ignored %s from %s %s: %s", msg.TYPE, peer.role, peer.name, exc)
                return
        held = set(self.scheduler.jobs) if isinstance(msg, (p.CollectJob, p.CancelJob)) else None
        collected = self.scheduler.jobs.get(msg.job_id) if isinstance(msg, p.CollectJob) else None
        if collected is not None:  # it rides with the client's next job: that job's leases go out first
            self._turn.keep(collected)
        acknowledged = self.payloads.acknowledging(msg, self.scheduler) if self.payloads is not None else []
        actions = ROUTES[type(msg)].handler(self.scheduler, peer.conn_id, msg)
        self._execute(actions)
        if self.payloads is not None:
            self.payloads.handled(msg, self.scheduler, actions, acknowledged)
        if held is not None:
            self._forget_files(held)

    async def _measure_round_trip(self, peer: Peer) -> None:
        """Ping a joining worker JOIN_PINGS times: its round trip (the least of them, a worker that
        is still starting answers late) sizes its prefetch before its first task ends."""
        for _ in range(JOIN_PINGS):
            await ping(peer.websocket)
            if peer.conn_id not in self._peers:
                return
            self._execute(self.scheduler.note_latency(peer.conn_id, peer.websocket.latency))
