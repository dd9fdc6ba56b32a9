"""The wire protocol between clients, the foreman and workers, without I/O.

A frame is one binary websocket message::

    +----------------+----------------------+-----------+-----------+---
    | header length  | header (UTF-8 JSON)  | payload 1 | payload 2 | ...
    | 4 bytes, big   | {"type": ..., ...,   |  raw bytes, never base64
    | endian         |  "sizes": [n1, ...]} |
    +----------------+----------------------+-----------+-----------+---

Every message is a dataclass with a ``TYPE`` tag. Its ``bytes`` fields travel
as raw payloads after the header; every other field travels in the header.
Decoded payloads are read-only memoryviews into the frame (no copy).
``encode`` and ``decode`` are pure; anything that does not decode raises one
:class:`ProtocolError` whose text says what was wrong. The foreman reads only
headers: payloads are opaque to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_HEADER_SIZE",
    "Message",
    "Hello",
    "Welcome",
    "Refused",
    "SubmitJob",
    "SubmitTask",
    "JobAccepted",
    "CancelJob",
    "TaskResult",
    "TaskFailed",
    "TaskOutput",
    "StatusRequest",
    "StatusReply",
    "AttachJob",
    "JobAttached",
    "CollectJob",
    "WorkerDraining",
    "RequestError",
    "JobFunction",
    "AssignTask",
    "ReleaseJob",
    "TaskDone",
    "TaskCrashed",
    "encode",
    "decode",
]

PROTOCOL_VERSION = 1
#: Most runs of one task a job may ask for.
MAX_REDUNDANCY = 9
#: How a job's function, inputs and results travel: cloudpickle (same Python
#: and cloudpickle on both ends) or portable (source text and JSON).
SERIALIZERS = ("cloudpickle", "portable")
#: Largest JSON header a frame may carry; payloads are limited separately.
MAX_HEADER_SIZE = 64 * 1024

_LENGTH = struct.Struct("!I")
_MESSAGES: dict[str, type[Message]] = {}

ROLES = ("client", "worker")


class Message:
    """Base of every message: subclasses are dataclasses with a ``TYPE`` tag."""

    TYPE: ClassVar[str]
    _checks: ClassVar[dict[str, Callable[[Any], bool]]]
    _payloads: ClassVar[tuple[str, ...]]

    def validate(self) -> None:
        """Check field values beyond their types; raise ProtocolError."""


def message(cls: type) -> type:
    """Class decorator: make ``cls`` a frozen dataclass and register its TYPE."""
    cls = dataclass(frozen=True)(cls)
    hints = typing.get_type_hints(cls)
    checks = {}
    payloads = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if hint is bytes:
            payloads.append(f.name)
        else:
            checks[f.name] = _type_check(hint)
    cls._checks = checks
    cls._payloads = tuple(payloads)
    if cls.TYPE in _MESSAGES:
        raise RuntimeError(f"message type {cls.TYPE!r} defined twice")
    _MESSAGES[cls.TYPE] = cls
    return cls


def _type_check(hint: Any) -> Callable[[Any], bool]:
    """A predicate saying whether a decoded JSON value fits ``hint``."""
    if hint is bool:
        return lambda v: isinstance(v, bool)
    if hint is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is str:
        return lambda v: isinstance(v, str)
    if hint is dict or typing.get_origin(hint) is dict:
        return lambda v: isinstance(v, dict)
    if hint is list or typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        item_ok = (lambda v: True) if item is Any else _type_check(item)
        return lambda v: isinstance(v, list) and all(item_ok(x) for x in v)
    args = typing.get_args(hint)
    if args and type(None) in args:  # X | None
        inner = [a for a in args if a is not type(None)]
        inner_ok = _type_check(inner[0])
        return lambda v: v is None or inner_ok(v)
    raise TypeError(f"unsupported field type {hint!r}")


def _finite_number(text: str) -> float:
    """Parse a JSON number; NaN and infinities are not JSON and no field may hold one."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _require(condition: bool, sentence: str) -> None:
    if not condition:
        raise ProtocolError(sentence)


# --- handshake --------------------------------------------------------------


@message
class Hello(Message):
    """First message of every connection: who is calling, and with what token."""

    TYPE: ClassVar[str] = "hello"
    role: str
    token: str
    protocol_version: int
    name: str = ""
    slots: int = 0
    python: str = ""
    cloudpickle: str = ""

    def validate(self) -> None:
        _require(self.role in ROLES, f"role must be one of {ROLES}, not {self.role!r}")
        _require(self.slots >= 0, "slots must not be negative")


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


@message
class Refused(Message):
    """The foreman's answer to a refused Hello, just before it closes.

    ``code`` is ``"auth"`` (wrong token), ``"version"`` (protocol mismatch)
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
    redundancy: int = 1  # runs of each task on distinct workers; a majority must agree
    serializer: str = "cloudpickle"

    def validate(self) -> None:
        _require(bool(self.job_id), "job_id must not be empty")
        _require(self.serializer in SERIALIZERS, f"serializer must be one of {SERIALIZERS}")
        _require(1 <= self.redundancy <= MAX_REDUNDANCY, f"redundancy must be 1 to {MAX_REDUNDANCY}")
        _require(self.total_tasks >= 0, "total_tasks must not be negative")
        _require(self.total_items >= 0, "total_items must not be negative")
        _require(self.retries >= 0, "retries must not be negative")
        _require(
            self.task_timeout is None or self.task_timeout > 0,
            "task_timeout must be positive",
        )


@message
class SubmitTask(Message):
    """One chunk of a job's input: items ``first_index`` .. ``first_index+count-1``."""

    TYPE: ClassVar[str] = "submit_task"
    job_id: str
    task_id: int
    first_index: int
    count: int
    payload: bytes

    def validate(self) -> None:
        _require(self.task_id >= 0, "task_id must not be negative")
        _require(self.first_index >= 0, "first_index must not be negative")
        _require(self.count >= 1, "a task must hold at least one item")


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


@message
class CollectJob(Message):
    """The client holds every outcome of the job: the foreman may free them."""

    TYPE: ClassVar[str] = "collect_job"
    job_id: str


@message
class StatusRequest(Message):
    """Ask the foreman for its workers, slots and jobs."""

    TYPE: ClassVar[str] = "status_request"


# --- foreman -> client ------------------------------------------------------


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
    serializer: str = "cloudpickle"


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


@message
class TaskFailed(Message):
    """A task that produced no outcomes: it timed out or kept crashing.

    ``error`` is ``"timeout"`` or ``"crashed"``; ``attempts`` how often it ran.
    """

    TYPE: ClassVar[str] = "task_failed"
    job_id: str
    task_id: int
    first_index: int
    count: int
    error: str
    reason: str
    attempts: int = 1


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
class StatusReply(Message):
    """The foreman's status: workers, slots and jobs, as a JSON payload.

    A payload, not a header field: with a thousand workers it outgrows the
    header limit.
    """

    TYPE: ClassVar[str] = "status_reply"
    body: bytes

    @classmethod
    def of(cls, status: dict) -> StatusReply:
        return cls(json.dumps(status, separators=(",", ":")).encode())

    @property
    def status(self) -> dict:
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


# --- foreman -> worker ------------------------------------------------------


@message
class JobFunction(Message):
    """A job's function, sent to a worker once before its first task."""

    TYPE: ClassVar[str] = "job_function"
    job_id: str
    function: bytes
    serializer: str = "cloudpickle"


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
    error: str
    reason: str

    def validate(self) -> None:
        _require(self.error in ("crashed", "timeout"), f"unknown task error {self.error!r}")


# --- encoding ---------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """Return the frame for ``msg``: length, JSON header, raw payloads."""
    header: dict[str, Any] = {"type": msg.TYPE}
    payloads = []
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if f.name in msg._payloads:
            payloads.append(value)
        else:
            header[f.name] = value
    if payloads:
        header["sizes"] = [len(p) for p in payloads]
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_LENGTH.pack(len(head)), head, *payloads])


def decode(frame: bytes | bytearray | memoryview | str) -> Message:
    """Return the message in ``frame``; raise ProtocolError saying what was wrong."""
    if isinstance(frame, str):
        raise ProtocolError("expected a binary frame, got a text frame")
    view = memoryview(frame)
    if len(view) < _LENGTH.size:
        raise ProtocolError(f"frame of {len(view)} bytes is too short to hold a header")
    (head_size,) = _LENGTH.unpack_from(view)
    if head_size > MAX_HEADER_SIZE:
        raise ProtocolError(f"header of {head_size} bytes exceeds {MAX_HEADER_SIZE}")
    end = _LENGTH.size + head_size
    if end > len(view):
        raise ProtocolError(f"header says {head_size} bytes but the frame is truncated")
    try:
        header = json.loads(
            bytes(view[_LENGTH.size : end]), parse_float=_finite_number, parse_constant=_finite_number
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        raise ProtocolError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    kind = header.pop("type", None)
    cls = _MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    sizes = header.pop("sizes", [])
    if (
        not isinstance(sizes, list)
        or len(sizes) != len(cls._payloads)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)
    ):
        raise ProtocolError(f"{kind}: 'sizes' must list {len(cls._payloads)} payload lengths")
    if end + sum(sizes) != len(view):
        raise ProtocolError(
            f"{kind}: payloads should take {sum(sizes)} bytes but {len(view) - end} follow the header"
        )
    fields: dict[str, Any] = {}
    for name, check in cls._checks.items():
        if name in header:
            value = header.pop(name)
            if not check(value):
                raise ProtocolError(f"{kind}: field {name!r} has the wrong type ({type(value).__name__})")
            fields[name] = value
    if header:
        raise ProtocolError(f"{kind}: unknown fields {sorted(header)}")
    offset = end
    for name, size in zip(cls._payloads, sizes):
        # A view into the frame, not a copy: a 100 MB input crosses the foreman without being copied here.
        fields[name] = view[offset : offset + size]
        offset += size
    try:
        msg = cls(**fields)
    except TypeError as exc:
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in fields
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        raise ProtocolError(f"{kind}: missing fields {missing}") from exc
    msg.validate()
    return msg
