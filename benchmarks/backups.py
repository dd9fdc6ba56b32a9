"""Backup tasks: one slow worker at the tail of a job, with and without backup copies.

    python -m benchmarks.backups [--tasks 40] [--seconds 0.1] [--slowdown 10]

Starts a foreman and three one-slot workers, one of them ``--slowdown``
times slower (its tasks sleep longer: the environment variable SLOWDOWN
tells the function), maps ``--tasks`` tasks of ``--seconds`` each, and
prints the elapsed time with the foreman's backup tasks on and off. Run it
by hand on a quiet machine; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

from crowdcompute import CrowdComputeClient
from crowdcompute.wire.constants import FOREMAN_READY

TOKEN = "backups-benchmark"


def work(seconds: float) -> float:
    import os
    import time

    time.sleep(seconds * float(os.environ.get("SLOWDOWN", "1")))
    return seconds


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crowdcompute", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )


def run_once(backups: bool, tasks: int, seconds: float, slowdown: float) -> float:
    options = [] if backups else ["--no-backup-tasks"]
    foreman = _start(["foreman", "--port", "0", "--token", TOKEN, "--journal", "none", *options])
    workers: list[subprocess.Popen] = []
    try:
        line = foreman.stdout.readline().decode()
        assert line.startswith(FOREMAN_READY), line
        url = line.split()[-1]
        for n in range(3):
            env = {**os.environ, "SLOWDOWN": str(slowdown if n == 0 else 1)}
            workers.append(_start(["worker", url, "--procs", "1", "--token", TOKEN, "--name", f"w{n}"], env))

        async def main() -> float:
            async with CrowdComputeClient(url, token=TOKEN) as cc:
                while len((await cc.status())["workers"]) < 3:
                    await asyncio.sleep(0.1)
                started = time.perf_counter()
                await cc.map(work, [seconds] * tasks, chunksize=1)
                return time.perf_counter() - started

        return asyncio.run(main())
    finally:
        for process in [*workers, foreman]:
            process.terminate()
        for process in [*workers, foreman]:
            process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=0.1)
    parser.add_argument("--slowdown", type=float, default=10.0)
    args = parser.parse_args()
    without = run_once(False, args.tasks, args.seconds, args.slowdown)
    with_backups = run_once(True, args.tasks, args.seconds, args.slowdown)
    ideal = args.tasks * args.seconds / 3
    print(f"{args.tasks} tasks x {args.seconds} s on 3 one-slot workers, one {args.slowdown:g}x slower")
    print(f"  without backup tasks: {without:.2f} s")
    print(f"  with backup tasks:    {with_backups:.2f} s  ({without / with_backups:.2f}x faster; ideal ~{ideal:.2f} s)")
    print(f"  load average: {os.getloadavg()[0]:.2f} (figures taken on a loaded machine are noise)")


if __name__ == "__main__":
    main()
