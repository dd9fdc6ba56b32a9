"""The scheduler's outcome events: a task finished, failed or crashed; what follows (a vote among
redundant runs, a retry, the outcome to the client, the end of the job). A mixin of
:class:`foreman.scheduler.Scheduler`: pure state, events in, actions out, like the rest of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from crowdcompute.wire import messages as p
from crowdcompute.wire.blobs import payload_size
from crowdcompute.wire.constants import ErrorKind

from . import deadlines, prefetch, quorum
from .assignment import drop_leases, unlease
from .free_workers import FreeWorkers
from .splitting import next_items, observe_items, split_queued, tail_target
from .state import (
    Action,
    Job,
    JobState,
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

__all__ = ["OutcomeEvents"]


class OutcomeEvents:
    """``task_done`` and ``task_crashed``, and how a task's outcome is recorded."""

    # Provided by the Scheduler.
    workers: dict[str, Worker]
    clock: Callable[[], float]
    journaled: bool
    allowed_failures: int
    max_worker_losses: int
    _ready: deque[str]
    _free: FreeWorkers

    if TYPE_CHECKING:

        @property
        def total_slots(self) -> int: ...
        def _assign(self) -> list[Action]: ...
        def _enqueue(self, job: Job, task: Task, front: bool = False, replicas: int = 1) -> None: ...
        def _leased(self, worker_id: str, job_id: str, task_id: int, attempt: int) -> tuple[Job, Task] | None: ...
        def _rejected(self, worker_id: str, what: str, job_id: str, task_id: int, attempt: int) -> list[Action]: ...
        def _release(self, job: Job) -> list[Action]: ...
        def _save_records(self, worker_ids: Iterable[str]) -> list[Action]: ...
        def _save_state(self, job: Job) -> SaveJobState: ...
        def _trusted_outcome(self, task: Task, worker_id: str) -> bool: ...

    def task_done(self, worker_id: str, msg: p.TaskDone) -> list[Action]:
        leased = self._leased(worker_id, msg.job_id, msg.task_id, msg.attempt)
        if leased is None:  # a late, replayed or forged result: its task is not leased to this worker
            return self._rejected(worker_id, "result", msg.job_id, msg.task_id, msg.attempt)
        job, task = leased
        worker = self.workers.get(worker_id)
        deadlines.observe(job, task, worker_id, self.clock(), worker)
        unlease(self.workers, job, task, worker_id, self._free)
        observe_items(job, msg.seconds, task.count)  # the job's cuts stay worth their cost
        if worker is not None:  # its tasks' duration sizes its prefetch
            upcoming = next_items(job, self.total_slots) if job.splittable else task.count
            prefetch.observe_task(worker, job.job_id, msg.seconds, task.count, upcoming)
            self._free.touch(worker)
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
            return self._rejected(worker_id, "crash report", msg.job_id, msg.task_id, msg.attempt)
        job, task = leased
        unlease(self.workers, job, task, worker_id, self._free)
        if task.state is TaskState.DONE:  # a redundant run no longer needed
            return self._assign()
        if msg.error in (ErrorKind.TIMEOUT, ErrorKind.LIMIT):  # running it again would do the same
            return self._fail(job, task, msg.error, msg.reason) + self._assign()
        return self._crashed(job, task, msg.reason) + self._assign()

    def task_cancelled(self, worker_id: str, msg: p.TaskCancelled) -> list[Action]:
        """The worker stopped (or skipped) its run of a task, as CancelTask asked: the lease is over
        and its room takes other work. Until it answers, the room stays taken, so a worker that
        holds tasks and never answers keeps filling its own capacity, not taking more."""
        leased = self._leased(worker_id, msg.job_id, msg.task_id, msg.attempt)
        if leased is None:
            return []  # its job ended meanwhile, and its leases with it
        job, task = leased
        unlease(self.workers, job, task, worker_id, self._free)
        if task.state is not TaskState.DONE and not task.leases:  # not one we cancelled: handed back
            self._enqueue(job, task, front=True)
        return self._assign()

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
        if job.redundancy == 1:  # a reissued or backup run of it may still go on: stop it
            actions += [Send(worker_id, p.CancelTask(job.job_id, task.task_id)) for worker_id in task.leases]
        last = job.all_finished and job.all_received
        actions += [Send(follower, outcome, linger=not last) for follower in job.followers()]  # the last at once
        if last:
            actions += self._finish(job)
        return actions

    def _finish(self, job: Job) -> list[Action]:
        job.state = JobState.DONE
        job.finished_at = self.clock()
        drop_leases(self.workers, job, self._free)
        return [self._save_state(job), *self._release(job)]
