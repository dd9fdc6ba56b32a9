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
import ssl
from dataclasses import dataclass, field
from typing import Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from crowdcompute import protocol as p
from crowdcompute.addresses import Address
from crowdcompute.errors import ProtocolError

from .journal import Journal
from .scheduler import Action, Scheduler
from .state import Close, Replay, Send

__all__ = ["AUTH_TIMEOUT", "AUTH_FAILURE_DELAY", "MAX_FRAME_SIZE", "ForemanServer"]

log = logging.getLogger("crowdcompute.foreman")

#: Seconds a new connection has to send its Hello.
AUTH_TIMEOUT = 10.0
#: Seconds a refused authentication waits before its answer, to slow guessing.
AUTH_FAILURE_DELAY = 0.2
#: Largest frame the foreman accepts, in bytes.
MAX_FRAME_SIZE = 512 * 1024 * 1024

# Websocket close codes (RFC 6455).
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008

#: Seconds between purges of jobs older than the result TTL.
EXPIRE_INTERVAL = 60.0

_CLIENT_MESSAGES = (p.SubmitJob, p.SubmitTask, p.CancelJob, p.StatusRequest, p.AttachJob, p.CollectJob)
_WORKER_MESSAGES = (p.TaskDone, p.TaskCrashed, p.TaskOutput, p.WorkerDraining)


@dataclass
class _Peer:
    """One authenticated connection and its outgoing frames."""

    conn_id: str
    role: str
    name: str
    websocket: ServerConnection
    slots: int = 0
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)


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
    ) -> None:
        """``journal``: a Journal, or a function of the bound port that opens one."""
        if not token:
            raise ValueError("the foreman never runs without a token")
        self.host = host
        self.port = port
        self.token = token
        self.worker_token = worker_token or token
        self.heartbeat_timeout = heartbeat_timeout
        self.ssl_context = ssl_context
        self._open_journal = journal
        self.journal: Journal | None = None
        options = {} if result_ttl is None else {"result_ttl": result_ttl}
        self.scheduler = Scheduler(journaled=journal is not None, **options)
        self._peers: dict[str, _Peer] = {}
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._expiry: asyncio.Task | None = None

    @property
    def address(self) -> Address:
        return Address(self.host, self.port, self.ssl_context is not None)

    async def start(self) -> Address:
        """Start listening, resume what the journal holds; return the address with the real port."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ssl=self.ssl_context,
            compression=None,  # payloads are pickles: compression costs CPU and buys little
            max_size=MAX_FRAME_SIZE,
            # A peer that answers no ping within the heartbeat timeout is dropped,
            # and a dropped worker's tasks go to others.
            ping_interval=self.heartbeat_timeout / 3,
            ping_timeout=self.heartbeat_timeout * 2 / 3,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        # No handler has run yet (none could without awaiting): restoring now
        # happens before any peer is served.
        journal = self._open_journal
        self.journal = journal(self.port) if callable(journal) else journal
        if self.journal is not None:
            jobs, ended = self.journal.load()
            self._execute(self.scheduler.restore(jobs, ended))
            if jobs:
                log.info("resumed %d unfinished jobs from %s", len(jobs), self.journal.path)
        self._expiry = asyncio.create_task(self._expire_regularly())
        return self.address

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._expiry is not None:
            self._expiry.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.journal is not None:
            self.journal.close()

    async def _expire_regularly(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL)
            self._execute(self.scheduler.expire())

    # --- connections -------------------------------------------------------

    async def _handle(self, websocket: ServerConnection) -> None:
        peer = await self._authenticate(websocket)
        if peer is None:
            return
        sender = asyncio.create_task(self._send_frames(peer))
        self._peers[peer.conn_id] = peer
        peer.outbox.put_nowait(
            p.encode(
                p.Welcome(
                    p.PROTOCOL_VERSION,
                    peer.conn_id,
                    workers=len(self.scheduler.workers),
                    slots=self.scheduler.total_slots,
                )
            )
        )
        try:
            if peer.role == "worker":
                log.info("worker %s connected from %s", peer.name, _where(websocket))
            self._execute(self._joined(peer))
            await self._read_frames(peer)
        finally:
            del self._peers[peer.conn_id]
            if peer.role == "worker":
                log.info("worker %s disconnected", peer.name)
                self._execute(self.scheduler.remove_worker(peer.conn_id))
            else:
                self._execute(self.scheduler.remove_client(peer.conn_id))
            peer.outbox.put_nowait(None)
            await sender

    async def _authenticate(self, websocket: ServerConnection) -> _Peer | None:
        """Read the Hello; return the peer, or refuse and close and return None."""
        try:
            frame = await asyncio.wait_for(websocket.recv(), AUTH_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("closed %s: no hello within %s s", _where(websocket), AUTH_TIMEOUT)
            await websocket.close(CLOSE_POLICY, f"authenticate within {AUTH_TIMEOUT:g} seconds")
            return None
        except ConnectionClosed:
            return None
        try:
            hello = p.decode(frame)
            if not isinstance(hello, p.Hello):
                raise ProtocolError(f"the first message must be hello, not {hello.TYPE}")
        except ProtocolError as exc:
            log.warning("refused %s: %s", _where(websocket), exc)
            await self._refuse(websocket, "protocol", str(exc), CLOSE_PROTOCOL_ERROR)
            return None
        if hello.protocol_version != p.PROTOCOL_VERSION:
            reason = (
                f"protocol version mismatch: the {hello.role} speaks version "
                f"{hello.protocol_version}, this foreman speaks version {p.PROTOCOL_VERSION}; "
                "install the same crowdcompute version on both sides"
            )
            log.warning("refused %s: %s", _where(websocket), reason)
            await self._refuse(websocket, "version", reason, CLOSE_PROTOCOL_ERROR)
            return None
        expected = self.token if hello.role == "client" else self.worker_token
        if not hmac.compare_digest(hello.token.encode(), expected.encode()):
            log.warning("refused %s %s: wrong or missing %s token", hello.role, _where(websocket), hello.role)
            await asyncio.sleep(AUTH_FAILURE_DELAY)
            await self._refuse(websocket, "auth", f"the foreman refused this {hello.role} token", CLOSE_POLICY)
            return None
        conn_id = f"{hello.role[0]}{next(self._ids)}"
        name = hello.name or conn_id
        return _Peer(conn_id, hello.role, name, websocket, hello.slots)

    async def _refuse(self, websocket: ServerConnection, code: str, reason: str, close_code: int) -> None:
        try:
            await websocket.send(p.encode(p.Refused(code, reason)))
            await websocket.close(close_code, reason[:120])
        except ConnectionClosed:
            pass

    def _joined(self, peer: _Peer) -> list[Action]:
        if peer.role == "worker":
            return self.scheduler.add_worker(peer.conn_id, peer.name, max(1, peer.slots))
        return self.scheduler.add_client(peer.conn_id)

    async def _read_frames(self, peer: _Peer) -> None:
        allowed = _CLIENT_MESSAGES if peer.role == "client" else _WORKER_MESSAGES
        try:
            async for frame in peer.websocket:
                try:
                    msg = p.decode(frame)
                except ProtocolError as exc:
                    code = CLOSE_UNSUPPORTED if isinstance(frame, str) else CLOSE_PROTOCOL_ERROR
                    self._drop_peer(peer, code, str(exc))
                    return
                if not isinstance(msg, allowed):
                    self._drop_peer(peer, CLOSE_POLICY, f"a {peer.role} may not send {msg.TYPE}")
                    return
                self._execute(self._dispatch(peer, msg))
        except ConnectionClosed:
            pass

    def _dispatch(self, peer: _Peer, msg: p.Message) -> list[Action]:
        s = self.scheduler
        if isinstance(msg, p.SubmitJob):
            return s.submit_job(peer.conn_id, msg)
        if isinstance(msg, p.SubmitTask):
            return s.submit_task(peer.conn_id, msg)
        if isinstance(msg, p.CancelJob):
            return s.cancel_job(peer.conn_id, msg.job_id)
        if isinstance(msg, p.StatusRequest):
            return [Send(peer.conn_id, p.StatusReply(s.status()))]
        if isinstance(msg, p.AttachJob):
            return s.attach_job(peer.conn_id, msg.job_id)
        if isinstance(msg, p.CollectJob):
            return s.collect_job(peer.conn_id, msg.job_id)
        if isinstance(msg, p.WorkerDraining):
            return s.worker_draining(peer.conn_id)
        if isinstance(msg, p.TaskDone):
            return s.task_done(peer.conn_id, msg)
        if isinstance(msg, p.TaskCrashed):
            return s.task_crashed(peer.conn_id, msg)
        if isinstance(msg, p.TaskOutput):
            return s.task_output(peer.conn_id, msg)
        raise AssertionError(f"unhandled message {msg.TYPE}")

    def _drop_peer(self, peer: _Peer, code: int, reason: str) -> None:
        log.warning("closed %s %s: %s", peer.role, peer.name, reason)
        peer.outbox.put_nowait(Close(peer.conn_id, code, reason[:120]))

    def _execute(self, actions: list[Action]) -> None:
        """Carry out the scheduler's actions in order; commit the journal once at the end."""
        for action in actions:
            if isinstance(action, (Send, Close, Replay)):
                peer = self._peers.get(action.to)
                if peer is None:
                    continue  # the connection went away; the scheduler learns it in its finally
                if isinstance(action, Send):
                    peer.outbox.put_nowait(p.encode(action.message))
                elif isinstance(action, Replay):
                    if self.journal is not None:
                        for frame in self.journal.outcome_frames(action.job_id):
                            peer.outbox.put_nowait(frame)
                else:
                    peer.outbox.put_nowait(action)
            elif self.journal is not None:
                self.journal.apply(action)
        if self.journal is not None:
            self.journal.commit()

    async def _send_frames(self, peer: _Peer) -> None:
        """Write the peer's queued frames in order; a slow peer delays only itself."""
        websocket = peer.websocket
        while True:
            item = await peer.outbox.get()
            if item is None:
                return
            try:
                if isinstance(item, Close):
                    await websocket.close(item.code, item.reason)
                else:
                    await websocket.send(item)
            except ConnectionClosed:
                pass  # the reader sees it too and cleans up


def _where(websocket: ServerConnection) -> str:
    address = websocket.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
