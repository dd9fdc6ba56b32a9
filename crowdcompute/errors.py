"""The one exception tree of CrowdCompute.

    CrowdComputeError
    ├── ProtocolError             a frame or message that does not decode
    ├── AuthenticationError       the foreman refused the token
    ├── ForemanUnavailableError   no foreman answered ``connect`` in time
    ├── ConnectionLostError       the foreman could not be reached again
    ├── SerializationError        a function or argument cannot be serialized
    ├── JobCancelledError         the job was cancelled
    ├── TaskError                 the user's function raised on a worker
    │   ├── TaskTimeoutError      a task ran past its timeout (also TimeoutError)
    │   ├── WorkerCrashedError    a task kept killing its process
    │   └── QuorumError           redundant runs of a task never agreed
    ├── UntrustedPayloadError     a result held more than plain data
    └── EnvironmentBuildError     no worker could build a job's environment (its requirements)

Library errors (websockets, pickle, OS) are translated into these at one seam
each, with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConnectionLostError",
    "CrowdComputeError",
    "EnvironmentBuildError",
    "ForemanUnavailableError",
    "JobCancelledError",
    "LocalModuleWarning",
    "ProtocolError",
    "QuorumError",
    "SerializationError",
    "TaskError",
    "TaskTimeoutError",
    "UntrustedPayloadError",
    "WorkerCrashedError",
]


class CrowdComputeError(Exception):
    """Base class of every error CrowdCompute raises."""

    def _render_traceback_(self) -> list[str]:
        """How IPython shows this error: one line, since the text says what to do."""
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


class ProtocolError(CrowdComputeError):
    """Raised when a frame or message does not decode; the text says why."""


class AuthenticationError(CrowdComputeError):
    """Raised when the foreman refuses the token a client or worker offered."""


class ForemanUnavailableError(CrowdComputeError, ConnectionError):
    """Raised when ``connect`` finds no foreman that answers within ``timeout``.

    ``address`` is the URL that was tried, ``reason`` what went wrong and
    ``hint`` what to do about it (by default: start a foreman).
    """

    #: The hint when none is given: a client's (a worker says its own).
    DEFAULT_HINT = (
        "Start one with `crowdcompute foreman` (or `crowdcompute local`), "
        "or call connect() with no address for an embedded one."
    )

    def __init__(self, address: str, reason: str, hint: str = "") -> None:
        super().__init__(address, reason)
        self.address = address
        self.reason = reason
        self.hint = hint or self.DEFAULT_HINT

    def __str__(self) -> str:
        return f"no foreman answered at {self.address}: {self.reason}. {self.hint}"


class ConnectionLostError(CrowdComputeError, ConnectionError):
    """Raised when an established connection to the foreman is lost for good."""


class SerializationError(CrowdComputeError, TypeError):
    """Raised in the caller, before anything is sent, when an object cannot be pickled.

    ``what`` names the offending object (``"function square"``, ``"item 3"``).
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(what, reason)
        self.what = what
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot serialize {self.what}: {self.reason}"


class JobCancelledError(CrowdComputeError):
    """Raised when waiting on a job that was cancelled (Ctrl-C included)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job {self.job_id} was cancelled"


class TaskError(CrowdComputeError):
    """Raised when the user's function raised on a worker.

    ``index`` is the item's position in the input, ``exc_type`` the remote
    exception's type name, ``message`` its text and ``remote_traceback`` the
    remote traceback as text. ``str()`` shows the remote traceback.
    """

    def __init__(
        self,
        message: str = "",
        *,
        index: int | None = None,
        exc_type: str = "Exception",
        remote_traceback: str = "",
        item_repr: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback
        self.item_repr = item_repr

    def _where(self) -> str:
        """``in item 3 (its input)``, or ``on a worker`` for a single call."""
        if self.index is None:
            return "on a worker"
        where = f"in item {self.index}"
        if self.item_repr is not None:
            where += f" ({self.item_repr})"
        return where

    def _headline(self) -> str:
        return f"{self.exc_type} {self._where()}: {self.message}"

    def _traceback_text(self) -> str:
        from .tracebacks import localize_traceback  # the client's source lines for remote frames

        text = localize_traceback(self.remote_traceback.rstrip())
        return text.replace("Traceback (most recent call last):", "Remote traceback (most recent call last):", 1)

    def __str__(self) -> str:
        # Python prints "ValueError: " before this when the class is the remote type: do not say it twice.
        if type(self).__name__ == self.exc_type:
            text = f"{self.message} ({self._where()})"
        else:
            text = self._headline()
        if self.remote_traceback:
            text += "\n\n" + self._traceback_text()
        return text

    def _render_traceback_(self) -> list[str]:
        """How IPython shows this error: where it happened, then the remote traceback, not ours."""
        name = type(self).__name__
        if name == self.exc_type:
            lines = [f"\x1b[31m{name}\x1b[0m {self._where()}: {self.message}"]
        else:
            lines = [f"\x1b[31m{name}\x1b[0m: {self._headline()}"]
        if self.remote_traceback:
            lines.extend(self._traceback_text().splitlines())
        return lines


class TaskTimeoutError(TaskError, TimeoutError):
    """Raised when a task ran past its ``timeout`` and was stopped."""


class WorkerCrashedError(TaskError):
    """Raised when a task's executions kept killing their process.

    ``attempts`` is how many times it was tried; ``cause`` says how the
    process died (exit code, signal, out of memory) or how its worker went
    away. ``crashes`` counts the runs that killed their process (the task's
    fault, up to ``allowed_failures``); ``losses`` the runs whose worker went
    away (disconnected or silent: the link's or the host's fault, up to the
    foreman's much higher ``MAX_WORKER_LOSSES``).
    """

    def __init__(
        self, message: str = "", *, attempts: int = 0, cause: str = "", crashes: int = 0, losses: int = 0, **kwargs
    ) -> None:
        super().__init__(message, exc_type="WorkerCrashedError", **kwargs)
        self.attempts = attempts
        self.cause = cause
        self.crashes = crashes
        self.losses = losses


class QuorumError(TaskError):
    """Raised when, with ``redundancy=k``, not ``quorum`` of a task's runs agreed (after two
    rounds of runs, or ``quorum_timeout`` seconds after its first run reported).

    The message names the groups of workers that returned different outcomes.
    """


class UntrustedPayloadError(CrowdComputeError):
    """Raised when, with ``trust_workers=False``, a result held more than plain data."""


class EnvironmentBuildError(CrowdComputeError):
    """Raised when workers could not build a job's environment from its ``requirements``.

    ``index`` is the item (as in TaskError), ``reason`` the worker's account:
    the requirement and the installer's last lines of output.
    """

    def __init__(self, reason: str = "", *, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index

    def __str__(self) -> str:
        where = f"item {self.index}: " if self.index is not None else ""
        return f"{where}{self.reason}"


class LocalModuleWarning(UserWarning):
    """A job's function uses one of your own modules that workers may not have: pass ``modules=[...]``."""
