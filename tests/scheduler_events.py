"""Events and expected actions for the scheduler tests, so each test reads as a story.

Inputs and outputs are made from their ids (``task_input("j1", 0)``), so a
test can write the exact AssignTask or TaskResult it expects.
"""

from __future__ import annotations

import dataclasses

from crowdcompute.wire import messages as p
from foreman.scheduler import Scheduler
from foreman.state import Note, Send

__all__ = [
    "Clock",
    "assign",
    "done",
    "function",
    "leased",
    "make",
    "records",
    "result",
    "sent",
    "started",
    "submit",
    "task_input",
    "task_output",
]


class Clock:
    """Time the test sets by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make(**options) -> Scheduler:
    options.setdefault("clock", Clock())
    return Scheduler(**options)


def started(*slots: int, **options) -> Scheduler:
    """A scheduler with client "c1" and workers "w1", "w2"... (named "one", "two"...) of ``slots``."""
    s = make(**options)
    s.add_client("c1")
    for n, count in enumerate(slots):
        s.add_worker(f"w{n + 1}", ("one", "two", "three")[n], count)
    return s


def sent(actions: list) -> list[tuple[str, p.Message]]:
    """The frames among ``actions``, as (connection, message), in order.

    A TaskResult's timing fields (for the job's stats) are blanked so that
    frames compare by what they route; test_scheduler checks them on their own.
    """
    return [(a.to, _untimed(a.message)) for a in actions if isinstance(a, Send)]


def _untimed(msg: p.Message) -> p.Message:
    if isinstance(msg, p.TaskResult):
        return dataclasses.replace(msg, worker="", seconds=0.0, queued=0.0, attempts=1)
    return msg


def records(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def function(job_id: str) -> bytes:
    return f"function of {job_id}".encode()


def task_input(job_id: str, task_id: int) -> bytes:
    return f"input {job_id}/{task_id}".encode()


def task_output(job_id: str, task_id: int, attempt: int) -> bytes:
    return f"output {job_id}/{task_id}@{attempt}".encode()


def submit(
    s: Scheduler,
    client: str,
    job_id: str,
    tasks: int = 1,
    *,
    items_per_task: int = 1,
    retries: int = 0,
    task_timeout: float | None = None,
) -> list:
    """A client's SubmitJob then its SubmitTasks; all the actions they caused."""
    total = tasks * items_per_task
    actions = s.submit_job(client, p.SubmitJob(job_id, function(job_id), tasks, total, task_timeout, retries, "f"))
    for task_id in range(tasks):
        first = task_id * items_per_task
        actions += s.submit_task(
            client, p.SubmitTask(job_id, task_id, first, items_per_task, task_input(job_id, task_id))
        )
    return actions


def assign(
    job_id: str,
    task_id: int,
    attempt: int = 1,
    *,
    items_per_task: int = 1,
    task_timeout: float | None = None,
    first: bool = False,
) -> p.AssignTask:
    """The lease of a task; ``first``: the worker's first task of the job, which carries its function."""
    return p.AssignTask(
        job_id,
        task_id,
        attempt,
        task_id * items_per_task,
        items_per_task,
        task_input(job_id, task_id),
        task_timeout,
        function=function(job_id) if first else b"",
    )


def done(job_id: str, task_id: int, attempt: int = 1, failed: int = 0) -> p.TaskDone:
    return p.TaskDone(job_id, task_id, attempt, failed, task_output(job_id, task_id, attempt))


def result(job_id: str, task_id: int, attempt: int = 1, failed: int = 0, *, items_per_task: int = 1) -> p.TaskResult:
    first = task_id * items_per_task
    return p.TaskResult(job_id, task_id, first, items_per_task, failed, task_output(job_id, task_id, attempt))


def leased(actions: list) -> list[tuple[str, str, int, int]]:
    """The leases among ``actions``: (worker, job, task, attempt)."""
    return [(to, m.job_id, m.task_id, m.attempt) for to, m in sent(actions) if isinstance(m, p.AssignTask)]


def dropped(actions: list) -> bool:
    """True when the scheduler only logged the message away (a late, replayed or forged answer)."""
    return len(actions) == 1 and isinstance(actions[0], Note) and "not its lease" in actions[0].text
