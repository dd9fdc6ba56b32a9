"""The task process: runs user code, one task at a time, and nothing else.

It talks to its worker agent over a ``multiprocessing`` pipe:

    agent -> child   ("run", job_id, first_index, count, function_bytes | None, serializer) + payload bytes
                     ("forget", job_id)
    child -> agent   ("output", index, stream, text)      while the task runs
                     ("done", failed, seconds) + outcome bytes   when it ends

A crash here (segfault, ``os._exit``, out of memory) kills this process only;
the agent notices, reports it and starts a fresh one. If the agent dies, this
process notices within half a second and exits, leaving no orphan.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from crowdcompute.codecs.pickled import loads, loads_items
from crowdcompute.codecs.portable import load_portable_function
from crowdcompute.wire.constants import Serializer

from .execution import run_items, run_portable

__all__ = ["main"]

#: Functions of this many jobs stay loaded in a task process.
CACHED_FUNCTIONS = 8
#: How often the process checks that its parent is alive, in seconds.
PARENT_CHECK_INTERVAL = 0.5


class _Output:
    """A stdout/stderr replacement that sends complete lines to the agent as they come."""

    def __init__(self, conn: Connection, stream: str) -> None:
        self._conn = conn
        self._stream = stream
        self._buffer: list[str] = []
        self.index = -1

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._buffer.append(text)
        if "\n" in text:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            text = "".join(self._buffer)
            self._buffer.clear()
            self._conn.send(("output", self.index, self._stream, text))

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


def _exit_when_orphaned() -> None:
    # The parent is the agent, or the forkserver that the agent owns: either way it
    # changes only when the process that started us is gone.
    parent_pid = os.getppid()
    while True:
        time.sleep(PARENT_CHECK_INTERVAL)
        if os.getppid() != parent_pid:
            os._exit(1)


def main(conn: Connection) -> None:
    """Serve tasks from ``conn`` until it closes."""
    threading.Thread(target=_exit_when_orphaned, daemon=True).start()
    stdout, stderr = outputs = (_Output(conn, "stdout"), _Output(conn, "stderr"))
    sys.stdout, sys.stderr = outputs
    functions: dict[str, Callable[[Any], Any] | BaseException] = {}
    while True:
        try:
            header = conn.recv()
        except (EOFError, OSError):
            return
        if header[0] == "forget":
            functions.pop(header[1], None)
            continue
        _, job_id, first_index, count, function_bytes, serializer = header
        portable = serializer == Serializer.PORTABLE
        payload = conn.recv_bytes()
        if function_bytes is not None:
            while len(functions) >= CACHED_FUNCTIONS:
                functions.pop(next(iter(functions)))
            try:
                functions[job_id] = load_portable_function(function_bytes) if portable else loads(function_bytes)
            except Exception as exc:  # e.g. a module the function needs is missing here
                functions[job_id] = RuntimeError(f"cannot load the job's function on this worker: {exc!r}")
        func = functions.get(job_id)
        if func is None:
            func = RuntimeError(f"the worker lost the function of job {job_id}")

        def on_item(offset: int, first_index: int = first_index) -> None:
            if stdout._buffer or stderr._buffer:  # a partial line belongs to the item before
                stdout.flush()
                stderr.flush()
            stdout.index = stderr.index = first_index + offset

        if isinstance(func, BaseException):
            func = _raiser(func)
        started = time.perf_counter()
        if portable:
            result, failed = run_portable(func, payload, count, on_item)
        else:
            try:
                items = loads_items(payload)
            except Exception as exc:  # an input whose type this worker cannot import
                items, func = [None] * count, _raiser(RuntimeError(f"cannot load the task's input here: {exc!r}"))
            result, failed = run_items(func, items, on_item)
        seconds = time.perf_counter() - started
        for output in outputs:
            output.flush()
        conn.send(("done", failed, seconds))
        conn.send_bytes(result)


def _raiser(exc: BaseException) -> Callable[[Any], Any]:
    def fail(_item: Any) -> Any:
        raise exc

    return fail
