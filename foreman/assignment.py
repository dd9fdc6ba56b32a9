"""Leasing queued tasks to workers: who gets what next. Pure functions over the scheduler's records.

Jobs with queued tasks take turns (round robin over ``ready``), and the
worker with the most free room is served first: a worker with an idle slot
before any prefetch room (a far worker may hold many tasks ahead, which must
not keep work from idle slots), then the most room, then the fewest items held,
then the one whose last lease is oldest (so that ties do not always go the
same way); the index of
:mod:`foreman.free_workers` finds it without looking at every worker. A queue entry is one
replica of a task to run: a redundant job queues each task several times,
and no worker gets two replicas of the same task. A job that needs
resources or labels goes only to workers that have the labels and enough
of each resource free (a lease holds its job's resources until it ends);
``waiting_reason`` says why no connected worker can take a job.
"""

from __future__ import annotations

import itertools
from collections import deque

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import Serializer

from .free_workers import FreeWorkers, Kind
from .prefetch import begin_job
from .splitting import cut_for_lease
from .state import Job, Send, Task, TaskState, Worker

__all__ = ["assign", "can_run", "drop_leases", "enqueue", "job_notice", "unlease", "waiting_reason"]

_LEASES = itertools.count(1)  # orders leases, for fair ties between equally free workers


def enqueue(ready: deque[str], job: Job, task: Task, *, front: bool = False, replicas: int = 1) -> None:
    """Queue ``replicas`` more runs of ``task``; its job takes its turn in ``ready``."""
    if not task.leases:
        task.state = TaskState.QUEUED
    for _ in range(replicas):
        if front:
            job.queue.appendleft(task.task_id)
        else:
            job.queue.append(task.task_id)
    if job.job_id not in ready:
        ready.append(job.job_id)


def unlease(workers: dict[str, Worker], job: Job, task: Task, worker_id: str, free: FreeWorkers) -> None:
    """End ``worker_id``'s lease on ``task`` (its room grows in ``free``)."""
    held = task.leases.pop(worker_id, None)
    worker = workers.get(worker_id)
    if worker is not None:
        worker.running.pop((job.job_id, task.task_id), None)
        if held is not None:
            for name, amount in job.resources.items():
                worker.used[name] = max(0.0, worker.used.get(name, 0.0) - amount)
        free.touch(worker)


def can_run(worker: Worker, job: Job) -> bool:
    """Whether ``worker`` could ever run ``job``'s tasks: it has the labels and enough of each resource."""
    if worker.portable_only and job.serializer != Serializer.PORTABLE:
        return False  # cloudpickle needs the client's Python and cloudpickle versions
    if worker.worker_id in job.unbuildable or (job.requirements and not worker.installs):
        return False
    if any(worker.labels.get(name) != value for name, value in job.labels.items()):
        return False
    return all(worker.resources.get(name, 0.0) >= amount for name, amount in job.resources.items())


def _suits(worker: Worker, job: Job) -> bool:
    """Whether workers of ``worker``'s kind (``free_workers.kind``) may suit ``job``: ``can_run``
    without what differs between them (how much of each resource, environments that failed)."""
    if worker.portable_only and job.serializer != Serializer.PORTABLE:
        return False
    if job.requirements and not worker.installs:
        return False
    if any(worker.labels.get(name) != value for name, value in job.labels.items()):
        return False
    return all(name in worker.resources or amount <= 0 for name, amount in job.resources.items())


def _has_room(worker: Worker, job: Job) -> bool:
    """Whether ``worker`` has the job's resources free now."""
    return all(
        worker.resources.get(name, 0.0) - worker.used.get(name, 0.0) >= amount for name, amount in job.resources.items()
    )


def job_notice(workers: dict[str, Worker], job: Job) -> str:
    """What holds ``job`` back: workers building its environment, or why none can take it ("" if nothing)."""
    if job.preparing:
        count = len(job.preparing)
        return f"preparing environment on {count} worker{'s' if count != 1 else ''}"
    return waiting_reason(workers, job)


def waiting_reason(workers: dict[str, Worker], job: Job) -> str:
    """Why no connected worker can take ``job`` ("waiting: no connected worker has gpu=1"), or "".

    The labels and resources first; among the workers that have them, what else
    keeps each one from the job (--no-install, an environment it could not build,
    portable jobs only), so that the notice names the real obstacle.
    """
    usable = [w for w in workers.values() if not w.draining and not w.quarantined]
    if any(can_run(w, job) for w in usable):
        return ""
    if not usable:
        return "waiting: no worker is connected"
    wants = [f"{name}={amount:g}" for name, amount in job.resources.items()]
    wants += [f"{name}={value}" for name, value in job.labels.items()]
    offering = [w for w in usable if _offers(w, job)]
    if not offering:
        return "waiting: no connected worker has " + ", ".join(wants)
    with_wants = f" with {', '.join(wants)}" if wants else ""
    obstacles = [_obstacle(w, job) for w in offering]
    if len(set(obstacles)) > 1:
        counts = ", ".join(f"{obstacles.count(o)} {_OBSTACLES[o][1]}" for o in dict.fromkeys(obstacles))
        return f"waiting: no connected worker{with_wants} can take it: {counts}"
    sentence = _OBSTACLES[obstacles[0]][0]
    return "waiting: " + sentence.format(with_wants=with_wants)


# Why a worker that has a job's labels and resources cannot take it: the sentence when every
# such worker is kept away by the same thing, and the phrase that counts them otherwise.
_OBSTACLES = {
    "no-install": (
        "the connected workers{with_wants} install no packages (they run with --no-install)",
        "with --no-install",
    ),
    "unbuildable": (
        "no connected worker{with_wants} could build its environment",
        "failed to build the environment",
    ),
    "portable": (
        "every connected worker{with_wants} runs portable jobs only (submit with serializer='portable')",
        "for portable jobs only",
    ),
}


def _offers(worker: Worker, job: Job) -> bool:
    """Whether ``worker`` has the job's labels and (at most, not free now) its resources."""
    if any(worker.labels.get(name) != value for name, value in job.labels.items()):
        return False
    return all(worker.resources.get(name, 0.0) >= amount for name, amount in job.resources.items())


def _obstacle(worker: Worker, job: Job) -> str:
    """What keeps a worker that offers what ``job`` needs from it (a key of ``_OBSTACLES``), as ``can_run`` checks."""
    if worker.portable_only and job.serializer != Serializer.PORTABLE:
        return "portable"
    if job.requirements and not worker.installs:
        return "no-install"
    return "unbuildable"


def drop_leases(workers: dict[str, Worker], job: Job, free: FreeWorkers) -> None:
    """End every lease of the job (it ended: stragglers' results will be dropped)."""
    for task in job.tasks.values():
        for worker_id in list(task.leases):
            unlease(workers, job, task, worker_id, free)


def assign(jobs: dict[str, Job], ready: deque[str], now: float, free: FreeWorkers, crowd_slots: int = 0) -> list[Send]:
    """Lease queued tasks to free worker capacity, best worker first (``free``); the frames to send.
    ``crowd_slots``: the workers' slots in all (a worker's first task of a job sizes its prefetch from it)."""
    actions: list[Send] = []
    stuck: dict[str, Worker] = {}  # workers no queued replica may go to (they ran them all, or lack what jobs need)
    unsuited: set[Kind] = set()  # kinds of worker no queued job suits: passed over whole
    while ready:
        worker = free.pop(unsuited)
        if worker is None:
            break
        if worker.worker_id in stuck:  # a second entry of a worker already found stuck
            continue
        for _ in range(len(ready)):
            job = jobs[ready[0]]
            task = _take(job, worker, crowd_slots)
            if job.queue:
                ready.rotate(-1)
            else:
                ready.popleft()
            if task is not None:
                actions += _lease(job, task, worker, now, crowd_slots)
                free.touch(worker)
                break
        else:
            stuck[worker.worker_id] = worker
            worker_kind = free.kind_of(worker)
            if worker_kind is not None and not any(_suits(worker, jobs[job_id]) for job_id in ready):
                unsuited.add(worker_kind)
    for worker in stuck.values():  # they keep their room for what is queued next
        free.touch(worker)
    return actions


def _take(job: Job, worker: Worker, crowd_slots: int) -> Task | None:
    """The next queued replica of ``job`` that ``worker`` may run, removed from the queue
    (cut to a guided share if it came in pieces: ``splitting.cut_for_lease``)."""
    if not can_run(worker, job) or not _has_room(worker, job):
        return None
    if job.redundancy == 1 and job.queue and not job.tasks[job.queue[0]].leases:
        task = job.tasks[job.queue.popleft()]
        cut_for_lease(job, task, crowd_slots)
        return task
    for position, task_id in enumerate(job.queue):
        task = job.tasks[task_id]
        if task.state is TaskState.DONE:  # a reissued or backup run no longer needed
            continue
        # Replicas go to workers that never ran the task; reissued runs and backups to one not running it.
        if not (worker.key in task.tried if job.redundancy > 1 else worker.worker_id in task.leases):
            del job.queue[position]
            return job.tasks[task_id]
    return None


def _lease(job: Job, task: Task, worker: Worker, now: float, crowd_slots: int) -> list[Send]:
    first = job.job_id not in worker.jobs  # the worker's first task of the job carries its function
    if first:
        begin_job(worker, job, crowd_slots)
        worker.jobs.add(job.job_id)
        job.workers.add(worker.worker_id)
    task.state = TaskState.RUNNING
    task.attempt += 1
    task.leases[worker.worker_id] = task.attempt
    task.tried.add(worker.key)
    if not worker.trusted:
        job.untrusted.add(worker.key)
    task.assigned_at = now
    task.progress = 0
    worker.running[job.job_id, task.task_id] = task.count
    for name, amount in job.resources.items():
        worker.used[name] = worker.used.get(name, 0.0) + amount
    worker.last_lease = next(_LEASES)
    assert task.payload is not None
    assign = p.AssignTask(
        job.job_id,
        task.task_id,
        task.attempt,
        task.first_index,
        task.count,
        task.payload,
        job.task_timeout,
        function=job.function if first else b"",
        serializer=job.serializer,
        requirements=list(job.requirements) if first else [],
    )
    return [Send(worker.worker_id, assign)]
