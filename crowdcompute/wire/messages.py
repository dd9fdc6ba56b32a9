"""The messages clients, the foreman and workers exchange, without I/O.

Each message is a frozen dataclass with a ``TYPE`` tag; its ``bytes`` fields
are raw payloads and the rest travels in a small JSON header (see
:mod:`crowdcompute.wire.framing`, whose ``encode`` and ``decode`` are re-exported
here). Each message checks its own fields and raises one ProtocolError with a
sentence that says what was wrong. The foreman reads only headers: payloads
are opaque to it.

This module holds the handshake; the messages of a job between a client and
the foreman are in :mod:`.client_messages`, those between the foreman and a
worker in :mod:`.worker_messages`. Every one is reached as ``messages.X``.
"""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar

from .client_messages import (
    MAX_REDUNDANCY,
    AckResults,
    AttachJob,
    CancelJob,
    CollectJob,
    InviteVolunteer,
    JobAccepted,
    JobAttached,
    JobWaiting,
    ListVolunteers,
    RequestError,
    RevokeVolunteer,
    StatusReply,
    StatusRequest,
    SubmitJob,
    SubmitTask,
    TaskFailed,
    TaskOutput,
    TaskProgress,
    TaskResult,
    VolunteersReply,
)
from .constants import Role, Serializer
from .framing import (
    BATCH_BYTES,
    MAX_HEADER_SIZE,
    SMALL_MESSAGE,
    Batch,
    Message,
    Pieces,
    decode,
    decode_parts,
    encode,
    encode_parts,
    frame_parts,
    frame_size,
    header_only,
    join_frames,
    message,
    outgoing,
    split_parts,
    unbatch,
)
from .framing import require as _require
from .needs import check_labels as _check_labels
from .needs import check_resources as _check_resources
from .schema import MESSAGES as _MESSAGES  # noqa: F401 (every message type, for tests)
from .worker_messages import (
    AssignTask,
    CancelTask,
    EnvironmentStatus,
    ReleaseJob,
    TaskCancelled,
    TaskCrashed,
    TaskDone,
    WorkerDraining,
)

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_REDUNDANCY",
    "MAX_HEADER_SIZE",
    "BATCH_BYTES",
    "Batch",
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
    "AssignTask",
    "ReleaseJob",
    "CancelTask",
    "TaskDone",
    "TaskCrashed",
    "TaskCancelled",
    "EnvironmentStatus",
    "encode",
    "encode_parts",
    "frame_size",
    "header_only",
    "decode",
    "decode_parts",
    "outgoing",
    "SMALL_MESSAGE",
    "split_parts",
    "frame_parts",
    "join_frames",
    "unbatch",
]

#: 2: a task's payload may be several pickles one after another (SubmitTask.pieces), which
#: a worker of version 1 would read as the first one only.
#: 3: a job's function travels in its first AssignTask to each worker (no JobFunction).
#: 4: a frame may hold several messages (framing.Batch), which a peer of version 3 would refuse.
#: 5: the foreman cancels a worker's copy of a task another run of it finished (CancelTask).
PROTOCOL_VERSION = 5
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
    granted: int = 0  # of a worker's slots, how many the foreman uses (0: all it claimed)
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
