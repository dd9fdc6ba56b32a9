"""The scheduler's CPU per task as the crowd grows (issue 12): pure, in this process, no sockets.

    python -m benchmarks.assignment [--workers 10,100,1000,10000] [--leases 2000]

Each run connects ``workers`` one-slot workers to a Scheduler, queues more
one-item tasks than they can hold, and then times ``--leases`` task_done
events, each of which leases the next task: the foreman's decision cost per
task, without its I/O. Prints microseconds of CPU per task; with ``--profile``
also the functions where that time goes at the largest crowd.

A second table times the same for a job that only 10 labeled workers suit,
with ``workers`` idle workers without the label beside them (a crowd with a
few GPU machines): each lease must not look at every idle worker.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

from crowdcompute.wire import messages as p
from foreman.scheduler import Scheduler

__all__ = ["main"]


def cost_per_task(workers: int, leases: int, profiler: cProfile.Profile | None = None) -> float:
    """Seconds of CPU the scheduler spends per task_done that leases the next task
    (``profiler``: profiles those task_done events, not the setup)."""
    s = Scheduler(max_queued_tasks=2**40)  # no client window: the queue is the point
    s.add_client("c")
    for n in range(workers):
        s.add_worker(f"w{n}", f"sim-{n}", 1)
    held = sum(w.capacity for w in s.workers.values())
    total = held + leases
    s.submit_job("c", p.SubmitJob("j", b"f", total, total, ack=False))
    pending: list[tuple[str, p.AssignTask]] = []
    for n in range(total):
        pending += _leases(s.submit_task("c", p.SubmitTask("j", n, n, 1, b"x")))
    pending.reverse()  # taken from the end: the oldest lease first
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    for _ in range(leases):
        worker, task = pending.pop()
        done = p.TaskDone("j", task.task_id, task.attempt, 0, b"r", seconds=0.01)
        pending[:0] = _leases(s.task_done(worker, done))
    if profiler is not None:
        profiler.disable()
    return (time.process_time() - started) / leases


def cost_with_idle_others(idle: int, leases: int) -> float:
    """Seconds of CPU per task_done of a job only 10 labeled one-slot workers suit, ``idle``
    unlabeled workers idling beside them."""
    s = Scheduler(max_queued_tasks=2**40)
    s.add_client("c")
    for n in range(10):
        s.add_worker(f"g{n}", f"gpu-{n}", 1, labels={"gpu": "yes"})
    for n in range(idle):
        s.add_worker(f"w{n}", f"sim-{n}", 1)
    total = leases + 10 * 8
    s.submit_job("c", p.SubmitJob("j", b"f", total, total, ack=False, labels={"gpu": "yes"}))
    pending: list[tuple[str, p.AssignTask]] = []
    for n in range(total):
        pending += _leases(s.submit_task("c", p.SubmitTask("j", n, n, 1, b"x")))
    pending.reverse()
    started = time.process_time()
    for _ in range(leases):
        worker, task = pending.pop()
        done = p.TaskDone("j", task.task_id, task.attempt, 0, b"r", seconds=0.01)
        pending[:0] = _leases(s.task_done(worker, done))
    return (time.process_time() - started) / leases


def _leases(actions: list) -> list[tuple[str, p.AssignTask]]:
    return [(a.to, a.message) for a in actions if isinstance(getattr(a, "message", None), p.AssignTask)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.assignment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="10,100,1000,10000")
    parser.add_argument("--leases", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.workers.split(",")]
    print("| workers | scheduler CPU per task |")
    print("|---|---|")
    for workers in sizes:
        print(f"| {workers:,} | {cost_per_task(workers, args.leases) * 1e6:,.0f} µs |", flush=True)
    print()
    print("| idle workers without the label | scheduler CPU per task of a job for 10 labeled workers |")
    print("|---|---|")
    for workers in sizes:
        print(f"| {workers:,} | {cost_with_idle_others(workers, args.leases) * 1e6:,.0f} µs |", flush=True)
    if args.profile:
        profiler = cProfile.Profile()
        cost_per_task(sizes[-1], args.leases, profiler)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
