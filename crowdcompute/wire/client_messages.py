"""Messages between a client and the foreman: jobs, tasks, their outcomes, status and admin requests.

Part of :mod:`crowdcompute.wire.messages`, which re-exports every one of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import field
from typing import Any, ClassVar

from ..errors import ProtocolError
from .constants import ErrorKind, Serializer
from .framing import Message, message
from .framing import require as _require
from .needs import check_labels as _check_labels
from .needs import check_requirements as _check_requirements
from .needs import check_resources as _check_resources

#: Most runs of one task a job may ask for.
MAX_REDUNDANCY = 9
#: Longest volunteer name (``crowdcompute invite NAME``), in characters.
MAX_VOLUNTEER_NAME = 64
_VOLUNTEER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


def volunteer_name_problem(name: object) -> str:
    """Why ``name`` cannot name a volunteer, or "" when it can (the foreman and the CLI ask the same)."""
    if isinstance(name, str) and len(name) <= MAX_VOLUNTEER_NAME and _VOLUNTEER_NAME.fullmatch(name):
        return ""
    shown = "an empty name" if name == "" else repr(name)
    return (
        f"{shown} is not a volunteer name: use 1 to {MAX_VOLUNTEER_NAME} letters, digits and . _ @ - "
        "(starting with a letter or digit)"
    )


# --- client -> foreman ------------------------------------------------------


@message
class SubmitJob(Message):
    """A new job: its function (sent once) and how many tasks will follow."""

    TYPE: ClassVar[str] = "submit_job"
    job_id: str
    function: bytes
    total_tasks: int
    total_items: int
    task_timeout: float | None = None
    retries: int = 0
    name: str = ""
    redundancy: int = 1  # runs of each task on distinct workers
    serializer: Serializer = Serializer.CLOUDPICKLE
    ack: bool = True  # answer JobAccepted (a client that waits on the results anyway needs none)
    quorum: int = 0  # agreeing runs that accept an outcome; 0: a strict majority of redundancy
    quorum_timeout: float | None = None  # seconds after a task's first outcome to reach the quorum
    resources: dict[str, float] = field(default_factory=dict)  # each task needs this much free of each resource
    labels: dict[str, str] = field(default_factory=dict)  # each task runs only on workers with these labels
    requirements: list[str] = field(default_factory=list)  # packages its environment must have

    def validate(self) -> None:
        _require(bool(self.job_id), "job_id must not be empty")
        _check_resources("submit_job", self.resources)
        _check_labels("submit_job", self.labels)
        _check_requirements("submit_job", self.requirements)
        _require(1 <= self.redundancy <= MAX_REDUNDANCY, f"redundancy must be 1 to {MAX_REDUNDANCY}")
        _require(0 <= self.quorum <= self.redundancy, "quorum must be 1 to redundancy (0: a majority)")
        _require(self.quorum_timeout is None or self.quorum_timeout > 0, "quorum_timeout must be positive")
        _require(self.total_tasks >= 0, "total_tasks must not be negative")
        _require(self.total_items >= 0, "total_items must not be negative")
        _require(self.retries >= 0, "retries must not be negative")
        _require(
            self.task_timeout is None or self.task_timeout > 0,
            "task_timeout must be positive",
        )


@message
class SubmitTask(Message):
    """One chunk of a job's input: items ``first_index`` .. ``first_index+count-1``.

    ``pieces``, if given, lists ``[items, bytes]`` of the standalone pieces the
    payload is made of, one after another: the foreman may cut a queued task
    between pieces (for the slots it has when it hands the task out) without
    reading the payload.
    """

    TYPE: ClassVar[str] = "submit_task"
    job_id: str
    task_id: int
    first_index: int
    count: int
    payload: bytes
    pieces: list[list[int]] | None = None

    def validate(self) -> None:
        _require(self.task_id >= 0, "task_id must not be negative")
        _require(self.first_index >= 0, "first_index must not be negative")
        _require(self.count >= 1, "a task must hold at least one item")
        if self.pieces is not None:
            _require(
                all(len(piece) == 2 and piece[0] >= 1 and piece[1] >= 1 for piece in self.pieces),
                "each of pieces must be [items, bytes], both positive",
            )
            _require(sum(piece[0] for piece in self.pieces) == self.count, "pieces must add up to count items")
            _require(
                sum(piece[1] for piece in self.pieces) == len(self.payload), "pieces must add up to the payload's size"
            )


@message
class CancelJob(Message):
    """Cancel a job: queued tasks are dropped and running ones stopped."""

    TYPE: ClassVar[str] = "cancel_job"
    job_id: str


@message
class AttachJob(Message):
    """Follow a job submitted earlier (after a reconnect, or from another process).

    The foreman answers JobAttached, then sends every outcome it holds for the
    job, then new ones as they come. The client drops any it already has.
    """

    TYPE: ClassVar[str] = "attach_job"
    job_id: str
    resume: bool = False  # the client followed the job before and holds the outcomes it acknowledged


@message
class CollectJob(Message):
    """The client holds every outcome of the job: the foreman may free them."""

    TYPE: ClassVar[str] = "collect_job"
    job_id: str


@message
class AckResults(Message):
    """The client holds these tasks' outcomes: a foreman without a journal may free them.

    It keeps them while they are small (so that another process can still
    attach); past a budget it drops the acknowledged ones, which bounds its
    memory by the outcomes in flight rather than by the job's size.
    """

    TYPE: ClassVar[str] = "ack_results"
    job_id: str
    task_ids: list[int]


@message
class StatusRequest(Message):
    """Ask the foreman for its workers, slots and jobs."""

    TYPE: ClassVar[str] = "status_request"


@message
class InviteVolunteer(Message):
    """Admin: create a credential for volunteer ``name`` (answered with a VolunteersReply)."""

    TYPE: ClassVar[str] = "invite_volunteer"
    name: str
    slots: int = 0  # most slots it is granted; 0: the foreman's --max-slots-per-worker
    expires_in: float | None = None  # seconds the credential is valid; None: until revoked
    trusted: bool = False  # clients may unpickle its results without opting in

    def validate(self) -> None:
        _require(bool(self.name), "name must not be empty")
        _require(self.slots >= 0, "slots must not be negative")
        _require(self.expires_in is None or self.expires_in > 0, "expires_in must be positive")


@message
class RevokeVolunteer(Message):
    """Admin: refuse volunteer ``name`` from now on and close its connections."""

    TYPE: ClassVar[str] = "revoke_volunteer"
    name: str


@message
class ListVolunteers(Message):
    """Admin: every volunteer and its record."""

    TYPE: ClassVar[str] = "list_volunteers"


# --- foreman -> client ------------------------------------------------------


@message
class VolunteersReply(Message):
    """The answer to an admin request, as a JSON object: ``{"error": ...}`` when it was refused."""

    TYPE: ClassVar[str] = "volunteers_reply"
    body: bytes

    @classmethod
    def of(cls, answer: dict[str, Any]) -> VolunteersReply:
        return cls(json.dumps(answer, separators=(",", ":")).encode())

    @property
    def answer(self) -> dict[str, Any]:
        """The answer as a dict; raises ProtocolError when the body is not a JSON object."""
        return _json_object(self.TYPE, self.body)


@message
class JobWaiting(Message):
    """What a job waits for beyond free slots (``"task 12 needs 1 more distinct worker"``); empty: nothing."""

    TYPE: ClassVar[str] = "job_waiting"
    job_id: str
    reason: str


@message
class JobAccepted(Message):
    """The foreman has taken the job in."""

    TYPE: ClassVar[str] = "job_accepted"
    job_id: str


@message
class JobAttached(Message):
    """The job the client attached to: its size and state (``running``, ``done``...)."""

    TYPE: ClassVar[str] = "job_attached"
    job_id: str
    total_items: int
    total_tasks: int
    state: str
    name: str = ""
    serializer: Serializer = Serializer.CLOUDPICKLE
    finished_items: int = 0  # items with an outcome when the client attached (the replay sends their results)


@message
class TaskResult(Message):
    """A task's outcomes, one per item, as an opaque payload from the worker."""

    TYPE: ClassVar[str] = "task_result"
    job_id: str
    task_id: int
    first_index: int
    count: int
    failed: int
    payload: bytes
    worker: str = ""  # who ran it, for the job's stats
    seconds: float = 0.0  # time the worker spent running it
    queued: float = 0.0  # time it waited on the foreman for a slot
    attempts: int = 1  # leases it took (more than 1: it was reassigned or retried)
    trusted: bool = True  # False: only untrusted volunteers returned it (clients decode it as plain data)
    reissued: int = 0  # runs started because its leases passed their deadline
    backups: int = 0  # backup copies run at the tail of its job
    waited: float = 0.0  # time it waited on the worker for a free task process
    setup: float = 0.0  # time the worker spent building the job's environment before it


@message
class TaskFailed(Message):
    """A task that produced no outcomes: it timed out, kept crashing, or kept losing its worker.

    ``error`` is an ErrorKind (``"timeout"``, ``"crashed"``, ``"limit"``, ``"lost"``, ...);
    ``attempts`` how often it was leased; ``crashes`` how often it killed its process;
    ``losses`` how often its worker went away while holding it (the link's or the
    host's failure, not the task's).
    """

    TYPE: ClassVar[str] = "task_failed"
    job_id: str
    task_id: int
    first_index: int
    count: int
    error: ErrorKind
    reason: str
    attempts: int = 1
    crashes: int = 0
    losses: int = 0


@message
class TaskOutput(Message):
    """Text a task printed (worker -> foreman -> client)."""

    TYPE: ClassVar[str] = "task_output"
    job_id: str
    task_id: int
    index: int
    stream: str
    text: str


@message
class TaskProgress(Message):
    """Items a running task has finished so far (worker -> foreman -> client).

    Sent at most every few tenths of a second per task, and only by tasks
    that run long enough for it to matter: a fast task reports nothing
    before its outcome. ``error`` names the task's first failure
    (``"ValueError: ..."``, item ``error_index``) so the client can show it
    before the task ends.
    """

    TYPE: ClassVar[str] = "task_progress"
    job_id: str
    task_id: int
    done: int  # items finished, failed ones included
    failed: int = 0
    error: str = ""
    error_index: int = -1


@message
class StatusReply(Message):
    """The foreman's status: workers, slots and jobs, as a JSON payload.

    A payload, not a header field: with a thousand workers it outgrows the
    header limit.
    """

    TYPE: ClassVar[str] = "status_reply"
    body: bytes

    @classmethod
    def of(cls, status: dict[str, Any]) -> StatusReply:
        return cls(json.dumps(status, separators=(",", ":")).encode())

    @property
    def status(self) -> dict[str, Any]:
        """The status as a dict; raises ProtocolError when the body is not a JSON object."""
        return _json_object(self.TYPE, self.body)


@message
class RequestError(Message):
    """The foreman could not act on a client's request; ``reason`` says why."""

    TYPE: ClassVar[str] = "request_error"
    job_id: str
    reason: str


def _json_object(kind: str, body: bytes) -> dict[str, Any]:
    """A reply's body, which must be a JSON object."""
    try:
        value = json.loads(bytes(body))
    except ValueError as exc:
        raise ProtocolError(f"{kind}: body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{kind}: body must be a JSON object")
    return value
