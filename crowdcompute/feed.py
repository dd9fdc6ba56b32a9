"""Sending a job's tasks within the foreman's window (backpressure).

The client pickles every chunk before sending anything (so a bad item fails
the call, not the job), then keeps at most ``max_queued_tasks`` tasks and
``max_queued_bytes`` of input on the foreman without an outcome; each
outcome makes room for the next task. After a reconnect the feed sends the
job and its outstanding tasks again (the foreman ignores what it has) and
attaches, so a foreman that lost the job (no journal) gets it back.

The foreman may cut a queued task into parts (for workers that joined), each
with an outcome of its own: a task is finished once outcomes covered all its
items, whatever ids they came with.
"""

from __future__ import annotations

import bisect
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
        self._starts = [task.first_index for task in tasks]  # in input order: tasks are chunks of it
        self._left = [task.count for task in tasks]  # items of each task without an outcome yet
        self._counted: set[int] = set()  # first indexes of the outcomes counted (replays come again)
        self._queued_bytes = 0
        self.sent_at: dict[int, float] = {}  # task id -> monotonic time it was first sent

    @property
    def complete(self) -> bool:
        """Every task has an outcome."""
        return len(self._finished) == len(self.tasks)

    def start(self) -> None:
        self._send(self.submit)
        self._pump()

    def finished(self, first_index: int, count: int) -> None:
        """An outcome for items ``first_index`` .. ``+count`` arrived (a task, or a part of one
        the foreman cut): once a task's items are all back, make room for the next ones."""
        task_id = bisect.bisect_right(self._starts, first_index) - 1
        if task_id < 0 or task_id in self._finished or first_index in self._counted:
            return
        self._counted.add(first_index)
        self._left[task_id] -= count
        if self._left[task_id] > 0:
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
