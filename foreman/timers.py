"""The scheduler's timed events: what happens as time passes, about once a second.

Expired volunteers are closed; redundant tasks past their ``quorum_timeout``
fail; clients hear what their redundant jobs wait for; leases past their
deadline run again elsewhere and count against their worker; at the tail of
a job, idle slots run backup copies (see :mod:`foreman.deadlines`). A mixin
of :class:`foreman.scheduler.Scheduler`: pure state, no awaits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import ErrorKind

from . import deadlines, quorum
from .state import Action, Job, JobState, Note, Send, Task, TaskState, Worker

__all__ = ["TimedEvents"]


class TimedEvents:
    """``tick()``: deadlines, quorum timeouts, and what redundant jobs wait for."""

    # Provided by the Scheduler.
    workers: dict[str, Worker]
    jobs: dict[str, Job]
    clock: Callable[[], float]
    min_lease_deadline: float
    backup_tasks: bool

    if TYPE_CHECKING:

        def _shut_out(self, workers: list[Worker], reason: str) -> list[Action]: ...
        def _fail(self, job: Job, task: Task, error: ErrorKind, reason: str) -> list[Action]: ...
        def _save_records(self, worker_ids: Iterable[str]) -> list[Action]: ...
        def _enqueue(self, job: Job, task: Task, front: bool = False, replicas: int = 1) -> None: ...
        def _assign(self) -> list[Action]: ...

    def tick(self) -> list[Action]:
        """Time passed (about a second): expired volunteers are closed, redundant tasks past their
        quorum_timeout fail, clients hear what their redundant jobs wait for ("task 12 needs 1
        more distinct worker"), and leases past their deadline run again elsewhere."""
        now = self.clock()
        expired = [w for w in self.workers.values() if w.volunteer is not None and w.volunteer.expired(now)]
        actions: list[Action] = self._shut_out(expired, "credential expired")
        for worker in expired:
            actions.append(Note(f"closed worker {worker.name}: the credential of volunteer {worker.identity} expired"))
        for job in [j for j in self.jobs.values() if j.redundancy > 1 and j.state is JobState.RUNNING]:
            if job.quorum_timeout is not None:
                for task in [t for t in job.tasks.values() if t.state is not TaskState.DONE]:
                    if task.first_outcome_at is not None and now - task.first_outcome_at >= job.quorum_timeout:
                        reason = quorum.timed_out(task, job, self.workers)
                        actions += quorum.tally_plurality(task, self.workers)
                        actions += self._save_records(w for voters in task.votes.values() for w in voters)
                        actions += self._fail(job, task, ErrorKind.DISAGREEMENT, reason)
            if job.state is not JobState.RUNNING:
                continue
            waiting = quorum.waiting(job, self.workers.values())
            if waiting != job.waiting:
                job.waiting = waiting
                # what resources or an environment hold it back comes first
                actions += [Send(f, p.JobWaiting(job.job_id, job.notice or waiting)) for f in job.followers()]
        actions += self._chase_stragglers(now)
        return actions + (self._assign() if actions else [])

    def _chase_stragglers(self, now: float) -> list[Action]:
        """Leases past their deadline count against their worker and run again elsewhere;
        at the tail of a job, idle slots run backup copies of the longest-running tasks."""
        actions: list[Action] = []
        for late in deadlines.overdue(self.jobs, list(self.workers.values()), now, self.min_lease_deadline):
            worker = self.workers[late.worker_id]
            note = quorum.missed_deadline(worker)
            actions += [note] if note else []
            actions += self._save_records([late.worker_id])
            if late.reissue:
                late.task.reissues += 1
                self._enqueue(late.job, late.task, front=True)
                actions.append(
                    Note(
                        f"task {late.task.task_id} of job {late.job.job_id} passed its deadline on worker "
                        f"{worker.name}: running it elsewhere too"
                    )
                )
        return actions + self._backup_runs(now)

    def _backup_runs(self, now: float) -> list[Action]:
        """Idle slots at the tail of a job run copies of what holds it back (deadlines.backups)."""
        if not self.backup_tasks:
            return []
        actions: list[Action] = []
        for job, task in deadlines.backups(self.jobs, self.workers.values(), now):
            task.backups += 1
            self._enqueue(job, task)
            actions.append(
                Note(f"backup run of task {task.task_id} of job {job.job_id} (tail of the job)", routine=True)
            )
        return actions

    def at_tail(self) -> bool:
        """Whether a job is at its tail (running, all its tasks sent by its client, none left in its
        queue): backups may be due. A job whose client still feeds it, its queue emptied by a crowd
        that leases faster than the client's window refills, is not: more tasks are on their way,
        and looking every TAIL_CHECK_INTERVAL through all of it would cost one pass over the
        crowd's leases each time (9-12 ms with 10,000 workers)."""
        return any(
            job.state is JobState.RUNNING and job.all_received and not job.queue and job.redundancy == 1
            for job in self.jobs.values()
        )

    def tail_check(self) -> list[Action]:
        """A job is at its tail (the server asks every TAIL_CHECK_INTERVAL while ``at_tail``): look
        for backup runs now rather than at the next tick."""
        actions = self._backup_runs(self.clock())
        return actions + (self._assign() if actions else [])
