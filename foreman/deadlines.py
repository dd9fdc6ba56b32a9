"""Lease deadlines and backup runs: a hoarded or stalled task does not hold a job back.

Pure functions over the scheduler's records. Every lease gets a deadline
from the job's observed round trips (lease to outcome, as the foreman sees
them, so a worker cannot talk its deadline up): ``LEASE_DEADLINE_FACTOR``
times the slowest recent one, at least ``MIN_LEASE_DEADLINE`` seconds, or
that factor times the lease's items at the pace the foreman saw the worker's
own last outcome of the job come back, if that is longer (a slow but
answering worker given a big chunk is not "overdue" because the job's recent
outcomes came from fast workers with small ones; one that never answered has
no pace of its own). A job with no outcome yet has no deadline; a task
timeout caps it at twice the timeout plus the minimum. A task whose every lease is past its deadline
is queued again for another worker: the first outcome to arrive wins, and
the other runs are told to stop (CancelTask). A lease past its deadline
counts as a missed deadline on its worker's record, even when another run
finished the task first (the lease stays until the worker answers, with an
outcome or TaskCancelled, or the job ends, so a worker that hoards tasks
fills its own capacity).

At the tail of a job (nothing left in its queue) a slot that would idle
runs a backup copy of the task that has run longest, once it has run
longer than ``BACKUP_AFTER_FACTOR`` times the job's typical round trip
(MapReduce's backup tasks) and either runs past what its worker's pace in
the job allows (a stalled or slowed worker) or would end more than twice as
late there as a copy would (not a slow worker that ends it on time sooner
than a copy could: 21 items at 250 ms an item, 0.7 s from their end, kept
two 50-ms slots busy for 1.05 s each), or of a task still waiting in a worker's
prefetch that it would end (its turn there, then its items at its pace)
more than twice as late as a copy on the fastest worker with room (that
worker's round trip, then the items at its pace): in a crowd of unequal
machines, a slow one, or one holding a long queue, must not hold the job's
last tasks while others idle. The server asks for them every
``TAIL_CHECK_INTERVAL`` seconds while a job is at its tail (its client
has sent all its tasks), and the scheduler's tick does too. Redundant jobs get neither: their runs must be on distinct workers
and agree anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .state import Job, JobState, Task, TaskState, Worker

__all__ = [
    "BACKUP_AFTER_FACTOR",
    "DURATIONS_KEPT",
    "LEASE_DEADLINE_FACTOR",
    "MIN_LEASE_DEADLINE",
    "TAIL_CHECK_INTERVAL",
    "Overdue",
    "allowance",
    "backups",
    "observe",
    "overdue",
]

#: A lease's deadline is this many times the slowest recent round trip of its job...
LEASE_DEADLINE_FACTOR = 4.0
#: ... and never less than this many seconds.
MIN_LEASE_DEADLINE = 2.0
#: A running task gets a backup copy at the tail of its job after this many typical round trips.
BACKUP_AFTER_FACTOR = 2.0
#: Round trips of a job kept to set its deadlines.
DURATIONS_KEPT = 50
#: Seconds between two looks for backup runs while a job is at its tail.
TAIL_CHECK_INTERVAL = 0.1


@dataclass(frozen=True)
class Overdue:
    """A lease past its deadline."""

    job: Job
    task: Task
    worker_id: str
    reissue: bool  # every lease of the task is overdue: queue another run


def observe(job: Job, task: Task, worker_id: str, now: float, worker: Worker | None = None) -> None:
    """Keep the round trip of ``worker_id``'s lease on ``task``, which just reported (and the
    worker's pace in the job, from it)."""
    started = task.lease_started.pop(worker_id, None)
    if started is None:
        return
    took = max(0.0, now - started)
    if worker is not None and task.count > 0:
        worker.lease_pace, worker.paced_job = took / task.count, job.job_id
    if worker_id not in task.overdue:
        job.durations.append(took)
        del job.durations[:-DURATIONS_KEPT]


def allowance(job: Job, min_deadline: float = MIN_LEASE_DEADLINE, items: int = 1, pace: float = 0.0) -> float | None:
    """Seconds a lease of ``job`` may last; None: no deadline yet (nothing observed, no timeout).

    ``items``: the lease's; ``pace``: seconds an item of the job took on its worker, lease to
    outcome (0: not seen), which may lengthen the deadline, never shorten it. With a task
    timeout, never more than twice that (the worker stops a task at its timeout, so a lease
    that outlives it by that much is stalled, not slow)."""
    limits = []
    if job.durations:
        own = LEASE_DEADLINE_FACTOR * pace * items
        limits.append(max(min_deadline, LEASE_DEADLINE_FACTOR * max(job.durations), own))
    if job.task_timeout is not None:
        limits.append(2 * job.task_timeout + min_deadline)
    return min(limits, default=None)


def overdue(
    jobs: dict[str, Job], workers: Iterable[Worker], now: float, min_deadline: float = MIN_LEASE_DEADLINE
) -> list[Overdue]:
    """Leases that passed their deadline since the last call (each is reported once)."""
    found: list[Overdue] = []
    for worker in workers:
        for job_id, task_id in sorted(worker.running):
            job = jobs.get(job_id)
            if job is None or job.redundancy > 1 or job.state is not JobState.RUNNING:
                continue
            task = job.tasks[task_id]
            started = task.lease_started.get(worker.worker_id)
            pace = worker.lease_pace if worker.paced_job == job_id else 0.0
            limit = allowance(job, min_deadline, task.count, pace)
            if started is None or limit is None or worker.worker_id in task.overdue or now - started <= limit:
                continue
            task.overdue.add(worker.worker_id)
            live = [w for w in task.leases if w not in task.overdue]
            found.append(Overdue(job, task, worker.worker_id, reissue=not live and task.state is not TaskState.DONE))
    return found


def backups(jobs: dict[str, Job], workers: Iterable[Worker], now: float) -> list[tuple[Job, Task]]:
    """Tasks at the tail of their job that idle slots should run a copy of: those waiting in a
    slower worker's prefetch that it would end latest, then running ones, longest-running first.

    One pass over the leases (a worker's first ``slots`` leases run, the rest wait their turn,
    in lease order), not over the jobs' tasks: the cost follows the crowd, not the jobs' sizes.
    """
    workers = list(workers)
    room = [(w, free) for w in workers if (free := w.free) > 0]  # room that nothing queued will fill
    idle = sum(free for _, free in room)
    if idle == 0:
        return []
    typical = {
        job.job_id: sorted(job.durations)[len(job.durations) // 2]
        for job in jobs.values()
        if job.redundancy == 1 and job.state is JobState.RUNNING and not job.queue and job.durations
    }
    if not typical:
        return []
    fresh = _fresh_runs(room, typical)
    waiting: list[tuple[float, Job, Task]] = []
    running: list[tuple[float, Job, Task]] = []
    for worker in workers:
        before = worker.slots * 0.5  # items its slots still run: half of one each, on average
        for position, ((job_id, task_id), items) in enumerate(worker.running.items()):
            if position >= worker.slots:
                ends = (before / worker.slots + items) * worker.item_seconds  # from now, at its pace
                before += items
            if job_id not in typical:
                continue
            job = jobs[job_id]
            task = job.tasks[task_id]
            if task.state is not TaskState.RUNNING or task.backups or len(task.leases) != 1:
                continue
            if position < worker.slots:
                started = task.lease_started.get(worker.worker_id, now)
                pace = worker.item_seconds if worker.timed_job == job_id else 0.0
                ran = now - started
                if ran > BACKUP_AFTER_FACTOR * typical[job_id] and _worth_a_backup(
                    ran, items, pace, fresh.get(job_id), typical[job_id]
                ):
                    running.append((started, job, task))
            elif worker.timed_job == job_id and _worth_a_copy(ends, items, fresh.get(job_id), typical[job_id]):
                waiting.append((-ends, job, task))
    waiting.sort(key=lambda found: found[0])
    running.sort(key=lambda found: found[0])
    return [(job, task) for _, job, task in (*waiting, *running)][:idle]


def _fresh_runs(room: list[tuple[Worker, int]], typical: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Per job at its tail, the pace and round trip of its fastest worker with room: (seconds an
    item, seconds of round trip) of a copy run there."""
    fresh: dict[str, tuple[float, float]] = {}
    for worker, _ in room:
        job_id = worker.timed_job
        if job_id in typical and worker.item_seconds > 0:
            pace, rtt = fresh.get(job_id, (worker.item_seconds, worker.rtt))
            fresh[job_id] = (min(pace, worker.item_seconds), min(rtt, worker.rtt))
    return fresh


def _worth_a_backup(ran: float, items: int, pace: float, fresh: tuple[float, float] | None, typical: float) -> bool:
    """Whether a task of ``items`` that has run ``ran`` seconds on a worker whose items of its
    job take ``pace`` seconds (0: not measured) should run on a worker with room too: when its
    worker's pace is not known, or it has run past what that pace allows, or its worker would
    end it more than twice as late as a copy would (``_worth_a_copy``)."""
    if pace <= 0:
        return True
    left = items * pace - ran
    return left <= 0 or _worth_a_copy(left, items, fresh, typical)


def _worth_a_copy(ends: float, items: int, fresh: tuple[float, float] | None, typical: float) -> bool:
    """Whether a task of ``items`` waiting in a worker's prefetch, which that worker would end
    ``ends`` seconds from now, should run on a worker with room too: when a copy there would end
    in less than half that time (its round trip, then the items at its pace); with no such
    worker measured, when it would end later than the job's typical round trip."""
    if fresh is None:
        return ends > typical
    pace, rtt = fresh
    return ends > 2 * (rtt + items * pace)
