"""The foreman's side of payload files (see :mod:`crowdcompute.wire.blobs`): who shares them, what is
checked on the way in, what a peer that cannot read them gets instead, and when files are deleted.

Files live beside the journal (``<journal>.blobs``, so that a restarted
foreman finds the ones its journal names), else in a temporary folder
removed when the foreman stops. A file is deleted when nothing needs it:

- a task's input once the task has its outcome (the scheduler's SaveResult);
- every file of a job once its outcomes are no longer kept: without a
  journal when the job is collected, cancelled or expired; with one when
  the journal deletes the job (its own ``<prefix>-*`` files, these included);
- a result the scheduler did not take for a job it no longer has, at once;
- with a journal, at start, the files of jobs it does not hold and input
  files no task names (a crash between a write and its message).
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence

from crowdcompute.wire import messages as p
from crowdcompute.wire.blobs import SharedFolder, job_prefix, parse_reference

from .peer import Peer
from .scheduler import Action, Scheduler
from .state import Job, SaveResult

__all__ = ["SharedPayloads"]

log = logging.getLogger("crowdcompute.foreman")


class SharedPayloads:
    """The payload folder of one foreman, and the bookkeeping of its files."""

    def __init__(self, folder: str | None) -> None:
        """``folder``: beside the journal; None: a temporary folder of its own, removed by :meth:`close`."""
        self._temporary = folder is None
        if folder is None:  # in memory where there is /dev/shm: files live about as long as a task
            memory = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            folder = tempfile.mkdtemp(prefix="crowdcompute-payloads-", dir=memory)
        self.folder = SharedFolder.create(folder)
        self._proof = self.folder.proof()
        self._inputs: dict[tuple[str, int], bytes] = {}  # (job, task) -> reference to its input file
        self._with_files: set[str] = set()  # jobs a peer sent a file reference for
        self._unswept: set[str] = set()  # jobs forgotten with no reference seen: a stray file is still possible

    @property
    def path(self) -> str:
        return str(self.folder.path)

    def close(self) -> None:
        if self._temporary:
            shutil.rmtree(self.folder.path, ignore_errors=True)

    def accept(self, peer: Peer, msg: p.ShareBlobs) -> None:
        """A peer shows it reads the folder: references may go to it from now on."""
        if hmac.compare_digest(msg.proof.encode(), self._proof.encode()):
            peer.shares_files = True
            log.info("%s %s shares the payload folder: big payloads go to it as files", peer.role, peer.name)
        else:
            log.warning("%s %s sent a wrong payload folder proof: it gets payloads inline", peer.role, peer.name)

    def incoming(self, peer: Peer, msg: p.Message, scheduler: Scheduler) -> p.Message:
        """Check a reference a peer sent (raises ValueError saying what is wrong); a result for a
        redundant job comes inline, so that runs are compared by their bytes."""
        if not isinstance(msg, (p.SubmitTask, p.TaskDone)):
            return msg
        found = self.folder.check(msg.job_id, msg.payload)
        if found is None:
            return msg
        self._with_files.add(msg.job_id)
        if not peer.shares_files:
            raise ValueError("it sent a payload file reference without sharing the payload folder")
        if isinstance(msg, p.SubmitTask) and msg.pieces:
            raise ValueError("a task whose input is a payload file cannot be made of pieces")
        job = scheduler.jobs.get(msg.job_id)
        if isinstance(msg, p.TaskDone) and job is not None and job.redundancy > 1:
            data = bytes(self.folder.read(msg.payload))
            self.folder.delete(msg.payload)
            return dataclasses.replace(msg, payload=data)
        return msg

    def acknowledging(self, msg: p.Message, scheduler: Scheduler) -> list[p.TaskResult]:
        """Before the scheduler sees an AckResults: the results in files it may drop (see :meth:`handled`)."""
        job = scheduler.jobs.get(msg.job_id) if isinstance(msg, p.AckResults) else None
        if job is None or not isinstance(msg, p.AckResults):
            return []
        outcomes = [job.results.get(task_id) for task_id in msg.task_ids]
        return [o for o in outcomes if isinstance(o, p.TaskResult) and _is_reference(o.payload)]

    def handled(
        self,
        msg: p.Message,
        scheduler: Scheduler,
        actions: Sequence[Action] = (),
        acknowledged: Sequence[p.TaskResult] = (),
    ) -> None:
        """After the scheduler saw ``msg`` (and answered ``actions``): keep the references it holds,
        delete the ones it did not take (a late or backup run's result, a task sent again), and, for
        an AckResults, the files of the results it dropped (their client holds them)."""
        if acknowledged and isinstance(msg, p.AckResults):
            job = scheduler.jobs.get(msg.job_id)
            kept = {id(outcome) for outcome in job.results.values()} if job is not None else set()
            for outcome in acknowledged:
                if id(outcome) not in kept:
                    self.folder.delete(outcome.payload)
        if not isinstance(msg, (p.SubmitTask, p.TaskDone)) or not _is_reference(msg.payload):
            return
        job = scheduler.jobs.get(msg.job_id)
        if isinstance(msg, p.SubmitTask):
            task = job.tasks.get(msg.task_id) if job is not None else None
            if task is not None and task.payload is msg.payload:
                self._inputs[(msg.job_id, msg.task_id)] = msg.payload
                return
            self.folder.delete(msg.payload)  # sent again after a reconnect, or for a job not held
        elif not any(isinstance(a, SaveResult) and getattr(a.message, "payload", None) is msg.payload for a in actions):
            self.folder.delete(msg.payload)

    def saved(self, record: SaveResult) -> None:
        """A task has its outcome: its input file is no longer needed."""
        reference = self._inputs.pop((record.job_id, record.task_id), None)
        if reference is not None:
            self.folder.delete(reference)

    def outgoing(self, peer: Peer, msg: p.Message) -> p.Message:
        """``msg`` as ``peer`` can read it: a reference becomes the file's bytes for a peer that does not share."""
        if peer.shares_files or not isinstance(msg, (p.AssignTask, p.TaskResult)) or not _is_reference(msg.payload):
            return msg
        try:
            data = bytes(self.folder.read(msg.payload))
        except (OSError, ValueError) as exc:
            log.warning("cannot read a payload file for %s %s: %s", peer.role, peer.name, exc)
            data = b""
        return dataclasses.replace(msg, payload=data)

    def outgoing_frame(self, peer: Peer, frame: bytes) -> bytes:
        """A stored frame (a journal replay) as ``peer`` can read it."""
        if peer.shares_files or len(frame) > 64 * 1024:  # a reference frame is small
            return frame
        msg = p.decode(frame)
        changed = self.outgoing(peer, msg)
        return frame if changed is msg else p.encode(changed)

    def forget(self, job_ids: Iterable[str]) -> None:
        """These jobs are gone for good: delete their files now if they had any; the others (tiny
        jobs, most of them) are left to :meth:`sweep`, which reads the folder once for many jobs
        (a peer may have written a file and died before naming it)."""
        for job_id in job_ids:
            if job_id not in self._with_files:
                self._unswept.add(job_id)
                continue
            self._with_files.discard(job_id)
            self.folder.delete_job(job_id)
            for key in [key for key in self._inputs if key[0] == job_id]:
                del self._inputs[key]

    def sweep(self) -> None:
        """Delete any file of the jobs :meth:`forget` left: one read of the folder for all of them."""
        if not self._unswept:
            return
        prefixes = {job_prefix(job_id) for job_id in self._unswept}
        self._unswept.clear()
        try:
            names = os.listdir(self.folder.path)
        except OSError:
            return
        for name in names:
            if name.lstrip(".").split("-", 1)[0] in prefixes:
                (self.folder.path / name).unlink(missing_ok=True)

    def restored(self, jobs: Iterable[Job], ended: Iterable[str]) -> None:
        """At start, with a journal: know the input files of the jobs it resumes, and delete the
        files no job it holds names (a crash between a write and its message): those of other jobs,
        and input files no task of its own names (results it keeps until the journal deletes the job)."""
        jobs = list(jobs)
        inputs: set[str] = set()
        for job in jobs:
            for task in job.tasks.values():
                found = _reference(task.payload)
                if found is not None and task.payload is not None:
                    self._inputs[(job.job_id, task.task_id)] = task.payload
                    inputs.add(found)
        keep = {job_prefix(job.job_id) for job in jobs} | {job_prefix(job_id) for job_id in ended}
        for path in [*self.folder.path.glob("*.blob"), *self.folder.path.glob(".*.part")]:
            name = path.name.lstrip(".")
            if name.split("-")[0] not in keep or (name.endswith(".in.blob") and name not in inputs):
                path.unlink(missing_ok=True)


def _reference(payload: object) -> str | None:
    """The file name a payload references, or None."""
    try:
        found = parse_reference(payload)
    except ValueError:
        return None
    return None if found is None else found[0]


def _is_reference(payload: object) -> bool:
    return _reference(payload) is not None
