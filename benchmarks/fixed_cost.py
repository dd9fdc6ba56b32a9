"""The fixed cost per job and per call (issue 16), on a warm embedded 2-worker cluster.

    python -m benchmarks.fixed_cost [--calls 300] [--repeats 3]

Prints, in one run:

- the median time of ``await client.run(inc, 1)`` and of ``await client.map(inc, [1])``
  (the cost of a job that does nothing), and per call, summed over every
  process of the cluster (client, foreman, agents, task processes): CPU
  milliseconds and wake-ups (voluntary context switches), with the share of
  each process. Wake-ups do not depend on the machine's load the way times
  do: they count the hops a call takes.
- ``map(inc, range(n))`` for 20,000 and 100,000 items against
  ``multiprocessing.Pool(2).map`` (medians of ``--repeats`` after a warm-up),
  and with an explicit ``chunksize=1000`` against automatic chunking. The
  results are checked.

Starting the cluster and the pool is not timed. Needs psutil (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time

__all__ = ["main"]

WORKERS = 2
SIZES = (20_000, 100_000)
BATCH = 1_000


def inc(x: int) -> int:
    return x + 1


def processes(client) -> dict[str, list]:
    """Role -> the psutil processes of that role in the embedded cluster."""
    import psutil

    cluster = client.cluster
    found: dict[str, list] = {"client": [psutil.Process()], "foreman": [psutil.Process(cluster.foreman.pid)]}
    found["agents"] = [psutil.Process(agent.pid) for agent in cluster.agents]
    found["task processes"] = [child for agent in found["agents"] for child in agent.children(recursive=True)]
    return found


def counters(roles: dict[str, list]) -> dict[str, tuple[float, int]]:
    """Role -> (CPU seconds, voluntary context switches) so far, summed over its processes."""
    import psutil

    totals = {}
    for role, found in roles.items():
        cpu, switches = 0.0, 0
        for process in found:
            try:
                times = process.cpu_times()
                cpu += times.user + times.system
                switches += process.num_ctx_switches().voluntary
            except psutil.Error:
                pass
        totals[role] = (cpu, switches)
    return totals


async def per_call(client, call, calls: int) -> str:
    """Median time of ``call()``, and CPU and wake-ups per call, per role."""
    roles = processes(client)
    before = counters(roles)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    after = counters(roles)
    cpu = {role: (after[role][0] - before[role][0]) / calls * 1000 for role in roles}
    wakeups = {role: (after[role][1] - before[role][1]) / calls for role in roles}
    ms = sorted(t * 1000 for t in times)
    return (
        f"median {statistics.median(ms):.2f} ms (10th-90th percentile {ms[calls // 10]:.2f}-{ms[calls * 9 // 10]:.2f}); "
        f"CPU {sum(cpu.values()):.2f} ms ({', '.join(f'{r} {v:.2f}' for r, v in cpu.items())}); "
        f"wake-ups {sum(wakeups.values()):.1f} ({', '.join(f'{r} {v:.1f}' for r, v in wakeups.items())})"
    )


async def crowdcompute_figures(calls: int, repeats: int) -> dict[str, object]:
    from crowdcompute import CrowdComputeClient

    figures: dict[str, object] = {}
    async with CrowdComputeClient(workers=WORKERS) as client:
        await client.map(inc, range(WORKERS * 4), progress=False)  # both workers connected
        figures["run"] = await per_call(client, lambda: client.run(inc, 1), calls)
        figures["map1"] = await per_call(client, lambda: client.map(inc, [1], progress=False), calls)
        for size in SIZES:
            data = list(range(size))
            expected = [x + 1 for x in data]
            for label, chunksize in (("auto", None), ("batched", BATCH)):
                rates = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    results = await client.map(inc, data, chunksize=chunksize, progress=False)
                    rates.append(size / (time.perf_counter() - start))
                    if results != expected:
                        raise RuntimeError("CrowdCompute returned wrong results")
                figures[f"{label} {size}"] = statistics.median(rates)
    return figures


def pool_rates(repeats: int) -> dict[int, float]:
    found = {}
    with multiprocessing.Pool(WORKERS) as pool:
        pool.map(inc, range(WORKERS * 4))
        for size in SIZES:
            data = list(range(size))
            rates = []
            for _ in range(repeats):
                start = time.perf_counter()
                results = pool.map(inc, data)
                rates.append(size / (time.perf_counter() - start))
                if results != [x + 1 for x in data]:
                    raise RuntimeError("multiprocessing returned wrong results")
            found[size] = statistics.median(rates)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fixed_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="run() and map([1]) calls timed")
    parser.add_argument("--repeats", type=int, default=3, help="maps timed per size")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}")
    crowd = asyncio.run(crowdcompute_figures(args.calls, args.repeats))
    pool = pool_rates(args.repeats)
    print(f"run(inc, 1):        {crowd['run']}")
    print(f"map(inc, [1]):      {crowd['map1']}")
    for size in SIZES:
        auto, batched = crowd[f"auto {size}"], crowd[f"batched {size}"]
        assert isinstance(auto, float) and isinstance(batched, float)
        print(
            f"map of {size:,}: {auto:,.0f} items/s, Pool(2).map {pool[size]:,.0f} items/s "
            f"(ratio {auto / pool[size]:.2f}); chunksize={BATCH}: {batched:,.0f} items/s "
            f"({batched / auto:.2f} x automatic)"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
