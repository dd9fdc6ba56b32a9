"""The first message on a connection: read the Hello within its limits, check version and token, or refuse."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Iterator

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from crowdcompute.errors import ProtocolError
from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import AUTH_FAILURE_DELAY, CloseCode, Role
from crowdcompute.wire.runtime import runtime_mismatch

from .credentials import CredentialRefused
from .peer import Peer, where
from .scheduler import Scheduler

__all__ = ["AUTH_TIMEOUT", "MAX_HELLO_SIZE", "MAX_NAME_LENGTH", "authenticate", "clean_name"]

log = logging.getLogger("crowdcompute.foreman")

#: Seconds a new connection has to send its Hello.
AUTH_TIMEOUT = 10.0
#: Largest first frame (the Hello) the foreman reads from a connection, in bytes.
MAX_HELLO_SIZE = 64 * 1024
#: Longest worker or client name (``--name``) the foreman keeps, in characters; longer ones are cut.
MAX_NAME_LENGTH = 64


async def authenticate(
    websocket: ServerConnection, *, token: str, worker_token: str, scheduler: Scheduler, ids: Iterator[int]
) -> Peer | None:
    """Read the Hello; return the peer, or refuse and close and return None.

    ``token`` and ``worker_token`` are the shared tokens; a worker may also
    present a volunteer's credential, which ``scheduler.volunteers`` checks.
    """
    try:
        frame = await asyncio.wait_for(_read_hello(websocket), AUTH_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("closed %s: no hello within %s s", where(websocket), AUTH_TIMEOUT)
        await websocket.close(CloseCode.POLICY, f"authenticate within {AUTH_TIMEOUT:g} seconds")
        return None
    except ConnectionClosed:
        return None
    if frame is None:
        # Read fragment by fragment: an unauthenticated peer never makes the foreman hold more.
        reason = f"the first frame (hello) may be at most {MAX_HELLO_SIZE} bytes"
        log.warning("refused %s: %s", where(websocket), reason)
        await websocket.close(CloseCode.TOO_BIG, reason)
        return None
    try:
        hello = p.decode(frame)
        if not isinstance(hello, p.Hello):
            raise ProtocolError(f"the first message must be hello, not {hello.TYPE}")
    except ProtocolError as exc:
        log.warning("refused %s: %s", where(websocket), exc)
        await _refuse(websocket, "protocol", str(exc), CloseCode.PROTOCOL_ERROR)
        return None
    if hello.protocol_version != p.PROTOCOL_VERSION:
        reason = (
            f"protocol version mismatch: the {hello.role} speaks version "
            f"{hello.protocol_version}, this foreman speaks version {p.PROTOCOL_VERSION}; "
            "install the same crowdcompute version on both sides"
        )
        log.warning("refused %s: %s", where(websocket), reason)
        await _refuse(websocket, "version", reason, CloseCode.PROTOCOL_ERROR)
        return None
    expected = token if hello.role == Role.CLIENT else worker_token
    volunteer = None
    if not hmac.compare_digest(hello.token.encode(), expected.encode()):
        try:
            if hello.role != Role.WORKER:
                raise CredentialRefused("wrong or missing client token")
            volunteer = scheduler.volunteers.authenticate(hello.token, scheduler.clock())
        except CredentialRefused as refused:
            # Never the token itself: the log names the volunteer only when the credential was once valid.
            log.warning("refused %s %s: %s", hello.role, where(websocket), refused.reason)
            await asyncio.sleep(AUTH_FAILURE_DELAY)
            if refused.name is not None:
                await _refuse(websocket, "revoked", refused.reason, CloseCode.POLICY)
            else:
                reason = f"the foreman refused this {hello.role} token"
                await _refuse(websocket, "auth", reason, CloseCode.POLICY)
            return None
    conn_id = f"{hello.role[0]}{next(ids)}"
    name = clean_name(hello.name) or conn_id
    renamed = ""
    if hello.name and name != hello.name:
        # Kept, not refused: a volunteer's odd --name should not lock them out. The repr is
        # safe to log, whatever the name held; the peer hears the name it goes by.
        renamed = f"the foreman knows it as {name} (names are up to {MAX_NAME_LENGTH} printable characters)"
        given = repr(hello.name[:MAX_NAME_LENGTH]) + ("..." if len(hello.name) > MAX_NAME_LENGTH else "")
        log.warning("%s %s from %s gave the name %s: %s", hello.role, name, where(websocket), given, renamed)
    # Another Python or cloudpickle: cloudpickle jobs cannot cross, portable ones can.
    mismatch = runtime_mismatch(hello.role, hello.python, hello.cloudpickle)
    if mismatch is not None:
        log.warning("%s %s gets portable jobs only: %s", hello.role, name, mismatch)
    return Peer(
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
        renamed=renamed,
    )


def clean_name(name: str) -> str:
    """``name`` as the foreman shows and logs it: printable characters only, at most MAX_NAME_LENGTH.

    Control and other unprintable characters (terminal escapes, bidi overrides,
    line breaks) become ``?``, so that a name can neither move an operator's
    cursor nor forge log lines; surrounding blanks go. Markup characters such as
    ``[`` stay: whoever renders a name escapes them.
    """
    printable = "".join(c if c.isprintable() else "?" for c in name.strip())
    return printable[:MAX_NAME_LENGTH]


async def _refuse(websocket: ServerConnection, code: str, reason: str, close_code: int) -> None:
    try:
        await websocket.send(p.encode(p.Refused(code, reason)))
        await websocket.close(close_code, reason[:120])
    except ConnectionClosed:
        pass


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
