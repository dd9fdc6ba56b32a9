"""A joblib backend: ``import crowdcompute.joblib`` registers ``"crowdcompute"``.

    import joblib
    import crowdcompute.joblib  # noqa: F401  (registers the backend)

    with joblib.parallel_config(backend="crowdcompute"):
        results = joblib.Parallel()(joblib.delayed(f)(x) for x in data)

The backend connects as ``connect()`` with no host does: to
``$CROWDCOMPUTE_ADDRESS`` with ``$CROWDCOMPUTE_TOKEN`` when set, else to an
embedded foreman and workers on this machine. ``parallel_config`` may pass
``connect`` options (``address="ws://host:9000"``, ``token=...``,
``workers=4``...). One connection per set of options is shared by every
``Parallel`` call of the process, so an embedded cluster starts once; it
stops at exit, or with :func:`shutdown`.

Each batch of calls joblib makes (it sizes them automatically) travels as one
job. A nested ``Parallel`` inside a task runs sequentially on its worker:
each slot is one process already.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import threading
import weakref
from collections.abc import Callable
from typing import Any

import joblib
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, SequentialBackend

from .executor import Executor

__all__ = ["BACKEND_NAME", "CrowdComputeBackend", "shutdown"]

BACKEND_NAME = "crowdcompute"

_executors: dict[tuple, Executor] = {}
_executors_lock = threading.Lock()


def _shared_executor(options: dict[str, Any]) -> Executor:
    """The process's Executor for these connect options, made on first use."""
    key = tuple(sorted(options.items()))
    with _executors_lock:
        executor = _executors.get(key)
        if executor is None:
            executor = _executors[key] = Executor(**options)
        return executor


def shutdown() -> None:
    """Disconnect every connection the backend made (stopping an embedded cluster); idempotent.

    The next ``Parallel`` call on the backend connects again.
    """
    with _executors_lock:
        executors = list(_executors.values())
        _executors.clear()
    for executor in executors:
        executor.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown)


class CrowdComputeBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` on a CrowdCompute cluster.

    ``connect_kwargs`` (``address``, ``token``, ``workers``, ``timeout``...)
    are those of :class:`crowdcompute.Executor`.
    """

    default_n_jobs = -1
    supports_retrieve_callback = True  # results come back through future callbacks
    supports_sharedmem = False
    uses_threads = False
    supports_inner_max_num_threads = False
    # A batch is one job: a round trip to the foreman. Batches shorter than this
    # are grown, longer ones shrunk, as for joblib's own process backends.
    MIN_IDEAL_BATCH_DURATION = 0.2
    MAX_IDEAL_BATCH_DURATION = 2.0

    def __init__(
        self, nesting_level: int | None = None, inner_max_num_threads: int | None = None, **connect_kwargs: Any
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.connect_kwargs = connect_kwargs
        self._futures: weakref.WeakSet[concurrent.futures.Future] = weakref.WeakSet()

    @property
    def executor(self) -> Executor:
        """The shared Executor for this backend's connect options (connects on first use)."""
        return _shared_executor(self.connect_kwargs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Slots on the cluster for ``n_jobs=-1`` (or None); ``-2`` all but one, and so on."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is not None and n_jobs > 0:
            return n_jobs
        slots = self.executor.slots()
        return max(1, slots + 1 + (n_jobs if n_jobs is not None else -1))

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Callable | None = None) -> concurrent.futures.Future:
        """Send one batch of calls as one job; ``callback(future)`` runs when it ends."""
        future = self.executor.submit(_NamedBatch(func))
        self._futures.add(future)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: concurrent.futures.Future) -> Any:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the jobs of this backend still running (an item failed; joblib drops the rest)."""
        for future in list(self._futures):
            future.cancel()
        self._futures = weakref.WeakSet()

    def terminate(self) -> None:
        """End of a Parallel call: the shared connection stays for the next one."""
        self._futures = weakref.WeakSet()

    def get_nested_backend(self):
        """Parallel inside a task runs sequentially there: a slot is one process."""
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


class _NamedBatch:
    """One batch of joblib calls, named after their function (as the status page shows jobs)."""

    def __init__(self, batch: Callable[[], Any]) -> None:
        self.batch = batch

    def __call__(self) -> Any:
        return self.batch()

    @property
    def __name__(self) -> str:
        items = getattr(self.batch, "items", None) or [(None,)]
        func = items[0][0]
        func = getattr(func, "function", func)  # scikit-learn wraps the function it delays
        return f"joblib:{getattr(func, '__name__', type(self.batch).__name__)}"


joblib.register_parallel_backend(BACKEND_NAME, CrowdComputeBackend)
