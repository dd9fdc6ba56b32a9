"""Opening an authenticated connection to a foreman, for clients and workers alike.

This is the one seam where websockets, OS and TLS errors become CrowdCompute
errors: ForemanUnavailableError, AuthenticationError or ProtocolError.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus, InvalidURI

from .errors import AuthenticationError, CrowdComputeError, ForemanUnavailableError, ProtocolError
from .wire import messages as p
from .wire.addresses import Address
from .wire.constants import CLOSE_TIMEOUT, Role

__all__ = ["MAX_FRAME_SIZE", "RETRY_NOTICE_INTERVAL", "Backoff", "RetryNotices", "client_ssl_context", "dial"]

#: Largest frame a client or worker accepts from the foreman, in bytes.
MAX_FRAME_SIZE = 512 * 1024 * 1024
#: Seconds between repeats of an unchanged "cannot reach the foreman" message while retrying.
RETRY_NOTICE_INTERVAL = 30.0


class Backoff:
    """Pauses between attempts to reach a foreman: doubling up to ``largest``, with jitter
    (each pause is 50-100% of the current delay) so that many peers do not redial in step."""

    def __init__(self, first: float, largest: float) -> None:
        self.first = first
        self.largest = largest
        self._delay = first

    def next(self) -> float:
        """The pause before the next attempt."""
        pause = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, self.largest)
        return pause

    def reset(self) -> None:
        """An attempt succeeded: the next failure starts again from ``first``."""
        self._delay = self.first


class RetryNotices:
    """Say why the foreman cannot be reached: at once, then again when the reason
    changes or every ``interval`` seconds while it stays the same."""

    def __init__(
        self, say: Callable[[str], None], interval: float = RETRY_NOTICE_INTERVAL, clock=time.monotonic
    ) -> None:
        self.say = say
        self.interval = interval
        self.clock = clock
        self._text: str | None = None  # the reason said last
        self._said_at = 0.0
        self.repeated = 0  # attempts that failed for that reason since it was said

    def failed(self, text: str) -> None:
        """An attempt failed, for the reason ``text``."""
        now = self.clock()
        if text == self._text and now - self._said_at < self.interval:
            self.repeated += 1
            return
        again = text == self._text
        self.say(f"{text} (and {self.repeated} more attempts since the last message)" if again else text)
        self._text, self._said_at, self.repeated = text, now, 0

    def reset(self) -> None:
        """Connected: the next failure is said at once."""
        self._text = None
        self.repeated = 0


def client_ssl_context(cafile: str | None = None) -> ssl.SSLContext:
    """Verify the foreman against the system trust store (or ``cafile``).

    ``SSL_CERT_FILE`` is honoured through the default verify paths. Raises
    FileNotFoundError (or the OSError that reading it raised) naming a
    ``cafile`` that cannot be read and saying what it is for.
    """
    try:
        return ssl.create_default_context(cafile=cafile)
    except ssl.SSLError:
        raise
    except OSError as exc:  # ssl's own error names no file: "[Errno 2] No such file or directory"
        if cafile is None or exc.filename is not None:
            raise
        raise type(exc)(
            exc.errno,
            f"cannot read the cafile ({exc.strerror}): cafile= (--cafile for a worker) is the CA certificate, "
            "a PEM file, that signed the foreman's TLS certificate",
            cafile,
        ) from None


async def dial(
    address: Address,
    hello: p.Hello,
    *,
    timeout: float = 10.0,
    cafile: str | None = None,
    ping_interval: float | None = 20.0,
    refused: str | None = None,
) -> tuple[ClientConnection, p.Welcome]:
    """Connect, send ``hello`` and return the connection with the foreman's Welcome.

    Raises ForemanUnavailableError (nothing answers, TLS fails, timeout),
    AuthenticationError (token refused: with the text ``refused`` when given, which
    says where the token came from) or CrowdComputeError (refused otherwise).
    """
    # A cafile is read even for ws://: one that cannot be is a mistake to say now, not a TLS failure later.
    ssl_context = client_ssl_context(cafile) if address.secure or cafile else None

    async def open_and_greet() -> tuple[ClientConnection, p.Message]:
        websocket = await connect(
            address.url,
            ssl=ssl_context if address.secure else None,
            compression=None,  # payloads are pickles: compression costs CPU and buys little
            max_size=MAX_FRAME_SIZE,
            open_timeout=None,  # the whole exchange is bounded by ``timeout`` below
            ping_interval=ping_interval,
            ping_timeout=ping_interval,
            close_timeout=CLOSE_TIMEOUT,  # a foreman that answered no ping is gone: do not wait 10 s on it
            proxy=None if address.loopback else True,
        )
        try:
            await websocket.send(p.encode(hello))
            return websocket, p.decode(await websocket.recv())
        except BaseException:
            await websocket.close()
            raise

    try:
        websocket, reply = await asyncio.wait_for(open_and_greet(), timeout)
    except asyncio.TimeoutError as exc:
        hint = (
            "The host may be down, or a firewall may drop the traffic: check the address and that "
            "the foreman's port is open, or raise the timeout on a slow network."
        )
        raise ForemanUnavailableError(address.url, f"no answer within {timeout:g} s", hint) from exc
    except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
        raise ForemanUnavailableError(address.url, *_explain(exc, address, cafile)) from exc
    if isinstance(reply, p.Refused):
        await websocket.close()
        if reply.code == "revoked":  # a volunteer's credential, revoked or expired: retrying cannot help
            raise AuthenticationError(f"{reply.reason} (foreman {address.url})")
        if reply.code == "auth":
            if refused is not None:
                raise AuthenticationError(refused)
            if hello.role == Role.WORKER:
                what = "pass the foreman's worker token with --token (or $CROWDCOMPUTE_WORKER_TOKEN)"
            else:
                what = "pass the foreman's client token (token= / --token, or $CROWDCOMPUTE_TOKEN)"
            raise AuthenticationError(f"{reply.reason} at {address.url}: {what}")
        raise CrowdComputeError(f"the foreman at {address.url} refused the connection: {reply.reason}")
    if not isinstance(reply, p.Welcome):
        await websocket.close()
        raise ProtocolError(f"expected welcome from the foreman, got {reply.TYPE}")
    return websocket, reply


def _explain(exc: BaseException, address: Address, cafile: str | None) -> tuple[str, str]:
    """Why a connection attempt failed and what to do about it: (reason, hint)."""
    where = f"{address.host}:{address.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = f"cannot verify the foreman's TLS certificate ({exc.verify_message or exc.reason})"
        if "mismatch" in str(exc.verify_message or ""):
            return reason, f"Connect with a host name the certificate was issued for, not {address.host!r}."
        if cafile:
            return reason, f"The CA in {cafile} did not sign it: pass the CA certificate that did."
        return reason, (
            "Pass the CA certificate that signed it: --cafile FILE for a worker, cafile= in connect() "
            "(or add it to the system's trust store, or point $SSL_CERT_FILE at it)."
        )
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed ({exc.reason or exc})", (
            "If the foreman printed a ws:// address it serves no TLS: use ws://." if address.secure else ""
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens on {where} (connection refused)", ""
    if isinstance(exc, socket.gaierror):
        return f"cannot find the host {address.host!r} ({exc.strerror})", "Check the host name in the address."
    if isinstance(exc, ConnectionResetError) and address.secure:
        return f"{where} reset the connection during the TLS handshake", (
            "If the foreman printed a ws:// address it serves no TLS: use ws:// instead of wss://."
        )
    if isinstance(exc, InvalidMessage) and not address.secure:
        # A foreman serving TLS and one restarting (it closed the connection before answering)
        # look alike from here: say both.
        return f"{where} answered no websocket handshake (a foreman restarting, or one serving TLS)", (
            "If the foreman printed a wss:// address, use wss:// (with --cafile / cafile= for a private CA)."
        )
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return f"{where} answered HTTP {status}, not a websocket handshake", (
            "Is this the foreman's address and port (the one it printed)?"
        )
    if isinstance(exc, ConnectionClosed):
        return f"the foreman closed the connection ({exc})", ""
    return str(exc) or type(exc).__name__, ""
