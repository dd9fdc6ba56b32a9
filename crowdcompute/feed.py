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

Outcomes are acknowledged (AckResults) once ``ACK_AFTER_BYTES`` of them have
arrived, so that a foreman without a journal may drop them: its memory is
then bounded by the window, not by the job's size.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable

from .wire import messages as p

__all__ = ["ACK_AFTER_BYTES", "FIRST_TASKS", "Feed"]

#: Outcome bytes received before the client acknowledges them to the foreman (small
#: outcomes are never acknowledged one by one: collecting the job frees them).
ACK_AFTER_BYTES = 1024 * 1024
#: Tasks sent with the job, at most, before the others are encoded and sent (in the next turn of
#: the loop): one per slot of the crowd, so that the foreman leases a task to every idle slot as
#: soon as it has read that first frame, and the others (the workers' prefetch) a frame later.
FIRST_TASKS = 64


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
        slots: int = FIRST_TASKS,
    ) -> None:
        """``slots``: the crowd's slots, as the client last heard (the first frame's tasks)."""
        self.submit = submit
        self.tasks = tasks
        self._send = send
        self.max_queued_tasks = max(1, max_queued_tasks)
        self.max_queued_bytes = max_queued_bytes
        self.first = min(FIRST_TASKS, max(1, slots))
        self.sent = 0  # tasks[:sent] went out
        self._finished: set[int] = set()
        self._starts = [task.first_index for task in tasks]  # in input order: tasks are chunks of it
        self._left = [task.count for task in tasks]  # items of each task without an outcome yet
        self._counted: set[int] = set()  # first indexes of the outcomes counted (replays come again)
        self._queued_bytes = 0
        self.sent_at: dict[int, float] = {}  # task id -> monotonic time it was first sent
        self._unacked: list[int] = []  # task ids of outcomes not yet acknowledged
        self._unacked_bytes = 0

    @property
    def complete(self) -> bool:
        """Every task has an outcome."""
        return len(self._finished) == len(self.tasks)

    def start(self) -> None:
        """Send the job and a task per slot now (at most FIRST_TASKS), the rest once the writer has
        sent those: the foreman leases the first tasks while this process still encodes the others,
        and reads a frame that small before it leases them."""
        self._send(self.submit)
        if self._pump(self.first):
            asyncio.get_running_loop().call_soon(self._pump)

    def finished(self, task_id: int, first_index: int, count: int, outcome_size: int = 0) -> None:
        """An outcome (``outcome_size`` bytes) for items ``first_index`` .. ``+count`` arrived, with
        the id of a task or of a part of one the foreman cut: acknowledge it, and once a task's
        items are all back, make room for the next ones."""
        task = bisect.bisect_right(self._starts, first_index) - 1
        if task < 0 or task in self._finished or first_index in self._counted:
            return
        self._counted.add(first_index)
        self._acknowledge(task_id, outcome_size)
        self._left[task] -= count
        if self._left[task] > 0:
            return
        self._finished.add(task)
        if task < self.sent:
            self._queued_bytes -= len(self.tasks[task].payload)
        self._pump()

    def resend(self) -> None:
        """After a reconnect: the job, its outstanding tasks, then attach for missed outcomes."""
        self._send(self.submit)
        for task in self.tasks[: self.sent]:
            if task.task_id not in self._finished:
                self._send(task)
        self._send(p.AttachJob(self.submit.job_id, resume=True))
        self._pump()

    def _acknowledge(self, task_id: int, size: int) -> None:
        self._unacked.append(task_id)
        self._unacked_bytes += size
        if self._unacked_bytes >= ACK_AFTER_BYTES and not self.complete:  # complete: collecting frees them
            self._send(p.AckResults(self.submit.job_id, self._unacked))
            self._unacked, self._unacked_bytes = [], 0

    def _pump(self, most: int | None = None) -> bool:
        """Send the next tasks the window has room for, at most ``most``; whether ``most`` stopped it."""
        end = len(self.tasks) if most is None else min(len(self.tasks), self.sent + most)
        while self.sent < end:
            queued = self.sent - len(self._finished)  # outcomes come only for tasks sent
            task = self.tasks[self.sent]
            if queued >= self.max_queued_tasks:
                return False
            if queued and self._queued_bytes + len(task.payload) > self.max_queued_bytes:
                return False
            self._send(task)
            self.sent_at[task.task_id] = time.monotonic()
            self._queued_bytes += len(task.payload)
            self.sent += 1
        return self.sent < len(self.tasks)
