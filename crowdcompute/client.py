"""The async client: connect to a foreman, submit jobs, collect their results."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .admin import AdminRequests
from .dashboard import client_html, dashboard_url
from .errors import ConnectionLostError, CrowdComputeError
from .feed import Feed
from .frames import FrameHandling
from .job import Job
from .link import Link
from .local import LocalCluster
from .options import JobOptions, chunk_size, parse_requirements
from .progress import choose_renderer, log_waiting, show_progress
from .tokens import choose_client_token
from .tracking import JobTracking
from .wire import messages as p
from .wire.addresses import Address, parse_address
from .wire.constants import ADDRESS_VARIABLE, Role
from .wire.runtime import runtime_fields

__all__ = ["CrowdComputeClient", "chunk_size"]

log = logging.getLogger("crowdcompute.client")


class CrowdComputeClient(AdminRequests, FrameHandling, JobTracking):
    """A connection to a foreman; an async context manager.

    With no ``host`` it uses ``$CROWDCOMPUTE_ADDRESS`` (and
    ``$CROWDCOMPUTE_TOKEN``) if set, else it starts an embedded foreman with
    ``workers`` worker processes that :meth:`disconnect` stops. A dropped
    connection is redialed for ``reconnect_timeout`` seconds and its jobs go
    on; after that they raise ConnectionLostError. With
    ``trust_workers=False`` results are decoded as plain data only (builtin
    containers and scalars, numpy arrays); anything else raises
    UntrustedPayloadError, and remote exceptions stay TaskErrors with text.
    By default (None) that happens only to results that untrusted volunteers
    returned; ``trust_workers=True`` unpickles those too.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        token: str | None = None,
        workers: int | None = None,
        timeout: float = 10,
        reconnect_timeout: float = 60,
        task_timeout: float | None = None,
        cafile: str | None = None,
        trust_workers: bool | None = None,
        serializer: str = "cloudpickle",
        requirements: Sequence[str] | str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.workers = workers
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.task_timeout = task_timeout
        self.cafile = cafile
        self.trust_workers = trust_workers
        self.serializer = serializer  # the default of map and submit
        self.requirements = parse_requirements(requirements)  # the default of map, submit and run
        self.address: Address | None = None
        self.slots = 0  # task slots on the foreman when we connected
        self.cluster: LocalCluster | None = None
        self._link: Link | None = None
        self._jobs: dict[str, Job] = {}
        self._feeds: dict[str, Feed] = {}  # jobs whose tasks we send
        self._accepting: dict[str, asyncio.Future] = {}
        self._attaching: dict[str, asyncio.Future] = {}
        self._status_waiters: deque[asyncio.Future] = deque()
        self._admin_waiters: deque[asyncio.Future] = deque()  # answers come in the order of the requests

    @property
    def connected(self) -> bool:
        """Connected, or reconnecting within the budget."""
        return self._link is not None and self._link.usable

    async def __aenter__(self) -> CrowdComputeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    # --- connection --------------------------------------------------------

    async def connect(self) -> CrowdComputeClient:
        """Connect (starting an embedded cluster when no foreman is named).

        Raises ForemanUnavailableError, AuthenticationError.
        """
        host, token = self.host, self.token
        if host is None and os.environ.get(ADDRESS_VARIABLE):
            host = os.environ[ADDRESS_VARIABLE]  # its $CROWDCOMPUTE_TOKEN is chosen below
        if host is None and self.port is None:
            self.cluster = LocalCluster(workers=self.workers or os.cpu_count() or 1)
            try:
                self.address = await self.cluster.start(timeout=max(self.timeout, 30))
            except BaseException:
                self.cluster.stop()
                raise
            token = self.cluster.token
        else:
            self.address = parse_address(host, self.port)
        chosen = choose_client_token(self.address, token)
        hello = p.Hello(
            Role.CLIENT, chosen.value or "", p.PROTOCOL_VERSION, name=f"client-{os.getpid()}", **runtime_fields()
        )
        self._link = Link(
            self.address,
            hello,
            timeout=self.timeout,
            reconnect_timeout=self.reconnect_timeout,
            cafile=self.cafile,
            on_message=self._dispatch,
            on_reconnect=self._reattach,
            on_drop=self._dropped,
            on_lost=self._connection_lost,
            busy=lambda: bool(self._jobs),
            refused=chosen.refused(self.address.url),
        )
        try:
            welcome = await self._link.open()
        except BaseException:
            if self.cluster is not None:
                self.cluster.stop()
            raise
        self.slots = welcome.slots
        return self

    async def disconnect(self) -> None:
        """Close the connection and stop an embedded cluster; idempotent.

        Jobs still running go on on the foreman; ``attach`` collects them later, from a new
        connection. Waiting on one of them here raises ConnectionLostError, which says so
        (an embedded cluster's jobs end with it).
        """
        if self._link is not None:
            await self._link.close()
        self._end_followed_jobs(embedded=self.cluster is not None)
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            await asyncio.get_running_loop().run_in_executor(None, cluster.stop)

    # --- work ----------------------------------------------------------------

    async def submit(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        trust_workers: bool | None = None,
        redundancy: int = 1,
        serializer: str | None = None,
        quorum: int | None = None,
        quorum_timeout: float | None = None,
        requirements: Sequence[str] | str | None = None,
        modules: Sequence[Any] = (),
        resources: Mapping[str, float | str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Job:
        """Send a job; return its Job once the foreman has accepted (and journaled) it.

        The options are those of :meth:`map`. Raises SerializationError
        (before sending anything) when the function or an item cannot be
        serialized.
        """
        options = JobOptions(
            chunksize,
            timeout,
            retries,
            trust_workers,
            redundancy,
            serializer,
            quorum,
            quorum_timeout,
            requirements,
            modules,
            resources,
            labels,
        )
        return await self._submit(func, iterable, options)

    async def map(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: Any = None,
        trust_workers: bool | None = None,
        redundancy: int = 1,
        serializer: str | None = None,
        quorum: int | None = None,
        quorum_timeout: float | None = None,
        requirements: Sequence[str] | str | None = None,
        modules: Sequence[Any] = (),
        resources: Mapping[str, float | str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[Any]:
        """``func`` applied to every item, as a list in input order.

        ``timeout`` limits each task (each item when ``chunksize`` is left
        automatic: a timeout makes every item its own task). ``retries``: how
        often a task whose function raised runs again. ``redundancy=k`` runs
        each task on k distinct workers and accepts an outcome as soon as
        ``quorum`` runs returned it (default: a strict majority of k;
        ``quorum=k``: all must agree); without agreement after two rounds, or
        ``quorum_timeout`` seconds after the task's first outcome, its items
        fail with QuorumError. Workers that keep disagreeing are quarantined.
        ``trust_workers``: None (default) unpickles results from trusted
        workers only, and decodes those only untrusted volunteers returned
        as plain data; True unpickles every result; False none. ``serializer="portable"`` sends the function as
        source and data as JSON, so workers of any Python version can run it.
        ``progress``: None picks a widget in Jupyter, a rich bar on a
        terminal, nothing otherwise; True or "rich" forces the bar; False hides it.

        What the job needs: ``requirements=["numpy>=2"]`` (workers run it in
        an environment with these packages, built with uv and cached;
        default: the client's ``requirements``), ``modules=[helpers]`` (the
        user's own modules travel with it), ``resources={"gpu": 1}`` (each
        task runs only where that much is free), ``labels={"site": "lab1"}``
        (only on workers with these labels).
        Raises TaskError (the first failed item), SerializationError,
        EnvironmentBuildError, JobCancelledError, ConnectionLostError.
        """
        options = JobOptions(
            chunksize,
            timeout,
            retries,
            trust_workers,
            redundancy,
            serializer,
            quorum,
            quorum_timeout,
            requirements,
            modules,
            resources,
            labels,
        )
        choose_renderer(progress)  # a bad value fails here, before anything is sent
        # No need to wait for the foreman's acceptance: a refusal fails the job, and we wait on it anyway.
        job = await self._submit(func, iterable, options, wait_accepted=False)
        display = show_progress(job, progress)
        try:
            return await job
        except (asyncio.CancelledError, KeyboardInterrupt):
            job.cancel()
            raise
        finally:
            if display is not None:
                display.close()

    async def run(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        requirements: Sequence[str] | str | None = None,
        modules: Sequence[Any] = (),
        resources: Mapping[str, float | str] | None = None,
        labels: Mapping[str, str] | None = None,
        redundancy: int = 1,
        quorum: int | None = None,
        quorum_timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """``func(*args, **kwargs)`` on one worker; its result. Raises TaskError if it raised.

        ``requirements``, ``modules``, ``resources``, ``labels``, ``redundancy``,
        ``quorum`` and ``quorum_timeout`` are what the call needs, as for
        :meth:`map` (CONTRACT's "What a job needs"); every other keyword goes to ``func``.
        """
        options = JobOptions(
            chunksize=1,
            timeout=self.task_timeout,
            redundancy=redundancy,
            quorum=quorum,
            quorum_timeout=quorum_timeout,
            requirements=requirements,
            modules=modules,
            resources=resources,
            labels=labels,
        )
        job = await self._submit(func, [(args, kwargs)], options, call=True, wait_accepted=False)
        log_waiting(job)  # a call that no connected worker can take says so
        try:
            (result,) = await job
        except (asyncio.CancelledError, KeyboardInterrupt):
            job.cancel()
            raise
        return result

    @property
    def dashboard_link(self) -> str | None:
        """The foreman's status page: under Jupyter's ``/crowdcompute/`` in a kernel whose server has it."""
        return dashboard_url(self.address) if self.address is not None else None

    def _repr_html_(self) -> str:
        """In a notebook: the foreman, its workers and slots, and a link to its status page."""
        if self.address is None:
            return "<b>CrowdCompute</b> client, not connected"
        welcome = self._link.welcome if self._link is not None else None
        workers = self.cluster.workers if self.cluster else (welcome.workers if welcome else 0)
        slots = max(self.slots, self.cluster.slots if self.cluster else 0)
        return client_html(
            self.address.url, self.dashboard_link or "", workers, slots, self.cluster is not None, self.connected
        )

    @property
    def url(self) -> str:
        """The foreman's URL; CrowdComputeError before ``connect``."""
        if self.address is None:
            raise CrowdComputeError("not connected: call connect() first")
        return self.address.url

    @property
    def _open_link(self) -> Link:
        """The connection to the foreman; CrowdComputeError before ``connect``."""
        if self._link is None:
            raise CrowdComputeError("not connected: call connect() first")
        return self._link

    @property
    def _welcome(self) -> p.Welcome:
        """The foreman's Welcome (its limits), which every open link has."""
        welcome = self._open_link.welcome
        if welcome is None:
            raise ConnectionLostError("the connection to the foreman is not open")
        return welcome

    def _require_connection(self) -> None:
        if not self.connected:
            raise CrowdComputeError("not connected: call `await crowdcompute.connect()` first")
