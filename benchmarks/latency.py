"""Latency hidden or not (issue 12): a crowd over network namespaces with added one-way delay.

    sudo python -m benchmarks.latency [--hosts 8] [--procs 2] [--tasks 400] [--seconds 0.05]
                                      [--delays 0,0.01,0.025,0.05] [--repeat 3]

A foreman host, ``--hosts`` worker hosts (one agent of ``--procs`` task
processes each) and a client host on a bridge (tests/netns.py). For each
one-way delay, every worker and the client reach the foreman through a relay
that holds each byte that long in each direction. Prints, per delay, the
efficiency of ``--tasks`` tasks of ``--seconds`` each with ``chunksize=1``
and with automatic chunks, and the median ``run()`` round trip, whose floor
is twice the round trip. Each efficiency is the median of ``--repeat`` runs, with
their range.

Efficiency is the ideal time over the measured time. Ideal: ``tasks *
seconds / slots`` (400 x 50 ms / 16 slots = 1.25 s). Measured: from just
before the client submits the map until its last result is in the client.
The workers are connected before (each waits for its "connected to" line,
then the client runs a warm-up map of one no-op task per slot), so their
connect time is outside the window, as it is for dask's. The window holds
four one-way delays no scheduler can hide (the tasks go client -> foreman
-> worker, the last result worker -> foreman -> client): the "floor" row is
the best any such design reaches, ``ideal / (ideal + 4 * delay)``. The
row under it adds what this machine's sleeps cost on their own: as many bare
processes as slots each sleep their share of the tasks back to back from one
instant, with nothing else running; the slowest takes ``bare`` seconds, and
``ideal / (bare + 4 * delay)`` is the best a map can reach here.

Under the table, where the maps' time went, from their items' own clocks
(``benchmarks.timeline``): when the first item and the last slot's first
item started, the slowest slot's late wake-ups and gaps between items, and
the last result's way back to the client.

With dask.distributed installed (the ``bench`` extra), the same map runs on
a dask scheduler on the foreman's host and a dask worker of ``--procs``
threads on each worker host, every link through the same relay (``client.map``:
a task per item). Needs root (network namespaces). Run it on a quiet machine:
its figures are noise while other work loads the CPUs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from crowdcompute import CrowdComputeClient

from .timeline import Breakdown, breakdown, medians, stamp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netns import Network, Relay, unavailable

__all__ = ["main"]

TOKEN = "latency-benchmark"
#: Seconds a whole phase (one delay) may take before the benchmark gives up on it.
PHASE_TIMEOUT = 300.0


@dataclass
class Row:
    """One delay's figures: efficiencies (one per map), where the maps' time went, ``run()``'s round trip."""

    delay: float
    single: list[float] = field(default_factory=list)  # chunksize=1
    automatic: list[float] = field(default_factory=list)
    single_times: list[Breakdown] = field(default_factory=list)
    automatic_times: list[Breakdown] = field(default_factory=list)
    trip: float = 0.0
    dask: list[float] | None = None


async def _measure(row: Row, url: str, tasks: int, seconds: float, slots: int, repeat: int) -> Row:
    """Fill ``row``: the two maps take turns, ``repeat`` times each; then ``run()``'s round trip."""
    ideal = tasks * seconds / slots
    async with CrowdComputeClient(url, token=TOKEN) as cc:
        await cc.map(stamp, [0.0] * slots, chunksize=1)  # warm-up: every worker has run a task
        for _ in range(repeat):
            for chunksize, found, times in (
                (1, row.single, row.single_times),
                (None, row.automatic, row.automatic_times),
            ):
                called, started = time.time(), time.perf_counter()
                items = await cc.map(stamp, [seconds] * tasks, chunksize=chunksize)
                found.append(ideal / (time.perf_counter() - started))
                times.append(breakdown(called, time.time(), items, seconds))
        trips = []
        for _ in range(10):
            started = time.perf_counter()
            await cc.run(stamp, 0.0)
            trips.append(time.perf_counter() - started)
    row.trip = statistics.median(trips)
    return row


async def _measure_dask(address: str, tasks: int, seconds: float, slots: int, repeat: int) -> list[float]:
    """Efficiencies of dask.distributed's ``client.map`` (a task per item) over the same crowd."""
    from distributed import Client

    ideal = tasks * seconds / slots
    found = []
    async with Client(address, asynchronous=True) as client:
        await client.gather(client.map(stamp, [0.0] * slots, pure=False))
        for _ in range(repeat):
            started = time.perf_counter()
            await client.gather(client.map(stamp, [seconds] * tasks, pure=False))
            found.append(ideal / (time.perf_counter() - started))
    return found


def _cell(found: list[float] | None) -> str:
    """The median of a few runs, and their range: "0.812 (0.781-0.830)" (three places: a target
    of 0.85 is not met by 0.846)."""
    if found is None:
        return "not installed"
    if len(found) == 1:
        return f"{found[0]:.3f}"
    return f"{statistics.median(found):.3f} ({min(found):.3f}-{max(found):.3f})"


def _dask_row(network: Network, foreman, client, hosts, args, delay: float) -> list[float] | None:
    """dask on the same hosts, the scheduler on the foreman's, every link through a relay; None without dask."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return None
    scheduler = network.start(
        foreman, "-m", "distributed.cli.dask_scheduler", "--host", foreman.address, "--port", "0",
        "--dashboard-address", ":0", "--no-show",
    )  # fmt: skip
    port = int(scheduler.wait_for_line("Scheduler at:", timeout=60).rsplit(":", 1)[1])
    relay = Relay(network, foreman, (foreman.address, port), delay)
    address = f"tcp://{foreman.address}:{relay.port}"
    workers = [
        network.start(
            host,
            "-m",
            "distributed.cli.dask_worker",
            address,
            "--nthreads",
            str(args.procs),
            "--nworkers",
            "1",
            "--no-nanny",
            "--host",
            host.address,
            "--no-dashboard",
        )  # fmt: skip
        for host in hosts
    ]
    for worker in workers:
        worker.wait_for_line("Registered to:", timeout=60)
    slots = args.hosts * args.procs
    try:
        return network.run_in(
            client, lambda: _measure_dask(address, args.tasks, args.seconds, slots, args.repeat), PHASE_TIMEOUT
        )
    finally:
        for proc in (*workers, relay.proc, scheduler):
            proc.stop()


def _bare_slot(start: float, count: int, seconds: float) -> float:
    """A slot's share of the work with nothing around it: ``count`` sleeps back to back from
    ``start`` (a time.time()); the seconds they took."""
    while time.time() < start:
        time.sleep(0.0005)
    began = time.perf_counter()
    for _ in range(count):
        time.sleep(seconds)
    return time.perf_counter() - began


def _bare(slots: int, tasks: int, seconds: float, repeat: int) -> float:
    """The median over ``repeat`` runs of the slowest of ``slots`` bare processes doing their
    share of ``tasks`` sleeps of ``seconds`` at once."""
    slowest = []
    with multiprocessing.get_context("spawn").Pool(slots) as pool:
        for _ in range(repeat):
            start = time.time() + 0.5  # every process is up and waiting by then
            slowest.append(max(pool.starmap(_bare_slot, [(start, tasks // slots, seconds)] * slots)))
    return statistics.median(slowest)


def _print_breakdown(rows: list[Row], share: int, bare: float) -> None:
    """Where the maps' time went (benchmarks.timeline), medians, `chunksize=1` / automatic chunks."""
    print()
    print("Where a map's time goes (ms after the call; medians; `chunksize=1` / automatic chunks):")
    print("| added one-way delay | " + " | ".join(f"{row.delay * 1000:g} ms" for row in rows) + " |")
    print("|---|" + "---|" * len(rows))
    lines = [
        ("first item starts (floor: 2 x delay)", lambda b: b.first),
        ("the last slot's first item starts", lambda b: b.last_first),
        (f"slowest slot: its {share} sleeps' late wake-ups, summed", lambda b: b.late),
        ("slowest slot: gaps between its items, summed", lambda b: b.gaps),
        ("last item ends", lambda b: b.last_end),
        ("then every result is in the client (floor: 2 x delay)", lambda b: b.back),
    ]
    for label, figure in lines:
        cells = [
            f"{figure(medians(row.single_times)):.1f} / {figure(medians(row.automatic_times)):.1f}" for row in rows
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"The slowest of as many bare processes as slots sleeping their {share} sleeps: {1000 * bare:.1f} ms.")


def _load() -> str:
    """The machine's 1-minute load average: figures taken under load are noise."""
    return f"{os.getloadavg()[0]:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=0.05)
    parser.add_argument("--delays", default="0,0.01,0.025,0.05", help="one-way delays, seconds, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each map per delay: median (range)")
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 1
    delays = [float(d) for d in args.delays.split(",")]
    load_before = _load()
    bare = _bare(args.hosts * args.procs, args.tasks, args.seconds, args.repeat)
    network = Network()
    rows = []
    try:
        foreman = network.add_host("foreman")
        client = network.add_host("client")
        hosts = [network.add_host(f"h{n + 1}") for n in range(args.hosts)]
        proc = network.start(
            foreman, "-m", "crowdcompute", "foreman", "--host", foreman.address, "--port", "0",
            "--token", TOKEN, "--journal", "none", "--log-level", "warning",
        )  # fmt: skip
        port = int(proc.wait_for_line("foreman listening on ").rsplit(":", 1)[1])
        for delay in delays:
            relay = Relay(network, foreman, (foreman.address, port), delay)
            url = f"ws://{foreman.address}:{relay.port}"
            agents = [
                network.start(
                    host,
                    "-m",
                    "crowdcompute",
                    "worker",
                    url,
                    "--token",
                    TOKEN,
                    "--procs",
                    str(args.procs),
                    "--name",
                    f"{host.name}-{delay:g}",
                    "--log-level",
                    "warning",
                )  # fmt: skip
                for host in hosts
            ]
            for agent in agents:
                agent.wait_for_line("connected to", timeout=60)
            slots = args.hosts * args.procs
            row = Row(delay)
            network.run_in(
                client,
                lambda url=url, slots=slots, row=row: _measure(row, url, args.tasks, args.seconds, slots, args.repeat),
                PHASE_TIMEOUT,
            )
            for agent in agents:
                agent.stop()
            relay.proc.stop()
            row.dask = _dask_row(network, foreman, client, hosts, args, delay)
            rows.append(row)
    finally:
        network.close()
    ideal = args.tasks * args.seconds / (args.hosts * args.procs)
    print(f"{args.tasks} tasks of {args.seconds * 1000:g} ms over {args.hosts} hosts x {args.procs} slots")
    print(f"load average before and after: {load_before} / {_load()}")
    print("| added one-way delay | " + " | ".join(f"{row.delay * 1000:g} ms" for row in rows) + " |")
    print("|---|" + "---|" * len(rows))
    print("| efficiency, `chunksize=1` | " + " | ".join(_cell(row.single) for row in rows) + " |")
    print("| efficiency, automatic chunks | " + " | ".join(_cell(row.automatic) for row in rows) + " |")
    print("| dask, same topology | " + " | ".join(_cell(row.dask) for row in rows) + " |")
    print(
        "| floor: ideal / (ideal + 4 x delay) | "
        + " | ".join(f"{ideal / (ideal + 4 * row.delay):.3f}" for row in rows)
        + " |"
    )
    print(
        "| floor with this machine's sleeps: ideal / (bare + 4 x delay) | "
        + " | ".join(f"{ideal / (bare + 4 * row.delay):.3f}" for row in rows)
        + " |"
    )
    print("| `run()` round trip | " + " | ".join(f"{row.trip * 1000:.1f} ms" for row in rows) + " |")
    _print_breakdown(rows, args.tasks // (args.hosts * args.procs), bare)
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as home:
        os.environ["CROWDCOMPUTE_HOME"] = home  # nothing of this run lands in ~/.crowdcompute
        sys.exit(main())
