"""A job's state on the client, as a pure state machine (no loop, no socket).

:class:`JobMachine` takes one event at a time, a decoded message from the
foreman (TaskResult, TaskFailed, TaskOutput, JobAttached, RequestError) or
a local one (:class:`Cancel`, :class:`Lost`), updates its counters and
results, and returns what to do as instructions: tell waiters of arrived
values (:class:`Deliver`) and failed items (:class:`Fail`), show a task's
text (:class:`Echo`), wake everyone at the end (:class:`Finish`), send a
cancel to the foreman (:class:`SendCancel`), stop following the job
(:class:`Forget`), redraw progress (:class:`Changed`). :class:`crowdcompute.job.Job`
carries them out, the client the ones that touch the connection.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .codecs.outcomes import decode_outcomes
from .errors import CrowdComputeError, JobCancelledError
from .results import build_failed_task_error, build_task_error
from .stats import TaskTiming
from .wire import messages as p

__all__ = [
    "Cancel",
    "Changed",
    "Deliver",
    "Echo",
    "Event",
    "Fail",
    "Finish",
    "Forget",
    "Instruction",
    "JobMachine",
    "JobState",
    "Lost",
    "SendCancel",
    "refusal",
]

MISSING: Any = object()  # a result slot whose outcome has not arrived


class JobState(enum.Enum):
    RUNNING = "running"  # accepted; outcomes still to come
    DONE = "done"  # every item has an outcome and none failed
    FAILED = "failed"  # every item has an outcome; some failed
    CANCELLED = "cancelled"  # cancelled before it finished
    LOST = "lost"  # the connection to the foreman was lost


# --- events that do not come from the foreman ---------------------------------


@dataclass(frozen=True)
class Cancel:
    """The user cancels the job."""


@dataclass(frozen=True)
class Lost:
    """The job cannot finish: the connection is gone, or the foreman refused it."""

    error: CrowdComputeError


Event = (
    p.TaskResult
    | p.TaskFailed
    | p.TaskOutput
    | p.TaskProgress
    | p.JobAttached
    | p.JobWaiting
    | p.RequestError
    | Cancel
    | Lost
)


# --- instructions ----------------------------------------------------------------


@dataclass(frozen=True)
class Deliver:
    """Items ``first_index``... succeeded with ``values`` (for ``as_completed``)."""

    first_index: int
    values: Sequence[Any]


@dataclass(frozen=True)
class Fail:
    """Item ``index`` failed with ``error`` (a TaskError, or an error the foreman reported)."""

    index: int
    error: CrowdComputeError


@dataclass(frozen=True)
class Echo:
    """Show text a task printed."""

    index: int
    stream: str
    text: str


@dataclass(frozen=True)
class Finish:
    """The job ended in ``state``; ``error`` is what waiting on it raises (None: the results)."""

    state: JobState
    error: CrowdComputeError | None


@dataclass(frozen=True)
class SendCancel:
    """Tell the foreman to cancel the job."""

    job_id: str


@dataclass(frozen=True)
class Forget:
    """Stop following the job; ``collect``: its results all arrived, the foreman may drop them."""

    job_id: str
    collect: bool


@dataclass(frozen=True)
class Changed:
    """Counters or state changed: redraw what shows them."""


Instruction = Deliver | Fail | Echo | Finish | SendCancel | Forget | Changed


def refusal(msg: p.RequestError) -> CrowdComputeError:
    """The error for a request the foreman refused."""
    return CrowdComputeError(f"the foreman refused a request for job {msg.job_id}: {msg.reason}")


class JobMachine:
    """Counters, ordered results and errors of one job; :meth:`handle` feeds it.

    ``items`` (None after attach) name a failed item's input in its error;
    ``trusted``: True unpickles every result, False none (plain data only),
    None those that a trusted worker returned (TaskResult.trusted);
    ``call``: one call of ``run()``, whose errors name no item; ``portable``:
    outcomes are JSON; ``clock`` gives monotonic seconds.
    """

    def __init__(
        self,
        job_id: str,
        items: Sequence[Any] | None,
        *,
        total: int | None = None,
        trusted: bool | None = None,
        call: bool = False,
        portable: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = job_id
        self.total = len(items) if items is not None else (total or 0)
        self.completed = 0
        self.failed = 0
        self.state = JobState.RUNNING
        self.clock = clock
        self.started = clock()
        self.finished: float | None = None
        self.decode_seconds = 0.0
        self.timings: list[TaskTiming] = []
        self.results: list[Any] = [MISSING] * self.total
        self.errors: dict[int, CrowdComputeError] = {}  # TaskError, or UntrustedPayloadError
        self.fatal: CrowdComputeError | None = None  # what waiting raises once the job cannot finish
        self.waiting = ""  # what the foreman says the job waits for beyond free slots
        self.untrusted: set[str] = set()  # untrusted workers whose results arrived
        self._items = items
        self._trusted = trusted
        self._call = call
        self._portable = portable
        self._timed_tasks: set[int] = set()
        self._delivered: dict[int, int] = {}  # first index -> item count of each outcome that arrived
        # 1 for each item a result filled without a per-item loop: the foreman may cut a task
        # into parts, so a later outcome (after a foreman lost its memory) can overlap earlier ones.
        self._filled = bytearray(self.total)
        self._running: dict[int, tuple[int, int]] = {}  # task id -> (items done, failed) it reported
        self.early_error: tuple[int, str] | None = None  # (index, "Type: message") reported before its task ended
        if self.total == 0:
            self.state = JobState.DONE
            self.finished = self.started

    @property
    def done(self) -> bool:
        return self.state is not JobState.RUNNING

    def handle(self, event: Event, sent_at: float | None = None) -> list[Instruction]:
        """Apply one event; what to do about it. ``sent_at``: when a TaskResult's task was sent."""
        if isinstance(event, p.TaskResult):
            self._time(event, sent_at)
            return self._deliver(event.first_index, event.count, event.payload, event.trusted)
        if isinstance(event, p.TaskFailed):
            return self._fail(event)
        if isinstance(event, p.TaskOutput):
            return [Echo(event.index, event.stream, event.text)]
        if isinstance(event, p.TaskProgress):
            return self._progress(event)
        if isinstance(event, p.JobWaiting):
            if self.done or event.reason == self.waiting:
                return []
            self.waiting = event.reason
            return [Changed()]
        if isinstance(event, p.JobAttached):
            return self._end(JobState.CANCELLED, JobCancelledError(self.id)) if event.state == "cancelled" else []
        if isinstance(event, p.RequestError):
            return self._end(JobState.LOST, refusal(event))
        if isinstance(event, Cancel):
            if self.done:
                return []
            return [SendCancel(self.id), *self._end(JobState.CANCELLED, JobCancelledError(self.id))]
        if isinstance(event, Lost):
            return self._end(JobState.LOST, event.error)
        raise TypeError(f"a job cannot handle {type(event).__name__}")

    @property
    def in_progress(self) -> int:
        """Items finished inside tasks whose outcomes have not arrived (their workers reported them)."""
        return sum(done for done, _ in self._running.values())

    @property
    def in_progress_failed(self) -> int:
        """Of those, the items that failed."""
        return sum(failed for _, failed in self._running.values())

    def partial_outcomes(self) -> list[Any]:
        """The results in input order so far: errors in place of failed items, and in place of
        those that never finished what ended the job (a JobCancelledError, a ConnectionLostError),
        else a JobCancelledError."""
        unfinished = self.fatal or JobCancelledError(self.id)
        return [self.errors.get(i, unfinished) if r is MISSING else r for i, r in enumerate(self.results)]

    def outcomes(self) -> list[Any]:
        """The results in input order, errors in place of the failed items."""
        if not self.errors and self.completed == self.total:
            return self.results[:]  # the common case, without a loop per item
        return [self.errors[i] if r is MISSING else r for i, r in enumerate(self.results)]

    # --- the events -------------------------------------------------------------

    def _progress(self, msg: p.TaskProgress) -> list[Instruction]:
        """A running task finished some of its items: count them now (its outcome brings the values)."""
        if self.done or msg.task_id in self._timed_tasks:
            return []  # over, or the outcome already arrived (a late report)
        before = self._running.get(msg.task_id, (0, 0))
        if (msg.done, msg.failed) <= before:
            return []
        self._running[msg.task_id] = (max(msg.done, before[0]), max(msg.failed, before[1]))
        if msg.error and self.early_error is None and not self.errors and 0 <= msg.error_index < self.total:
            self.early_error = (msg.error_index, msg.error)
        return [Changed()]

    def _time(self, msg: p.TaskResult, sent_at: float | None) -> None:
        """Keep a TaskResult's timing for the stats (once per task, replays aside)."""
        self._running.pop(msg.task_id, None)
        if msg.task_id in self._timed_tasks:
            return
        self._timed_tasks.add(msg.task_id)
        now = self.clock()
        round_trip = None if sent_at is None else now - sent_at
        if not msg.trusted:
            self.untrusted.add(msg.worker)
        self.timings.append(
            TaskTiming(
                msg.task_id,
                msg.count,
                msg.worker,
                msg.seconds,
                msg.queued,
                msg.attempts,
                round_trip,
                now,
                msg.trusted,
                msg.reissued,
                msg.backups,
                msg.waited,
                msg.setup,
            )
        )

    def _deliver(self, first_index: int, count: int, payload: bytes, from_trusted: bool = True) -> list[Instruction]:
        """Decode a task's outcomes: a result only untrusted volunteers returned is unpickled
        only when the job opted in with ``trust_workers=True``; else it must be plain data."""
        if self.done or first_index < 0 or first_index + count > self.total:
            return []
        started = time.perf_counter()
        trusted = self._trusted is True or (self._trusted is None and from_trusted)
        values, errors = decode_outcomes(payload, count, trusted, self._portable)
        self.decode_seconds += time.perf_counter() - started
        if self._delivered.get(first_index) == count:
            return []  # the same task again (a replay after a reconnect): each result reaches the user once
        self._delivered[first_index] = count
        end = first_index + count
        results = self.results
        if not errors and not self.errors and self._filled.find(1, first_index, end) == -1:
            # The common case, without a loop per item.
            results[first_index:end] = values
            self._filled[first_index:end] = b"\x01" * count
            self.completed += count
            return [Deliver(first_index, values), *self._changed()]
        done: list[Instruction] = []
        for offset, value in enumerate(values):
            index = first_index + offset
            if results[index] is not MISSING or index in self.errors:
                continue  # a duplicate: each result reaches the user once
            if offset not in errors:
                results[index] = value
                self.completed += 1
                done.append(Deliver(index, [value]))
                continue
            error = errors[offset]
            if isinstance(error, dict):  # the user's exception, as plain data
                error = build_task_error(error, *self._where(index), trusted=trusted)
            error.index = index if not self._call else None
            self.errors[index] = error
            self.failed += 1
            done.append(Fail(index, error))
        return [*done, *self._changed()] if done else []

    def _fail(self, msg: p.TaskFailed) -> list[Instruction]:
        self._running.pop(msg.task_id, None)
        first_index, count = msg.first_index, msg.count
        if self.done or first_index < 0 or first_index + count > self.total:
            return []
        done: list[Instruction] = []
        for index in range(first_index, first_index + count):
            if self.results[index] is MISSING and index not in self.errors:
                failure = build_failed_task_error(
                    msg.error, msg.reason, self._where(index)[0], msg.attempts, crashes=msg.crashes, losses=msg.losses
                )
                self.errors[index] = failure
                self.failed += 1
                done.append(Fail(index, failure))
        return [*done, *self._changed()] if done else []

    # --- helpers -------------------------------------------------------------------

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

    def _changed(self) -> list[Instruction]:
        if self.completed + self.failed >= self.total:
            return self._end(JobState.FAILED if self.failed else JobState.DONE, None)
        return [Changed()]

    def _end(self, state: JobState, error: CrowdComputeError | None) -> list[Instruction]:
        if self.done:
            return []
        self.state = state
        self.fatal = error
        self.finished = self.clock()
        collect = state in (JobState.DONE, JobState.FAILED)
        return [Finish(state, error), Forget(self.id, collect=collect), Changed()]
