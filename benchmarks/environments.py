"""First-build and cached-start time of a job environment with one small package.

    python -m benchmarks.environments [--repeats 3]

Starts a foreman and one worker (``--find-links DIR --no-index``, a fresh
``$CROWDCOMPUTE_HOME`` and ``UV_CACHE_DIR``) and times a one-item job of a
function importing ``tinypkg`` (a one-function wheel built on the spot)
with ``requirements=["tinypkg==1.0"]``: the first time (uv builds the
environment; ``job.stats.environment`` is the build alone), again (cached),
and once more after the worker restarted (the cache is on disk). The
baseline is the same job of ``abs``, which needs nothing.
Each figure is the median of ``--repeats`` fresh homes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from wheels import tinypkg_wheels  # tests/wheels.py: the same tiny wheel the tests install


def which(_item):
    import tinypkg

    return tinypkg.version()


def _start(args: list[str], env: dict, ready: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "crowdcompute", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    for raw in proc.stdout:
        line = raw.decode().strip()
        if ready in line:
            return proc, line
    raise RuntimeError(f"crowdcompute {args[0]} exited before printing {ready!r}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


async def _timed(client, func=which, **needs) -> tuple[float, float]:
    started = time.perf_counter()
    job = await client.submit(func, [0], **needs)
    await job
    return time.perf_counter() - started, job.stats.environment


async def one_round(folder: Path) -> dict[str, float]:
    from crowdcompute import CrowdComputeClient

    env = {**os.environ, "CROWDCOMPUTE_HOME": str(folder / "home"), "UV_CACHE_DIR": str(folder / "uv")}
    os.environ.update(CROWDCOMPUTE_HOME=env["CROWDCOMPUTE_HOME"])
    wheels = tinypkg_wheels(folder / "wheels")
    foreman, line = _start(["foreman", "--port", "0"], env, "foreman listening on ")
    url = line.rsplit(" ", 1)[1]
    worker_args = ["worker", url, "--procs", "1", "--find-links", str(wheels), "--no-index"]
    worker, _ = _start(worker_args, env, "connected to")
    figures: dict[str, float] = {}
    try:
        async with CrowdComputeClient(url) as client:
            await client.run(abs, 1)  # the worker's task process is up
            figures["no environment"], _ = await _timed(client, abs)
            figures["first build"], figures["uv build"] = await _timed(client, requirements=["tinypkg==1.0"])
            figures["cached"], _ = await _timed(client, requirements=["tinypkg==1.0"])
            _stop(worker)
            worker, _ = _start(worker_args, env, "connected to")
            await client.run(abs, 1)
            figures["cached after restart"], _ = await _timed(client, requirements=["tinypkg==1.0"])
    finally:
        _stop(worker)
        _stop(foreman)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            rounds.append(asyncio.run(one_round(Path(folder))))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        print(
            f"{name:>22}: {statistics.median(values) * 1000:8.1f} ms  (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})"
        )


if __name__ == "__main__":
    main()
