"""The scheduler's client events: a job and its tasks come in, are cancelled, attached to,
collected and acknowledged. A mixin of :class:`foreman.scheduler.Scheduler`: pure state,
events in, actions out, like the rest of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crowdcompute.wire import messages as p
from crowdcompute.wire.blobs import payload_size
from crowdcompute.wire.constants import CloseCode, ErrorKind, Serializer

from .assignment import drop_leases
from .free_workers import FreeWorkers
from .splitting import split_task, target_items
from .state import (
    Action,
    Close,
    Job,
    JobState,
    Note,
    Replay,
    SaveJob,
    SaveJobState,
    SaveTask,
    Send,
    Task,
    Worker,
)

__all__ = ["MIN_JOB_ID_PREFIX", "ClientEvents"]


#: The shortest start of a job id that attach takes for the whole id (status views show 8 or 12).
MIN_JOB_ID_PREFIX = 6


def _jobs_starting_with(start: str, job_ids: list[str]) -> list[str]:
    """The job id ``start`` names: itself if a job has it, else the ids starting with it."""
    if start in job_ids:
        return [start]
    if len(start) < MIN_JOB_ID_PREFIX:
        return []
    return [job_id for job_id in job_ids if job_id.startswith(start)]


class ClientEvents:
    """``submit_job``, ``submit_task``, ``cancel_job``, ``attach_job``, ``collect_job``, ``ack_results``."""

    # Provided by the Scheduler.
    workers: dict[str, Worker]
    jobs: dict[str, Job]
    ended: dict[str, dict[str, Any]]
    clients: set[str]  # connected clients
    clock: Callable[[], float]
    journaled: bool
    max_queued_tasks: int
    max_queued_bytes: int
    max_queued_bytes_total: int
    max_kept_outcome_bytes: int
    _mismatched: dict[str, str]
    _ready: deque[str]
    _free: FreeWorkers

    if TYPE_CHECKING:

        @property
        def queued_bytes(self) -> int: ...
        @property
        def total_slots(self) -> int: ...
        def _accept(self, job: Job) -> list[Action]: ...
        def _archive(self, job: Job) -> list[Action]: ...
        def _assign(self) -> list[Action]: ...
        def _enqueue(self, job: Job, task: Task, front: bool = False, replicas: int = 1) -> None: ...
        def _fail(self, job: Job, task: Task, error: ErrorKind, reason: str) -> list[Action]: ...
        def _finish(self, job: Job) -> list[Action]: ...
        def _notices(self) -> list[Action]: ...
        def _release(self, job: Job) -> list[Action]: ...
        def _save_state(self, job: Job) -> SaveJobState: ...

    def submit_job(self, client_id: str, msg: p.SubmitJob) -> list[Action]:
        job = self.jobs.get(msg.job_id)
        if job is not None:  # sent again after a reconnect: follow it, nothing new
            self._follow(job, client_id, primary=True)
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
        drop_leases(self.workers, job, self._free)
        if job.job_id in self._ready:
            self._ready.remove(job.job_id)
        # Its other followers hear it ended, as a client attaching to a cancelled job does.
        told = [
            Send(f, p.JobAttached(job_id, job.total_items, job.total_tasks, JobState.CANCELLED.value))
            for f in job.followers()
            if f != client_id
        ]
        return [self._save_state(job), *self._release(job), *self._archive(job), *told, *self._assign()]

    def attach_job(self, client_id: str, job_id: str, resume: bool = False) -> list[Action]:
        """Follow a job: its size and state, then every outcome so far, then the rest.

        ``resume``: the client followed it before and holds what it acknowledged. ``job_id`` may
        be the start of one (as status views show it), of at least MIN_JOB_ID_PREFIX characters.
        """
        matches = _jobs_starting_with(job_id, [*self.jobs, *self.ended])
        if len(matches) > 1:
            return [
                Send(
                    client_id,
                    p.RequestError(job_id, f"{len(matches)} jobs have ids starting with {job_id}: give more of the id"),
                )
            ]
        job_id = matches[0] if matches else job_id
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
            finished = summary.get("completed", 0) + summary.get("failed", 0)
            attached = p.JobAttached(
                job_id,
                summary["total"],
                summary["tasks"],
                summary["state"],
                summary["name"],
                summary["serializer"],
                finished,
            )
            return [Send(client_id, attached), Replay(client_id, job_id)]
        self._follow(job, client_id)
        actions: list[Action] = [
            Send(
                client_id,
                p.JobAttached(
                    job_id,
                    job.total_items,
                    job.total_tasks,
                    job.state.value,
                    job.name,
                    job.serializer,
                    job.completed_items + job.failed_items,
                ),
            )
        ]
        if job.notice or job.waiting:  # else the new client would hear it only when it changes
            actions.append(Send(client_id, p.JobWaiting(job_id, job.notice or job.waiting)))
        if self.journaled:
            return actions + [Replay(client_id, job_id)]
        return actions + [Send(client_id, outcome) for outcome in job.results.values()]

    def _follow(self, job: Job, client_id: str, primary: bool = False) -> None:
        """``client_id`` follows ``job`` too. It becomes the job's client if the job has none connected,
        or (``primary``: its submitter resending after a reconnect) in any case; a connected client
        it replaces goes on following as a watcher: nobody following a job is dropped from it."""
        current = job.client
        if current is not None and current != client_id and current in self.clients:
            if not primary:
                job.watchers.add(client_id)
                return
            job.watchers.add(current)
        job.client = client_id
        job.watchers.discard(client_id)

    def collect_job(self, client_id: str, job_id: str) -> list[Action]:
        """The client holds every outcome: free them (the journal keeps them for the TTL). Only the
        job's client collects (a watcher only when the job has none): a watcher done with the job
        must not free outcomes its client, briefly away, still needs on resuming."""
        job = self.jobs.get(job_id)
        if job is None or job.state is JobState.RUNNING:
            return []
        if job.client is not None and job.client != client_id:
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
