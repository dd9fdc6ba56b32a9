"""What a big outcome costs in memory on its way from a worker on another machine.

    python -m benchmarks.held [--mb 200] [--runs 3]

A worker that does not share the foreman's payload folder (any worker on
another machine) sends its outcomes inline: from its task process through
its agent and the foreman to the client, each a websocket or a pipe away.
This runs ``run(make, N MB)`` ``--runs`` times on an embedded cluster of one
worker with payload files turned off (``CROWDCOMPUTE_SHARE_FILES=0``), and
prints for the task process, the agent, the foreman and the client their peak resident memory
(the kernel's high-water mark, ``VmHWM``) over the runs and their memory once
the runs are over, in MB and as multiples of the outcome. The same calls
through ``multiprocessing.Pool(1).apply`` give the peak of a client whose
outcomes come over one pipe, for comparison. The outcomes are checked.

"When idle after" is measured once two small jobs have run after the big
ones (the foreman keeps a job's outcomes until its client collects them,
with its next job) and a second has passed. The client's peak includes the
outcome the user keeps (the last run's) while it receives the next.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time

__all__ = ["main"]

MB = 1_000_000


def make(size: int) -> bytes:
    return b"x" * size


def status_mb(pid: int, field: str) -> float:
    """``VmHWM`` or ``VmRSS`` of a process, in MB."""
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MB
    raise LookupError(f"no {field} for process {pid}")


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return [int(word) for word in file.read().split()]


async def crowdcompute_figures(size: int, runs: int) -> dict[str, tuple[float, float]]:
    from crowdcompute import CrowdComputeClient
    from crowdcompute.wire.constants import SHARE_FILES_VARIABLE

    os.environ[SHARE_FILES_VARIABLE] = "0"  # the embedded cluster's processes inherit it
    async with CrowdComputeClient(workers=1) as client:
        assert await client.run(make, 10) == b"x" * 10
        cluster = client.cluster
        agent = cluster.agents[0].pid
        task_process = next(pid for child in children(agent) for pid in children(child))  # (of its forkserver)
        pids = {"task process": task_process, "agent": agent, "foreman": cluster.foreman.pid, "client": os.getpid()}
        start = time.perf_counter()
        for _ in range(runs):
            outcome = await client.run(make, size)
            if len(outcome) != size:
                raise RuntimeError("CrowdCompute returned a wrong outcome")
        seconds = time.perf_counter() - start
        del outcome
        for _ in range(2):
            await client.run(make, 10)  # the big jobs collected: the foreman lets go of their outcomes
        await asyncio.sleep(2.5)  # two ticks of the foreman's clock: freed memory handed back (HeapRelease)
        figures = {role: (status_mb(pid, "VmHWM"), status_mb(pid, "VmRSS")) for role, pid in pids.items()}
    figures["seconds"] = (seconds, 0.0)
    return figures


def pool_peak(size: int, runs: int) -> float:
    """The peak of a client whose outcomes come through multiprocessing.Pool(1): a fresh process,
    which has not held this one's buffers."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_pool_client, args=(size, runs, theirs))
    process.start()
    try:
        return float(ours.recv())
    finally:
        process.join(timeout=60)


def _pool_client(size: int, runs: int, conn) -> None:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        for _ in range(runs):
            outcome = pool.apply(make, (size,))  # kept while the next comes, as above
            if len(outcome) != size:
                raise RuntimeError("multiprocessing returned a wrong outcome")
    conn.send(status_mb(os.getpid(), "VmHWM"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.held", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="size of each outcome, MB")
    parser.add_argument("--runs", type=int, default=3, help="run() calls, one after the other")
    args = parser.parse_args(argv)
    size = args.mb * MB
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"{args.runs} x run() returning {args.mb} MB each, inline (no payload files), one worker of one slot")
    figures = asyncio.run(crowdcompute_figures(size, args.runs))
    pool = pool_peak(size, args.runs)
    seconds = figures.pop("seconds")[0]
    print("| process | peak RSS | x outcome | RSS when idle after | x outcome |")
    print("|---|---|---|---|---|")
    for role, (peak, idle) in figures.items():
        print(f"| {role} | {peak:.0f} MB | {peak * MB / size:.2f} | {idle:.0f} MB | {idle * MB / size:.2f} |")
    print(f"| client of multiprocessing.Pool(1) | {pool:.0f} MB | {pool * MB / size:.2f} | - | - |")
    print(f"{args.runs * args.mb / seconds:.0f} MB/s of outcomes ({seconds:.2f} s)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
