"""What a client does with the frames the foreman sends: results to their jobs, answers to their waiters.

Mixed into :class:`crowdcompute.client.CrowdComputeClient`, which owns the
state read here (its jobs, their feeds, the futures of pending requests).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .errors import ConnectionLostError
from .feed import Feed
from .job import Job
from .job_state import Instruction, Lost, refusal
from .wire import messages as p
from .wire.constants import Serializer

if TYPE_CHECKING:
    from collections import deque

    from .link import Link

__all__ = ["FrameHandling"]

log = logging.getLogger("crowdcompute.client")


class FrameHandling:
    """Dispatching the foreman's frames, and reattaching the client's jobs after a drop."""

    trust_workers: bool | None
    _jobs: dict[str, Job]
    _feeds: dict[str, Feed]
    _accepting: dict[str, asyncio.Future]
    _attaching: dict[str, asyncio.Future]
    _status_waiters: deque[asyncio.Future]
    _admin_waiters: deque[asyncio.Future]

    if TYPE_CHECKING:

        @property
        def _open_link(self) -> Link: ...
        def _obey(self, instruction: Instruction) -> None: ...
        def _answered(self, msg: p.Message) -> bool: ...

    def _dispatch(self, msg: p.Message) -> None:
        job_id = getattr(msg, "job_id", "")
        job = self._jobs.get(job_id)
        feed = self._feeds.get(job_id)
        if isinstance(msg, (p.TaskResult, p.TaskFailed)) and feed is not None:
            outcome_size = len(msg.payload) if isinstance(msg, p.TaskResult) else 0
            feed.finished(msg.task_id, msg.first_index, msg.count, outcome_size)
        if isinstance(msg, (p.TaskResult, p.TaskOutput, p.TaskProgress, p.TaskFailed, p.JobWaiting)):
            if job is not None:
                timed = feed is not None and isinstance(msg, p.TaskResult)
                sent_at = feed.sent_at.get(msg.task_id) if feed is not None and isinstance(msg, p.TaskResult) else None
                job.handle(msg, sent_at if timed else None)
        elif isinstance(msg, p.JobAccepted):
            _resolve(self._accepting.get(msg.job_id), None)
        elif isinstance(msg, p.JobAttached):
            self._attached(msg)
        elif isinstance(msg, p.RequestError):
            waiter = self._accepting.get(msg.job_id) or self._attach_waiter(msg.job_id)
            if waiter is not None and not waiter.done():
                waiter.set_exception(refusal(msg))
            elif job is not None:
                job.handle(msg)
            else:
                log.warning("%s", refusal(msg))
        elif not self._answered(msg):
            log.warning("ignored unexpected %s from the foreman", msg.TYPE)

    def _attached(self, msg: p.JobAttached) -> None:
        job = self._jobs.get(msg.job_id)
        if job is None:
            job = Job(
                msg.job_id,
                None,
                total=msg.total_items,
                name=msg.name,
                trusted=self.trust_workers,
                portable=msg.serializer == Serializer.PORTABLE,
                outbox=self._obey,
            )
            job.finished_before_attach = msg.finished_items  # not this client's to time (progress rate)
            if not job.done:
                self._jobs[job.id] = job
        job.handle(msg)  # a job cancelled elsewhere ends here
        _resolve(self._attach_waiter(msg.job_id), job)

    def _attach_waiter(self, job_id: str) -> asyncio.Future | None:
        """The attach() waiting for an answer about ``job_id``: it may have named the job by the start
        of its id, as status views show it (the foreman answers with the whole id)."""
        return self._attaching.get(job_id) or next(
            (waiter for start, waiter in self._attaching.items() if job_id.startswith(start)), None
        )

    def _dropped(self) -> None:
        """The connection dropped and is being redialed: the jobs' progress says so."""
        budget = self._open_link.reconnect_timeout
        for job in list(self._jobs.values()):
            job.note_connection(f"reconnecting to the foreman (for up to {budget:g} s)")

    def _reattach(self) -> None:
        """Back after a drop: our jobs and their outstanding tasks again, then follow them."""
        for job in list(self._jobs.values()):
            job.note_connection("")
        for job_id in list(self._jobs):
            feed = self._feeds.get(job_id)
            if feed is not None:
                feed.resend()  # the foreman ignores what it already has
            else:
                self._open_link.send(p.AttachJob(job_id, resume=True))

    def _connection_lost(self, lost: ConnectionLostError) -> None:
        for waiter in [
            *self._accepting.values(),
            *self._attaching.values(),
            *self._status_waiters,
            *self._admin_waiters,
        ]:
            if not waiter.done():
                waiter.set_exception(lost)
        for job in list(self._jobs.values()):
            job.handle(Lost(lost))


def _resolve(waiter: asyncio.Future | None, value: Any) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(value)
