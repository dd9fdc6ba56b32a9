"""The functions the benchmarks run on workers, and the workloads built from them.

The task functions live in this importable module (not in ``__main__``) so
that ``multiprocessing`` can pickle them by reference; every cloudpickle user
(CrowdCompute, dask, Ray) is told to ship them by value, so no worker needs
this repository on its path.

Each workload takes a started peer and returns one figure, in the unit it
declares, plus whether a higher figure is better. Sizes are chosen so that
the slowest peer still finishes a repeat in a few seconds on two cores; a
peer that is slow per item gets fewer items (``Workload.items_for``), which
changes neither its rate nor its round-trip time much.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["WORKLOADS", "Workload", "add_one", "apply_each", "echo", "sleep_10ms", "split"]

#: Items of the tiny-items workload; slow peers get SLOW_PEER_ITEMS instead.
TINY_ITEMS = 100_000
#: Items per repeat for peers that take each item as one task (dask, ipyparallel, Ray).
SLOW_PEER_ITEMS = {"dask": 2_000, "ipyparallel": 1_000, "ray": 2_000}
#: Hand-batched chunk size.
BATCH = 1_000
#: Round trips timed per repeat; the figure is their median.
ROUND_TRIPS = 50
#: The sleeping workload: this many tasks of SLEEP seconds on two workers.
SLEEP_TASKS, SLEEP = 200, 0.010
#: The big-payload workloads: this many items of BLOB_SIZE bytes, there and back.
BLOBS, BLOB_SIZE = 20, 10_000_000
#: The big-job workload: this many items of BLOB_SIZE bytes (2 GB), the BLOBS distinct blobs repeated.
MANY_BLOBS = 200
WORKERS = 2


def add_one(x: int) -> int:
    return x + 1


def apply_each(func: Callable[[Any], Any], chunk: list) -> list:
    """A hand-made batch: ``func`` over a list, as one task."""
    return [func(x) for x in chunk]


def sleep_10ms(x: int) -> int:
    time.sleep(SLEEP)
    return x


def echo(x: Any) -> Any:
    return x


@dataclass(frozen=True)
class Workload:
    """One row of the table: what it measures, in which unit, and how."""

    name: str
    unit: str
    higher_is_better: bool
    measure: Callable[[Any], float]  # (started peer) -> figure; raises if the results are wrong
    fresh_peer: bool = False  # measure() starts and stops the peer itself


def items_for(peer: Any) -> int:
    return SLOW_PEER_ITEMS.get(peer.name, TINY_ITEMS)


def _check(results: list, expected: list, what: str) -> None:
    if results != expected:
        raise RuntimeError(f"{what}: wrong results ({len(results)} items)")


def tiny_items(peer) -> float:
    items = list(range(items_for(peer)))
    start = time.perf_counter()
    results = peer.map_items(add_one, items)
    elapsed = time.perf_counter() - start
    _check(results, [x + 1 for x in items], "tiny items")
    return len(items) / elapsed


def tiny_batched(peer) -> float:
    items = list(range(TINY_ITEMS))
    start = time.perf_counter()
    results = peer.map_chunked(add_one, items, BATCH)
    elapsed = time.perf_counter() - start
    _check(results, [x + 1 for x in items], "hand-batched items")
    return len(items) / elapsed


def round_trip(peer) -> float:
    times = []
    for n in range(ROUND_TRIPS):
        start = time.perf_counter()
        result = peer.call(add_one, n)
        times.append(time.perf_counter() - start)
        if result != n + 1:
            raise RuntimeError(f"round trip: {result!r} != {n + 1}")
    return statistics.median(times) * 1000


def sleeping_tasks(peer) -> float:
    start = time.perf_counter()
    results = peer.map_items(sleep_10ms, list(range(SLEEP_TASKS)))
    elapsed = time.perf_counter() - start
    _check(results, list(range(SLEEP_TASKS)), "sleeping tasks")
    return SLEEP_TASKS * SLEEP / WORKERS / elapsed


_BLOBS: list[bytes] = []


def _blobs() -> list[bytes]:
    if not _BLOBS:  # made once: os.urandom of 200 MB takes a while
        _BLOBS.extend(os.urandom(BLOB_SIZE) for _ in range(BLOBS))
    return _BLOBS


def big_bytes(peer) -> float:
    blobs = _blobs()
    start = time.perf_counter()
    results = peer.map_items(echo, blobs)
    elapsed = time.perf_counter() - start
    if len(results) != BLOBS or any(a != b for a, b in zip(results, blobs, strict=False)):
        raise RuntimeError("big bytes: results differ")
    return BLOBS * BLOB_SIZE / elapsed / 1e6


def big_job(peer) -> float:
    """2 GB there and back: the foreman's memory must stay bounded by the data in flight."""
    blobs = _blobs()
    inputs = [blobs[n % BLOBS] for n in range(MANY_BLOBS)]
    start = time.perf_counter()
    results = peer.map_items(echo, inputs)
    elapsed = time.perf_counter() - start
    if len(results) != MANY_BLOBS or any(a != b for a, b in zip(results, inputs, strict=False)):
        raise RuntimeError("big job: results differ")
    del results
    return MANY_BLOBS * BLOB_SIZE / elapsed / 1e6


def big_arrays(peer) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = [rng.random(BLOB_SIZE // 8) for _ in range(BLOBS)]
    start = time.perf_counter()
    results = peer.map_items(echo, arrays)
    elapsed = time.perf_counter() - start
    if len(results) != BLOBS or not all(np.array_equal(a, b) for a, b in zip(results, arrays, strict=False)):
        raise RuntimeError("numpy arrays: results differ")
    return BLOBS * BLOB_SIZE / elapsed / 1e6


def start_to_first_result(peer) -> float:
    start = time.perf_counter()
    try:
        peer.start()
        result = peer.call(add_one, 1)
        elapsed = time.perf_counter() - start
    finally:
        peer.stop()
    if result != 2:
        raise RuntimeError(f"first result: {result!r}")
    return elapsed


WORKLOADS = [
    Workload("start to first result", "s", False, start_to_first_result, fresh_peer=True),
    Workload("tiny items, no tuning", "items/s", True, tiny_items),
    Workload(f"tiny items, batches of {BATCH}", "items/s", True, tiny_batched),
    Workload("run() round trip", "ms", False, round_trip),
    Workload(f"{SLEEP_TASKS} x {SLEEP * 1000:g} ms tasks", "efficiency", True, sleeping_tasks),
    Workload(f"{BLOBS} x {BLOB_SIZE // 1_000_000} MB bytes, there and back", "MB/s", True, big_bytes),
    Workload(f"{BLOBS} x {BLOB_SIZE // 1_000_000} MB numpy, there and back", "MB/s", True, big_arrays),
    Workload(f"{MANY_BLOBS} x {BLOB_SIZE // 1_000_000} MB bytes (2 GB), there and back", "MB/s", True, big_job),
]


def split(items: list, size: int) -> list[list]:
    """``items`` in consecutive lists of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
