"""The foreman's decisions, as a pure state machine.

Each public method is an event (a worker joined, a task finished, ...) and
returns the list of actions the server must carry out, in order: frames to
send (:class:`Send`), journal records (``Save*``, :class:`DeleteJob`) and
replays from the journal (:class:`Replay`). Nothing here awaits, touches a
socket or a file, or reads a payload: payloads are opaque bytes passed from
client to worker and back. Time comes from an injected clock.

Who gets which task is :mod:`foreman.assignment`; redundant runs are
counted by :mod:`foreman.quorum`; limits are in :mod:`foreman.limits`.
Two mixins hold the rest of its events: :mod:`foreman.volunteering`
(invites, revocations, the record that follows a credential) and
:mod:`foreman.timers` (``tick()``: deadlines, backup runs, quorum timeouts).
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
from crowdcompute.wire.blobs import payload_size
from crowdcompute.wire.constants import CloseCode, EnvironmentState, ErrorKind, Serializer

from . import deadlines, prefetch, quorum
from .assignment import assign, drop_leases, enqueue, job_notice, unlease
from .credentials import Registry, Volunteer
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
from .splitting import next_items, split_queued, split_task, tail_target, target_items
from .state import (
    Action,
    Close,
    DeleteJob,
    Job,
    JobState,
    Note,
    Replay,
    SaveJob,
    SaveJobState,
    SaveResult,
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


class Scheduler(VolunteerEvents, TimedEvents):
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
        self._total_slots: int | None = None  # cached sum of the workers' slots; None when the crowd changed

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
        self.workers[worker_id] = worker
        actions: list[Action] = []
        if granted < slots:
            limit = "its invite's --slots" if volunteer and volunteer.slots else "--max-slots-per-worker"
            actions.append(Note(f"worker {name} claims {slots} slots; it is granted {granted} ({limit})"))
        if volunteer is not None:
            actions.append(SaveVolunteer(volunteer))
            if worker.quarantined:
                actions.append(Note(f"worker {name} joined as volunteer {volunteer.name}, which is quarantined"))
        self._total_slots = None
        return actions + self._split_for_slots() + self._assign() + self._notices()

    def remove_worker(self, worker_id: str, how: str = "disconnected") -> list[Action]:
        """A worker went away: its leased tasks go back to the front of their queues.

        ``how`` it went away ("disconnected", "went silent ..."), for the error
        of a task that reaches ``max_worker_losses``. A lost worker does not
        count toward a task's ``allowed_failures``: that is for tasks that kill
        their process.
        """
        worker = self.workers.pop(worker_id, None)
        self._total_slots = None
        if worker is None:
            return []
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
            return self._assign()
        return []

    def worker_draining(self, worker_id: str) -> list[Action]:
        """The worker is stopping: it gets nothing new."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.draining = True
        return self._notices()

    # --- client events -----------------------------------------------------

    def submit_job(self, client_id: str, msg: p.SubmitJob) -> list[Action]:
        job = self.jobs.get(msg.job_id)
        if job is not None:  # sent again after a reconnect: follow it, nothing new
            job.client = client_id
            return [Send(client_id, p.JobAccepted(job.job_id))] if job.accepted else []
        if msg.job_id in self.ended:
            return [Send(client_id, p.RequestError(msg.job_id, "a job with this id already ended"))]
        if msg.serializer != Serializer.PORTABLE and client_id in self._mismatched:
            reason = f"{self._mismatched[client_id]}, or submit it with serializer='portable'"
            return [Send(client_id, p.RequestError(msg.job_id, reason))]
        queued = self.queued_bytes
        if queued >= self.max_queued_bytes_total:
            reason = (
                f"the foreman is full: {queued:,} bytes of input wait for workers (its limit is "
                f"{self.max_queued_bytes_total:,}); try again when running jobs have progressed"
            )
            return [Send(client_id, p.RequestError(msg.job_id, reason))]
        job = Job(
            job_id=msg.job_id,
            client=client_id,
            function=msg.function,
            total_tasks=msg.total_tasks,
            total_items=msg.total_items,
            task_timeout=msg.task_timeout,
            retries=msg.retries,
            name=msg.name,
            redundancy=msg.redundancy,
            quorum=msg.quorum,
            quorum_timeout=msg.quorum_timeout,
            serializer=msg.serializer,
            ack=msg.ack,
            created_at=self.clock(),
            resources={k: float(v) for k, v in msg.resources.items()},
            labels=dict(msg.labels),
            requirements=list(msg.requirements),
        )
        self.jobs[job.job_id] = job
        # Accepted once journaled; its tasks stream in within the client's window.
        actions: list[Action] = [SaveJob(job), *self._accept(job)]
        if job.all_received:  # an empty map
            actions += self._finish(job)
        return actions + self._notices()

    def submit_task(self, client_id: str, msg: p.SubmitTask) -> list[Action]:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return [Send(client_id, p.RequestError(msg.job_id, "no such job: submit_job must come first"))]
        if msg.task_id in job.tasks:
            return []  # sent again after a reconnect
        if msg.task_id >= job.total_tasks - job.splits or msg.first_index + msg.count > job.total_items:
            return [Send(client_id, p.RequestError(msg.job_id, f"task {msg.task_id} is out of the job's range"))]
        queued = len(job.tasks) - job.finished_tasks
        if queued >= self.max_queued_tasks or (queued and job.queued_bytes + len(msg.payload) > self.max_queued_bytes):
            reason = (
                f"job {job.job_id} already has {queued} tasks ({job.queued_bytes} bytes) without an outcome; "
                f"the limits are {self.max_queued_tasks} tasks and {self.max_queued_bytes} bytes"
            )
            return [Note(f"closed client {client_id}: {reason}"), Close(client_id, CloseCode.POLICY, reason[:120])]
        task = Task(msg.task_id, msg.first_index, msg.count, msg.payload, pieces=msg.pieces, received_at=self.clock())
        job.tasks[task.task_id] = task
        job.queued_bytes += len(msg.payload)
        if job.environment_error:  # its environment could not be built anywhere
            return [SaveTask(job.job_id, task), *self._fail(job, task, ErrorKind.ENVIRONMENT, job.environment_error)]
        self._enqueue(job, task, replicas=job.redundancy)
        actions: list[Action] = [SaveTask(job.job_id, task)]
        if task.pieces and job.redundancy == 1:
            job.splittable = True
            parts = split_task(job, task, target_items(job, self.total_slots)) if self.workers else []
            for part in parts:
                job.queue.append(part.task_id)
                actions.append(SaveTask(job.job_id, part))
            if parts:
                actions.append(SaveJob(job))  # its task count grew
        return actions + self._assign()

    def cancel_job(self, client_id: str, job_id: str) -> list[Action]:
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return []  # already ended: cancelling is idempotent
        job.state = JobState.CANCELLED
        job.finished_at = self.clock()
        drop_leases(self.workers, job)
        if job.job_id in self._ready:
            self._ready.remove(job.job_id)
        return [self._save_state(job), *self._release(job), *self._archive(job), *self._assign()]

    def attach_job(self, client_id: str, job_id: str, resume: bool = False) -> list[Action]:
        """Follow a job: its size and state, then every outcome so far, then the rest.

        ``resume``: the client followed it before and holds what it acknowledged.
        """
        job = self.jobs.get(job_id)
        if job is not None and job.dropped and not resume:
            reason = (
                f"{job.dropped} of its outcomes were already delivered to the client that submitted it and "
                "dropped to bound the foreman's memory (a foreman with a journal keeps them)"
            )
            return [Send(client_id, p.RequestError(job_id, reason))]
        if job is None:
            summary = self.ended.get(job_id)
            if summary is None:
                return [Send(client_id, p.RequestError(job_id, "no such job on this foreman (or it was purged)"))]
            if summary["state"] == JobState.CANCELLED.value:
                return [Send(client_id, p.JobAttached(job_id, summary["total"], summary["tasks"], "cancelled"))]
            if not self.journaled:
                reason = "its results were already collected (a foreman with a journal keeps them)"
                return [Send(client_id, p.RequestError(job_id, reason))]
            attached = p.JobAttached(
                job_id, summary["total"], summary["tasks"], summary["state"], summary["name"], summary["serializer"]
            )
            return [Send(client_id, attached), Replay(client_id, job_id)]
        job.client = client_id
        actions: list[Action] = [
            Send(
                client_id,
                p.JobAttached(job_id, job.total_items, job.total_tasks, job.state.value, job.name, job.serializer),
            )
        ]
        if job.notice or job.waiting:  # else the new client would hear it only when it changes
            actions.append(Send(client_id, p.JobWaiting(job_id, job.notice or job.waiting)))
        if self.journaled:
            return actions + [Replay(client_id, job_id)]
        return actions + [Send(client_id, outcome) for outcome in job.results.values()]

    def collect_job(self, client_id: str, job_id: str) -> list[Action]:
        """The client holds every outcome: free them (the journal keeps them for the TTL)."""
        job = self.jobs.get(job_id)
        if job is None or job.state is JobState.RUNNING:
            return []
        return self._archive(job)

    def ack_results(self, client_id: str, job_id: str, task_ids: list[int]) -> list[Action]:
        """The client holds these outcomes: past the budget, drop the acknowledged ones."""
        job = self.jobs.get(job_id)
        if job is None or job.client != client_id:
            return []
        job.acked.update(task_id for task_id in task_ids if task_id in job.results)
        if job.dropped or job.kept_bytes > self.max_kept_outcome_bytes:  # once past it, keep none acknowledged
            for task_id in job.acked:
                outcome = job.results.pop(task_id)
                job.kept_bytes -= payload_size(getattr(outcome, "payload", b""))
                job.dropped += 1
            job.acked.clear()
        return []

    # --- worker events -----------------------------------------------------

    def task_done(self, worker_id: str, msg: p.TaskDone) -> list[Action]:
        leased = self._leased(worker_id, msg.job_id, msg.task_id, msg.attempt)
        if leased is None:  # a late, replayed or forged result: its task is not leased to this worker
            return [self._rejected(worker_id, "result", msg.job_id, msg.task_id, msg.attempt)]
        job, task = leased
        deadlines.observe(job, task, worker_id, self.clock())
        unlease(self.workers, job, task, worker_id)
        worker = self.workers.get(worker_id)
        if worker is not None:  # its tasks' duration sizes its prefetch
            upcoming = next_items(job, self.total_slots) if job.splittable else task.count
            prefetch.observe_task(worker, job.job_id, msg.seconds, task.count, upcoming)
        if task.state is TaskState.DONE and job.redundancy == 1:  # a reissued or backup run that lost the race
            return self._assign()
        if job.redundancy > 1:
            return self._vote(job, task, worker_id, msg) + self._assign()
        if msg.failed and task.retries_used < job.retries:
            task.retries_used += 1
            self._enqueue(job, task, front=True)
            return self._assign()
        return self._result(job, task, worker_id, msg) + self._split_tail(job) + self._assign()

    def _split_tail(self, job: Job) -> list[Action]:
        """Fewer tasks queued than slots: cut what is left so that every slot gets a share."""
        target = tail_target(job, self.total_slots) if job.splittable and job.state is JobState.RUNNING else None
        if target is None:
            return []
        changed = split_queued(job, self.total_slots, target)
        actions: list[Action] = [SaveTask(job.job_id, t) for t in changed]
        if changed:
            actions.append(SaveJob(job))  # its task count grew
        return actions

    def _result(self, job: Job, task: Task, worker_id: str, msg: p.TaskDone) -> list[Action]:
        """The task's accepted outcome goes to the client (and the journal)."""
        job.completed_items += task.count - msg.failed
        job.failed_items += msg.failed
        worker = self.workers.get(worker_id)
        records: list[Action] = []
        if worker is not None:
            worker.record.tasks_done += 1
            if worker.volunteer is not None:
                records.append(SaveVolunteer(worker.volunteer))
        result = p.TaskResult(
            job.job_id,
            task.task_id,
            task.first_index,
            task.count,
            msg.failed,
            msg.payload,
            worker=worker.name if worker else worker_id,
            seconds=msg.seconds,
            queued=max(0.0, task.assigned_at - task.received_at),
            attempts=task.attempt,
            trusted=self._trusted_outcome(task, worker_id),
            reissued=task.reissues,
            backups=task.backups,
            waited=msg.waited,
            setup=msg.setup,
        )
        return records + self._outcome(job, task, result)

    def _vote(self, job: Job, task: Task, worker_id: str, msg: p.TaskDone) -> list[Action]:
        """A redundant run reported: accept the outcome once a majority agrees."""
        if task.first_outcome_at is None:
            task.first_outcome_at = self.clock()
        done = task.state is TaskState.DONE
        verdict = quorum.vote(task, job.redundancy, worker_id, msg, self.workers, done=done, needed=job.quorum)
        actions: list[Action] = list(verdict.notes)
        voters = {worker_id, *(w for ws in task.votes.values() for w in ws)}
        actions += self._save_records(voters)
        if verdict.accepted is not None:
            return actions + self._result(job, task, verdict.voter, verdict.accepted)
        if verdict.rerun:
            self._enqueue(job, task, replicas=job.redundancy)
        if verdict.failure is not None:
            return actions + self._fail(job, task, ErrorKind.DISAGREEMENT, verdict.failure)
        return actions

    def task_crashed(self, worker_id: str, msg: p.TaskCrashed) -> list[Action]:
        leased = self._leased(worker_id, msg.job_id, msg.task_id, msg.attempt)
        if leased is None:
            return [self._rejected(worker_id, "crash report", msg.job_id, msg.task_id, msg.attempt)]
        job, task = leased
        unlease(self.workers, job, task, worker_id)
        if task.state is TaskState.DONE:  # a redundant run no longer needed
            return self._assign()
        if msg.error in (ErrorKind.TIMEOUT, ErrorKind.LIMIT):  # running it again would do the same
            return self._fail(job, task, msg.error, msg.reason) + self._assign()
        return self._crashed(job, task, msg.reason) + self._assign()

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
                unlease(self.workers, job, task, worker_id)
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
        ended = sorted(self.ended.values(), key=lambda s: -s["finished_at"])[:ENDED_JOBS_SHOWN]
        public = ("id", "name", "total", "completed", "failed", "state")
        return {
            "workers": [worker.summary() for worker in self.workers.values()],
            "jobs": [job.summary() for job in self.jobs.values()]
            + [
                {**{k: s[k] for k in public}, "untrusted_workers": s.get("untrusted_workers", 0), "waiting": ""}
                for s in ended
            ],
            "clients": len(self.clients),
        }

    @property
    def queued_bytes(self) -> int:
        """Input bytes of every job waiting for an outcome."""
        return sum(job.queued_bytes for job in self.jobs.values())

    def busy_clients(self) -> set[str]:
        """Clients following a running job (never closed for being idle)."""
        return {job.client for job in self.jobs.values() if job.client and job.state is JobState.RUNNING}

    @property
    def total_slots(self) -> int:
        """Slots of every connected worker (summed once per change of the crowd, not per task)."""
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

    def _crashed(self, job: Job, task: Task, cause: str) -> list[Action]:
        """A task's process died: run it again, or fail it after allowed_failures."""
        task.crashes += 1
        if task.crashes >= self.allowed_failures:
            return self._fail(job, task, ErrorKind.CRASHED, cause)
        self._enqueue(job, task, front=True)
        return []

    def _lost(self, job: Job, task: Task, cause: str) -> list[Action]:
        """A task's worker went away: run it again, or fail it after max_worker_losses."""
        task.losses += 1
        if task.losses >= self.max_worker_losses:
            reason = f"{cause} (the foreman's limit is {self.max_worker_losses} lost workers per task)"
            return self._fail(job, task, ErrorKind.LOST, reason)
        self._enqueue(job, task, front=True)
        return []

    def _fail(self, job: Job, task: Task, error: ErrorKind, reason: str) -> list[Action]:
        job.failed_items += task.count
        failed = p.TaskFailed(
            job.job_id,
            task.task_id,
            task.first_index,
            task.count,
            error,
            reason,
            task.attempt,
            crashes=task.crashes,
            losses=task.losses,
        )
        return self._outcome(job, task, failed)

    def _outcome(self, job: Job, task: Task, outcome: p.TaskResult | p.TaskFailed) -> list[Action]:
        """Record a task's final outcome, pass it to the client, and end the job if it was the last."""
        task.state = TaskState.DONE
        if (
            job.redundancy > 1 or task.reissues or task.backups
        ) and task.task_id in job.queue:  # replicas no longer needed
            job.queue = deque(t for t in job.queue if t != task.task_id)
            if not job.queue and job.job_id in self._ready:
                self._ready.remove(job.job_id)
        job.queued_bytes -= len(task.payload or b"")
        task.payload = None  # the input is no longer needed
        job.finished_tasks += 1
        if not self.journaled:
            job.results[task.task_id] = outcome
            job.kept_bytes += payload_size(getattr(outcome, "payload", b""))
        actions: list[Action] = [SaveResult(job.job_id, task.task_id, outcome)]
        if job.client is not None:
            actions.append(Send(job.client, outcome))
        if job.all_finished and job.all_received:
            actions += self._finish(job)
        return actions

    def _finish(self, job: Job) -> list[Action]:
        job.state = JobState.DONE
        job.finished_at = self.clock()
        drop_leases(self.workers, job)
        return [self._save_state(job), *self._release(job)]

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

    def _assign(self) -> list[Action]:
        """Lease queued tasks to free worker capacity, jobs taking turns; note when each lease began."""
        now = self.clock()
        sends = assign(self.workers, self.jobs, self._ready, now, self.total_slots)
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
