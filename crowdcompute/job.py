"""A submitted job: counters, ordered results, completion order, cancel.

:class:`Job` is the user's handle. Its state lives in a
:class:`~crowdcompute.job_state.JobMachine`; the client feeds it messages
through :meth:`Job.handle`, and the Job carries out the machine's
instructions: it wakes whoever waits, calls listeners, prints what tasks
print, and passes the instructions that touch the connection (send a
cancel, forget the job) to the ``outbox`` callback its owner gave it.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from .errors import CrowdComputeError
from .job_state import (
    MISSING,
    Cancel,
    Changed,
    Deliver,
    Echo,
    Event,
    Fail,
    Finish,
    Forget,
    Instruction,
    JobMachine,
    JobState,
    SendCancel,
)
from .stats import JobStats, TaskTiming

__all__ = ["Job", "JobState"]


def _echo(stream: str, text: str, index: int | None) -> None:
    """Print a task's text here; with an ``index``, each line starts with ``[index]``."""
    if index is not None and index >= 0:
        text = "".join(f"[{index}] {line}" for line in text.splitlines(True))
        if not text.endswith("\n"):
            text += "\n"  # the next item's text starts on a line of its own
    target = sys.stderr if stream == "stderr" else sys.stdout
    target.write(text)
    target.flush()


def _drop(instruction: Instruction) -> None:
    """The outbox of a Job nobody owns: nothing to send."""


class Job:
    """A job on the foreman. ``await job`` gives its results in input order.

    Attributes: ``id``, ``total`` (items), ``completed`` and ``failed`` (items
    with an outcome so far), ``done``, ``state``. Listeners added with
    :meth:`add_listener` are called with the job after every change.

    ``outbox`` receives the instructions for the owner of the connection
    (:class:`~crowdcompute.job_state.SendCancel`, :class:`~crowdcompute.job_state.Forget`).
    Making a Job needs no running event loop.
    """

    def __init__(
        self,
        job_id: str,
        items: Sequence[Any] | None,
        *,
        total: int | None = None,
        name: str = "",
        trusted: bool | None = None,
        call: bool = False,
        portable: bool = False,
        outbox: Callable[[Instruction], None] = _drop,
    ) -> None:
        self.name = name
        self.slots = 0  # slots on the foreman when it was submitted (for stats)
        self.serialize_seconds = 0.0
        self.finished_before_attach = 0  # items that had an outcome before this client attached to the job
        self._machine = JobMachine(job_id, items, total=total, trusted=trusted, call=call, portable=portable)
        self._call = call
        self._outbox = outbox
        self._finished = asyncio.Event()  # binds to a loop only when awaited
        self._arrivals: list[asyncio.Queue] = []
        self._listeners: list[Callable[[Job], None]] = []
        self._connection_note = ""  # "reconnecting to the foreman ..." while the link redials
        self._output_listeners: list[Callable[[int, str, str], None]] = []
        # The submitter's context: printing remote output in it puts the text in the
        # notebook cell that started the job (ipykernel tracks the cell in a contextvar).
        self._context = contextvars.copy_context()
        if self._machine.done:  # an empty job
            self._finished.set()

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.state.value} {self.completed + self.failed}/{self.total}>"

    # --- state (kept by the machine) ---------------------------------------------

    @property
    def id(self) -> str:
        return self._machine.id

    @property
    def total(self) -> int:
        return self._machine.total

    @property
    def completed(self) -> int:
        return self._machine.completed

    @property
    def failed(self) -> int:
        return self._machine.failed

    @property
    def state(self) -> JobState:
        return self._machine.state

    @property
    def done(self) -> bool:
        return self._machine.done

    @property
    def started(self) -> float:
        """Monotonic time the job was made."""
        return self._machine.started

    @property
    def finished(self) -> float | None:
        """Monotonic time the job ended, None while it runs."""
        return self._machine.finished

    @property
    def waiting(self) -> str:
        """What the foreman says the job waits for beyond free slots ("task 12 needs 1 more distinct worker")."""
        return self._machine.waiting

    @property
    def connection(self) -> str:
        """What the connection to the foreman is doing when it is not simply open ("reconnecting ...")."""
        return self._connection_note

    def note_connection(self, note: str) -> None:
        """Say what the connection to the foreman is doing ("" once it is back)."""
        if note != self._connection_note:
            self._connection_note = note
            self._notify()

    @property
    def untrusted_workers(self) -> int:
        """Untrusted volunteers whose results arrived (decoded as plain data unless trust_workers=True)."""
        return len(self._machine.untrusted)

    @property
    def timings(self) -> list[TaskTiming]:
        return self._machine.timings

    @property
    def decode_seconds(self) -> float:
        return self._machine.decode_seconds

    @property
    def stats(self) -> JobStats:
        """Where the job's time went so far: per worker, per task; ``.summary()``, ``.hints()``."""
        m = self._machine
        return JobStats.measure(
            m.completed + m.failed,
            m.total,
            m.started,
            m.finished,
            self.slots,
            self.serialize_seconds,
            m.decode_seconds,
            m.timings,
            m.waiting,
        )

    @property
    def errors(self) -> dict[int, CrowdComputeError]:
        """The failed items so far, by input index."""
        return dict(self._machine.errors)

    @property
    def in_progress(self) -> int:
        """Items finished inside running tasks, as their workers report (their values come with the task)."""
        return self._machine.in_progress

    @property
    def in_progress_failed(self) -> int:
        """Of :attr:`in_progress`, the items that failed."""
        return self._machine.in_progress_failed

    @property
    def early_error(self) -> tuple[int, str] | None:
        """``(index, "Type: message")`` of a failure a worker reported before its task's outcome arrived."""
        return self._machine.early_error

    def partial_results(self) -> list[Any]:
        """The results so far in input order: errors in place of failed items, and in place of each
        item that has no outcome what ended the job (JobCancelledError, ConnectionLostError), else a
        JobCancelledError."""
        return self._machine.partial_outcomes()

    # --- waiting -------------------------------------------------------------

    def __await__(self):
        return self.result().__await__()

    async def result(self, return_exceptions: bool = False) -> list[Any]:
        """The results in input order once every item has an outcome.

        Raises the error of the first failed item (a TaskError) unless
        ``return_exceptions``, in which case errors stand in the list;
        JobCancelledError or ConnectionLostError when the job cannot finish.
        """
        await self._finished.wait()
        machine = self._machine
        if machine.fatal is not None:
            raise machine.fatal
        if machine.errors and not return_exceptions:
            raise machine.errors[min(machine.errors)]
        return machine.outcomes()

    async def as_completed(self) -> AsyncIterator[tuple[int, Any]]:
        """Yield ``(index, result)`` as items finish; a failed item raises its TaskError."""
        machine = self._machine
        queue: asyncio.Queue = asyncio.Queue()
        for index, value in enumerate(machine.results):  # what arrived before we started
            if value is not MISSING:
                queue.put_nowait((index, value, False))
        for index in sorted(machine.errors):
            queue.put_nowait((index, machine.errors[index], True))
        if self.done:
            queue.put_nowait(None)
        self._arrivals.append(queue)
        try:
            while True:
                entry = await queue.get()
                if entry is None:
                    if machine.fatal is not None:
                        raise machine.fatal
                    return
                index, value, failed = entry
                if failed:
                    raise value
                yield index, value
        finally:
            self._arrivals.remove(queue)

    def cancel(self) -> None:
        """Cancel the job: the foreman drops its queued tasks and workers stop running ones."""
        self._obey(self._machine.handle(Cancel()))

    # --- listeners -------------------------------------------------------------

    def add_listener(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` after every change of counters or state."""
        self._listeners.append(callback)

    def add_output_listener(self, callback: Callable[[int, str, str], None]) -> None:
        """Call ``callback(index, stream, text)`` for text tasks print.

        It replaces the default echo, which prints the text in the context
        that submitted the job (so in the notebook cell that started it), each
        line marked ``[index]`` when the job has several items.
        """
        self._output_listeners.append(callback)

    # --- fed by the owner --------------------------------------------------------

    def handle(self, event: Event, sent_at: float | None = None) -> None:
        """Take a message from the foreman (or a Cancel or Lost event) and act on it.

        ``sent_at``: the monotonic time a TaskResult's task was sent, for the stats.
        """
        self._obey(self._machine.handle(event, sent_at))

    def _obey(self, instructions: list[Instruction]) -> None:
        for instruction in instructions:
            if isinstance(instruction, Deliver):
                if self._arrivals:
                    first = instruction.first_index
                    for offset, value in enumerate(instruction.values):
                        self._announce((first + offset, value, False))
            elif isinstance(instruction, Fail):
                self._announce((instruction.index, instruction.error, True))
            elif isinstance(instruction, Echo):
                self._print(instruction)
            elif isinstance(instruction, Finish):
                self._finished.set()
                self._announce(None)
            elif isinstance(instruction, Changed):
                self._notify()
            elif isinstance(instruction, (SendCancel, Forget)):
                self._outbox(instruction)

    def _print(self, echo: Echo) -> None:
        if not self._output_listeners:
            marked = None if self._call or self.total < 2 else echo.index  # which item said it, when that helps
            self._context.run(_echo, echo.stream, echo.text, marked)
        for callback in self._output_listeners:
            callback(echo.index, echo.stream, echo.text)

    def _announce(self, entry: tuple[int, Any, bool] | None) -> None:
        for queue in self._arrivals:
            queue.put_nowait(entry)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback(self)
            except Exception:  # a broken progress display must not break the job
                self._listeners.remove(callback)
