"""Task processes: each slot owns one child process that runs user code.

``Slot.execute`` is blocking and runs in a thread of the agent, one thread
per slot, so the agent's event loop never waits on user code. A slot whose
process dies (crash, timeout, cancel) starts a fresh one before its next task.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import child

__all__ = ["Finished", "Lost", "Slot", "process_context"]

#: Seconds a child gets to exit after the pipe closes before it is killed.
CHILD_EXIT_GRACE = 1.0


@dataclass(frozen=True)
class Finished:
    """The task ran to the end; ``payload`` holds its pickled outcomes."""

    failed: int
    payload: bytes
    seconds: float = 0.0  # time the user's function took, measured in the task process


@dataclass(frozen=True)
class Lost:
    """The task produced no outcomes. ``error``: "crashed", "timeout" or "cancelled"."""

    error: str
    reason: str


def process_context() -> multiprocessing.context.BaseContext:
    """Forkserver where there is one (cheap fresh processes, no forked threads), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["worker.child"])
        return ctx
    return multiprocessing.get_context("spawn")


def describe_exit(exitcode: int | None) -> str:
    """Say how a task process ended, in words."""
    if exitcode is None:
        return "the task process stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the task process was killed by {name}{hint}"
    return f"the task process exited with code {exitcode}"


class Slot:
    """One task process and the pipe to it."""

    def __init__(self, ctx: multiprocessing.context.BaseContext, index: int) -> None:
        self.index = index
        self._ctx = ctx
        self._lock = threading.Lock()  # guards the process handle between threads
        self._busy = threading.Lock()  # one task at a time, even across reconnects
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn = None
        self._jobs: set[str] = set()  # jobs whose function the child holds
        self._forget: list[str] = []
        self._stopping = False  # set by kill(): the next loss is a cancel

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the child process (if it is not running)."""
        if self._process is not None and self._process.is_alive():
            return
        parent, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=child.main, args=(child_end,), name=f"crowdcompute-task-{self.index}", daemon=True
        )
        process.start()
        child_end.close()
        self._process, self._conn, self._jobs = process, parent, set()
        self._forget.clear()

    def forget(self, job_id: str) -> None:
        """The job is over: the child may drop its function at the next task."""
        if job_id in self._jobs:
            self._jobs.discard(job_id)
            self._forget.append(job_id)

    def execute(
        self,
        job_id: str,
        first_index: int,
        count: int,
        function: tuple[bytes, str],
        payload: bytes,
        timeout: float | None,
        on_output: Callable[[int, str, str], None],
    ) -> Finished | Lost:
        """Run one task in the child; blocking. Never raises for user errors or crashes.

        ``function`` is (its bytes, its serializer: "cloudpickle" or "portable").
        """
        with self._busy:
            return self._execute(job_id, first_index, count, function, payload, timeout, on_output)

    def _execute(
        self,
        job_id: str,
        first_index: int,
        count: int,
        function: tuple[bytes, str],
        payload: bytes,
        timeout: float | None,
        on_output: Callable[[int, str, str], None],
    ) -> Finished | Lost:
        with self._lock:
            self._stopping = False
            self.start()
        conn = self._conn
        try:
            for old in self._forget:
                conn.send(("forget", old))
            self._forget.clear()
            new = job_id not in self._jobs
            function_bytes, serializer = function
            conn.send(("run", job_id, first_index, count, function_bytes if new else None, serializer))
            conn.send_bytes(payload)
            self._jobs.add(job_id)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not conn.poll(wait):
                    self._kill_process()
                    return Lost("timeout", f"the task ran longer than its timeout of {timeout:g} s and was stopped")
                message = conn.recv()
                if message[0] == "output":
                    on_output(*message[1:])
                else:
                    return Finished(message[1], conn.recv_bytes(), message[2])
        except (EOFError, OSError, BrokenPipeError):
            return self._lost()

    def _lost(self) -> Lost:
        process = self._process
        if process is not None:
            process.join(CHILD_EXIT_GRACE)
        if self._stopping:
            return Lost("cancelled", "the job was released")
        return Lost("crashed", describe_exit(process.exitcode if process else None))

    def kill(self) -> None:
        """Stop the running task now (from any thread): its process is killed."""
        with self._lock:
            self._stopping = True
            self._kill_process(wait=False)  # the executing thread reaps it

    def _kill_process(self, wait: bool = True) -> None:
        process = self._process
        if process is not None and process.is_alive():
            process.kill()
            if wait:
                process.join(CHILD_EXIT_GRACE)

    def close(self) -> None:
        """Stop the child for good."""
        if self._conn is not None:
            self._conn.close()
        process = self._process
        if process is not None:
            process.join(CHILD_EXIT_GRACE)
            if process.is_alive():
                process.kill()
                process.join(CHILD_EXIT_GRACE)
