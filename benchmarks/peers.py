"""CrowdCompute and its peers behind one small synchronous interface.

Every peer runs two worker processes on this machine and offers the same
four calls, each the way a user of that library would write it with no
tuning: ``map_items`` (one call per item, the library's own chunking if it
has any), ``map_chunked`` (batches made by hand, or the library's chunksize),
``call`` (one function call, one round trip) and ``start``/``stop``.
Libraries are imported in ``available``/``start``, so a missing one is
skipped with a reason instead of breaking the run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

from .workloads import WORKERS, apply_each, split

__all__ = ["PEERS", "Peer"]


class Peer:
    """A library under test. ``name`` keys the results; ``label`` heads the table."""

    name = ""
    label = ""
    module = ""  # the import that must exist

    def available(self) -> str | None:
        """None if the peer can run here, else why not."""
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed (pip install -e '.[bench]')"
        return None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def map_items(self, func: Callable[[Any], Any], items: list) -> list:
        raise NotImplementedError

    def map_chunked(self, func: Callable[[Any], Any], items: list, chunksize: int) -> list:
        """Batches made by hand: one task per chunk, flattened back."""
        parts = self.map_items(partial(apply_each, func), split(items, chunksize))
        return [y for part in parts for y in part]

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def foreman_pid(self) -> int | None:
        """The process whose peak RSS the table reports (CrowdCompute's foreman)."""
        return None


class CrowdComputePeer(Peer):
    """The embedded cluster users get from ``connect(workers=2)``; with ``journal``, a journaled foreman."""

    module = "crowdcompute"

    def __init__(self, journal: bool = False) -> None:
        self.journal = journal
        self.name = "crowdcompute+journal" if journal else "crowdcompute"
        self.label = "CrowdCompute+journal" if journal else "CrowdCompute"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = None
        self._cluster = None
        self._folder: str | None = None

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def start(self) -> None:
        from crowdcompute import CrowdComputeClient
        from crowdcompute.local import LocalCluster

        self._loop = asyncio.new_event_loop()
        if not self.journal:
            self._client = CrowdComputeClient(workers=WORKERS)
        else:
            self._folder = tempfile.mkdtemp(prefix="crowdcompute-bench-")
            self._cluster = LocalCluster(WORKERS, journal=f"{self._folder}/journal.sqlite3")
            address = self._run(self._cluster.start())
            self._client = CrowdComputeClient(address.url, token=self._cluster.token)
        self._run(self._client.connect())

    def stop(self) -> None:
        if self._client is not None:
            self._run(self._client.disconnect())
        if self._cluster is not None:
            self._cluster.stop()
        if self._loop is not None:
            self._loop.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._client = self._cluster = self._loop = self._folder = None

    def map_items(self, func, items):
        return self._run(self._client.map(func, items, progress=False))

    def map_chunked(self, func, items, chunksize):
        return self._run(self._client.map(func, items, chunksize=chunksize, progress=False))

    def call(self, func, *args):
        return self._run(self._client.run(func, *args))

    def foreman_pid(self) -> int | None:
        cluster = self._cluster or getattr(self._client, "cluster", None)
        process = getattr(cluster, "foreman", None)
        return process.pid if process is not None else None


class MultiprocessingPeer(Peer):
    name, label, module = "multiprocessing", "multiprocessing.Pool", "multiprocessing"

    def start(self) -> None:
        import multiprocessing

        self._pool = multiprocessing.Pool(WORKERS)

    def stop(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def map_items(self, func, items):
        return self._pool.map(func, items)

    def map_chunked(self, func, items, chunksize):
        return self._pool.map(func, items, chunksize=chunksize)

    def call(self, func, *args):
        return self._pool.apply(func, args)


class DaskPeer(Peer):
    """dask.distributed with two single-threaded worker processes (``client.map`` per item)."""

    name, label, module = "dask", "dask.distributed", "distributed"

    def start(self) -> None:
        from distributed import Client

        self._client = Client(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )

    def stop(self) -> None:
        self._client.close()
        self._client.cluster.close()

    def map_items(self, func, items):
        with warnings.catch_warnings():  # "large object in task graph" for the 10 MB items
            warnings.simplefilter("ignore")
            return self._client.gather(self._client.map(func, items, pure=False))

    def call(self, func, *args):
        return self._client.submit(func, *args, pure=False).result()


class IpyparallelPeer(Peer):
    """ipyparallel with two engines and a load-balanced view (``map_sync`` per item)."""

    name, label, module = "ipyparallel", "ipyparallel", "ipyparallel"

    def start(self) -> None:
        import ipyparallel

        self._cluster = ipyparallel.Cluster(n=WORKERS, log_level=logging.ERROR)
        self._client = self._cluster.start_and_connect_sync()
        self._client.wait_for_engines(WORKERS, timeout=120)
        self._view = self._client.load_balanced_view()

    def stop(self) -> None:
        self._client.close()
        self._cluster.stop_cluster_sync()

    def map_items(self, func, items):
        return list(self._view.map_sync(func, items))

    def call(self, func, *args):
        return self._view.apply_sync(func, *args)


class RayPeer(Peer):
    """Ray with two CPUs (``f.remote`` per item)."""

    name, label, module = "ray", "Ray", "ray"

    def start(self) -> None:
        import ray

        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        self._remote: dict[Callable, Any] = {}

    def stop(self) -> None:
        import ray

        ray.shutdown()

    def _task(self, func):
        import ray

        if func not in self._remote:
            self._remote[func] = ray.remote(func)
        return self._remote[func]

    def map_items(self, func, items):
        import ray

        task = self._task(func)
        return ray.get([task.remote(x) for x in items])

    def map_chunked(self, func, items, chunksize):
        import ray

        task = self._task(apply_each)  # ray.remote takes functions, not partials
        parts = ray.get([task.remote(func, chunk) for chunk in split(items, chunksize)])
        return [y for part in parts for y in part]

    def call(self, func, *args):
        import ray

        return ray.get(self._task(func).remote(*args))


#: Every peer, CrowdCompute first: the ratios are CrowdCompute (embedded) / peer.
PEERS: list[Peer] = [
    CrowdComputePeer(),
    CrowdComputePeer(journal=True),
    MultiprocessingPeer(),
    DaskPeer(),
    IpyparallelPeer(),
    RayPeer(),
]
