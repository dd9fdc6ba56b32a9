"""The foreman's decisions, as a pure state machine.

Each public method is an event (a worker joined, a task finished, ...) and
returns the list of actions the server must carry out, in order: frames to
send (:class:`Send`), journal records (``Save*``, :class:`DeleteJob`) and
replays from the journal (:class:`Replay`). Nothing here awaits, touches a
socket or a file, or reads a payload: payloads are opaque bytes passed from
client to worker and back. Time comes from an injected clock.

Who gets which task is :mod:`foreman.assignment`; redundant runs are
counted by :mod:`foreman.quorum`; limits are in :mod:`foreman.limits`.
Mixins hold the rest of its events: :mod:`foreman.client_events` (jobs
and tasks coming in, cancel, attach, collect), :mod:`foreman.worker_events`
(workers joining, leaving, draining, building environments, printing),
:mod:`foreman.outcomes`
(a task finished or crashed, and what follows), :mod:`foreman.volunteering`
(invites, revocations, the record that follows a credential) and
:mod:`foreman.timers` (``tick()``: deadlines, backup runs, quorum timeouts);
who has room for the next lease is :mod:`foreman.free_workers`.
Every lease is (task, attempt, worker): an outcome is accepted only from its
holder, so a late result from a frozen worker is dropped. Jobs outlive their
client's connection: any client holding the token attaches by job id and
gets every outcome, until they are collected or ``result_ttl`` passes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from crowdcompute.wire import messages as p

from . import deadlines
from .assignment import assign, enqueue, job_notice
from .client_events import ClientEvents
from .credentials import Registry, Volunteer
from .free_workers import FreeWorkers
from .limits import (
    ALLOWED_FAILURES,
    DROPPED_LOGGED,
    DROPPED_LOGGED_EVERY,
    ENDED_JOBS_SHOWN,
    MAX_KEPT_OUTCOME_BYTES,
    MAX_QUEUED_BYTES,
    MAX_QUEUED_BYTES_TOTAL,
    MAX_QUEUED_TASKS,
    MAX_SLOTS_PER_WORKER,
    MAX_WORKER_LOSSES,
    RESULT_TTL,
)
from .outcomes import OutcomeEvents
from .splitting import split_queued
from .state import (
    Action,
    DeleteJob,
    Job,
    JobState,
    Note,
    SaveJob,
    SaveJobState,
    SaveTask,
    Send,
    Task,
    TaskState,
    Worker,
)
from .timers import TimedEvents
from .volunteering import VolunteerEvents
from .worker_events import WorkerEvents

__all__ = [
    "ALLOWED_FAILURES",
    "MAX_QUEUED_BYTES",
    "MAX_QUEUED_TASKS",
    "MAX_WORKER_LOSSES",
    "RESULT_TTL",
    "Action",
    "Scheduler",
]


class Scheduler(ClientEvents, WorkerEvents, OutcomeEvents, VolunteerEvents, TimedEvents):
    """Jobs, tasks and workers; events in, actions out.

    ``journaled``: a journal keeps every outcome, so the scheduler does not
    hold them in memory and replays them from the journal on attach.
    """

    def __init__(
        self,
        *,
        allowed_failures: int = ALLOWED_FAILURES,
        max_worker_losses: int = MAX_WORKER_LOSSES,
        result_ttl: float = RESULT_TTL,
        journaled: bool = False,
        clock: Callable[[], float] = time.time,
        max_queued_tasks: int = MAX_QUEUED_TASKS,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        max_queued_bytes_total: int = MAX_QUEUED_BYTES_TOTAL,
        max_kept_outcome_bytes: int = MAX_KEPT_OUTCOME_BYTES,
        max_slots_per_worker: int = MAX_SLOTS_PER_WORKER,
        min_lease_deadline: float = deadlines.MIN_LEASE_DEADLINE,
        backup_tasks: bool = True,
    ) -> None:
        self.allowed_failures = allowed_failures
        self.max_worker_losses = max_worker_losses
        self.min_lease_deadline = min_lease_deadline
        self.backup_tasks = backup_tasks  # run copies of the slowest tasks at the tail of a job
        self.max_slots_per_worker = max_slots_per_worker
        self.volunteers = Registry()  # invited workers' credential digests and records
        self.max_queued_tasks = max_queued_tasks
        self.max_queued_bytes = max_queued_bytes
        self.max_queued_bytes_total = max_queued_bytes_total
        self.max_kept_outcome_bytes = max_kept_outcome_bytes
        self.result_ttl = result_ttl
        self.journaled = journaled
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.ended: dict[str, dict[str, Any]] = {}  # job id -> summary of collected or cancelled jobs
        self.workers: dict[str, Worker] = {}
        self.clients: set[str] = set()
        self._mismatched: dict[str, str] = {}  # client id -> why it may submit portable jobs only
        self._ready: deque[str] = deque()  # job ids with queued tasks, in turn order
        self._total_slots: int | None = (
            None  # sum of the workers' slots, kept as they come and go; None: not summed yet
        )
        self._free = FreeWorkers()  # workers with free room, best first
        self._holding = False  # the messages of one frame are being handled: one assignment pass after them
        self._held = False  # a message asked for a pass while holding

    # --- connections -------------------------------------------------------

    def add_client(self, client_id: str, mismatch: str | None = None) -> list[Action]:
        """``mismatch``: why the client's runtime differs from the workers' (it may submit portable jobs only)."""
        self.clients.add(client_id)
        if mismatch:
            self._mismatched[client_id] = mismatch
        return []

    def remove_client(self, client_id: str) -> list[Action]:
        """A client went away: its jobs go on, waiting for it (or anyone) to attach."""
        self.clients.discard(client_id)
        self._mismatched.pop(client_id, None)
        for job in self.jobs.values():
            if job.client == client_id:
                job.client = None
            job.watchers.discard(client_id)
        return []

    # --- time --------------------------------------------------------------

    def expire(self) -> list[Action]:
        """Purge jobs that ended more than ``result_ttl`` seconds ago."""
        cutoff = self.clock() - self.result_ttl
        actions: list[Action] = []
        for job in [j for j in self.jobs.values() if j.finished_at is not None and j.finished_at < cutoff]:
            actions += self._archive(job)
        # A job whose client went away before sending all its tasks can never finish.
        for job in [j for j in self.jobs.values() if j.client is None and not j.all_received and j.created_at < cutoff]:
            actions.append(Note(f"dropped job {job.job_id}: its client left before sending all its tasks"))
            actions += self.cancel_job("", job.job_id)
        for job_id in [k for k, s in self.ended.items() if s["finished_at"] < cutoff]:
            del self.ended[job_id]
            actions.append(DeleteJob(job_id))
        return actions

    # --- restart -----------------------------------------------------------

    def restore(
        self, jobs: list[Job], ended: list[dict[str, Any]], volunteers: Sequence[Volunteer] = ()
    ) -> list[Action]:
        """Take back jobs and volunteers from the journal after a restart: unfinished tasks queue again."""
        self.volunteers.restore(list(volunteers))
        actions: list[Action] = []
        for summary in ended:
            self.ended[summary["id"]] = summary
        for job in jobs:
            job.client = None
            self.jobs[job.job_id] = job
            for task in job.tasks.values():
                if task.state is not TaskState.DONE:
                    job.queued_bytes += len(task.payload or b"")
                    self._enqueue(job, task, replicas=job.redundancy)
            if job.all_received and job.all_finished:  # stopped between its last outcome and its end
                actions += self._finish(job)
        return actions

    # --- queries -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Workers, slots and jobs as plain JSON data."""
        return {
            "workers": [worker.summary() for worker in self.workers.values()],
            "jobs": self.job_summaries(),
            "clients": len(self.clients),
        }

    def job_summaries(self) -> list[dict[str, Any]]:
        """The jobs of ``status()``: every job held, then the latest ended ones."""
        ended = sorted(self.ended.values(), key=lambda s: -s["finished_at"])[:ENDED_JOBS_SHOWN]
        public = ("id", "name", "total", "completed", "failed", "state")
        return [job.summary() for job in self.jobs.values()] + [
            {**{k: s[k] for k in public}, "untrusted_workers": s.get("untrusted_workers", 0), "waiting": ""}
            for s in ended
        ]

    @property
    def queued_bytes(self) -> int:
        """Input bytes of every job waiting for an outcome."""
        return sum(job.queued_bytes for job in self.jobs.values())

    def busy_clients(self) -> set[str]:
        """Clients following a running job (never closed for being idle)."""
        return {f for job in self.jobs.values() if job.state is JobState.RUNNING for f in job.followers()}

    @property
    def total_slots(self) -> int:
        """Slots of every connected worker (summed once, then kept up to date as workers come and go)."""
        if self._total_slots is None:
            self._total_slots = sum(w.slots for w in self.workers.values())
        return self._total_slots

    # --- internals ---------------------------------------------------------

    def _leased(self, worker_id: str, job_id: str, task_id: int, attempt: int) -> tuple[Job, Task] | None:
        """The job and task if ``worker_id`` holds this lease, else None."""
        job = self.jobs.get(job_id)
        task = job.tasks.get(task_id) if job else None
        if job is None or task is None or task.leases.get(worker_id) != attempt:
            return None
        return job, task

    def _rejected(self, worker_id: str, what: str, job_id: str, task_id: int, attempt: int) -> list[Action]:
        """A note of an outcome dropped; routine for a job that ended (a cancelled job's runs still
        report as they stop), a warning for a running one (a worker sending what it was not leased).
        A worker's first DROPPED_LOGGED are noted, then every DROPPED_LOGGED_EVERY-th: a hostile
        volunteer sending forged results must not fill the operator's log (5,000 lines in 1.6 s)."""
        worker = self.workers.get(worker_id)
        name = worker.name if worker else worker_id
        job = self.jobs.get(job_id)
        routine = job is None or job.state is not JobState.RUNNING
        count = 1
        if worker is not None and routine:  # counted apart: late runs of ended jobs do not mute real warnings
            worker.dropped_late += 1
            count = worker.dropped_late
        elif worker is not None:
            worker.dropped += 1
            count = worker.dropped
        if count > DROPPED_LOGGED and count % DROPPED_LOGGED_EVERY:
            return []
        more = (
            f" ({count} so far; from now on one in {DROPPED_LOGGED_EVERY} is noted)" if count >= DROPPED_LOGGED else ""
        )
        return [
            Note(
                f"dropped a {what} from worker {name} for job {job_id} task {task_id} attempt {attempt}: "
                f"not its lease{more}",
                routine=routine,
            )
        ]

    def _accept(self, job: Job) -> list[Action]:
        job.accepted = True
        return [Send(job.client, p.JobAccepted(job.job_id))] if job.client and job.ack else []

    def _enqueue(self, job: Job, task: Task, front: bool = False, replicas: int = 1) -> None:
        enqueue(self._ready, job, task, front=front, replicas=replicas)

    def _save_state(self, job: Job) -> SaveJobState:
        return SaveJobState(job.job_id, job.state.value, job.finished_at, job.completed_items, job.failed_items)

    def _release(self, job: Job) -> list[Action]:
        """Workers drop the job's function and stop its running tasks."""
        actions: list[Action] = []
        for worker_id in sorted(job.workers):
            worker = self.workers.get(worker_id)
            if worker is not None:
                worker.jobs.discard(job.job_id)
                actions.append(Send(worker_id, p.ReleaseJob(job.job_id)))
        job.workers.clear()
        return actions

    def _archive(self, job: Job) -> list[Action]:
        """Forget an ended job's tasks and outcomes; keep its summary until the TTL."""
        del self.jobs[job.job_id]
        summary = job.summary()
        summary.update(tasks=job.total_tasks, finished_at=job.finished_at or self.clock(), serializer=job.serializer)
        self.ended[job.job_id] = summary
        return []

    def _split_for_slots(self) -> list[Action]:
        """Slots joined: cut queued tasks that came in pieces down to the crowd there is now."""
        actions: list[Action] = []
        slots = self.total_slots
        for job in self.jobs.values():
            if job.splittable and job.state is JobState.RUNNING:
                changed = split_queued(job, slots)
                actions += [SaveTask(job.job_id, task) for task in changed]
                if changed:
                    actions.append(SaveJob(job))  # its task count grew
        return actions

    def hold_assignment(self) -> None:
        """Until ``release_assignment``, handlers lease nothing: the messages of one frame (a job
        and its first tasks, a worker's outcomes) get one assignment pass after them, not one
        each. Their leases go out when the turn ends either way."""
        self._holding = True

    def release_assignment(self) -> list[Action]:
        """End ``hold_assignment``: the pass the messages asked for, if any did."""
        asked, self._holding, self._held = self._held, False, False
        return self._assign() if asked else []

    def _assign(self) -> list[Action]:
        """Lease queued tasks to free worker capacity, jobs taking turns; note when each lease began."""
        if self._holding:
            self._held = True
            return []
        now = self.clock()
        sends = assign(self.jobs, self._ready, now, self._free, self.total_slots)
        actions: list[Action] = []
        for action in sends:
            if isinstance(action.message, p.AssignTask):
                job = self.jobs[action.message.job_id]
                if job.cuts:  # its tasks were cut as they were leased: the journal learns of the parts first
                    actions += [SaveTask(job.job_id, task) for task in job.cuts] + [SaveJob(job)]
                    job.cuts.clear()
                task = job.tasks[action.message.task_id]
                task.lease_started[action.to] = now
                task.overdue.discard(action.to)
        return actions + list(sends)

    def _notices(self) -> list[Action]:
        """Tell clients why their jobs do not run, when that changed (workers came or went, builds began or ended)."""
        actions: list[Action] = []
        for job in self.jobs.values():
            if job.state is not JobState.RUNNING or not (job.resources or job.labels or job.requirements):
                continue  # a job that needs nothing special runs on any worker that joins
            notice = job_notice(self.workers, job)
            if notice != job.notice:
                job.notice = notice
                # the clients' one "waiting" line: ours first, then the quorum's
                actions += [Send(f, p.JobWaiting(job.job_id, notice or job.waiting)) for f in job.followers()]
        return actions
