"""Scale runs of issue 6: many workers on one foreman, and one very long map.

    python -m benchmarks.scale [--workers 1000] [--tasks 4000] [--items 1000000]
    python -m benchmarks.scale --table 10,100,1000,10000 [--tasks 10000]

1. ``--workers`` simulated workers connect to one foreman (a real
   ``python -m foreman`` process, no journal). Each is a websocket in this
   process that speaks the real protocol and runs the job's function inline,
   so the foreman sees exactly what real agents would send. Prints the
   foreman's RSS idle, with every worker connected, and its peak while a job
   of ``--tasks`` one-item tasks is dispatched over them.
2. A map of ``--items`` tiny items on the embedded cluster (2 workers): its
   rate and the peak RSS of the foreman and of this client process, which
   says whether the work is streamed or held in memory all at once.
3. ``--table``: for each crowd size, a fresh foreman, that many simulated
   workers, then the foreman's RSS, the time ``GET /api/status`` takes
   (median of a few) and the foreman's CPU per task over a map of
   ``--tasks`` one-item tasks (issue 12's targets: 0.1 ms per task, 256 MB
   with 10,000 workers). The open-files limit is raised for the crowd.

Every phase has a time limit; a phase that runs past it is reported, not waited for.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from crowdcompute import CrowdComputeClient
from crowdcompute.codecs.pickled import loads, loads_items
from crowdcompute.dialing import dial
from crowdcompute.wire import messages as p
from crowdcompute.wire.addresses import parse_address
from crowdcompute.wire.runtime import runtime_fields
from worker.execution import run_items

from .profiling import RATE, summarize
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


def start_foreman(token: str, *options: str) -> tuple[subprocess.Popen, str]:
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
            *options,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    line = process.stdout.readline().decode().strip()
    if not line.startswith("foreman listening on "):
        process.kill()
        raise RuntimeError(f"the foreman did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1]


async def simulated_worker(
    url: str,
    token: str,
    name: str,
    done: collections.Counter,
    ready: asyncio.Event,
    gate: asyncio.Semaphore | None = None,
):
    """One worker slot, in this process: runs each task's items inline and answers TaskDone.

    ``gate``: bounds how many workers are connecting at once (the foreman's listen backlog)."""
    hello = p.Hello("worker", token, p.PROTOCOL_VERSION, name=name, slots=1, **runtime_fields())
    if gate is None:
        websocket, _ = await dial(parse_address(url), hello, timeout=60, ping_interval=None)
    else:
        async with gate:
            websocket, _ = await dial(parse_address(url), hello, timeout=60, ping_interval=None)
    ready.set()
    functions = {}
    try:
        async for frame in websocket:
            # A batch (the tasks of one lease round) is run task by task, each answered on its own,
            # as an agent with one slot does.
            for msg in p.unbatch(p.decode(frame)):
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


#: Simulated workers connecting at once (more overflow the foreman's listen backlog, and their
#: connections wait for TCP's retransmissions).
CONNECTING_AT_ONCE = 64
#: Requests of GET /api/status timed per crowd size (the median is shown).
STATUS_REQUESTS = 5


def status_ms(url: str, token: str) -> float:
    """Median milliseconds of GET /api/status (blocking: run it in a thread)."""
    import statistics
    import urllib.request

    http = url.replace("ws://", "http://", 1).rstrip("/") + "/api/status"
    times = []
    for _ in range(STATUS_REQUESTS):
        request = urllib.request.Request(http, headers={"Authorization": f"Bearer {token}"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=PHASE_TIMEOUT) as reply:
            reply.read()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def cost_row(count: int, tasks: int, profile: Path | None = None) -> dict[str, float]:
    """One crowd size: the foreman's RSS, /api/status time and CPU per task with ``count`` workers.

    ``profile``: a folder where py-spy's collapsed stacks of the foreman during the job go."""
    token = secrets.token_urlsafe(16)
    # (Only past the old default of 4096 connections, so that a foreman from before the option runs too.)
    foreman, url = start_foreman(token, *(["--max-connections", str(count + 64)] if count + 64 > 4096 else []))
    workers: list[asyncio.Task] = []
    try:
        idle = rss(foreman.pid)
        done: collections.Counter[str] = collections.Counter()
        events = [asyncio.Event() for _ in range(count)]
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
        workers = [
            asyncio.create_task(simulated_worker(url, token, f"sim-{n}", done, events[n], gate)) for n in range(count)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), PHASE_TIMEOUT * 2)
        with_workers = rss(foreman.pid)
        status = await asyncio.to_thread(status_ms, url, token)
        async with CrowdComputeClient(url, token=token) as client:
            await client.map(lambda x: x, range(min(count, 100)), chunksize=1, progress=False)  # warm up
            spy = None
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                out = profile / f"foreman-{count}.txt"
                command = ["py-spy", "record", "--nonblocking", "--format", "raw", "--rate", str(RATE)]
                spy = subprocess.Popen([*command, "-o", str(out), "--pid", str(foreman.pid)], stdout=subprocess.DEVNULL)
                await asyncio.sleep(1.0)  # py-spy attaches
            before = cpu_seconds(foreman.pid)
            start = time.perf_counter()
            results = await asyncio.wait_for(
                client.map(lambda x: x * 2, range(tasks), chunksize=1, progress=False), PHASE_TIMEOUT * 2
            )
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(foreman.pid) - before
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                await asyncio.to_thread(spy.wait, 30)
                print(f"foreman with {count} workers, during the job:\n" + summarize(out, elapsed), flush=True)
            if results != [x * 2 for x in range(tasks)]:
                raise RuntimeError("the job over simulated workers returned wrong results")
            # The crowd's own cost while nothing runs (keepalive pings), over as long as the job took.
            before = cpu_seconds(foreman.pid)
            await asyncio.sleep(min(elapsed, 10.0))
            idle_cpu = (cpu_seconds(foreman.pid) - before) / min(elapsed, 10.0) * elapsed
        return {
            "workers": count,
            "cpu_us": cpu / tasks * 1e6,
            "idle_us": idle_cpu / tasks * 1e6,
            "rate": tasks / elapsed,
            "idle_mib": idle / MIB,
            "rss_mib": with_workers / MIB,
            "status_ms": status,
        }
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        foreman.kill()
        foreman.wait()


def allow_open_files(wanted: int) -> None:
    """Raise this process's open-files limit for ``wanted`` connections (root may raise the hard one)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cost_table(sizes: list[int], tasks: int, profile: Path | None = None) -> None:
    allow_open_files(2 * max(sizes) + 1024)  # this process's ends of the connections, and the foreman's
    print("| workers | foreman CPU per task | of which idle crowd (pings) | tasks/s | foreman RSS | GET /api/status |")
    print("|---|---|---|---|---|---|")
    for count in sizes:
        row = asyncio.run(cost_row(count, tasks, profile))
        print(
            f"| {count:,} | {row['cpu_us']:,.0f} µs | {row['idle_us']:,.0f} µs | {row['rate']:,.0f} | "
            f"{row['idle_mib']:.0f} → {row['rss_mib']:.0f} MiB | {row['status_ms']:,.1f} ms |",
            flush=True,
        )


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
    parser.add_argument("--table", help="crowd sizes, e.g. 10,100,1000,10000: the cost table of issue 12")
    parser.add_argument(
        "--profile", type=Path, help="with --table: py-spy the foreman during each job into this folder"
    )
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}")
    if args.table:
        cost_table([int(n) for n in args.table.split(",")], args.tasks, args.profile)
        print(f"load average after {os.getloadavg()}")
        return 0
    if args.workers:
        asyncio.run(many_workers(args.workers, args.tasks))
    if args.items:
        asyncio.run(long_map(args.items))
    print(f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
