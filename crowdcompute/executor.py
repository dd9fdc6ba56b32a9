"""``crowdcompute.Executor``: the cluster as a ``concurrent.futures.Executor``.

    from crowdcompute import Executor

    with Executor() as ex:                       # like connect(): $CROWDCOMPUTE_ADDRESS, else embedded
        future = ex.submit(pow, 2, 10)
        squares = list(ex.map(lambda x: x * x, range(100), chunksize=10))

It is meant for plain synchronous code: the async SDK runs on a private
event loop in a background thread, so the Executor's methods can be called
from any thread, including one that runs an event loop of its own (blocking
on ``future.result()`` there blocks that loop, as with any Executor; use
``asyncio.wrap_future`` to await a future instead).

``submit`` sends one call as one job; ``map`` sends all its items as one job
(``chunksize`` items per task; None picks a size from the number of slots).
Cancelling a future cancels its job on the foreman, running or not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .client import CrowdComputeClient
from .codecs.pickled import Apply
from .errors import TaskError
from .job import Job

__all__ = ["Executor"]

#: Seconds the background loop gets to start.
LOOP_START_TIMEOUT = 10.0


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run on a CrowdCompute cluster.

    ``address`` is a foreman address as ``connect`` takes it (``ws://h:p``,
    ``h:p``...); with None, ``$CROWDCOMPUTE_ADDRESS`` and
    ``$CROWDCOMPUTE_TOKEN`` if set, else an embedded foreman with ``workers``
    worker processes that ``shutdown`` stops. ``connect_kwargs`` are those of
    ``connect`` (``port``, ``token``, ``workers``, ``timeout``,
    ``task_timeout``, ``cafile``, ``trust_workers``...).

    Connects at once; raises ForemanUnavailableError or AuthenticationError.
    """

    def __init__(self, address: str | None = None, **connect_kwargs: Any) -> None:
        self._client = CrowdComputeClient(address, **connect_kwargs)
        self._lock = threading.Lock()
        self._shutdown = False
        self._pending: set[concurrent.futures.Future] = set()
        self._orphans: set[asyncio.Future] = set()  # submissions whose caller cancelled (loop thread only)
        # Both set by the loop's thread before it sets ``ready``:
        self._loop: asyncio.AbstractEventLoop
        self._stop: asyncio.Event
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="crowdcompute-executor", daemon=True)
        self._thread.start()
        if not ready.wait(LOOP_START_TIMEOUT):
            raise RuntimeError(f"the executor's event loop did not start within {LOOP_START_TIMEOUT:g} s")
        try:
            self._call(self._client.connect())
        except BaseException:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
            raise

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "open"
        return f"<crowdcompute.Executor {self.address} {state}>"

    @property
    def client(self) -> CrowdComputeClient:
        """The async client underneath (its coroutines must run on the executor's loop)."""
        return self._client

    @property
    def address(self) -> str:
        """The foreman's URL."""
        return self._client.address.url if self._client.address else "?"

    def slots(self) -> int:
        """Task slots the cluster has now (asks the foreman); an embedded cluster counts its workers still starting."""
        status = self._call(self._client.status())
        connected = sum(worker["slots"] for worker in status["workers"])
        cluster = self._client.cluster
        return max(connected, cluster.slots if cluster is not None else 0)

    # --- concurrent.futures.Executor ---------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Run ``fn(*args, **kwargs)`` on one worker; a Future of its result.

        The future raises what ``crowdcompute.run`` raises: the function's own
        exception type (with TaskError details), SerializationError, ...
        Raises RuntimeError after ``shutdown``.
        """
        return self._start(self._call_remote(fn, args, kwargs))

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """``fn`` over the items (zipped when several iterables), as an iterator in input order.

        All items are sent at once as one job. ``timeout``: seconds from this
        call after which ``next()`` raises TimeoutError (the job is then
        cancelled). ``chunksize``: items per task (None: about four tasks per
        slot). A failed item raises its error when the iterator reaches it.
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        deadline = None if timeout is None else time.monotonic() + timeout
        if len(iterables) == 1:
            func, items = fn, list(iterables[0])
        else:  # Apply calls fn(*args) and keeps fn's name in errors
            func, items = Apply(fn), [(args, {}) for args in zip(*iterables, strict=False)]
        submitted = self._start(self._submit_job(func, items, chunksize=chunksize))
        try:
            job = submitted.result(_remaining(deadline))
        except concurrent.futures.TimeoutError:
            submitted.cancel()
            raise TimeoutError(f"the job was not accepted within {timeout:g} s") from None
        arrivals: queue.Queue = queue.Queue()
        collector = self._start(_collect(job, arrivals))
        return self._results(job, collector, arrivals, deadline, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; disconnect (and stop an embedded cluster) once pending work is done.

        ``cancel_futures``: cancel every pending future (and its job) first.
        ``wait``: return only when all that is over. Idempotent.
        """
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            pending = list(self._pending)
        if first:
            if cancel_futures:
                for future in pending:
                    future.cancel()
            asyncio.run_coroutine_threadsafe(self._close(pending), self._loop)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    # --- internals -------------------------------------------------------------

    def _run_loop(self, ready: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()

        asyncio.run(main())  # cancels what is left and closes the loop

    def _call(self, coro) -> Any:
        """Run ``coro`` on the executor's loop and wait for it (not from the loop's own thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("this Executor method cannot be called from the executor's own thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _start(self, coro) -> concurrent.futures.Future:
        with self._lock:
            if self._shutdown:
                coro.close()
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending.discard(future)

    async def _close(self, pending: list[concurrent.futures.Future]) -> None:
        try:
            if pending:
                await asyncio.wait([asyncio.wrap_future(f) for f in pending])
            if self._orphans:  # cancelled while being submitted: cancel them on the foreman first
                await asyncio.wait(list(self._orphans))
            await self._client.disconnect()
        finally:
            self._stop.set()

    async def _submit_job(self, func: Callable, items: list, **options: Any) -> Job:
        """``client.submit``, except that being cancelled before the foreman accepted the job still cancels it."""
        submitting = asyncio.ensure_future(self._client.submit(func, items, **options))
        try:
            return await asyncio.shield(submitting)
        except asyncio.CancelledError:
            self._orphans.add(submitting)
            submitting.add_done_callback(self._cancel_when_accepted)
            raise

    def _cancel_when_accepted(self, submitting: asyncio.Future) -> None:
        self._orphans.discard(submitting)
        if not submitting.cancelled() and submitting.exception() is None:
            submitting.result().cancel()

    async def _call_remote(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """``fn(*args, **kwargs)`` on one worker, as ``client.run`` does; cancelling cancels the job."""
        job = await self._submit_job(Apply(fn), [(args, kwargs)], chunksize=1, timeout=self._client.task_timeout)
        try:
            (result,) = await job
        except TaskError as error:
            error.index = error.item_repr = None  # one call, not an item of a list
            raise
        except asyncio.CancelledError:
            job.cancel()
            raise
        return result

    def _results(
        self,
        job: Job,
        collector: concurrent.futures.Future,
        arrivals: queue.Queue,
        deadline: float | None,
        timeout: float | None,
    ) -> Iterator[Any]:
        """Yield the job's results in input order as they arrive; cancel the job if left early."""
        buffered: dict[int, tuple[bool, Any]] = {}
        try:
            for index in range(job.total):
                while index not in buffered:
                    try:
                        where, ok, value = arrivals.get(timeout=_remaining(deadline))
                    except queue.Empty:
                        raise TimeoutError(f"map() results did not arrive within {timeout:g} s") from None
                    if where is None:
                        raise value  # the whole job ended: cancelled, connection lost
                    buffered[where] = (ok, value)
                ok, value = buffered.pop(index)
                if not ok:
                    raise value
                yield value
        finally:
            if not job.done:
                collector.cancel()  # cancels the job: nobody will read its results


async def _collect(job: Job, arrivals: queue.Queue) -> None:
    """Put ``(index, ok, value)`` for every item of ``job`` on ``arrivals``; ``(None, False, error)`` if it cannot end."""
    sent: set[int] = set()
    try:
        try:
            async for index, value in job.as_completed():
                sent.add(index)
                arrivals.put((index, True, value))
            return
        except Exception:
            pass  # an item failed (as_completed stops there): collect the rest from the ended job
        results = await job.result(return_exceptions=True)
        errors = job.errors
        for index, value in enumerate(results):
            if index not in sent:
                arrivals.put((index, index not in errors, errors.get(index, value)))
    except asyncio.CancelledError:
        job.cancel()
        raise
    except Exception as exc:  # JobCancelledError, ConnectionLostError
        arrivals.put((None, False, exc))


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
