"""Back on the client: remote failures rebuilt as the errors users catch."""

from __future__ import annotations

import builtins
import pickle
from typing import Any

from .codecs.outcomes import short_repr
from .errors import EnvironmentBuildError, QuorumError, TaskError, TaskTimeoutError, WorkerCrashedError
from .wire.constants import ErrorKind

__all__ = ["build_failed_task_error", "build_task_error"]


def build_task_error(error: dict, index: int | None, item: Any = None, trusted: bool = True) -> TaskError:
    """A TaskError for a remote failure, also an instance of the original type when safe.

    The original type is rebuilt when it is a builtin exception, or when the
    remote exception unpickles (``trusted`` results only) into a class that can
    be mixed with TaskError. Otherwise a plain TaskError carries its name.
    """
    type_name = str(error.get("type", "Exception"))
    message = str(error.get("message", ""))
    tb_text = str(error.get("traceback", ""))
    original: type | None = None
    builtin = getattr(builtins, type_name, None)
    if error.get("module") == "builtins" and isinstance(builtin, type) and issubclass(builtin, Exception):
        original = builtin
    elif trusted and error.get("exception"):
        try:
            original = type(pickle.loads(error["exception"]))
        except Exception:
            original = None
    kwargs: dict[str, Any] = {
        "index": index,
        "exc_type": type_name,
        "remote_traceback": tb_text,
        "item_repr": None if item is None else short_repr(item),
    }
    # Only an Exception: a SystemExit or KeyboardInterrupt the function raised must not stop the caller.
    if original is not None and issubclass(original, Exception) and not issubclass(original, TaskError):
        cls = _mixed_class(original)
        if cls is not None:
            try:
                return cls(message, **kwargs)
            except Exception:
                pass
    return TaskError(message, **kwargs)


_MIXED: dict[type, type | None] = {}


def _mixed_class(original: type) -> type | None:
    """A class deriving from TaskError and ``original``, or None if they cannot mix."""
    if original not in _MIXED:
        try:
            _MIXED[original] = type(
                original.__name__,
                (TaskError, original),
                {"__module__": "crowdcompute.remote", "__init__": TaskError.__init__, "__str__": TaskError.__str__},
            )
        except TypeError:  # incompatible layouts (e.g. some C exception types)
            _MIXED[original] = None
    return _MIXED[original]


def build_failed_task_error(
    error: str, reason: str, index: int | None, attempts: int, *, crashes: int = 0, losses: int = 0
) -> TaskError | EnvironmentBuildError:
    """The error for each item of a task (a TaskFailed) that timed out, kept crashing,
    kept losing its worker, found no majority or no environment."""
    if error == ErrorKind.ENVIRONMENT:
        return EnvironmentBuildError(reason, index=index)
    if error == ErrorKind.TIMEOUT:
        return TaskTimeoutError(reason, index=index, exc_type="TaskTimeoutError")
    if error == ErrorKind.DISAGREEMENT:
        return QuorumError(reason, index=index, exc_type="QuorumError")
    if error == ErrorKind.LIMIT:  # reason: "task exceeded --max-memory 512 MiB"
        return WorkerCrashedError(reason, attempts=attempts, cause=reason, index=index)
    what = "the task" if index is None else f"the task holding item {index}"
    if error == ErrorKind.LOST:
        # The task crashed nothing: the workers holding it went away (their link or their host failed).
        times = f"{losses} times" if losses else "repeatedly"
        message = (
            f"{what} never finished: the workers holding it went away {times} "
            f"(the link or the host failed, not the task); last: {reason}"
        )
    else:
        crashes = crashes or attempts  # a foreman that does not count them apart
        message = f"{what} killed its process {crashes} times; last cause: {reason}"
        if losses:
            message += f" (its worker also went away {losses} times; those do not count against it)"
    return WorkerCrashedError(
        message,
        attempts=attempts,
        cause=reason,
        index=index,
        crashes=crashes,
        losses=losses,
    )
