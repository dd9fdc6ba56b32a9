"""How a worker agent feeds its slots: each takes the next task waiting at the agent, or the one
it claimed (and wrote to its process) while its last task ran; outcomes go to the foreman.

Mixed into :class:`worker.agent.WorkerAgent`, which owns the connection and the state read here;
which running slot may claim a waiting task is :mod:`worker.claims`' rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from crowdcompute.wire import messages as p
from crowdcompute.wire.blobs import BLOB_THRESHOLD, SharedFolder, parse_reference, payload_parts
from crowdcompute.wire.framing import Pieces

from .claims import Ends
from .pool import Finished, Lost, Slot
from .preparation import EnvironmentPreparation

__all__ = ["SlotFeeding"]

log = logging.getLogger("crowdcompute.worker")


class SlotFeeding(EnvironmentPreparation):
    """``_run_slot``: a slot's loop, task after task; ``_offer``: waiting tasks to running slots."""

    slots: list[Slot]
    _active: int  # the first slots, which the foreman uses
    _started: asyncio.Future
    _queue: asyncio.Queue[tuple[p.AssignTask, float]]
    _functions: dict[str, tuple[bytes, str]]  # job id -> (function, serializer)
    _requirements: dict[str, list[str]]
    _running: dict[int, p.AssignTask]  # slot index -> the task it runs
    _cancelled: set[tuple[str, int]]  # (job, task) the foreman cancelled, not yet seen here
    _claimers: dict[int, Callable[[], None]]
    _ends: Ends
    _offering: bool
    _draining: bool
    _idle: asyncio.Event
    _shared: SharedFolder | None

    async def _run_slot(self, slot: Slot) -> None:
        await asyncio.shield(self._started)
        following: tuple[p.AssignTask, float, bool] | None = None  # claimed while the last task ran
        while True:
            following = await self._run_one(slot, following)

    async def _run_one(
        self, slot: Slot, claimed: tuple[p.AssignTask, float, bool] | None
    ) -> tuple[p.AssignTask, float, bool] | None:
        """Run the task ``claimed`` while the last one ran, else the next one queued; return the
        one claimed while this one ran. What it held (the task's input, its outcome) goes when
        it returns: a slot waiting for work holds no 100 MB outcome of the last task."""
        following: tuple[p.AssignTask, float, bool] | None = None
        if claimed is None:
            task, arrived = await self._queue.get()
            preloaded = False
        else:
            task, arrived, preloaded = claimed
        waited = time.monotonic() - arrived  # in our queue, for a free task process
        function = self._functions.get(task.job_id)  # (bytes, serializer)
        if function is None or self._draining:
            return None  # released while it waited here, or handed back when we close
        site = None
        requirements = self._requirements.get(task.job_id)
        if requirements:
            site = await self._prepare(task.job_id, requirements)
            if site is None or task.job_id not in self._functions:
                return None  # it could not be built (the foreman hands the task to others), or released
        if self._was_cancelled(task):  # (also while its environment was built)
            if preloaded:  # its process started it the moment the last task ended: stop it
                slot.kill()
            self._outbox.put_nowait(p.encode_parts(p.TaskCancelled(task.job_id, task.task_id, task.attempt)))
            return None

        def on_output(index: int, stream: str, text: str, task: p.AssignTask = task) -> None:
            message = p.TaskOutput(task.job_id, task.task_id, index, stream, text)
            self._outbox.put_nowait(p.encode_parts(message))

        def on_progress(done: int, failed: int, error: str, error_index: int, task: p.AssignTask = task) -> None:
            message = p.TaskProgress(task.job_id, task.task_id, done, failed, error, error_index)
            self._outbox.put_nowait(p.encode_parts(message))

        def claim_next(site: str | None = site) -> None:
            nonlocal following
            following = self._claim_next(slot, site)
            if following is None:
                self._claimers[slot.index] = claim_next  # a task that arrives later may be claimed

        self._running[slot.index] = task
        self._ends.started(slot.index, task.job_id, task.count)
        self._idle.clear()
        try:
            outcome = await slot.execute(
                task.job_id,
                task.first_index,
                task.count,
                function,
                self._input(task),
                task.task_timeout,
                on_output,
                on_progress,
                site,
                self._shared_path,
                token=task if preloaded else None,
                then=claim_next,
            )
        finally:
            self._claimers.pop(slot.index, None)
            self._running.pop(slot.index, None)
            self._ends.stopped(slot.index)
            if not self._running:
                self._idle.set()
        if self._was_cancelled(task) and not isinstance(outcome, Finished):  # stopped by _cancel
            reply: p.Message = p.TaskCancelled(task.job_id, task.task_id, task.attempt)
        elif isinstance(outcome, Finished):  # (cancelled too late: its outcome ends the lease as well)
            self._ends.ended(task.job_id, task.count, outcome.seconds)
            reply = p.TaskDone(
                task.job_id,
                task.task_id,
                task.attempt,
                outcome.failed,
                self._output(task.job_id, outcome.payload),
                outcome.seconds,
                waited=waited,
                setup=self._setup.pop(task.job_id, 0.0),
            )
        elif isinstance(outcome, Lost) and outcome.error is not None:
            log.warning("task %s/%s: %s", task.job_id, task.task_id, outcome.reason)
            reply = p.TaskCrashed(task.job_id, task.task_id, task.attempt, outcome.error, outcome.reason)
        else:
            return following
        self._outbox.put_nowait(p.encode_parts(reply))
        return following

    def _was_cancelled(self, task: p.AssignTask) -> bool:
        """Whether the foreman cancelled ``task`` (forgotten once asked: it is answered once)."""
        key = (task.job_id, task.task_id)
        if not self._cancelled or key not in self._cancelled:
            return False
        self._cancelled.discard(key)
        return True

    def _offer(self) -> None:
        """Tasks arrived: slots running a task with none behind it claim the next ones while
        there are enough for all of them (``_claim_next``).

        Called soon after the tasks were queued, not at once: idle slots waiting on the queue
        are woken first and take the first tasks, in the order the foreman leased them, and
        the slots still running claim what is left. A running slot that claimed the first of
        two tasks arriving together would leave the idle slot the second, and start the first
        only when its own task ends (the foreman counts tasks as run in lease order).
        """
        self._offering = False
        for index in self._ends.first(self._claimers):  # the slot that will need a task first, first
            claim = self._claimers.pop(index)
            if not self._claimable(index):
                self._claimers[index] = claim
                return
            claim()

    def _claimable(self, index: int) -> bool:
        """Whether the running slot ``index`` may claim its next task now: the tasks waiting here,
        beyond those idle slots are about to take, are enough for every running slot that will
        need one no later than it (``worker.claims``). With fewer (the tail of a job, or a short
        task running beside a long one), they stay here for whichever slot frees first."""
        idle = self._active - len(self._running)
        return not self._draining and self._queue.qsize() - idle >= self._ends.sooner(index, self._running)

    def _claim_next(self, slot: Slot, site: str | None) -> tuple[p.AssignTask, float, bool] | None:
        """While ``slot`` runs a task, when enough tasks wait here (``_claimable``): take the slot's
        next one now and write it to its process's pipe (``Slot.preload``), so that the process
        starts it the moment the running one ends instead of waiting for us to read the outcome and
        answer."""
        if not self._claimable(slot.index):
            return None
        task, arrived = self._queue.get_nowait()
        self._ends.claimed(slot.index, task.job_id, task.count)
        function = self._functions.get(task.job_id)
        preloaded = (
            function is not None
            and site is None
            and task.job_id not in self._requirements
            and slot.preload(
                task, task.job_id, task.first_index, task.count, function, self._input(task), self._shared_path
            )
        )
        return task, arrived, preloaded

    @property
    def _shared_path(self) -> str | None:
        """The foreman's shared payload folder, if this host shares it."""
        return str(self._shared.path) if self._shared is not None else None

    def _input(self, task: p.AssignTask) -> bytes | Path:
        """A task's input: its bytes, or the shared file that holds them."""
        try:
            found = parse_reference(task.payload) if self._shared is not None else None
        except ValueError:
            found = None
        return task.payload if found is None or self._shared is None else self._shared.file(found[0])

    def _output(self, job_id: str, payload: bytes | Pieces) -> bytes:
        """A task's outcome as it goes to the foreman: a big one as a shared file, if this host shares them."""
        if self._shared is not None and len(payload) >= BLOB_THRESHOLD:
            try:
                return self._shared.write(job_id, payload_parts(payload))
            except OSError as exc:  # a full disk, say: the bytes go inline
                log.warning("cannot write a payload file in %s (%s): sending it inline", self._shared.path, exc)
        return cast(bytes, payload)  # Pieces are sent as they are (encode_parts)
