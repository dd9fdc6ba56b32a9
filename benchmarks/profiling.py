"""Where CrowdCompute's time goes: py-spy on every process of an embedded cluster at once.

    python -m benchmarks.profiling tiny|roundtrip|bytes [--seconds 10] [--out DIR]

Starts ``CrowdComputeClient(workers=2)``, then samples the client (this
process), the foreman, both worker agents and their task processes with
``py-spy record --nonblocking`` while the workload repeats: ``tiny`` maps
``x + 1`` over 100,000 items, ``roundtrip`` calls ``run()`` back to back.
For each process it prints how busy it was (samples of non-idle threads
against the sampling rate) and the functions with the most samples, both
where they ran (self) and counting their callees (total). The raw collapsed
stacks are kept in ``--out`` for flame graphs. Needs py-spy and ptrace rights.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

#: Samples per second per process.
RATE = 250
#: Functions shown per process.
TOP = 12
#: Frames from these folders count as CrowdCompute's own code.
OURS = ("crowdcompute/", "foreman/", "worker/")


def add_one(x: int) -> int:
    return x + 1


async def drive(kind: str, seconds: float, start_profilers) -> int:
    """Repeat the workload for ``seconds`` while the profilers run; return how many rounds."""
    from crowdcompute import CrowdComputeClient

    items = list(range(100_000))
    blobs = [os.urandom(10_000_000) for _ in range(20)] if kind == "bytes" else []
    async with CrowdComputeClient(workers=2) as client:
        await client.map(lambda x: x + 1, range(16), progress=False)  # both workers connected
        profilers = start_profilers(client)
        deadline = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < deadline:
            if kind == "tiny":
                await client.map(lambda x: x + 1, items, progress=False)
            elif kind == "bytes":
                await client.map(lambda x: x, blobs, progress=False)
            else:
                await client.run(lambda x: x + 1, rounds)
            rounds += 1
        for profiler in profilers:
            profiler.wait(timeout=seconds + 30)
    return rounds


def processes_of(client) -> dict[str, int]:
    """Role name -> pid for this process, the foreman, the agents and their task processes."""
    import psutil

    cluster = client.cluster
    found = {"client": os.getpid(), "foreman": cluster.foreman.pid}
    for n, agent in enumerate(cluster.agents, 1):
        found[f"agent-{n}"] = agent.pid
        for child in psutil.Process(agent.pid).children(recursive=True):
            # Task processes come from the agent's forkserver: grandchildren, not children.
            kind = "helper" if child.ppid() == agent.pid else "task"
            found[f"agent-{n}-{kind}-{child.pid}"] = child.pid
    return found


def summarize(path: Path, seconds: float) -> str:
    """Busy share and the top functions of one collapsed-stack file."""
    self_count: collections.Counter[str] = collections.Counter()
    total_count: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")[1:]]  # the first frame is the thread
        samples += count
        if frames:
            self_count[frames[-1]] += count
        for frame in set(frames):
            total_count[frame] += count
    if not samples:
        return "  (no samples: idle all along)\n"
    busy = samples / (RATE * seconds)
    lines = [f"  busy {busy:.0%} of one core ({samples} samples)"]
    lines.append("  self:  " + "; ".join(f"{_pct(c, samples)} {f}" for f, c in self_count.most_common(TOP)))
    ours = [(f, c) for f, c in total_count.most_common() if any(o in f for o in OURS)][:TOP]
    lines.append("  total (our code): " + "; ".join(f"{_pct(c, samples)} {f}" for f, c in ours))
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py:12)`` keeping our package folder."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if where else name


def _pct(count: int, total: int) -> str:
    return f"{count / total:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["tiny", "roundtrip", "bytes"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default="profiles", help="folder for the collapsed stacks")
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    roles: dict[str, int] = {}

    def start_profilers(client) -> list[subprocess.Popen]:
        roles.update(processes_of(client))
        return [
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(RATE),
                    "--duration",
                    str(int(args.seconds)),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(out / f"{args.kind}-{role}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role, pid in roles.items()
        ]

    rounds = asyncio.run(drive(args.kind, args.seconds, start_profilers))
    unit = {"tiny": "maps of 100,000 items", "bytes": "maps of 20 x 10 MB"}.get(args.kind, "run() calls")
    print(f"{rounds} {unit} in about {args.seconds:g} s ({rounds / args.seconds:.1f}/s); load {os.getloadavg()}")
    for role in roles:
        path = out / f"{args.kind}-{role}.txt"
        print(f"{role}:")
        print(summarize(path, args.seconds) if path.exists() else "  (py-spy wrote nothing)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
