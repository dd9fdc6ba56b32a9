"""Jupyter server extension: the cluster's status page behind Jupyter's login, and a shared cluster.

Enabled by ``jupyter-config/jupyter_server_config.d/crowdcompute_jupyter.json``
(installed to ``etc/jupyter/jupyter_server_config.d/``). It serves the
foreman's status page under ``BASE_URL/crowdcompute/``: a person logged in to
Jupyter sees it; the foreman's token is added here, on the server side, and
never reaches the browser. With

    c.CrowdCompute.local_workers = 4      # in jupyter_server_config.py, or --CrowdCompute.local_workers=4

the server starts one local foreman and that many workers when it starts,
stops them when it stops, and exports ``CROWDCOMPUTE_ADDRESS`` and
``CROWDCOMPUTE_TOKEN`` to the kernels it starts, so ``%crowdconnect`` (or
``connect()``) with no address in any notebook uses that shared cluster.
Without it, the page shows the foreman named by ``c.CrowdCompute.address``
(default ``$CROWDCOMPUTE_ADDRESS``).

Every foreman of this user on this machine (a notebook's embedded cluster
included) writes a connection file; ``/crowdcompute/foremen/`` lists the
running ones and ``/crowdcompute/foreman/PORT/`` shows one of them. The
kernels learn that path from ``$CROWDCOMPUTE_DASHBOARD_URL``, so
``%crowdconnect`` and the client's notebook repr link to their own cluster's
page. With no foreman configured, ``/crowdcompute/`` lists them (or opens the
only one).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.application import ExtensionApp
from tornado import httpclient, web
from traitlets import Integer, Unicode

from crowdcompute.local import LocalCluster
from crowdcompute.wire.addresses import Address, live_connection_files, parse_address, read_connection_file
from crowdcompute.wire.constants import DASHBOARD_VARIABLE

from .foremen import foremen_page

__all__ = ["CrowdCompute", "ForemenHandler", "StatusProxyHandler"]

#: Seconds the shared cluster gets to start with the server.
CLUSTER_START_TIMEOUT = 60.0
#: Seconds a proxied request to the foreman may take.
PROXY_TIMEOUT = 10.0
#: Paths of the foreman's status page that the proxy passes on.
PROXIED_FILES = {"", "index.html", "api/status", "static/index.html", "static/status.css", "static/status.js"}
#: Headers of the foreman's answer that reach the browser.
PROXIED_HEADERS = (
    "Content-Type",
    "Cache-Control",
    "Content-Security-Policy",
    "X-Content-Type-Options",
    "Referrer-Policy",
)


class CrowdCompute(ExtensionApp):
    """CrowdCompute in Jupyter Server: ``/crowdcompute/`` and an optional shared local cluster."""

    name = "crowdcompute"
    load_other_extensions = True

    local_workers = Integer(
        0,
        config=True,
        help="Start a local foreman and this many workers with the server, shared by all its "
        "kernels (CROWDCOMPUTE_ADDRESS and CROWDCOMPUTE_TOKEN are set for them); 0 starts none.",
    )
    address = Unicode(
        "",
        config=True,
        help="Foreman whose status page /crowdcompute/ shows when no local cluster is started "
        "(default: $CROWDCOMPUTE_ADDRESS).",
    )
    token = Unicode(
        "",
        config=True,
        help="Client token of that foreman (default: $CROWDCOMPUTE_TOKEN, or the connection "
        "file of a foreman on this machine).",
    )
    cafile = Unicode("", config=True, help="CA bundle that signed a wss:// foreman's certificate.")

    def initialize_settings(self) -> None:
        self.cluster: LocalCluster | None = None
        self.problem = ""
        self._exported: dict[str, str] = {}
        self.target: tuple[Address, str] | None = None
        # Kernels link to the pages here (they inherit the server's environment).
        base_url = self.serverapp.base_url if self.serverapp else "/"
        self._exported = {DASHBOARD_VARIABLE: f"{base_url}crowdcompute/"}
        os.environ.update(self._exported)
        if self.local_workers > 0:
            self._start_cluster()
        else:
            self._find_foreman()

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [
                (r"/crowdcompute", web.RedirectHandler, {"url": "crowdcompute/"}),
                (r"/crowdcompute/foremen", web.RedirectHandler, {"url": "foremen/"}),
                (r"/crowdcompute/foremen/", ForemenHandler, {"extension": self}),
                (r"/crowdcompute/foreman/(\d+)", web.RedirectHandler, {"url": "{0}/"}),
                (r"/crowdcompute/foreman/(\d+)/(.*)", StatusProxyHandler, {"extension": self}),
                (r"/crowdcompute/(.*)", StatusProxyHandler, {"extension": self}),
            ]
        )

    async def stop_extension(self) -> None:
        """The server stops: so does the shared cluster."""
        for name, value in self._exported.items():
            if os.environ.get(name) == value:
                del os.environ[name]
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            self.log.info("CrowdCompute: stopping the shared cluster")
            await asyncio.get_running_loop().run_in_executor(None, cluster.stop)

    # --- the foreman -------------------------------------------------------------

    def _start_cluster(self) -> None:
        """Start the shared cluster now, before any kernel, and export its address for kernels."""
        cluster = LocalCluster(self.local_workers)
        outcome: dict[str, Any] = {}

        def start() -> None:  # its own thread and loop: the server's loop does not run yet
            try:
                outcome["address"] = asyncio.run(cluster.start(timeout=CLUSTER_START_TIMEOUT))
            except BaseException as exc:  # reported below, in the server's log
                outcome["error"] = exc

        thread = threading.Thread(target=start, name="crowdcompute-cluster-start", daemon=True)
        thread.start()
        thread.join(CLUSTER_START_TIMEOUT + 5)
        if "address" not in outcome:
            cluster.stop()
            error = outcome.get("error", f"no answer within {CLUSTER_START_TIMEOUT:g} s")
            self.problem = f"the shared CrowdCompute cluster did not start: {error}"
            self.log.error("CrowdCompute: %s", self.problem)
            return
        self.cluster = cluster
        address: Address = outcome["address"]
        token = cluster.token or ""  # LocalCluster made one
        self.target = (address, token)
        exported = {"CROWDCOMPUTE_ADDRESS": address.url, "CROWDCOMPUTE_TOKEN": token}
        previous = os.environ.get("CROWDCOMPUTE_ADDRESS")
        if previous and previous != address.url:
            self.log.warning("CrowdCompute: kernels get the shared cluster, not CROWDCOMPUTE_ADDRESS=%s", previous)
        self._exported.update(exported)
        os.environ.update(exported)  # kernels inherit the server's environment
        self.log.info(
            "CrowdCompute: shared cluster of %d worker%s at %s; status page at %scrowdcompute/",
            self.local_workers,
            "" if self.local_workers == 1 else "s",
            address.url,
            self.serverapp.base_url if self.serverapp else "/",
        )

    def _find_foreman(self) -> None:
        url = self.address or os.environ.get("CROWDCOMPUTE_ADDRESS", "")
        if not url:
            self.problem = (
                "no CrowdCompute foreman is configured for this Jupyter server. Start one with it "
                "(c.CrowdCompute.local_workers = 4 in jupyter_server_config.py, or "
                "--CrowdCompute.local_workers=4), or name one (c.CrowdCompute.address, or "
                "CROWDCOMPUTE_ADDRESS and CROWDCOMPUTE_TOKEN in the server's environment)."
            )
            return
        try:
            address = parse_address(url)
        except ValueError as exc:
            self.problem = f"c.CrowdCompute.address: {exc}"
            return
        token = self.token or os.environ.get("CROWDCOMPUTE_TOKEN", "")
        if not token and address.loopback:
            found = read_connection_file(address.port)
            token = found["token"] if found else ""
        self.target = (address, token)

    def foremen(self) -> list[dict]:
        """The running foremen of this user on this machine, from their connection files."""
        return live_connection_files()

    def local_target(self, port: int) -> tuple[Address, str] | None:
        """The foreman on loopback ``port`` and its token, if it is one of this user's (or the configured one)."""
        for found in self.foremen():
            if found["port"] == port:
                try:
                    return parse_address(found.get("url") or f"ws://127.0.0.1:{port}"), found["token"]
                except ValueError:
                    return None
        if self.target is not None and self.target[0].loopback and self.target[0].port == port:
            return self.target
        return None


def http_url(address: Address, path: str) -> str:
    """The foreman's HTTP URL for ``path`` (it serves HTTP on its websocket port)."""
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{'https' if address.secure else 'http'}://{host}:{address.port}/{path}"


class ForemenHandler(JupyterHandler):
    """``/crowdcompute/foremen/``: this user's foremen on this machine, each a link to its page."""

    auth_resource = "crowdcompute"

    def initialize(self, extension: CrowdCompute) -> None:
        self.extension = extension

    @web.authenticated
    @authorized
    async def get(self) -> None:
        extension = self.extension
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        configured = extension.target[0].url if extension.target else None
        self.finish(foremen_page(extension.foremen(), configured, extension.problem, prefix="../"))


class StatusProxyHandler(JupyterHandler):
    """``/crowdcompute/PATH``: the foreman's status page, for logged-in users only."""

    auth_resource = "crowdcompute"

    def initialize(self, extension: CrowdCompute) -> None:
        self.extension = extension

    @web.authenticated
    @authorized
    async def get(self, *parts: str) -> None:
        extension = self.extension
        path = parts[-1]
        if path not in PROXIED_FILES:
            raise web.HTTPError(404)
        if len(parts) == 2:  # /crowdcompute/foreman/PORT/PATH
            target = extension.local_target(int(parts[0]))
            if target is None:
                self._answer(404, f"CrowdCompute: no foreman of yours runs on port {parts[0]} of this machine.\n")
                return
        else:
            target = extension.target
        if target is None:
            if path in ("", "index.html"):
                foremen = extension.foremen()
                if len(foremen) == 1:  # the notebook's own cluster, most likely: open it
                    self.redirect(f"foreman/{foremen[0]['port']}/")
                    return
                self.set_header("Content-Type", "text/html; charset=utf-8")
                self.set_header("Cache-Control", "no-store")
                self.finish(foremen_page(foremen, None, extension.problem, prefix=""))
                return
            self._answer(503, f"CrowdCompute: {extension.problem}\n")
            return
        address, token = target
        context = None
        if address.secure:
            context = ssl.create_default_context(cafile=extension.cafile or None)
        request = httpclient.HTTPRequest(
            http_url(address, path),
            headers={"Authorization": f"Bearer {token}"},
            request_timeout=PROXY_TIMEOUT,
            follow_redirects=False,
            ssl_options=context,
        )
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError as exc:
            self._answer(502, f"CrowdCompute: the foreman at {address.url} does not answer: {exc}\n")
            return
        if response.code == 599:  # tornado's code for no HTTP answer (refused, timeout)
            self._answer(502, f"CrowdCompute: the foreman at {address.url} does not answer: {response.error}\n")
            return
        self.set_status(response.code)
        for name in PROXIED_HEADERS:
            if name in response.headers:
                self.set_header(name, response.headers[name])
        self.finish(response.body)

    def _answer(self, status: int, text: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(text)
