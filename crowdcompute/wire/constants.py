"""Every value that two of our processes must agree on, in one place.

Clients, the foreman and workers are separate processes, often on separate
machines and at separate versions; what one writes and another reads is
named here once. The enums are ``str``/``int`` subclasses so that they
travel in JSON headers as themselves, and the message decoder turns an
unknown value into a ProtocolError naming the field.
"""

from __future__ import annotations

import enum

__all__ = [
    "ADDRESS_VARIABLE",
    "AUTH_FAILURE_DELAY",
    "BWRAP_VARIABLE",
    "CHUNKS_PER_SLOT",
    "CLOSE_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DASHBOARD_VARIABLE",
    "DEFAULT_URL",
    "FOREMAN_READY",
    "FOREMAN_TOKEN_VARIABLE",
    "HOME_VARIABLE",
    "TOKEN_VARIABLE",
    "WORKER_TOKEN_VARIABLE",
    "CloseCode",
    "EnvironmentState",
    "ErrorKind",
    "Role",
    "Serializer",
]


class Role(str, enum.Enum):
    """Who is on the other end of a connection."""

    CLIENT = "client"  # submits jobs and collects results
    WORKER = "worker"  # runs tasks

    def __str__(self) -> str:
        return self.value


class Serializer(str, enum.Enum):
    """How a job's function, inputs and results travel."""

    CLOUDPICKLE = "cloudpickle"  # same Python and cloudpickle on both ends
    PORTABLE = "portable"  # source text and JSON: any worker's Python

    def __str__(self) -> str:
        return self.value


class ErrorKind(str, enum.Enum):
    """Why a task produced no outcomes (``TaskFailed.error``, ``TaskCrashed.error``)."""

    TIMEOUT = "timeout"  # it ran past the job's timeout
    CRASHED = "crashed"  # it kept killing its process
    LOST = "lost"  # the workers holding it kept going away (disconnected, went silent): not its fault
    DISAGREEMENT = "disagreement"  # redundant runs never reached a quorum
    LIMIT = "limit"  # it broke a worker's resource limit (memory, CPU, disk, processes)
    ENVIRONMENT = "environment"  # the worker could not build the job's environment

    def __str__(self) -> str:
        return self.value


class EnvironmentState(str, enum.Enum):
    """A worker's progress on a job's environment (``EnvironmentStatus.state``)."""

    BUILDING = "building"  # installing its requirements
    READY = "ready"  # built (its tasks run)
    FAILED = "failed"  # could not be built here: the worker runs none of its tasks

    def __str__(self) -> str:
        return self.value


class CloseCode(enum.IntEnum):
    """Websocket close codes the foreman uses, each with the situation it marks."""

    NORMAL = 1000  # an orderly close (idle clients, stopping)
    GOING_AWAY = 1001  # the foreman or the peer is stopping
    PROTOCOL_ERROR = 1002  # a frame that does not decode, or a wrong protocol version
    UNSUPPORTED = 1003  # a text frame, or a message this role may not send
    POLICY = 1008  # authentication failed, revoked, or a rule of the foreman was broken
    TOO_BIG = 1009  # a frame over the foreman's size limit
    TRY_AGAIN_LATER = 1013  # the foreman is full


#: The line the foreman prints (flushed) once it accepts connections; programs wait for it.
FOREMAN_READY = "foreman listening on "
#: Where the foreman listens by default.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
DEFAULT_URL = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}"
#: Tasks per slot that automatic chunking aims for, as in multiprocessing.Pool: the client
#: when it chunks a map, the foreman when it splits queued tasks for the slots it has.
CHUNKS_PER_SLOT = 4
#: Seconds the foreman waits before answering a wrong token (slows guessing).
AUTH_FAILURE_DELAY = 0.2
#: Seconds either side waits for the peer's closing handshake before it aborts the
#: TCP connection. A peer that answered no ping is gone (frozen, or its network is):
#: waiting the websockets default of 10 s would keep a silent worker's tasks that much
#: longer. Half a second covers the round trip of any healthy link.
CLOSE_TIMEOUT = 0.5

#: Environment variables.
ADDRESS_VARIABLE = "CROWDCOMPUTE_ADDRESS"  # the foreman a client connects to by default
TOKEN_VARIABLE = "CROWDCOMPUTE_TOKEN"  # the client token that goes with it
HOME_VARIABLE = "CROWDCOMPUTE_HOME"  # folder for connection files and journals
FOREMAN_TOKEN_VARIABLE = "CROWDCOMPUTE_FOREMAN_TOKEN"  # token handed to an embedded foreman
WORKER_TOKEN_VARIABLE = "CROWDCOMPUTE_WORKER_TOKEN"  # token handed to an embedded worker
BWRAP_VARIABLE = "CROWDCOMPUTE_BWRAP"  # the bubblewrap binary a --sandbox worker uses
SHARE_FILES_VARIABLE = "CROWDCOMPUTE_SHARE_FILES"  # "0": never exchange big payloads as files (wire.blobs)
#: Set by the Jupyter server extension for its kernels: the path of its status pages, e.g. "/crowdcompute/".
DASHBOARD_VARIABLE = "CROWDCOMPUTE_DASHBOARD_URL"
#: Largest websocket fragment anyone writes: a payload goes out in pieces of this size, so that
#: the websocket layers, which copy what they write and buffer what they read frame by frame,
#: never hold a whole one.
FRAGMENT_SIZE = 1024 * 1024
