"""Sending a job's tasks within the foreman's window (backpressure).

The client pickles every chunk before sending anything (so a bad item fails
the call, not the job), then keeps at most ``max_queued_tasks`` tasks and
``max_queued_bytes`` of input on the foreman without an outcome; each
outcome makes room for the next task. After a reconnect the feed sends the
job and its outstanding tasks again (the foreman ignores what it has) and
attaches, so a foreman that lost the job (no journal) gets it back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .wire import messages as p

__all__ = ["Feed"]


class Feed:
    """A job's submission and the tasks still to be sent."""

    def __init__(
        self,
        submit: p.SubmitJob,
        tasks: list[p.SubmitTask],
        send: Callable[[p.Message], None],
        *,
        max_queued_tasks: int,
        max_queued_bytes: int,
    ) -> None:
        self.submit = submit
        self.tasks = tasks
        self._send = send
        self.max_queued_tasks = max(1, max_queued_tasks)
        self.max_queued_bytes = max_queued_bytes
        self.sent = 0  # tasks[:sent] went out
        self._finished: set[int] = set()
        self._queued_bytes = 0
        self.sent_at: dict[int, float] = {}  # task id -> monotonic time it was first sent

    @property
    def complete(self) -> bool:
        """Every task has an outcome."""
        return len(self._finished) == len(self.tasks)

    def start(self) -> None:
        self._send(self.submit)
        self._pump()

    def finished(self, task_id: int) -> None:
        """A task's outcome arrived: make room for the next ones."""
        if task_id in self._finished or task_id >= len(self.tasks):
            return
        self._finished.add(task_id)
        if task_id < self.sent:
            self._queued_bytes -= len(self.tasks[task_id].payload)
        self._pump()

    def resend(self) -> None:
        """After a reconnect: the job, its outstanding tasks, then attach for missed outcomes."""
        self._send(self.submit)
        for task in self.tasks[: self.sent]:
            if task.task_id not in self._finished:
                self._send(task)
        self._send(p.AttachJob(self.submit.job_id))
        self._pump()

    def _pump(self) -> None:
        while self.sent < len(self.tasks):
            queued = self.sent - len(self._finished)  # outcomes come only for tasks sent
            task = self.tasks[self.sent]
            if queued >= self.max_queued_tasks:
                return
            if queued and self._queued_bytes + len(task.payload) > self.max_queued_bytes:
                return
            self._send(task)
            self.sent_at[task.task_id] = time.monotonic()
            self._queued_bytes += len(task.payload)
            self.sent += 1
