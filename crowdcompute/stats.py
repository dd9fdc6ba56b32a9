"""Where a job's time went: per worker, per task, and hints for tuning ``chunksize``.

Timings come from three places: the worker measures how long the user's
function ran, the foreman how long each task waited for a slot, and the
client how long it spent serializing and how long each task took from
being sent to its outcome arriving. Transit is what remains of that round
trip. ``job.stats`` computes a :class:`JobStats` at any moment.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["JobStats", "TaskTiming", "WorkerStats"]

#: Below this mean run time per task (seconds), per-task overhead dominates.
SMALL_TASK_SECONDS = 0.005
#: A job whose last tasks leave slots idle this share of its wall time gets a hint.
IDLE_TAIL_SHARE = 0.25


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

    @property
    def transit(self) -> float | None:
        if self.round_trip is None:
            return None
        return max(0.0, self.round_trip - self.seconds - self.queued)


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
    def transit(self) -> float:
        """Mean seconds a task spent on the wire and in queues other than the foreman's."""
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
        """One line: items, tasks, workers, wall time, rate, utilization and overheads."""
        rate = self.items / self.wall if self.wall > 0 else 0.0
        text = (
            f"{self.items}/{self.total} items in {len(self.tasks)} tasks on {len(self.workers)} workers: "
            f"{self.wall:.2f} s ({rate:,.1f} items/s), slots {self.utilization:.0%} busy; per task "
            f"{_ms(self.mean_task)} run (slowest {_ms(self.slowest_task)}), {_ms(self.queued)} queued, "
            f"{_ms(self.transit)} transit; {_ms(self.serializing)} serializing"
        )
        if self.extra_attempts:
            text += f"; {self.extra_attempts} reassigned or retried"
        if self.reissued or self.backups:
            text += f"; {self.reissued} runs reissued past their deadline, {self.backups} backup runs"
        if self.untrusted_workers:
            text += f"; results from {self.untrusted_workers} untrusted workers"
        if self.waiting:
            text += f"; waiting: {self.waiting}"
        return text

    def report(self) -> str:
        """What a map prints when it ends: the summary, then one ``hint:`` line per hint."""
        return "\n".join([self.summary(), *(f"hint: {hint}" for hint in self.hints())])

    def hints(self) -> list[str]:
        """Advice when chunks are so small that overhead dominates, or so large that slots idle."""
        hints = []
        if len(self.tasks) >= 4 and self.mean_task < SMALL_TASK_SECONDS and self.transit + self.queued > self.mean_task:
            hints.append(
                f"tasks run {_ms(self.mean_task)} each but spend {_ms(self.transit + self.queued)} in transit and "
                "queues: pass a larger chunksize"
            )
        if self.tasks and self.items >= self.total and self.wall > 1.0:
            first_idle = sorted(t.arrived for t in self.tasks)[max(0, len(self.tasks) - max(1, self.slots))]
            tail = max(t.arrived for t in self.tasks) - first_idle
            if self.slots > 1 and tail > IDLE_TAIL_SHARE * self.wall and self.slowest_task > 2 * self.mean_task:
                hints.append(
                    f"slots sat idle for the last {tail:.1f} s while the slowest tasks finished "
                    f"({_ms(self.slowest_task)} vs {_ms(self.mean_task)} mean): pass a smaller chunksize"
                )
        return hints


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"
