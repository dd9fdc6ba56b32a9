"""The async client: connect to a foreman, submit jobs, collect their results."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import deque
from typing import Any, Callable, Iterable

from websockets.exceptions import ConnectionClosed

from . import protocol as p
from .addresses import Address, parse_address, read_connection_file
from .dialing import dial
from .errors import ConnectionLostError, CrowdComputeError, ProtocolError
from .job import Job
from .local import LocalCluster
from .progress import show_progress
from .serialization import Apply, dumps_function, dumps_items

__all__ = ["CrowdComputeClient", "chunk_size"]

log = logging.getLogger("crowdcompute.client")

#: Chunks per slot when ``chunksize`` is automatic, as in multiprocessing.Pool.
CHUNKS_PER_SLOT = 4


def chunk_size(items: int, slots: int) -> int:
    """Items per task: about CHUNKS_PER_SLOT tasks per slot, at least one item."""
    size, extra = divmod(items, max(1, slots) * CHUNKS_PER_SLOT)
    return max(1, size + (1 if extra else 0))


class CrowdComputeClient:
    """A connection to a foreman; an async context manager.

    With no ``host`` it uses ``$CROWDCOMPUTE_ADDRESS`` (and
    ``$CROWDCOMPUTE_TOKEN``) if set, else it starts an embedded foreman with
    ``workers`` worker processes that :meth:`disconnect` stops.
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
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.workers = workers
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.task_timeout = task_timeout
        self.cafile = cafile
        self.address: Address | None = None
        self.slots = 0  # task slots on the foreman when we connected
        self.cluster: LocalCluster | None = None
        self._websocket = None
        self._reader: asyncio.Task | None = None
        self._sender: asyncio.Task | None = None
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._jobs: dict[str, Job] = {}
        self._accepting: dict[str, asyncio.Future] = {}
        self._status_waiters: deque[asyncio.Future] = deque()
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._websocket is not None and not self._closing

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
        if host is None and os.environ.get("CROWDCOMPUTE_ADDRESS"):
            host = os.environ["CROWDCOMPUTE_ADDRESS"]
            token = token or os.environ.get("CROWDCOMPUTE_TOKEN")
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
        if token is None and self.address.loopback:
            found = read_connection_file(self.address.port)
            token = found["token"] if found else None
        hello = p.Hello("client", token or "", p.PROTOCOL_VERSION, name=f"client-{os.getpid()}")
        try:
            self._websocket, welcome = await dial(self.address, hello, timeout=self.timeout, cafile=self.cafile)
        except BaseException:
            if self.cluster is not None:
                self.cluster.stop()
            raise
        self.slots = welcome.slots
        self._closing = False
        self._outbox = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_frames())
        self._sender = asyncio.create_task(self._send_frames())
        return self

    async def disconnect(self) -> None:
        """Close the connection and stop an embedded cluster; idempotent."""
        if self._websocket is not None and not self._closing:
            self._closing = True
            self._outbox.put_nowait(None)  # flush queued frames (a cancel, say) first
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), self.timeout)
            except (asyncio.TimeoutError, Exception):
                pass
            await self._websocket.close()
            if self._reader is not None:
                await asyncio.gather(self._reader, return_exceptions=True)
        self._websocket = None
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
    ) -> Job:
        """Send a job; return its Job once the foreman has accepted it.

        Raises SerializationError (before sending anything) when the function
        or an item cannot be pickled.
        """
        return await self._submit(func, iterable, chunksize=chunksize, timeout=timeout, retries=retries)

    async def map(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: Any = None,
    ) -> list[Any]:
        """``func`` applied to every item, as a list in input order.

        ``progress``: None picks a widget in Jupyter, a rich bar on a terminal,
        nothing otherwise; True or "rich" forces the bar; False hides it.
        Raises TaskError (the first failed item), SerializationError,
        JobCancelledError, ConnectionLostError.
        """
        job = await self._submit(func, iterable, chunksize=chunksize, timeout=timeout, retries=retries)
        display = show_progress(job, progress)
        try:
            return await job
        except (asyncio.CancelledError, KeyboardInterrupt):
            job.cancel()
            raise
        finally:
            if display is not None:
                display.close()

    async def run(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)`` on one worker; its result. Raises TaskError if it raised."""
        job = await self._submit(Apply(func), [(args, kwargs)], chunksize=1, timeout=self.task_timeout, call=True)
        try:
            (result,) = await job
        except (asyncio.CancelledError, KeyboardInterrupt):
            job.cancel()
            raise
        return result

    async def status(self) -> dict:
        """The foreman's workers, slots and jobs as a dict."""
        self._require_connection()
        waiter = asyncio.get_running_loop().create_future()
        self._status_waiters.append(waiter)
        self._outbox.put_nowait(p.encode(p.StatusRequest()))
        return await asyncio.wait_for(waiter, self.timeout)

    async def _submit(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        chunksize: int | None,
        timeout: float | None,
        retries: int | None = None,
        call: bool = False,
    ) -> Job:
        self._require_connection()
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if retries is not None and retries < 0:
            raise ValueError(f"retries must not be negative, not {retries}")
        function = dumps_function(func)
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        size = chunksize or chunk_size(len(items), max(self.slots, self.cluster.slots if self.cluster else 0))
        chunks = [
            (start, min(size, len(items) - start), dumps_items(list(items[start : start + size]), start))
            for start in range(0, len(items), size)
        ]
        job_id = uuid.uuid4().hex
        name = getattr(func, "__name__", "") or ""
        job = Job(self, job_id, items, name=name, call=call)
        accepted = asyncio.get_running_loop().create_future()
        self._jobs[job_id] = job
        self._accepting[job_id] = accepted
        self._outbox.put_nowait(
            p.encode(p.SubmitJob(job_id, function, len(chunks), len(items), timeout, retries or 0, name))
        )
        for task_id, (start, count, payload) in enumerate(chunks):
            self._outbox.put_nowait(p.encode(p.SubmitTask(job_id, task_id, start, count, payload)))
        try:
            await accepted
        except BaseException:
            self._jobs.pop(job_id, None)
            raise
        finally:
            self._accepting.pop(job_id, None)
        if job.done:  # an empty job ends before anyone tracks it
            self._jobs.pop(job_id, None)
        return job

    def _cancel_job(self, job_id: str) -> None:
        if self.connected:
            self._outbox.put_nowait(p.encode(p.CancelJob(job_id)))

    def _forget_job(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def _require_connection(self) -> None:
        if not self.connected:
            raise CrowdComputeError("not connected: call `await crowdcompute.connect()` first")

    # --- frames --------------------------------------------------------------

    async def _send_frames(self) -> None:
        while True:
            frame = await self._outbox.get()
            if frame is None:
                return
            try:
                await self._websocket.send(frame)
            except ConnectionClosed:
                return

    async def _read_frames(self) -> None:
        error: CrowdComputeError | None = None
        try:
            async for frame in self._websocket:
                self._dispatch(p.decode(frame))
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            error = exc
            await self._websocket.close(1002, str(exc)[:120])
        finally:
            if not self._closing:
                self._connection_lost(error)

    def _dispatch(self, msg: p.Message) -> None:
        if isinstance(msg, p.TaskResult):
            job = self._jobs.get(msg.job_id)
            if job is not None:
                job._deliver(msg.first_index, msg.payload)
        elif isinstance(msg, p.TaskOutput):
            job = self._jobs.get(msg.job_id)
            if job is not None:
                job._output(msg.index, msg.stream, msg.text)
        elif isinstance(msg, p.TaskFailed):
            job = self._jobs.get(msg.job_id)
            if job is not None:
                job._fail_task(msg.first_index, msg.count, msg.error, msg.reason, msg.attempts)
        elif isinstance(msg, p.JobAccepted):
            waiter = self._accepting.get(msg.job_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(msg, p.RequestError):
            waiter = self._accepting.get(msg.job_id)
            if waiter is not None and not waiter.done():
                waiter.set_exception(CrowdComputeError(f"the foreman refused job {msg.job_id}: {msg.reason}"))
            else:
                log.warning("foreman: %s (job %s)", msg.reason, msg.job_id)
        elif isinstance(msg, p.StatusReply):
            if self._status_waiters:
                waiter = self._status_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(msg.status)
        else:
            log.warning("ignored unexpected %s from the foreman", msg.TYPE)

    def _connection_lost(self, error: CrowdComputeError | None) -> None:
        self._closing = True
        url = self.address.url if self.address else "the foreman"
        reason = f" ({error})" if error else ""
        lost = ConnectionLostError(f"lost the connection to the foreman at {url}{reason}")
        for waiter in [*self._accepting.values(), *self._status_waiters]:
            if not waiter.done():
                waiter.set_exception(lost)
        for job in list(self._jobs.values()):
            job._lose(lost)
        self._outbox.put_nowait(None)
