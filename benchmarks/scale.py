"""Scale runs of issue 6: many workers on one foreman, and one very long map.

    python -m benchmarks.scale [--workers 1000] [--tasks 4000] [--items 1000000]

1. ``--workers`` simulated workers connect to one foreman (a real
   ``python -m foreman`` process, no journal). Each is a websocket in this
   process that speaks the real protocol and runs the job's function inline,
   so the foreman sees exactly what real agents would send. Prints the
   foreman's RSS idle, with every worker connected, and its peak while a job
   of ``--tasks`` one-item tasks is dispatched over them.
2. A map of ``--items`` tiny items on the embedded cluster (2 workers): its
   rate and the peak RSS of the foreman and of this client process, which
   says whether the work is streamed or held in memory all at once.

Every phase has a time limit; a phase that runs past it is reported, not waited for.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import secrets
import subprocess
import sys
import time

from crowdcompute import CrowdComputeClient
from crowdcompute.codecs.pickled import loads, loads_items
from crowdcompute.dialing import dial
from crowdcompute.wire import messages as p
from crowdcompute.wire.addresses import parse_address
from crowdcompute.wire.runtime import runtime_fields
from worker.execution import run_items

from .rss import PeakRSS

__all__ = ["main"]

#: Seconds each phase may take.
PHASE_TIMEOUT = 180.0
MIB = 2**20


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far: its cost, whatever else loads the machine."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def start_foreman(token: str) -> tuple[subprocess.Popen, str]:
    """A foreman process on a free port; (process, url) once it listens."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foreman",
            "--port",
            "0",
            "--journal",
            "none",
            "--token",
            token,
            "--log-level",
            "warning",
            "--exit-with-parent",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    line = process.stdout.readline().decode().strip()
    if not line.startswith("foreman listening on "):
        process.kill()
        raise RuntimeError(f"the foreman did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1]


async def simulated_worker(url: str, token: str, name: str, done: collections.Counter, ready: asyncio.Event):
    """One worker slot, in this process: runs each task's items inline and answers TaskDone."""
    hello = p.Hello("worker", token, p.PROTOCOL_VERSION, name=name, slots=1, **runtime_fields())
    websocket, _ = await dial(parse_address(url), hello, timeout=60, ping_interval=None)
    ready.set()
    functions = {}
    try:
        async for frame in websocket:
            msg = p.decode(frame)
            if isinstance(msg, p.AssignTask):
                if msg.function:  # the first task of its job here
                    functions[msg.job_id] = loads(msg.function)
                payload, failed = run_items(functions[msg.job_id], loads_items(msg.payload))
                await websocket.send(p.encode(p.TaskDone(msg.job_id, msg.task_id, msg.attempt, failed, payload)))
                done[name] += 1
            elif isinstance(msg, p.ReleaseJob):
                functions.pop(msg.job_id, None)
    finally:
        await websocket.close()


async def many_workers(count: int, tasks: int) -> None:
    token = secrets.token_urlsafe(16)
    foreman, url = start_foreman(token)
    try:
        idle = rss(foreman.pid)
        done: collections.Counter[str] = collections.Counter()
        events = [asyncio.Event() for _ in range(count)]
        started = time.perf_counter()
        workers = [asyncio.create_task(simulated_worker(url, token, f"sim-{n}", done, events[n])) for n in range(count)]
        # A worker is registered before its Welcome leaves the foreman, so every Welcome in
        # means every worker counted. (Not client.status(): with ~1,000 workers its JSON
        # header passes protocol.MAX_HEADER_SIZE and the client drops the reply.)
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), PHASE_TIMEOUT)
        async with CrowdComputeClient(url, token=token) as client:
            connected = time.perf_counter() - started
            with_workers = rss(foreman.pid)
            print(f"{count} simulated workers connected in {connected:.1f} s")
            print(
                f"foreman RSS idle {idle / MIB:.0f} MiB; with {count} workers {with_workers / MIB:.0f} MiB "
                f"(+{(with_workers - idle) / MIB:.0f} MiB, {(with_workers - idle) / count / 1024:.0f} KiB each)"
            )
            cpu_before = cpu_seconds(foreman.pid)
            with PeakRSS(foreman.pid) as peak:
                start = time.perf_counter()
                results = await asyncio.wait_for(
                    client.map(lambda x: x * 2, range(tasks), chunksize=1, progress=False), PHASE_TIMEOUT
                )
                elapsed = time.perf_counter() - start
            cpu = cpu_seconds(foreman.pid) - cpu_before
            if results != [x * 2 for x in range(tasks)]:
                raise RuntimeError("the job over simulated workers returned wrong results")
            print(
                f"job of {tasks} one-item tasks: {elapsed:.2f} s ({tasks / elapsed:.0f} tasks/s), "
                f"ran on {len(done)} of {count} workers; foreman peak RSS {peak.bytes / MIB:.0f} MiB; "
                f"foreman CPU {cpu / tasks * 1000:.3f} ms per task"
            )
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    finally:
        foreman.kill()
        foreman.wait()


async def long_map(items: int) -> None:
    async with CrowdComputeClient(workers=2) as client:
        await client.map(lambda x: x + 1, range(16), progress=False)
        foreman = client.cluster.foreman.pid
        before = rss(os.getpid())
        with PeakRSS(foreman) as foreman_peak, PeakRSS(os.getpid()) as client_peak:
            start = time.perf_counter()
            results = await asyncio.wait_for(client.map(lambda x: x + 1, range(items), progress=False), PHASE_TIMEOUT)
            elapsed = time.perf_counter() - start
        if len(results) != items or results[-1] != items:
            raise RuntimeError("the long map returned wrong results")
        del results
    print(
        f"map of {items} items: {elapsed:.2f} s ({items / elapsed:,.0f} items/s); foreman peak RSS "
        f"{foreman_peak.bytes / MIB:.0f} MiB; client RSS {before / MIB:.0f} -> peak {client_peak.bytes / MIB:.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}")
    if args.workers:
        asyncio.run(many_workers(args.workers, args.tasks))
    if args.items:
        asyncio.run(long_map(args.items))
    print(f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
