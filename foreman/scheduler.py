"""The foreman's decisions, as a pure state machine.

Each public method is an event (a worker joined, a task finished, ...) and
returns the list of actions (:class:`Send`, :class:`Close`) the server must
carry out. Nothing here awaits, touches a socket or reads a payload: payloads
are opaque bytes passed from client to worker and back.

Work is shared fairly: when a slot frees up, jobs with queued tasks take turns
(round robin), and the worker with the most free room is served first. Each
worker holds a little more than its slots (``Worker.capacity``) so that no
slot idles while the next task is on the wire.
"""

from __future__ import annotations

from collections import deque
from typing import Union

from crowdcompute import protocol as p

from .state import Close, Job, JobState, Send, Task, TaskState, Worker

__all__ = ["ALLOWED_FAILURES", "Action", "Scheduler"]

#: How many times a task may kill its process before it fails with WorkerCrashedError.
ALLOWED_FAILURES = 3
#: How many finished jobs the status keeps showing.
FINISHED_JOBS_SHOWN = 20

Action = Union[Send, Close]


class Scheduler:
    """Jobs, tasks and workers; events in, actions out."""

    def __init__(self, allowed_failures: int = ALLOWED_FAILURES) -> None:
        self.allowed_failures = allowed_failures
        self.jobs: dict[str, Job] = {}
        self.workers: dict[str, Worker] = {}
        self.clients: dict[str, set[str]] = {}  # client id -> its job ids
        self._ready: deque[str] = deque()  # job ids with queued tasks, in turn order
        self._finished: deque[dict] = deque(maxlen=FINISHED_JOBS_SHOWN)

    # --- connections -------------------------------------------------------

    def add_client(self, client_id: str) -> list[Action]:
        self.clients[client_id] = set()
        return []

    def remove_client(self, client_id: str) -> list[Action]:
        """A client went away: its jobs are cancelled (nobody would collect them)."""
        actions: list[Action] = []
        for job_id in list(self.clients.pop(client_id, ())):
            actions += self._cancel(self.jobs[job_id])
        return actions + self._assign()

    def add_worker(self, worker_id: str, name: str, slots: int) -> list[Action]:
        self.workers[worker_id] = Worker(worker_id, name, slots)
        return self._assign()

    def remove_worker(self, worker_id: str) -> list[Action]:
        """A worker went away: its leased tasks go back to the front of their queues."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return []
        actions: list[Action] = []
        for job_id, task_id in sorted(worker.running):
            job = self.jobs.get(job_id)
            if job is None:  # failed by an earlier task of this loop
                continue
            job.workers.discard(worker_id)
            actions += self._crashed(job, job.tasks[task_id], f"worker {worker.name} disconnected")
        for job_id in worker.jobs:
            if job_id in self.jobs:
                self.jobs[job_id].workers.discard(worker_id)
        return actions + self._assign()

    # --- client events -----------------------------------------------------

    def submit_job(self, client_id: str, msg: p.SubmitJob) -> list[Action]:
        if msg.job_id in self.jobs:
            return [Send(client_id, p.RequestError(msg.job_id, "a job with this id already exists"))]
        job = Job(
            job_id=msg.job_id,
            client=client_id,
            function=msg.function,
            total_tasks=msg.total_tasks,
            total_items=msg.total_items,
            task_timeout=msg.task_timeout,
            retries=msg.retries,
            name=msg.name,
        )
        self.jobs[job.job_id] = job
        self.clients[client_id].add(job.job_id)
        actions: list[Action] = [Send(client_id, p.JobAccepted(job.job_id))]
        if job.all_finished:  # an empty map
            actions += self._finish(job)
        return actions

    def submit_task(self, client_id: str, msg: p.SubmitTask) -> list[Action]:
        job = self.jobs.get(msg.job_id)
        if job is None or job.client != client_id:
            return [Send(client_id, p.RequestError(msg.job_id, "no such job for this client"))]
        if msg.task_id in job.tasks or msg.task_id >= job.total_tasks:
            return [Send(client_id, p.RequestError(msg.job_id, f"task {msg.task_id} is a duplicate or out of range"))]
        task = Task(msg.task_id, msg.first_index, msg.count, msg.payload)
        job.tasks[task.task_id] = task
        self._enqueue(job, task)
        return self._assign()

    def cancel_job(self, client_id: str, job_id: str) -> list[Action]:
        job = self.jobs.get(job_id)
        if job is None or job.client != client_id:
            return []  # already finished or cancelled: cancelling is idempotent
        return self._cancel(job) + self._assign()

    # --- worker events -----------------------------------------------------

    def task_done(self, worker_id: str, msg: p.TaskDone) -> list[Action]:
        job, task = self._leased(worker_id, msg.job_id, msg.task_id, msg.attempt)
        if task is None:
            return []  # a late result from an old lease: its task went elsewhere
        self._unlease(job, task)
        if msg.failed and task.retries_used < job.retries:
            task.retries_used += 1
            self._enqueue(job, task, front=True)
            return self._assign()
        job.completed_items += task.count - msg.failed
        job.failed_items += msg.failed
        self.workers[worker_id].tasks_done += 1
        result = p.TaskResult(job.job_id, task.task_id, task.first_index, task.count, msg.failed, msg.payload)
        return [Send(job.client, result)] + self._complete(job, task) + self._assign()

    def task_crashed(self, worker_id: str, msg: p.TaskCrashed) -> list[Action]:
        job, task = self._leased(worker_id, msg.job_id, msg.task_id, msg.attempt)
        if task is None:
            return []
        self._unlease(job, task)
        if msg.error == "timeout":
            return self._fail(job, task, "timeout", msg.reason) + self._assign()
        return self._crashed(job, task, msg.reason) + self._assign()

    def task_output(self, worker_id: str, msg: p.TaskOutput) -> list[Action]:
        job = self.jobs.get(msg.job_id)
        task = job.tasks.get(msg.task_id) if job else None
        if task is None or task.worker != worker_id:
            return []
        return [Send(job.client, msg)]

    # --- queries -----------------------------------------------------------

    def status(self) -> dict:
        """Workers, slots and jobs as plain JSON data."""
        return {
            "workers": [
                {
                    "name": w.name,
                    "slots": w.slots,
                    "busy": min(len(w.running), w.slots),
                    "tasks_done": w.tasks_done,
                }
                for w in self.workers.values()
            ],
            "jobs": [job.summary() for job in self.jobs.values()] + list(self._finished),
            "clients": len(self.clients),
        }

    @property
    def total_slots(self) -> int:
        return sum(w.slots for w in self.workers.values())

    # --- internals ---------------------------------------------------------

    def _leased(self, worker_id: str, job_id: str, task_id: int, attempt: int) -> tuple[Job, Task | None]:
        """The job and task if ``worker_id`` holds the current lease, else (job, None)."""
        job = self.jobs.get(job_id)
        task = job.tasks.get(task_id) if job else None
        if task is None or task.state is not TaskState.RUNNING or task.worker != worker_id or task.attempt != attempt:
            return job, None  # type: ignore[return-value]
        return job, task

    def _enqueue(self, job: Job, task: Task, front: bool = False) -> None:
        task.state = TaskState.QUEUED
        task.worker = None
        if front:
            job.queue.appendleft(task.task_id)
        else:
            job.queue.append(task.task_id)
        if job.job_id not in self._ready:
            self._ready.append(job.job_id)

    def _unlease(self, job: Job, task: Task) -> None:
        worker = self.workers.get(task.worker or "")
        if worker is not None:
            worker.running.discard((job.job_id, task.task_id))
        task.worker = None

    def _crashed(self, job: Job, task: Task, cause: str) -> list[Action]:
        """A task's process died: run it again, or fail it after allowed_failures."""
        task.crashes += 1
        if task.crashes >= self.allowed_failures:
            return self._fail(job, task, "crashed", cause)
        self._enqueue(job, task, front=True)
        return []

    def _fail(self, job: Job, task: Task, error: str, reason: str) -> list[Action]:
        job.failed_items += task.count
        failed = p.TaskFailed(
            job.job_id, task.task_id, task.first_index, task.count, error, reason, attempts=task.attempt
        )
        return [Send(job.client, failed)] + self._complete(job, task)

    def _complete(self, job: Job, task: Task) -> list[Action]:
        task.state = TaskState.DONE
        task.payload = None  # the input is no longer needed
        job.finished_tasks += 1
        return self._finish(job) if job.all_finished else []

    def _finish(self, job: Job) -> list[Action]:
        job.state = JobState.DONE
        return self._drop(job)

    def _cancel(self, job: Job) -> list[Action]:
        job.state = JobState.CANCELLED
        for task in job.tasks.values():
            if task.state is TaskState.RUNNING:
                self._unlease(job, task)
        return self._drop(job)

    def _drop(self, job: Job) -> list[Action]:
        """Forget a finished or cancelled job; its workers drop its function and tasks."""
        del self.jobs[job.job_id]
        self.clients.get(job.client, set()).discard(job.job_id)
        if job.job_id in self._ready:
            self._ready.remove(job.job_id)
        self._finished.appendleft(job.summary())
        actions: list[Action] = []
        for worker_id in sorted(job.workers):
            worker = self.workers.get(worker_id)
            if worker is not None:
                worker.jobs.discard(job.job_id)
                actions.append(Send(worker_id, p.ReleaseJob(job.job_id)))
        return actions

    def _assign(self) -> list[Action]:
        """Lease queued tasks to free worker capacity, jobs taking turns."""
        actions: list[Action] = []
        while self._ready:
            worker = max(self.workers.values(), key=lambda w: w.free, default=None)
            if worker is None or worker.free <= 0:
                break
            job = self.jobs[self._ready[0]]
            task = job.tasks[job.queue.popleft()]
            if job.queue:
                self._ready.rotate(-1)
            else:
                self._ready.popleft()
            if job.job_id not in worker.jobs:
                worker.jobs.add(job.job_id)
                job.workers.add(worker.worker_id)
                actions.append(Send(worker.worker_id, p.JobFunction(job.job_id, job.function)))
            task.state = TaskState.RUNNING
            task.attempt += 1
            task.worker = worker.worker_id
            worker.running.add((job.job_id, task.task_id))
            assert task.payload is not None
            actions.append(
                Send(
                    worker.worker_id,
                    p.AssignTask(
                        job.job_id,
                        task.task_id,
                        task.attempt,
                        task.first_index,
                        task.count,
                        task.payload,
                        job.task_timeout,
                    ),
                )
            )
        return actions
