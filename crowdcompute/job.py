"""A submitted job: counters, ordered results, completion order, cancel."""

from __future__ import annotations

import asyncio
import contextvars
import enum
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .codecs.outcomes import decode_outcomes
from .errors import CrowdComputeError, JobCancelledError
from .results import build_failed_task_error, build_task_error
from .stats import JobStats, TaskTiming

if TYPE_CHECKING:
    from .client import CrowdComputeClient

__all__ = ["Job", "JobState", "WAKE_INTERVAL"]

#: Waits wake this often (seconds) so that an interrupt is noticed promptly.
WAKE_INTERVAL = 0.2

_MISSING = object()


def _echo(stream: str, text: str, index: int | None) -> None:
    """Print a task's text here; with an ``index``, each line starts with ``[index]``."""
    if index is not None and index >= 0:
        text = "".join(f"[{index}] {line}" for line in text.splitlines(True))
        if not text.endswith("\n"):
            text += "\n"  # the next item's text starts on a line of its own
    target = sys.stderr if stream == "stderr" else sys.stdout
    target.write(text)
    target.flush()


class JobState(enum.Enum):
    RUNNING = "running"  # accepted; outcomes still to come
    DONE = "done"  # every item has an outcome and none failed
    FAILED = "failed"  # every item has an outcome; some failed
    CANCELLED = "cancelled"  # cancelled before it finished
    LOST = "lost"  # the connection to the foreman was lost


class Job:
    """A job on the foreman. ``await job`` gives its results in input order.

    Attributes: ``id``, ``total`` (items), ``completed`` and ``failed`` (items
    with an outcome so far), ``done``, ``state``. Listeners added with
    :meth:`add_listener` are called with the job after every change.
    """

    def __init__(
        self,
        client: CrowdComputeClient,
        job_id: str,
        items: Sequence[Any] | None,
        *,
        total: int | None = None,
        name: str = "",
        trusted: bool = True,
        call: bool = False,
        portable: bool = False,
    ) -> None:
        self.id = job_id
        self.name = name
        self.total = len(items) if items is not None else (total or 0)
        self.completed = 0
        self.failed = 0
        self.state = JobState.RUNNING
        self.started = time.monotonic()
        self.finished: float | None = None
        self._client = client
        self._items = items  # kept to show the input of a failed item (None after attach)
        self._trusted = trusted
        self._call = call  # one call of run(): errors name no item
        self._portable = portable  # outcomes are JSON
        self.slots = 0  # slots on the foreman when it was submitted (for stats)
        self.serialize_seconds = 0.0
        self.decode_seconds = 0.0
        self.timings: list[TaskTiming] = []
        self._timed_tasks: set[int] = set()
        self._delivered: set[int] = set()  # first indexes of the tasks whose outcomes arrived
        self._results: list[Any] = [_MISSING] * self.total
        self._errors: dict[int, CrowdComputeError] = {}  # TaskError, or UntrustedPayloadError
        self._fatal: CrowdComputeError | None = None
        self._finished = asyncio.get_running_loop().create_future()
        self._arrivals: list[asyncio.Queue] = []
        self._listeners: list[Callable[[Job], None]] = []
        self._output_listeners: list[Callable[[int, str, str], None]] = []
        # The submitter's context: printing remote output in it puts the text in the
        # notebook cell that started the job (ipykernel tracks the cell in a contextvar).
        self._context = contextvars.copy_context()
        if self.total == 0:
            self._end(JobState.DONE)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.state.value} {self.completed + self.failed}/{self.total}>"

    @property
    def done(self) -> bool:
        return self.state is not JobState.RUNNING

    @property
    def stats(self) -> JobStats:
        """Where the job's time went so far: per worker, per task; ``.summary()``, ``.hints()``."""
        return JobStats.of(self)

    @property
    def errors(self) -> dict[int, CrowdComputeError]:
        """The failed items so far, by input index."""
        return dict(self._errors)

    # --- waiting -------------------------------------------------------------

    def __await__(self):
        return self.result().__await__()

    async def result(self, return_exceptions: bool = False) -> list[Any]:
        """The results in input order once every item has an outcome.

        Raises the error of the first failed item (a TaskError) unless
        ``return_exceptions``, in which case errors stand in the list;
        JobCancelledError or ConnectionLostError when the job cannot finish.
        """
        while not self._finished.done():
            await asyncio.wait([self._finished], timeout=WAKE_INTERVAL)
        if self._fatal is not None:
            raise self._fatal
        if self._errors and not return_exceptions:
            raise self._errors[min(self._errors)]
        return [self._errors[i] if r is _MISSING else r for i, r in enumerate(self._results)]

    async def as_completed(self) -> AsyncIterator[tuple[int, Any]]:
        """Yield ``(index, result)`` as items finish; a failed item raises its TaskError."""
        queue: asyncio.Queue = asyncio.Queue()
        for index, value in enumerate(self._results):  # what arrived before we started
            if value is not _MISSING:
                queue.put_nowait((index, value))
        for index in sorted(self._errors):
            queue.put_nowait((index, self._errors[index]))
        if self.done:
            queue.put_nowait(None)
        self._arrivals.append(queue)
        try:
            while True:
                try:
                    entry = await asyncio.wait_for(queue.get(), WAKE_INTERVAL)
                except asyncio.TimeoutError:
                    continue
                if entry is None:
                    if self._fatal is not None:
                        raise self._fatal
                    return
                index, value = entry
                if isinstance(value, CrowdComputeError) and index in self._errors:
                    raise value
                yield index, value
        finally:
            self._arrivals.remove(queue)

    def cancel(self) -> None:
        """Cancel the job: the foreman drops its queued tasks and workers stop running ones."""
        if self.done:
            return
        self._client._cancel_job(self.id)
        self._fatal = JobCancelledError(self.id)
        self._end(JobState.CANCELLED)

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

    # --- fed by the client -------------------------------------------------------

    def _timed(self, msg, sent_at: float | None) -> None:
        """Keep a TaskResult's timing for the stats (once per task, replays aside)."""
        if msg.task_id in self._timed_tasks:
            return
        self._timed_tasks.add(msg.task_id)
        now = time.monotonic()
        self.timings.append(
            TaskTiming(
                msg.task_id,
                msg.count,
                msg.worker,
                msg.seconds,
                msg.queued,
                msg.attempts,
                None if sent_at is None else now - sent_at,
                now,
            )
        )

    def _deliver(self, first_index: int, count: int, payload: bytes) -> None:
        if self.done or first_index < 0 or first_index + count > self.total:
            return
        started = time.perf_counter()
        values, errors = decode_outcomes(payload, count, self._trusted, self._portable)
        self.decode_seconds += time.perf_counter() - started
        if first_index in self._delivered:
            return  # the same task again (a replay after a reconnect): each result reaches the user once
        self._delivered.add(first_index)
        end = first_index + count
        results = self._results
        if not errors and not self._arrivals:
            results[first_index:end] = values  # the common case, without a loop per item
            self.completed += count
            self._changed()
            return
        for offset, value in enumerate(values):
            index = first_index + offset
            if results[index] is not _MISSING or index in self._errors:
                continue  # a duplicate: each result reaches the user once
            if offset not in errors:
                results[index] = value
                self.completed += 1
            else:
                value = errors[offset]
                if isinstance(value, dict):  # the user's exception, as plain data
                    value = build_task_error(value, *self._where(index), trusted=self._trusted)
                value.index = index if not self._call else None
                self._errors[index] = value
                self.failed += 1
            self._announce(index, value)
        self._changed()

    def _fail_task(
        self, first_index: int, count: int, error: str, reason: str, attempts: int, crashes: int = 0, losses: int = 0
    ) -> None:
        if self.done or first_index < 0 or first_index + count > self.total:
            return
        for index in range(first_index, first_index + count):
            if self._results[index] is _MISSING and index not in self._errors:
                where = self._where(index)[0]
                failure = build_failed_task_error(error, reason, where, attempts, crashes=crashes, losses=losses)
                self._errors[index] = failure
                self.failed += 1
                self._announce(index, failure)
        self._changed()

    def _output(self, index: int, stream: str, text: str) -> None:
        if not self._output_listeners:
            marked = None if self._call or self.total < 2 else index  # which item said it, when that helps
            self._context.run(_echo, stream, text, marked)
        for callback in self._output_listeners:
            callback(index, stream, text)

    def _cancelled_elsewhere(self) -> None:
        """The foreman says the job was cancelled (by another client, say)."""
        if not self.done:
            self._fatal = JobCancelledError(self.id)
            self._end(JobState.CANCELLED)

    def _lose(self, error: CrowdComputeError) -> None:
        if self.done:
            return
        self._fatal = error
        self._end(JobState.LOST)

    def _where(self, index: int) -> tuple[int | None, Any]:
        """How an error names the failed item: its index and input (none for run())."""
        if self._call:
            return None, None
        if self._items is None:
            return index, None
        try:
            return index, self._items[index]
        except Exception:
            return index, None

    def _announce(self, index: int, value: Any) -> None:
        for queue in self._arrivals:
            queue.put_nowait((index, value))

    def _changed(self) -> None:
        if self.completed + self.failed >= self.total:
            self._end(JobState.FAILED if self.failed else JobState.DONE)
            return
        self._notify()

    def _end(self, state: JobState) -> None:
        self.state = state
        self.finished = time.monotonic()
        if not self._finished.done():
            self._finished.set_result(None)
        for queue in self._arrivals:
            queue.put_nowait(None)
        self._client_forget()
        self._notify()

    def _client_forget(self) -> None:
        self._client._forget_job(self.id, collected=self.state in (JobState.DONE, JobState.FAILED))

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback(self)
            except Exception:  # a broken progress display must not break the job
                self._listeners.remove(callback)
