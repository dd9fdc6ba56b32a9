"""Messages between the foreman and a worker: tasks handed out and released, and what became of them.

Part of :mod:`crowdcompute.wire.messages`, which re-exports every one of them.
"""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar

from .constants import EnvironmentState, ErrorKind, Serializer
from .framing import Message, message
from .framing import require as _require
from .needs import check_requirements as _check_requirements

# --- foreman -> worker ------------------------------------------------------


@message
class AssignTask(Message):
    """Run one task; ``attempt`` makes the lease (job, task, attempt) unique.

    A worker's first task of a job carries the job's ``function`` (with its
    ``serializer`` and ``requirements``); later ones leave it empty: the
    worker holds it until ReleaseJob.
    """

    TYPE: ClassVar[str] = "assign_task"
    job_id: str
    task_id: int
    attempt: int
    first_index: int
    count: int
    payload: bytes
    task_timeout: float | None = None
    function: bytes = b""
    serializer: Serializer = Serializer.CLOUDPICKLE
    requirements: list[str] = field(
        default_factory=list
    )  # the worker runs the job's tasks in an environment with these

    def validate(self) -> None:
        _check_requirements("assign_task", self.requirements)


@message
class ReleaseJob(Message):
    """Stop any running task of the job and forget its function."""

    TYPE: ClassVar[str] = "release_job"
    job_id: str


@message
class CancelTask(Message):
    """Another run of the task was accepted (it was run again elsewhere, or backed up): stop this
    worker's copy if it runs, or skip it if it waits here, and answer TaskCancelled (or, if its
    outcome went out already, nothing more)."""

    TYPE: ClassVar[str] = "cancel_task"
    job_id: str
    task_id: int


# --- worker -> foreman ------------------------------------------------------


@message
class TaskDone(Message):
    """A finished task's outcomes (opaque payload) for the lease it held."""

    TYPE: ClassVar[str] = "task_done"
    job_id: str
    task_id: int
    attempt: int
    failed: int
    payload: bytes
    seconds: float = 0.0  # time spent running the task
    waited: float = 0.0  # time it waited on the worker for a free task process
    setup: float = 0.0  # time this task waited for its job's environment to be built


@message
class WorkerDraining(Message):
    """The worker is stopping: give it no more tasks; it finishes or hands back the rest."""

    TYPE: ClassVar[str] = "worker_draining"


@message
class TaskCrashed(Message):
    """A task whose process died or was stopped; ``error`` is "crashed" or "timeout"."""

    TYPE: ClassVar[str] = "task_crashed"
    job_id: str
    task_id: int
    attempt: int
    error: ErrorKind
    reason: str

    def validate(self) -> None:
        _require(
            self.error in (ErrorKind.CRASHED, ErrorKind.TIMEOUT, ErrorKind.LIMIT),
            f"a worker reports only crashes, timeouts and broken limits, not {self.error!r}",
        )


@message
class TaskCancelled(Message):
    """The worker stopped or skipped its copy of a task the foreman cancelled: the lease is over."""

    TYPE: ClassVar[str] = "task_cancelled"
    job_id: str
    task_id: int
    attempt: int


@message
class EnvironmentStatus(Message):
    """A worker's progress on a job's environment: ``state`` is "building", "ready" or "failed".

    "failed" carries the installer's reason; the worker then runs none of the
    job's tasks (it drops those it holds and the foreman gives them to others).
    """

    TYPE: ClassVar[str] = "environment_status"
    job_id: str
    state: EnvironmentState
    reason: str = ""
    seconds: float = 0.0  # how long the build took
