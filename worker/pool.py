"""Task processes: each slot owns one child process that runs user code.

``Slot.execute`` is a coroutine on the agent's event loop: it writes the
task to the child's pipe and then waits for the pipe to become readable
(``loop.add_reader``), so no thread sits between the agent and its
children and a task costs one message each way. User code never runs in
the agent. A slot whose process dies (crash, timeout, cancel) starts a
fresh one before its next task.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from crowdcompute.wire.constants import ErrorKind

from . import child

__all__ = ["Finished", "Lost", "Slot", "process_context"]

if TYPE_CHECKING:  # the start methods task processes use (no forkserver on Windows)
    ProcessContext = multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext

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
    """The task produced no outcomes: it crashed, ran out of time, or was cancelled."""

    error: ErrorKind | None  # None: cancelled (the job was released), nothing to report
    reason: str


def process_context() -> ProcessContext:
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

    def __init__(self, ctx: ProcessContext, index: int) -> None:
        self.index = index
        self._ctx = ctx
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection[Any, Any] | None = None
        self._jobs: set[str] = set()  # jobs whose function the child holds
        self._forget: list[str] = []
        self._stopping = False  # set by kill(): the next loss is a cancel
        self._timed_out = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> Connection[Any, Any]:
        """Start the child process (if it is not running) and return its pipe; blocking, a few ms with forkserver."""
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        parent, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=child.main, args=(child_end,), name=f"crowdcompute-task-{self.index}", daemon=True
        )
        process.start()
        child_end.close()
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn, self._jobs = process, parent, set()
        self._forget.clear()
        return parent

    def forget(self, job_id: str) -> None:
        """The job is over: the child may drop its function at the next task."""
        if job_id in self._jobs:
            self._jobs.discard(job_id)
            self._forget.append(job_id)

    async def execute(
        self,
        job_id: str,
        first_index: int,
        count: int,
        function: tuple[bytes, str],
        payload: bytes,
        timeout: float | None,
        on_output: Callable[[int, str, str], None],
    ) -> Finished | Lost:
        """Run one task in the child. Never raises for user errors or crashes.

        ``function`` is (its bytes, its serializer: "cloudpickle" or "portable").
        """
        loop = asyncio.get_running_loop()
        self._stopping = self._timed_out = False
        conn = self.start()
        outcome: asyncio.Future = loop.create_future()
        timer = None
        try:
            for old in self._forget:
                conn.send(("forget", old))
            self._forget.clear()
            function_bytes, serializer = function
            new = job_id not in self._jobs
            conn.send(("run", job_id, first_index, count, function_bytes if new else None, serializer))
            conn.send_bytes(payload)
            self._jobs.add(job_id)
        except (OSError, EOFError):
            return await self._lost()
        loop.add_reader(conn.fileno(), self._readable, conn, outcome, on_output)
        if timeout is not None:
            timer = loop.call_later(timeout, self._time_out)
        try:
            result = await outcome
        except asyncio.CancelledError:
            self.kill()  # nobody will read its outcome: a fresh process takes the next task
            raise
        finally:
            loop.remove_reader(conn.fileno())
            if timer is not None:
                timer.cancel()
        if result is None:
            if self._timed_out:
                return Lost(ErrorKind.TIMEOUT, f"the task ran longer than its timeout of {timeout:g} s and was stopped")
            return await self._lost()
        return result

    def _readable(self, conn, outcome: asyncio.Future, on_output: Callable[[int, str, str], None]) -> None:
        """Read what the child sent: output lines, then the outcome (None: the pipe closed)."""
        try:
            while not outcome.done() and conn.poll():
                message = conn.recv()
                if message[0] == "output":
                    on_output(*message[1:])
                else:
                    outcome.set_result(Finished(message[1], conn.recv_bytes(), message[2]))
        except (EOFError, OSError):
            if not outcome.done():
                outcome.set_result(None)

    def _time_out(self) -> None:
        self._timed_out = True
        self._kill_process()

    async def _lost(self) -> Lost:
        process = self._process
        if process is not None:  # reap it, off the loop: join may wait a moment
            await asyncio.get_running_loop().run_in_executor(None, process.join, CHILD_EXIT_GRACE)
        if self._stopping:
            return Lost(None, "the job was released")
        return Lost(ErrorKind.CRASHED, describe_exit(process.exitcode if process else None))

    def kill(self) -> None:
        """Stop the running task now: its process is killed (the next task gets a fresh one)."""
        self._stopping = True
        self._kill_process()

    def _kill_process(self) -> None:
        process = self._process
        if process is not None and process.is_alive():
            process.kill()

    def close(self) -> None:
        """Stop the child for good (blocking, at most about 2 * CHILD_EXIT_GRACE)."""
        if self._conn is not None:
            self._conn.close()
        process = self._process
        if process is not None:
            process.join(CHILD_EXIT_GRACE)
            if process.is_alive():
                process.kill()
                process.join(CHILD_EXIT_GRACE)
