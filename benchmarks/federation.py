"""A simulated crowd of 100,000 volunteers over several foremen (issue 12, docs/scaling.md).

    python -m benchmarks.federation [--volunteers 100000] [--foremen 10] [--hours 2] [--seed 1]

A time-stepped model (one step per second), not our code: each foreman holds
the volunteers a hash of their credential sends it (one shard), volunteers
come and go (sessions of about an hour, away about half an hour), clients
submit jobs to their home foreman with a skewed popularity (a few foremen
get most of the work), tasks take about ``--task-seconds``, and a foreman
hands out at most ``--foreman-rate`` tasks per second (its CPU per task).
Two policies are compared on the same random draws:

- ``isolated``: a foreman runs only its own clients' jobs on its own volunteers;
- ``stealing``: a foreman with idle volunteer slots and nothing queued takes
  a batch of queued tasks from the foreman with the longest queue (payloads
  move foreman to foreman; the shared store only says who has what).

Prints slot utilization, tasks done, and the median and 95th percentile of
job completion times per policy.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass, field

__all__ = ["main"]


@dataclass
class Foreman:
    volunteers: int  # volunteers whose credential hashes here
    online: int = 0  # of them, connected now
    running: int = 0  # tasks running on them
    queue: list[list[int]] = field(default_factory=list)  # [job id, tasks left to hand out], oldest first
    owed: dict[int, int] = field(default_factory=dict)  # job id -> tasks not finished yet (its own jobs)


def simulate(args: argparse.Namespace, stealing: bool) -> dict:
    rng = random.Random(args.seed)
    share = [1 / (rank + 1) ** args.skew for rank in range(args.foremen)]  # Zipf-like popularity of foremen
    per = args.volunteers // args.foremen
    foremen = [Foreman(per) for _ in range(args.foremen)]
    online_fraction = args.session / (args.session + args.away)
    for f in foremen:
        f.online = round(f.volunteers * online_fraction)
    slots_per = args.slots
    submitted: dict[int, tuple[float, int]] = {}  # job id -> (time, home foreman)
    running_of: list[dict[int, int]] = [{} for _ in foremen]  # per foreman: job id -> tasks running there
    homes: dict[int, int] = {}
    finished: list[float] = []
    busy_slot_seconds = slot_seconds = 0.0
    done_tasks = 0
    next_job = 0
    load = args.load * args.volunteers * online_fraction * slots_per / args.task_seconds  # tasks/s offered
    job_rate = load / (args.job_tasks * math.exp(0.5))  # lognormal sizes, sigma 1: mean = median * e^(1/2)
    for second in range(int(args.hours * 3600)):
        now = float(second)
        # Churn: volunteers leave (end of session) and come back.
        for f in foremen:
            leave = _binomial(rng, f.online, 1 / args.session)
            back = _binomial(rng, f.volunteers - f.online, 1 / args.away)
            f.online += back - leave
            lost = min(f.running, round(f.running * leave / max(1, f.online + leave)))
            if lost:  # tasks on departed volunteers go back to the front of their foreman's queue
                _requeue(rng, f, running_of[foremen.index(f)], lost)
        # New jobs, at their clients' home foremen.
        for _ in range(_poisson(rng, job_rate)):
            home = rng.choices(range(args.foremen), weights=share)[0]
            tasks = max(1, round(rng.lognormvariate(math.log(args.job_tasks), 1.0)))
            foremen[home].queue.append([next_job, tasks])
            foremen[home].owed[next_job] = tasks
            submitted[next_job] = (now, home)
            homes[next_job] = home
            next_job += 1
        # Stealing: an idle foreman takes a batch from the longest queue.
        if stealing:
            for f in foremen:
                idle = f.online * slots_per - f.running
                if idle > 0 and not f.queue:
                    donor = max(foremen, key=lambda g: sum(t for _, t in g.queue))
                    if donor is not f and donor.queue:
                        _move(donor, f, min(idle, args.steal_batch))
        # Hand out tasks (at most foreman_rate a second each), then finish some.
        for index, f in enumerate(foremen):
            free = f.online * slots_per - f.running
            budget = min(free, args.foreman_rate)
            while budget > 0 and f.queue:
                job, left = f.queue[0]
                take = min(budget, left)
                f.queue[0][1] -= take
                if f.queue[0][1] == 0:
                    f.queue.pop(0)
                running_of[index][job] = running_of[index].get(job, 0) + take
                f.running += take
                budget -= take
            slot_seconds += f.online * slots_per
            busy_slot_seconds += f.running
            ending = _binomial(rng, f.running, 1 / args.task_seconds)
            for job, count in _pick(rng, running_of[index], ending):
                done_tasks += count
                home = foremen[homes[job]]
                home.owed[job] -= count
                if home.owed[job] == 0:
                    del home.owed[job]
                    finished.append(now - submitted[job][0])
            f.running -= ending
    finished.sort()
    return {
        "utilization": busy_slot_seconds / max(1.0, slot_seconds),
        "tasks": done_tasks,
        "jobs": len(finished),
        "median": statistics.median(finished) if finished else math.nan,
        "p95": finished[int(0.95 * (len(finished) - 1))] if finished else math.nan,
        "offered": load,
        "submitted": next_job,
    }


def _move(donor: Foreman, taker: Foreman, count: int) -> None:
    """Move up to ``count`` queued tasks from the back of the donor's queue."""
    while count > 0 and donor.queue:
        job, left = donor.queue[-1]
        take = min(count, left)
        donor.queue[-1][1] -= take
        if donor.queue[-1][1] == 0:
            donor.queue.pop()
        taker.queue.append([job, take])
        count -= take


def _requeue(rng: random.Random, f: Foreman, running: dict[int, int], count: int) -> None:
    for job, lost in _pick(rng, running, count):
        f.queue.insert(0, [job, lost])
        f.running -= lost


def _pick(rng: random.Random, running: dict[int, int], count: int) -> list[tuple[int, int]]:
    """Take ``count`` running tasks, spread over jobs in proportion; remove them from ``running``."""
    taken: list[tuple[int, int]] = []
    total = sum(running.values())
    for job in list(running):
        if count <= 0 or total <= 0:
            break
        share = min(running[job], count, max(1, round(count * running[job] / total)))
        running[job] -= share
        total -= share
        count -= share
        if running[job] == 0:
            del running[job]
        taken.append((job, share))
    return taken


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 0:
        return 0
    mean = n * p
    if mean > 30:  # normal approximation
        return max(0, min(n, round(rng.gauss(mean, math.sqrt(mean * (1 - p))))))
    return _poisson(rng, mean) if n > 1000 else sum(rng.random() < p for _ in range(n))


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    threshold, k, product = math.exp(-mean), 0, rng.random()
    while product > threshold:
        k += 1
        product *= rng.random()
    return k


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.federation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--volunteers", type=int, default=100_000)
    parser.add_argument("--foremen", type=int, default=10)
    parser.add_argument("--slots", type=int, default=2, help="task slots per volunteer")
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--session", type=float, default=3600.0, help="mean seconds a volunteer stays")
    parser.add_argument("--away", type=float, default=1800.0, help="mean seconds a volunteer is away")
    parser.add_argument("--task-seconds", type=float, default=30.0)
    parser.add_argument("--job-tasks", type=int, default=2000, help="median tasks per job")
    parser.add_argument("--load", type=float, default=0.8, help="offered work over the crowd's mean capacity")
    parser.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of the foremen's popularity")
    parser.add_argument("--foreman-rate", type=int, default=2000, help="tasks a foreman hands out per second")
    parser.add_argument("--steal-batch", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"{args.volunteers:,} volunteers x {args.slots} slots over {args.foremen} foremen, {args.hours:g} h, "
        f"tasks of ~{args.task_seconds:g} s, offered load {args.load:g}, foreman cap {args.foreman_rate} tasks/s"
    )
    print("| policy | slot utilization | tasks done | jobs done of submitted | job time, median | job time, p95 |")
    print("|---|---|---|---|---|---|")
    for name, stealing in (("isolated", False), ("stealing", True)):
        r = simulate(args, stealing)
        print(
            f"| {name} | {r['utilization']:.2f} | {r['tasks']:,} | {r['jobs']:,} of {r['submitted']:,} | "
            f"{r['median'] / 60:.1f} min | {r['p95'] / 60:.1f} min |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
