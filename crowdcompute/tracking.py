"""The jobs a client follows: sending a job and its tasks, attaching to one, and what a Job asks of
the connection (cancel it, forget it).

Mixed into :class:`crowdcompute.client.CrowdComputeClient`, which owns the
connection and the state read here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import ConnectionLostError
from .feed import Feed
from .job import Job
from .job_state import Forget, Instruction, Lost, SendCancel
from .options import JobOptions, parse_requirements
from .submission import encode_job
from .wire import messages as p

if TYPE_CHECKING:
    from .link import Link
    from .local import LocalCluster

__all__ = ["JobTracking"]


class JobTracking:
    """``_submit`` and ``attach``: the client's jobs and their feeds; ``_obey``: what a Job asks."""

    timeout: float
    trust_workers: bool | None
    serializer: str
    requirements: list[str]
    slots: int
    cluster: LocalCluster | None
    _jobs: dict[str, Job]
    _feeds: dict[str, Feed]
    _accepting: dict[str, asyncio.Future]
    _attaching: dict[str, asyncio.Future]

    if TYPE_CHECKING:

        @property
        def connected(self) -> bool: ...
        @property
        def _open_link(self) -> Link: ...
        @property
        def _welcome(self) -> p.Welcome: ...
        def _require_connection(self) -> None: ...

    async def attach(self, job_id: str) -> Job:
        """The Job of a job submitted earlier, from any process holding the client token.

        Raises CrowdComputeError when the foreman has no such job (or no longer its results).
        """
        self._require_connection()
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        waiter = asyncio.get_running_loop().create_future()
        self._attaching[job_id] = waiter
        self._open_link.send(p.AttachJob(job_id))
        try:
            return await asyncio.wait_for(waiter, self.timeout)
        finally:
            self._attaching.pop(job_id, None)

    async def _submit(
        self,
        func: Callable,
        iterable: Iterable[Any],
        options: JobOptions,
        call: bool = False,
        wait_accepted: bool = True,
    ) -> Job:
        """Serialize the job, send it within the foreman's window, and (``wait_accepted``) wait until it is accepted."""
        self._require_connection()
        options = options.check()  # its numbers as int and float from here on
        welcome = self._welcome
        slots = max(self.slots, self.cluster.slots if self.cluster else 0)
        sub = encode_job(
            func,
            iterable,
            options,
            serializer=options.serializer or self.serializer,
            requirements=self.requirements
            if options.requirements is None
            else parse_requirements(options.requirements),
            slots=slots,
            max_frame_size=welcome.max_frame_size,
            call=call,
            ack=wait_accepted,
        )
        job_id, name = sub.job_id, sub.job.name
        feed = Feed(
            sub.job,
            sub.tasks,
            self._open_link.send,
            max_queued_tasks=welcome.max_queued_tasks or len(sub.tasks),
            max_queued_bytes=welcome.max_queued_bytes or 2**62,
            slots=slots,
        )
        trusted = self.trust_workers if options.trust_workers is None else options.trust_workers
        job = Job(job_id, sub.items, name=name, call=call, trusted=trusted, portable=sub.portable, outbox=self._obey)
        job.slots = slots
        job.serialize_seconds = sub.serialize_seconds
        if not job.done:  # an empty job ends before anyone follows it
            self._jobs[job_id] = job
            self._feeds[job_id] = feed
        if not wait_accepted:
            feed.start()
            return job
        accepted = asyncio.get_running_loop().create_future()
        self._accepting[job_id] = accepted
        feed.start()
        try:
            await accepted
        except BaseException:
            if self.connected:  # it may be accepted anyway: nobody waits for it now
                self._open_link.send(p.CancelJob(job_id))
            self._jobs.pop(job_id, None)
            self._feeds.pop(job_id, None)
            raise
        finally:
            self._accepting.pop(job_id, None)
        return job

    def _obey(self, instruction: Instruction) -> None:
        """Carry out what a Job asks of the connection."""
        if isinstance(instruction, SendCancel):
            if self.connected:
                self._open_link.send(p.CancelJob(instruction.job_id))
        elif isinstance(instruction, Forget):
            self._feeds.pop(instruction.job_id, None)
            followed = self._jobs.pop(instruction.job_id, None) is not None
            if followed and instruction.collect and self.connected:
                self._open_link.send(p.CollectJob(instruction.job_id), hold=True)  # rides with the next frame

    def _end_followed_jobs(self, embedded: bool) -> None:
        """The connection is closed for good (``disconnect``): nobody waits forever for a job it followed."""
        for job in list(self._jobs.values()):
            if embedded:
                fate = "the embedded foreman stopped with this client"
            else:
                fate = f"it goes on on the foreman: connect again and attach({job.id!r}) to collect its results"
            job.handle(Lost(ConnectionLostError(f"this client disconnected before job {job.id} ended; {fate}")))
