"""A crowd of unequal machines: does a slow worker hold a job's tail while fast ones idle?

    python -m benchmarks.unequal [--slow 5] [--tasks 100,400] [--repeat 3]

(It replaces issue 13's benchmarks.backups: the foreman's backup runs on and off.)

Three workers of 2 task processes on this machine: two "fast" ones whose
items take 50 ms and one ``--slow`` times slower (the item function sleeps
``0.05 * SLOW`` seconds, SLOW read from the worker's environment, so each
worker is slow or fast whatever task it gets). Prints, for ``--tasks``
items with ``chunksize=1`` and with automatic chunks, the efficiency: the
time the crowd's summed rate needs (fast slots at 20 items/s, slow ones at
20/SLOW) over the measured time, median of ``--repeat`` runs, and how many
items the slow worker ran; and once more with ``chunksize=1`` on a foreman
run with ``--no-backup-tasks``. With dask.distributed installed (the ``bench``
extra), the same crowd as a dask scheduler and three ``dask worker``
processes of 2 threads each (``client.map``, a task per item), beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

from crowdcompute import CrowdComputeClient

__all__ = ["main"]

TOKEN = "unequal-benchmark"
#: Seconds an item takes on a fast worker.
ITEM_SECONDS = 0.05
#: Seconds a worker or scheduler gets to start, and to exit once terminated.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def _item(_x: int) -> str:
    import os
    import time

    time.sleep(0.05 * float(os.environ.get("SLOW", "1")))
    return os.environ.get("WORKER_KIND", "?")


def _wait_for(lines: queue.Queue, text: str, what: list[str]) -> str:
    """The first of a process's output ``lines`` holding ``text``; RuntimeError if the process ends
    first (a None in the queue) or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        if text in line:
            return line
    raise RuntimeError(f"no {text!r} from {what!r} within {START_TIMEOUT:g} s")


def _read_lines(process: subprocess.Popen, lines: queue.Queue) -> None:
    """Every line of ``process``'s output into ``lines``, then None: its pipe never fills."""
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def _stop(processes: list[subprocess.Popen]) -> None:
    """Terminate every process, and kill what has not exited STOP_TIMEOUT seconds later."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _crowd(slow: float) -> list[tuple[str, dict[str, str]]]:
    base = dict(os.environ)
    return [
        ("fast", {**base, "SLOW": "1", "WORKER_KIND": "fast"}),
        ("fast", {**base, "SLOW": "1", "WORKER_KIND": "fast"}),
        ("slow", {**base, "SLOW": str(slow), "WORKER_KIND": "slow"}),
    ]


def _ideal(items: int, slow: float) -> float:
    rate = 4 / ITEM_SECONDS + 2 / (ITEM_SECONDS * slow)  # items per second of the whole crowd
    return items / rate


def _start(processes: list[subprocess.Popen], command: list[str], ready: str, env: dict | None = None) -> str:
    """Start ``python -m COMMAND`` (added to ``processes``, to be stopped) and return its line holding ``ready``."""
    process = subprocess.Popen(
        [sys.executable, "-m", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    processes.append(process)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process, lines), daemon=True).start()
    return _wait_for(lines, ready, command)


def _crowdcompute(args: argparse.Namespace, home: str, *options: str, chunksizes: tuple = (1, None)) -> dict:
    processes: list[subprocess.Popen] = []
    try:
        foreman = ["crowdcompute", "foreman", "--port", "0", "--token", TOKEN, "--journal", "none", "--log-level",
                   "error", *options]  # fmt: skip
        line = _start(processes, foreman, "foreman listening on ", dict(os.environ, CROWDCOMPUTE_HOME=home))
        url = line.rsplit(" ", 1)[1].strip()
        for n, (kind, worker_env) in enumerate(_crowd(args.slow)):
            worker = ["crowdcompute", "worker", url, "--token", TOKEN, "--procs", "2", "--name", f"{kind}-{n}"]
            _start(processes, worker, "connected to", {**worker_env, "CROWDCOMPUTE_HOME": home})
        return asyncio.run(_measure_crowdcompute(url, args, chunksizes))
    finally:
        _stop(processes)


async def _measure_crowdcompute(url: str, args: argparse.Namespace, chunksizes: tuple) -> dict:
    found: dict = {}
    async with CrowdComputeClient(url, token=TOKEN) as cc:
        await cc.map(_item, range(6), chunksize=1)  # every task process has run a task
        for items in args.tasks:
            for chunksize in chunksizes:
                runs = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    kinds = await cc.map(_item, range(items), chunksize=chunksize)
                    runs.append((_ideal(items, args.slow) / (time.perf_counter() - started), Counter(kinds)["slow"]))
                found[items, chunksize] = runs
    return found


def _dask(args: argparse.Namespace) -> dict | None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return None
    processes: list[subprocess.Popen] = []
    try:
        scheduler = ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--dashboard-address", ":0", "--no-show"]  # fmt: skip
        address = _start(processes, scheduler, "Scheduler at:").rsplit(" ", 1)[1].strip()
        for _kind, worker_env in _crowd(args.slow):
            worker = ["distributed.cli.dask_worker", address, "--nthreads", "2", "--nworkers", "1", "--no-nanny",
                      "--no-dashboard", "--host", "127.0.0.1"]  # fmt: skip
            _start(processes, worker, "Registered to:", worker_env)
        return asyncio.run(_measure_dask(address, args))
    finally:
        _stop(processes)


async def _measure_dask(address: str, args: argparse.Namespace) -> dict:
    from distributed import Client

    found: dict = {}
    async with Client(address, asynchronous=True) as client:
        await client.gather(client.map(_item, range(6), pure=False))
        for items in args.tasks:
            runs = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                kinds = await client.gather(client.map(_item, range(items), pure=False))
                runs.append((_ideal(items, args.slow) / (time.perf_counter() - started), Counter(kinds)["slow"]))
            found[items] = runs
    return found


def _cell(runs: list[tuple[float, int]]) -> str:
    """Median efficiency, its range, and the items the slow worker ran (median)."""
    efficiency = [e for e, _ in runs]
    slow = statistics.median(s for _, s in runs)
    return f"{statistics.median(efficiency):.2f} ({min(efficiency):.2f}-{max(efficiency):.2f}), slow ran {slow:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=float, default=5.0, help="how many times slower the slow worker's items are")
    parser.add_argument("--tasks", default="100,400", help="map sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    args.tasks = [int(n) for n in args.tasks.split(",")]
    with tempfile.TemporaryDirectory() as home:
        ours = _crowdcompute(args, home)
        without = _crowdcompute(args, home, "--no-backup-tasks", chunksizes=(1,))
    theirs = _dask(args)
    print(f"2 workers x 2 slots at {ITEM_SECONDS * 1000:g} ms an item, 1 x 2 at {ITEM_SECONDS * args.slow * 1000:g} ms")
    print(
        "| items | CrowdCompute, `chunksize=1` | CrowdCompute, automatic chunks | `chunksize=1`, no backup tasks "
        "| dask.distributed | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for items in args.tasks:
        dask_cell, ratio = "not installed", "-"
        if theirs is not None:
            dask_cell = _cell(theirs[items])
            best = max(statistics.median(e for e, _ in ours[items, c]) for c in (1, None))
            ratio = f"{best / statistics.median(e for e, _ in theirs[items]):.2f}x"
        print(
            f"| {items} | {_cell(ours[items, 1])} | {_cell(ours[items, None])} | {_cell(without[items, 1])} "
            f"| {dask_cell} | {ratio} |"
        )
    print("ratio: CrowdCompute's better efficiency over dask's (above 1: CrowdCompute ends sooner)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
