"""Where a person sees a foreman's status page, and the client's summary in a notebook.

Inside a kernel started by a Jupyter server with the CrowdCompute extension,
the page is served by that server behind its login: the extension tells its
kernels the path (``$CROWDCOMPUTE_DASHBOARD_URL``, e.g. ``/crowdcompute/``),
and a foreman on this machine is at ``PATH/foreman/PORT/``. Elsewhere the
link is the foreman's own page, which asks for the token once.
"""

from __future__ import annotations

import html
import os

from .wire.addresses import Address, parse_address
from .wire.constants import ADDRESS_VARIABLE, DASHBOARD_VARIABLE

__all__ = ["client_html", "dashboard_url"]


def dashboard_url(address: Address) -> str:
    """The status page of the foreman at ``address``, as a link a person can open."""
    base = os.environ.get(DASHBOARD_VARIABLE, "")
    if base:
        base = base if base.endswith("/") else base + "/"
        if address.loopback:
            return f"{base}foreman/{address.port}/"
        configured = os.environ.get(ADDRESS_VARIABLE, "")
        try:
            if configured and parse_address(configured) == address:
                return base  # the foreman the server's extension shows by default
        except ValueError:
            pass
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{'https' if address.secure else 'http'}://{host}:{address.port}/"


def client_html(url: str, link: str, workers: int, slots: int, embedded: bool, connected: bool) -> str:
    """A small card like dask's Client: the foreman, workers, slots and the status page link."""
    kind = "embedded cluster" if embedded else "foreman"
    state = "" if connected else " (disconnected)"
    plural = "" if workers == 1 else "s"
    return (
        '<div class="crowdcompute-client">'
        f"<b>CrowdCompute</b> {kind} <code>{html.escape(url)}</code>{state}: "
        f"{workers} worker{plural}, {slots} slot{'' if slots == 1 else 's'}"
        f' · status page: <a href="{html.escape(link, quote=True)}" target="_blank" rel="noopener">'
        f"{html.escape(link)}</a></div>"
    )
