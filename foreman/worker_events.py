"""The scheduler's worker events: a worker joins, goes away, drains, measures its round trip,
builds a job's environment, prints. A mixin of :class:`foreman.scheduler.Scheduler`: pure state,
events in, actions out, like the rest of it.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import EnvironmentState, ErrorKind

from . import prefetch
from .assignment import unlease
from .credentials import Volunteer
from .free_workers import FreeWorkers
from .state import Action, Job, JobState, Note, SaveVolunteer, Send, Task, TaskState, Worker

__all__ = ["WorkerEvents"]


class WorkerEvents:
    """``add_worker``, ``remove_worker``, ``note_latency``, ``worker_draining``,
    ``environment_status``, ``task_output``."""

    # Provided by the Scheduler.
    workers: dict[str, Worker]
    jobs: dict[str, Job]
    _ready: deque[str]
    _free: FreeWorkers
    _total_slots: int | None

    if TYPE_CHECKING:

        def granted_slots(self, claimed: int, volunteer: Volunteer | None = None) -> int: ...
        def _assign(self) -> list[Action]: ...
        def _enqueue(self, job: Job, task: Task, front: bool = False, replicas: int = 1) -> None: ...
        def _fail(self, job: Job, task: Task, error: ErrorKind, reason: str) -> list[Action]: ...
        def _lost(self, job: Job, task: Task, cause: str) -> list[Action]: ...
        def _notices(self) -> list[Action]: ...
        def _split_for_slots(self) -> list[Action]: ...

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
            if job.redundancy > 1:
                _forget_lost_run(task, worker, self.workers)
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
        return [Send(follower, msg) for follower in job.followers()]


def _forget_lost_run(task: Task, worker: Worker, workers: dict[str, Worker]) -> None:
    """A redundant run that never reported is not a run: its worker (by key: the volunteer, whatever
    connection it comes back on) may run the task again, unless it voted or another of its
    connections still runs it. Else a volunteer dropped and back could never take the task, and a
    job with quorum=redundancy waited for a distinct worker that never came."""
    voted = any(worker.worker_id in voters for voters in task.votes.values())
    running = any(other.key == worker.key for w, other in workers.items() if w in task.leases)
    if not voted and not running:
        task.tried.discard(worker.key)
