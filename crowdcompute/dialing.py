"""Opening an authenticated connection to a foreman, for clients and workers alike.

This is the one seam where websockets, OS and TLS errors become CrowdCompute
errors: ForemanUnavailableError, AuthenticationError or ProtocolError.
"""

from __future__ import annotations

import asyncio
import random
import ssl

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .errors import AuthenticationError, CrowdComputeError, ForemanUnavailableError, ProtocolError
from .wire import messages as p
from .wire.addresses import Address
from .wire.constants import CLOSE_TIMEOUT

__all__ = ["MAX_FRAME_SIZE", "Backoff", "client_ssl_context", "dial"]

#: Largest frame a client or worker accepts from the foreman, in bytes.
MAX_FRAME_SIZE = 512 * 1024 * 1024


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


def client_ssl_context(cafile: str | None = None) -> ssl.SSLContext:
    """Verify the foreman against the system trust store (or ``cafile``).

    ``SSL_CERT_FILE`` is honoured through the default verify paths.
    """
    return ssl.create_default_context(cafile=cafile)


async def dial(
    address: Address,
    hello: p.Hello,
    *,
    timeout: float = 10.0,
    cafile: str | None = None,
    ping_interval: float | None = 20.0,
) -> tuple[ClientConnection, p.Welcome]:
    """Connect, send ``hello`` and return the connection with the foreman's Welcome.

    Raises ForemanUnavailableError (nothing answers, TLS fails, timeout),
    AuthenticationError (token refused) or CrowdComputeError (refused otherwise).
    """
    ssl_context = client_ssl_context(cafile) if address.secure else None

    async def open_and_greet() -> tuple[ClientConnection, p.Message]:
        websocket = await connect(
            address.url,
            ssl=ssl_context,
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
        raise ForemanUnavailableError(address.url, f"no answer within {timeout:g} s") from exc
    except ssl.SSLError as exc:
        raise ForemanUnavailableError(address.url, f"TLS handshake failed: {exc.reason or exc}") from exc
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        raise ForemanUnavailableError(address.url, str(exc) or type(exc).__name__) from exc
    except ConnectionClosed as exc:
        raise ForemanUnavailableError(address.url, f"the foreman closed the connection ({exc})") from exc
    if isinstance(reply, p.Refused):
        await websocket.close()
        if reply.code == "auth":
            raise AuthenticationError(
                f"{reply.reason} at {address.url}: pass the foreman's token (token= / --token, or $CROWDCOMPUTE_TOKEN)"
            )
        raise CrowdComputeError(f"the foreman at {address.url} refused the connection: {reply.reason}")
    if not isinstance(reply, p.Welcome):
        await websocket.close()
        raise ProtocolError(f"expected welcome from the foreman, got {reply.TYPE}")
    return websocket, reply
