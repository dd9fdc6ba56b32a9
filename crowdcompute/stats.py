"""Where a job's time went: per worker, per task, and hints for tuning ``chunksize``.

Timings come from three places: the worker measures how long the user's
function ran and how long each task waited on it for a free task process,
the foreman how long each task waited for a slot, and the client how long
it spent serializing and how long each task took from being sent to its
outcome arriving. The network's share (transit) is what remains of that
round trip. ``job.stats`` computes a :class:`JobStats` at any moment.

What a map prints when it ends (:meth:`JobStats.report`) is empty unless it
helps: for a long job, or one whose chunks were badly sized (with a hint).
Its lines are short, in plain words, so a notebook never wraps them
mid-number.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["JobStats", "TaskTiming", "WorkerStats"]

#: Below this mean run time per task (seconds), per-task overhead dominates.
SMALL_TASK_SECONDS = 0.005
#: A job whose last tasks leave slots idle this share of its wall time gets a hint.
IDLE_TAIL_SHARE = 0.25
#: Jobs that take longer than this (seconds) print where their time went.
LONG_JOB_SECONDS = 30.0
#: Jobs shorter than this (seconds) get no chunksize hint: there is nothing worth saving.
HINT_MIN_SECONDS = 0.5
#: Jobs of fewer tasks get no "larger chunksize" hint.
HINT_MIN_TASKS = 8
#: Workers listed by name in the report; more are summed up.
WORKERS_LISTED = 8


@dataclass(frozen=True)
class TaskTiming:
    """One task's outcome, as timed by the worker, the foreman and the client."""

    task_id: int
    count: int
    worker: str
    seconds: float  # running the user's function
    queued: float  # waiting on the foreman for a slot
    attempts: int
    round_trip: float | None  # from sending it to its outcome arriving (None after attach)
    arrived: float  # monotonic time its outcome arrived
    trusted: bool = True  # False: only untrusted volunteers returned it
    reissued: int = 0  # runs started because its leases passed their deadline
    backups: int = 0  # backup copies run at the tail of the job
    waited: float = 0.0  # waiting on the worker for a free task process

    @property
    def transit(self) -> float | None:
        """Time on the network: the round trip less running and waiting on the foreman and the worker."""
        if self.round_trip is None:
            return None
        return max(0.0, self.round_trip - self.seconds - self.queued - self.waited)


@dataclass
class WorkerStats:
    items: int = 0
    tasks: int = 0
    busy: float = 0.0  # seconds running the user's function


@dataclass
class JobStats:
    """A job's timing so far. ``summary()`` is one line; ``hints()`` say what to change."""

    items: int
    total: int
    wall: float
    slots: int
    serializing: float
    decoding: float
    tasks: list[TaskTiming] = field(default_factory=list)
    waiting: str = ""  # what the job waits for beyond free slots ("task 12 needs 1 more distinct worker")

    @classmethod
    def measure(
        cls,
        items: int,
        total: int,
        started: float,
        finished: float | None,
        slots: int,
        serializing: float,
        decoding: float,
        tasks: Iterable[TaskTiming],
        waiting: str = "",
    ) -> JobStats:
        """The stats of a job that started at monotonic time ``started`` (and ``finished``, or is running)."""
        end = finished or time.monotonic()
        return cls(items, total, end - started, slots, serializing, decoding, list(tasks), waiting)

    @property
    def workers(self) -> dict[str, WorkerStats]:
        """Items, tasks and busy seconds per worker name."""
        found: dict[str, WorkerStats] = {}
        for t in self.tasks:
            w = found.setdefault(t.worker or "?", WorkerStats())
            w.items += t.count
            w.tasks += 1
            w.busy += t.seconds
        return found

    @property
    def reissued(self) -> int:
        """Runs started again elsewhere because a worker held a task past its deadline."""
        return sum(t.reissued for t in self.tasks)

    @property
    def backups(self) -> int:
        """Backup copies of slow tasks run at the tail of the job."""
        return sum(t.backups for t in self.tasks)

    @property
    def untrusted_workers(self) -> int:
        """Untrusted volunteers whose results the job used (decoded as plain data unless trust_workers=True)."""
        return len({t.worker for t in self.tasks if not t.trusted})

    @property
    def mean_task(self) -> float:
        return sum(t.seconds for t in self.tasks) / len(self.tasks) if self.tasks else 0.0

    @property
    def slowest_task(self) -> float:
        return max((t.seconds for t in self.tasks), default=0.0)

    @property
    def queued(self) -> float:
        """Mean seconds a task waited on the foreman."""
        return sum(t.queued for t in self.tasks) / len(self.tasks) if self.tasks else 0.0

    @property
    def waited(self) -> float:
        """Mean seconds a task waited on its worker for a free task process."""
        return sum(t.waited for t in self.tasks) / len(self.tasks) if self.tasks else 0.0

    @property
    def transit(self) -> float:
        """Mean seconds a task spent on the network (there and back)."""
        known = [t.transit for t in self.tasks if t.transit is not None]
        return sum(known) / len(known) if known else 0.0

    @property
    def extra_attempts(self) -> int:
        """Leases beyond one per task: reassignments after a worker loss, crashes and retries."""
        return sum(t.attempts - 1 for t in self.tasks)

    @property
    def busy(self) -> float:
        return sum(t.seconds for t in self.tasks)

    @property
    def utilization(self) -> float:
        """Share of slot time spent in the user's function."""
        capacity = self.wall * max(1, self.slots)
        return min(1.0, self.busy / capacity) if capacity > 0 else 0.0

    def summary(self) -> str:
        """Where the time went, in a few short lines: items, time and rate; items and busy time
        per worker; per task, time running, waiting (on the foreman, on the worker) and on the
        network. Empty for a job with no items."""
        if not self.total:
            return ""
        rate = self.items / self.wall if self.wall > 0 else 0.0
        workers = self.workers
        lines = [
            f"{_count(self.items, 'item')} of {self.total} in {_seconds(self.wall)} ({rate:,.1f} items/s).",
            f"{_count(len(self.tasks), 'task')} on {_count(len(workers), 'worker')}, "
            f"busy {self.utilization:.0%} of the time:",
        ]
        shown = sorted(workers.items(), key=lambda pair: _natural_key(pair[0]))
        listed = [f"{name}: {_count(w.items, 'item')}, busy {_seconds(w.busy)}" for name, w in shown[:WORKERS_LISTED]]
        if len(shown) > WORKERS_LISTED:
            rest = shown[WORKERS_LISTED:]
            listed.append(
                f"{len(rest)} more: {_count(sum(w.items for _, w in rest), 'item')}, "
                f"busy {_seconds(sum(w.busy for _, w in rest))}"
            )
        lines.extend(f"  {entry}" for entry in listed)
        if self.tasks:
            lines.append(
                f"Per task: {_seconds(self.mean_task)} running (slowest {_seconds(self.slowest_task)}), "
                f"{_seconds(self.transit)} on the network,"
            )
            lines.append(
                f"  {_seconds(self.queued)} waiting for a worker, {_seconds(self.waited)} queued on the worker."
            )
        if self.extra_attempts:
            lines.append(f"{_count(self.extra_attempts, 'task')} reassigned or retried.")
        if self.reissued or self.backups:
            lines.append(
                f"{_count(self.reissued, 'run')} reissued past their deadline, {_count(self.backups, 'backup run')}."
            )
        if self.untrusted_workers:
            lines.append(f"Results from {_count(self.untrusted_workers, 'untrusted worker')}.")
        if self.waiting:
            lines.append(f"Waiting: {self.waiting}")
        return "\n".join(lines)

    def worth_showing(self) -> bool:
        """True when the summary helps: a long job, one with a hint, or one that used untrusted workers."""
        if not self.total or self.items < self.total:
            return False
        return self.wall >= LONG_JOB_SECONDS or bool(self.untrusted_workers) or bool(self.hints())

    def report(self) -> str:
        """What a map prints when it ends: nothing, unless :meth:`worth_showing`; then the
        summary and one ``hint:`` line per hint."""
        if not self.worth_showing():
            return ""
        return "\n".join([self.summary(), *(f"hint: {hint}" for hint in self.hints())])

    def hints(self) -> list[str]:
        """Advice when chunks are so small that overhead dominates, or so large that slots idle."""
        hints = []
        overhead = self.transit + self.queued + self.waited
        if (
            len(self.tasks) >= HINT_MIN_TASKS
            and self.wall >= HINT_MIN_SECONDS
            and self.mean_task < SMALL_TASK_SECONDS
            and overhead > self.mean_task
        ):
            hints.append(
                f"each task ran {_seconds(self.mean_task)} but spent {_seconds(overhead)} waiting and on "
                "the network: pass a larger chunksize"
            )
        if self.tasks and self.items >= self.total and self.wall > HINT_MIN_SECONDS:
            first_idle = sorted(t.arrived for t in self.tasks)[max(0, len(self.tasks) - max(1, self.slots))]
            tail = max(t.arrived for t in self.tasks) - first_idle
            if self.slots > 1 and tail > IDLE_TAIL_SHARE * self.wall and self.slowest_task > 2 * self.mean_task:
                hints.append(
                    f"task processes sat idle for the last {_seconds(tail)} while the slowest tasks finished "
                    f"({_seconds(self.slowest_task)}, {_seconds(self.mean_task)} on average): pass a smaller chunksize"
                )
        return hints


def _seconds(seconds: float) -> str:
    """``0.4 ms``, ``12 ms``, ``1.25 s``, ``3 min 5 s``: with a non-breaking space, so no line breaks mid-figure."""
    if seconds < 0.01:
        text = f"{seconds * 1000:.1f} ms"
    elif seconds < 1:
        text = f"{seconds * 1000:.0f} ms"
    elif seconds < 60:
        text = f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    else:
        minutes, rest = divmod(round(seconds), 60)
        text = f"{minutes} min {rest} s"
    return text.replace(" ", "\u00a0")


def _count(n: int, noun: str) -> str:
    return f"{n:,}\u00a0{noun}" if n == 1 else f"{n:,}\u00a0{noun}s"


def _natural_key(name: str) -> list:
    """local-2 before local-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
