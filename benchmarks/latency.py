"""Latency hidden or not (issue 12): a crowd over network namespaces with added one-way delay.

    sudo python -m benchmarks.latency [--hosts 8] [--procs 2] [--tasks 400] [--seconds 0.05]
                                      [--delays 0,0.01,0.025,0.05]

A foreman host, ``--hosts`` worker hosts (one agent of ``--procs`` task
processes each) and a client host on a bridge (tests/netns.py). For each
one-way delay, every worker and the client reach the foreman through a relay
that holds each byte that long in each direction. Prints, per delay, the
efficiency of ``--tasks`` tasks of ``--seconds`` each (ideal time over
measured time) with ``chunksize=1`` and with automatic chunks, and the
median ``run()`` round trip, whose floor is twice the round trip.

With dask.distributed installed (the ``bench`` extra), the same map runs on
a dask scheduler on the foreman's host and a dask worker of ``--procs``
threads on each worker host, every link through the same relay (``client.map``:
a task per item). Needs root (network namespaces). Run it on a quiet machine:
its figures are noise while other work loads the CPUs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from crowdcompute import CrowdComputeClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netns import Network, Relay, unavailable

__all__ = ["main"]

TOKEN = "latency-benchmark"
#: Seconds a whole phase (one delay) may take before the benchmark gives up on it.
PHASE_TIMEOUT = 300.0


def _pause(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


async def _measure(url: str, tasks: int, seconds: float, slots: int) -> tuple[float, float, float]:
    """(efficiency with chunksize=1, efficiency with automatic chunks, median run() round trip)."""
    ideal = tasks * seconds / slots
    async with CrowdComputeClient(url, token=TOKEN) as cc:
        await cc.map(_pause, [0.0] * slots, chunksize=1)  # every worker holds the function
        started = time.perf_counter()
        await cc.map(_pause, [seconds] * tasks, chunksize=1)
        single = ideal / (time.perf_counter() - started)
        started = time.perf_counter()
        await cc.map(_pause, [seconds] * tasks)
        automatic = ideal / (time.perf_counter() - started)
        trips = []
        for _ in range(10):
            started = time.perf_counter()
            await cc.run(_pause, 0.0)
            trips.append(time.perf_counter() - started)
    return single, automatic, statistics.median(trips)


async def _measure_dask(address: str, tasks: int, seconds: float, slots: int) -> float:
    """Efficiency of dask.distributed's ``client.map`` (a task per item) over the same crowd."""
    from distributed import Client

    ideal = tasks * seconds / slots
    async with Client(address, asynchronous=True) as client:
        await client.gather(client.map(_pause, [0.0] * slots, pure=False))
        started = time.perf_counter()
        await client.gather(client.map(_pause, [seconds] * tasks, pure=False))
        return ideal / (time.perf_counter() - started)


def _dask_row(network: Network, foreman, client, hosts, args, delay: float) -> float | None:
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
        return network.run_in(client, lambda: _measure_dask(address, args.tasks, args.seconds, slots), PHASE_TIMEOUT)
    finally:
        for proc in (*workers, relay.proc, scheduler):
            proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=0.05)
    parser.add_argument("--delays", default="0,0.01,0.025,0.05", help="one-way delays, seconds, comma-separated")
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 1
    delays = [float(d) for d in args.delays.split(",")]
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
            single, automatic, trip = network.run_in(
                client, lambda url=url, slots=slots: _measure(url, args.tasks, args.seconds, slots), PHASE_TIMEOUT
            )
            for agent in agents:
                agent.stop()
            relay.proc.stop()
            rows.append((delay, single, automatic, trip, _dask_row(network, foreman, client, hosts, args, delay)))
    finally:
        network.close()
    print(f"{args.tasks} tasks of {args.seconds * 1000:g} ms over {args.hosts} hosts x {args.procs} slots")
    print("| added one-way delay | " + " | ".join(f"{d * 1000:g} ms" for d, *_ in rows) + " |")
    print("|---|" + "---|" * len(rows))
    print("| efficiency, `chunksize=1` | " + " | ".join(f"{s:.2f}" for _, s, _, _, _ in rows) + " |")
    print("| efficiency, automatic chunks | " + " | ".join(f"{a:.2f}" for _, _, a, _, _ in rows) + " |")
    dask = " | ".join("not installed" if d is None else f"{d:.2f}" for *_, d in rows)
    print(f"| dask, same topology | {dask} |")
    print("| `run()` round trip | " + " | ".join(f"{t * 1000:.1f} ms" for _, _, _, t, _ in rows) + " |")
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as home:
        os.environ["CROWDCOMPUTE_HOME"] = home  # nothing of this run lands in ~/.crowdcompute
        sys.exit(main())
