"""The messages clients, the foreman and workers exchange, without I/O.

Each message is a frozen dataclass with a ``TYPE`` tag; its ``bytes`` fields
are raw payloads and the rest travels in a small JSON header (see
:mod:`crowdcompute.wire.framing`, whose ``encode`` and ``decode`` are re-exported
here). Each message checks its own fields and raises one ProtocolError with a
sentence that says what was wrong. The foreman reads only headers: payloads
are opaque to it.
"""

from __future__ import annotations

import json
from dataclasses import field
from typing import Any, ClassVar

from ..errors import ProtocolError
from .constants import EnvironmentState, ErrorKind, Role, Serializer
from .framing import (  # noqa: F401 (re-exported)
    _MESSAGES,
    MAX_HEADER_SIZE,
    SMALL_MESSAGE,
    Message,
    Pieces,
    decode,
    decode_parts,
    encode,
    encode_parts,
    frame_parts,
    frame_size,
    message,
    outgoing,
    split_parts,
)
from .framing import require as _require

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_HEADER_SIZE",
    "Message",
    "Pieces",
    "Hello",
    "ShareBlobs",
    "Welcome",
    "Refused",
    "SubmitJob",
    "SubmitTask",
    "JobAccepted",
    "CancelJob",
    "TaskResult",
    "TaskFailed",
    "TaskOutput",
    "TaskProgress",
    "StatusRequest",
    "StatusReply",
    "AttachJob",
    "JobAttached",
    "CollectJob",
    "AckResults",
    "WorkerDraining",
    "RequestError",
    "InviteVolunteer",
    "RevokeVolunteer",
    "ListVolunteers",
    "VolunteersReply",
    "JobWaiting",
    "JobFunction",
    "AssignTask",
    "ReleaseJob",
    "TaskDone",
    "TaskCrashed",
    "EnvironmentStatus",
    "encode",
    "encode_parts",
    "frame_size",
    "decode",
    "decode_parts",
    "outgoing",
    "SMALL_MESSAGE",
    "split_parts",
    "frame_parts",
]

#: 2: a task's payload may be several pickles one after another (SubmitTask.pieces), which
#: a worker of version 1 would read as the first one only.
PROTOCOL_VERSION = 2
#: Most runs of one task a job may ask for.
MAX_REDUNDANCY = 9
#: How a job's function, inputs and results travel: cloudpickle (same Python
#: and cloudpickle on both ends) or portable (source text and JSON).
SERIALIZERS = tuple(Serializer)
ROLES = tuple(Role)


# --- handshake --------------------------------------------------------------


@message
class Hello(Message):
    """First message of every connection: who is calling, and with what token."""

    TYPE: ClassVar[str] = "hello"
    role: Role
    token: str
    protocol_version: int
    name: str = ""
    slots: int = 0
    python: str = ""
    cloudpickle: str = ""
    resources: dict[str, float] = field(default_factory=dict)  # a worker's resources: name -> amount (gpu: 1)
    labels: dict[str, str] = field(default_factory=dict)  # a worker's labels: name -> text (site: lab1)
    installs: bool = True  # a worker builds the environments of jobs with requirements (not --no-install)

    def validate(self) -> None:
        _require(self.slots >= 0, "slots must not be negative")
        _check_resources("hello", self.resources)
        _check_labels("hello", self.labels)


@message
class Welcome(Message):
    """The foreman's answer to an accepted Hello."""

    TYPE: ClassVar[str] = "welcome"
    protocol_version: int
    session_id: str
    workers: int = 0
    slots: int = 0
    max_frame_size: int = 0  # largest frame the foreman accepts from this peer
    max_queued_tasks: int = 0  # tasks of one job a client may have sent without their outcome
    max_queued_bytes: int = 0  # input bytes of one job a client may have sent without their outcome
    notice: str = ""  # something the peer should tell its user (e.g. it gets only portable jobs)
    blobs: str = ""  # the folder of payload files a peer on the foreman's host may share (see wire.blobs)


@message
class ShareBlobs(Message):
    """A client or worker reads the foreman's payload folder: ``proof`` is the text of its proof file.

    From then on payloads of at least ``wire.blobs.BLOB_THRESHOLD`` bytes may
    travel between them as files in it, the messages carrying references.
    """

    TYPE: ClassVar[str] = "share_blobs"
    proof: str


@message
class Refused(Message):
    """The foreman's answer to a refused Hello, just before it closes.

    ``code`` is ``"auth"`` (wrong token), ``"revoked"`` (a volunteer's credential
    that was revoked or expired), ``"version"`` (protocol mismatch)
    or ``"protocol"`` (a malformed first message).
    """

    TYPE: ClassVar[str] = "refused"
    code: str
    reason: str


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
        try:
            value = json.loads(bytes(self.body))
        except ValueError as exc:
            raise ProtocolError(f"volunteers_reply: body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ProtocolError("volunteers_reply: body must be a JSON object")
        return value


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
        try:
            value = json.loads(bytes(self.body))
        except ValueError as exc:
            raise ProtocolError(f"status_reply: body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ProtocolError("status_reply: body must be a JSON object")
        return value


@message
class RequestError(Message):
    """The foreman could not act on a client's request; ``reason`` says why."""

    TYPE: ClassVar[str] = "request_error"
    job_id: str
    reason: str


@message
class JobFunction(Message):
    """A job's function, sent to a worker once before its first task."""

    TYPE: ClassVar[str] = "job_function"
    job_id: str
    function: bytes
    serializer: Serializer = Serializer.CLOUDPICKLE
    requirements: list[str] = field(default_factory=list)  # the worker runs its tasks in an environment with these

    def validate(self) -> None:
        _check_requirements("job_function", self.requirements)


@message
class AssignTask(Message):
    """Run one task; ``attempt`` makes the lease (job, task, attempt) unique."""

    TYPE: ClassVar[str] = "assign_task"
    job_id: str
    task_id: int
    attempt: int
    first_index: int
    count: int
    payload: bytes
    task_timeout: float | None = None


@message
class ReleaseJob(Message):
    """Stop any running task of the job and forget its function."""

    TYPE: ClassVar[str] = "release_job"
    job_id: str


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


#: Most requirements, resources and labels one job or worker may name.
MAX_NEEDS = 100


def _check_resources(kind: str, resources: dict[str, float]) -> None:
    _require(len(resources) <= MAX_NEEDS, f"{kind}: at most {MAX_NEEDS} resources")
    for name, amount in resources.items():
        _require(
            isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount >= 0,
            f"{kind}: resource {name!r} must be a number of at least 0, not {amount!r}",
        )


def _check_labels(kind: str, labels: dict[str, str]) -> None:
    _require(len(labels) <= MAX_NEEDS, f"{kind}: at most {MAX_NEEDS} labels")
    for name, value in labels.items():
        _require(isinstance(value, str), f"{kind}: label {name!r} must be text, not {value!r}")


def _check_requirements(kind: str, requirements: list[str]) -> None:
    _require(len(requirements) <= MAX_NEEDS, f"{kind}: at most {MAX_NEEDS} requirements")
    _require(all(r.strip() for r in requirements), f"{kind}: a requirement must not be empty")
