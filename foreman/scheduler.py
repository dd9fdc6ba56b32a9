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
and tasks coming in, cancel, attach, collect), :mod:`foreman.outcomes`
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
from crowdcompute.wire.constants import EnvironmentState, ErrorKind

from . import deadlines, prefetch
from .assignment import assign, enqueue, job_notice, unlease
from .client_events import ClientEvents
from .credentials import Registry, Volunteer
from .free_workers import FreeWorkers
from .limits import (
    ALLOWED_FAILURES,
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
    SaveVolunteer,
    Send,
    Task,
    TaskState,
    Worker,
)
from .timers import TimedEvents
from .volunteering import VolunteerEvents

__all__ = [
    "ALLOWED_FAILURES",
    "MAX_QUEUED_BYTES",
    "MAX_QUEUED_TASKS",
    "MAX_WORKER_LOSSES",
    "RESULT_TTL",
    "Action",
    "Scheduler",
]


class Scheduler(ClientEvents, OutcomeEvents, VolunteerEvents, TimedEvents):
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
        return []

    def add_worker(
        self,
        worker_id: str,
        name: str,
        slots: int,
        portable_only: bool = False,
        volunteer: Volunteer | None = None,
        *,
        resources: dict[str, float] | None = None,
        labels: dict[str, str] | None = None,
        installs: bool = True,
    ) -> list[Action]:
        """A worker joined (``volunteer``: the invite it joined with). Slots are granted, not claimed:
        at most ``max_slots_per_worker``, or the invite's ``--slots``. ``resources`` and ``labels``:
        what it offers jobs that need them; ``installs``: it builds job environments."""
        granted = self.granted_slots(slots, volunteer)
        worker = Worker(worker_id, name, granted, portable_only=portable_only, volunteer=volunteer, claimed=slots)
        worker.resources = {k: float(v) for k, v in (resources or {}).items()}
        worker.labels = dict(labels or {})
        worker.installs = installs
        if volunteer is not None:
            worker.record = volunteer.record  # reputation follows the credential, not the name
        replaced = self.workers.get(worker_id)
        self.workers[worker_id] = worker
        self._free.add(worker)
        if self._total_slots is not None:
            self._total_slots += granted - (replaced.slots if replaced else 0)
        actions: list[Action] = []
        if granted < slots:
            limit = "its invite's --slots" if volunteer and volunteer.slots else "--max-slots-per-worker"
            actions.append(Note(f"worker {name} claims {slots} slots; it is granted {granted} ({limit})"))
        if volunteer is not None:
            actions.append(SaveVolunteer(volunteer))
            if worker.quarantined:
                actions.append(Note(f"worker {name} joined as volunteer {volunteer.name}, which is quarantined"))
        return actions + self._split_for_slots() + self._assign() + self._notices()

    def remove_worker(self, worker_id: str, how: str = "disconnected") -> list[Action]:
        """A worker went away: its leased tasks go back to the front of their queues.

        ``how`` it went away ("disconnected", "went silent ..."), for the error
        of a task that reaches ``max_worker_losses``. A lost worker does not
        count toward a task's ``allowed_failures``: that is for tasks that kill
        their process.
        """
        worker = self.workers.pop(worker_id, None)
        self._free.remove(worker_id)
        if worker is None:
            return []
        if self._total_slots is not None:
            self._total_slots -= worker.slots
        actions: list[Action] = []
        # Highest task first: each goes to the front of its queue, so they end up in input order.
        for job_id, task_id in sorted(worker.running, reverse=True):
            job = self.jobs.get(job_id)
            if job is None or job.state is not JobState.RUNNING:
                continue
            task = job.tasks[task_id]
            task.leases.pop(worker_id, None)
            if task.state is TaskState.DONE:  # a redundant run no longer needed
                continue
            if job.redundancy == 1 and task.leases:  # a reissued or backup run of it goes on elsewhere
                continue
            if worker.draining:  # handed back on purpose: not the task's fault
                self._enqueue(job, task, front=True)
            else:
                actions += self._lost(job, task, f"worker {worker.name} {how}")
        for job_id in worker.jobs:
            if job_id in self.jobs:
                self.jobs[job_id].workers.discard(worker_id)
                self.jobs[job_id].preparing.discard(worker_id)
        return actions + self._assign() + self._notices()

    def note_latency(self, worker_id: str, rtt: float) -> list[Action]:
        """The latest ping round trip to a worker, in seconds: it sizes the worker's prefetch
        (tasks go out at once if it may hold more now)."""
        worker = self.workers.get(worker_id)
        if worker is not None and prefetch.set_rtt(worker, rtt):
            self._free.touch(worker)
            return self._assign()
        return []

    def worker_draining(self, worker_id: str) -> list[Action]:
        """The worker is stopping: it gets nothing new."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.draining = True
        return self._notices()

    # --- worker events -----------------------------------------------------

    def environment_status(self, worker_id: str, msg: p.EnvironmentStatus) -> list[Action]:
        """A worker builds, has built, or could not build a job's environment.

        A worker that could not gets none of the job's tasks (those it held
        go back to the queue); when no worker holding the job is left, its
        remaining tasks fail with the installer's reason, once.
        """
        job = self.jobs.get(msg.job_id)
        worker = self.workers.get(worker_id)
        if job is None or worker is None or job.state is not JobState.RUNNING:
            return []
        if msg.state == EnvironmentState.BUILDING:
            job.preparing.add(worker_id)
            return self._notices()
        job.preparing.discard(worker_id)
        if msg.state == EnvironmentState.READY:
            return self._notices()
        job.unbuildable[worker_id] = msg.reason
        actions: list[Action] = [Note(f"worker {worker.name} could not build the environment of job {job.job_id}")]
        for job_id, task_id in sorted(worker.running, reverse=True):
            if job_id == job.job_id:
                task = job.tasks[task_id]
                unlease(self.workers, job, task, worker_id, self._free)
                if task.state is not TaskState.DONE:
                    self._enqueue(job, task, front=True)
        worker.jobs.discard(job.job_id)
        job.workers.discard(worker_id)
        actions.append(Send(worker_id, p.ReleaseJob(job.job_id)))
        if not job.workers:  # nobody else holds it: fail what is left rather than try every worker
            job.environment_error = msg.reason
            if job.job_id in self._ready:
                self._ready.remove(job.job_id)
            job.queue.clear()
            for task in sorted(job.tasks.values(), key=lambda t: t.task_id):
                if task.state is not TaskState.DONE and job.state is JobState.RUNNING:
                    actions += self._fail(job, task, ErrorKind.ENVIRONMENT, msg.reason)
        return actions + self._assign() + self._notices()

    def task_output(self, worker_id: str, msg: p.TaskOutput | p.TaskProgress) -> list[Action]:
        """Printed text or progress of a running task: passed on to the job's client."""
        job = self.jobs.get(msg.job_id)
        task = job.tasks.get(msg.task_id) if job else None
        if job is None or task is None or worker_id not in task.leases:
            return []
        if isinstance(msg, p.TaskProgress):
            task.progress = max(task.progress, min(msg.done, task.count))
        return [Send(job.client, msg)] if job.client is not None else []

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
        return {job.client for job in self.jobs.values() if job.client and job.state is JobState.RUNNING}

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

    def _rejected(self, worker_id: str, what: str, job_id: str, task_id: int, attempt: int) -> Note:
        worker = self.workers.get(worker_id)
        name = worker.name if worker else worker_id
        return Note(
            f"dropped a {what} from worker {name} for job {job_id} task {task_id} attempt {attempt}: not its lease"
        )

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
                if job.client is not None:  # the clients' one "waiting" line: ours first, then the quorum's
                    actions.append(Send(job.client, p.JobWaiting(job.job_id, notice or job.waiting)))
        return actions
