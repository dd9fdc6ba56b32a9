"""Task processes: each slot owns one child process that runs user code.

``Slot.execute`` is a coroutine on the agent's event loop: it writes the
task to the child's pipe and then waits for the pipe to become readable
(``loop.add_reader``), so no thread sits between the agent and its
children and a task costs one message each way. User code never runs in
the agent. A slot whose process dies (crash, timeout, cancel, broken
limit) starts a fresh one before its next task. How a process is started
is the launcher's business (:mod:`worker.launch`); the limits a slot
enforces itself (CPU seconds, scratch size) are watched here. A task
process serves one job environment (``site``: the site-packages folder
put first on its ``sys.path``, or None for the worker's own packages); a
task of another environment gets a fresh process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from crowdcompute.wire.constants import ErrorKind
from crowdcompute.wire.framing import Pieces

from .cgroups import PidsCgroup
from .launch import ForkLauncher, Launcher, TaskProcess
from .limits import WATCH_INTERVAL, Limits, folder_bytes, tree_cpu_seconds, tree_size
from .pipes import Reader, pickled, readable, send_together

__all__ = ["Finished", "Lost", "Slot", "SlotSettings"]

#: Seconds a child gets to exit after the pipe closes before it is killed.
CHILD_EXIT_GRACE = 1.0
#: Largest task (input and function bytes) written to a busy process's pipe ahead of time: it
#: must fit in the pipe's buffer (64 KiB on Linux), or the write would wait for the running task.
PRELOAD_MAX_BYTES = 32 * 1024


@dataclass(frozen=True)
class Finished:
    """The task ran to the end; ``payload`` holds its pickled outcomes."""

    failed: int
    payload: bytes | Pieces  # Pieces: out-of-band buffers as the task process sent them
    seconds: float = 0.0  # time the user's function took, measured in the task process


@dataclass(frozen=True)
class Lost:
    """The task produced no outcomes: it crashed, ran out of time, broke a limit, or was cancelled."""

    error: ErrorKind | None  # None: cancelled (the job was released), nothing to report
    reason: str


@dataclass
class SlotSettings:
    """What every slot of a worker shares: how to start processes, and the limits."""

    launcher: Launcher = field(default_factory=ForkLauncher)
    limits: Limits = field(default_factory=Limits)
    scratch: str | None = None  # folder holding each slot's scratch folder; None: tasks run in the cwd
    processes_by: str = ""  # how processes are counted and limited: "cgroup", "rlimit" or ""
    sandboxed: bool = False

    @property
    def strict(self) -> bool:
        """Whether a task may leave no process behind (checked after each task)."""
        return self.sandboxed or self.limits.processes is not None


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

    def __init__(self, settings: SlotSettings, index: int) -> None:
        self.index = index
        self.settings = settings
        self._process: TaskProcess | None = None
        self._conn: Connection[Any, Any] | None = None
        self._reader: Reader | None = None  # what the child sends, read from the pipe
        self._jobs: set[str] = set()  # jobs whose function the child holds
        self._forget: list[str] = []
        self._stopping = False  # set by kill(): the next loss is a cancel
        self._timed_out = False
        self._broken: str | None = None  # the limit the running task broke, as the agent saw it
        self._scratch = os.path.join(settings.scratch, f"slot-{index}") if settings.scratch else None
        self._cgroup: PidsCgroup | None = None
        self._site: str | None = None  # the job environment its process serves
        self._preloaded: object = None  # the task already written to the pipe behind the running one

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> Connection[Any, Any]:
        """Start the child process (if it is not running) and return its pipe; blocking, a few ms with forkserver."""
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        limits, launcher = self.settings.limits, self.settings.launcher
        if self._cgroup is not None:
            self._cgroup.kill_all()  # what the last process left behind
        elif self.settings.processes_by == "cgroup":  # to count, limit and kill the task's processes
            cgroup_name = f"worker-{os.getpid()}-{self.index}"
            limit = limits.processes + launcher.overhead if limits.processes is not None else None
            self._cgroup = PidsCgroup(cgroup_name, limit)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            os.makedirs(self._scratch, mode=0o700)
        settings = {
            "limits": limits.to_dict(),
            # RLIMIT_NPROC counts in the sandbox's user namespace: its init process too
            "nproc": limits.processes + 1 if limits.processes and self.settings.processes_by == "rlimit" else None,
            "scratch": self._scratch,
            "site": self._site,  # the job environment it serves (None: the worker's own packages)
        }
        procs = str(self._cgroup.path / "cgroup.procs") if self._cgroup else None
        process, parent = launcher.start(self.index, settings, procs)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn, self._jobs = process, parent, set()
        self._reader = Reader(parent.fileno())
        self._forget.clear()
        self._preloaded = None  # whatever the last process held died with it
        return parent

    def forget(self, job_id: str) -> None:
        """The job is over: the child may drop its function at the next task."""
        if job_id in self._jobs:
            self._jobs.discard(job_id)
            self._forget.append(job_id)

    def _send(
        self,
        conn: Connection[Any, Any],
        job_id: str,
        first_index: int,
        count: int,
        function: tuple[bytes, str],
        payload: bytes | Path,
        shared: str | None,
    ) -> None:
        """Write one task to the pipe; FileNotFoundError when its shared input file is gone."""
        function_bytes, serializer = function
        new = job_id not in self._jobs
        if isinstance(payload, Path) and self.settings.sandboxed:  # the sandbox hides the folder: hand the bytes
            payload = payload.read_bytes()
        # The size of the bytes that follow, or the shared file the task process maps itself.
        size = str(payload) if isinstance(payload, Path) else memoryview(payload).nbytes
        shared = None if self.settings.sandboxed else shared
        messages = [pickled(("forget", old)) for old in self._forget]
        header = ("run", job_id, first_index, count, function_bytes if new else None, serializer, size, shared)
        messages.append(pickled(header))
        if not isinstance(payload, Path):
            messages.append(payload)
        send_together(conn, messages)  # a small task wakes its process once
        self._forget.clear()
        self._jobs.add(job_id)

    def preload(
        self,
        token: object,
        job_id: str,
        first_index: int,
        count: int,
        function: tuple[bytes, str],
        payload: bytes | Path,
        shared: str | None = None,
    ) -> bool:
        """Write the next task to the pipe while the running one runs: the process starts it the moment
        the running one ends, without waiting for the agent to read the outcome and answer.

        Only behind a running task of the same environment, and never with per-task checks (a
        strict slot counts processes after each task). ``execute(..., token=token)`` then runs
        it; if another task is run next instead, the slot's process is replaced first.
        Whether it was written.
        """
        process, conn = self._process, self._conn
        if self._preloaded is not None or self.settings.strict or process is None or conn is None:
            return False
        if isinstance(payload, Path) and self.settings.sandboxed:
            return False  # its bytes would be read now and written whole: they may not fit in the pipe
        size = 0 if isinstance(payload, Path) else len(payload)  # a shared file: only its name is written
        size += len(function[0]) if job_id not in self._jobs else 0
        if size > PRELOAD_MAX_BYTES:  # it would not fit in the pipe: writing it would block until the running task ends
            return False
        if not process.is_alive():
            return False
        try:
            self._send(conn, job_id, first_index, count, function, payload, shared)
        except (OSError, EOFError):  # FileNotFoundError included: the task runs (and ends) the usual way
            return False
        self._preloaded = token
        return True

    async def execute(
        self,
        job_id: str,
        first_index: int,
        count: int,
        function: tuple[bytes, str],
        payload: bytes | Path,
        timeout: float | None,
        on_output: Callable[[int, str, str], None],
        on_progress: Callable[[int, int, str, int], None] | None = None,
        site: str | None = None,
        shared: str | None = None,
        token: object = None,
        then: Callable[[], None] | None = None,
    ) -> Finished | Lost:
        """Run one task in the child. Never raises for user errors or crashes.

        ``payload``: the input's bytes or the shared payload file that holds them; ``shared``:
        the shared payload folder, where the task process writes a big outcome (unless sandboxed).

        ``function`` is (its bytes, its serializer: "cloudpickle" or "portable");
        ``on_progress(done, failed, error, error_index)`` hears of items done while it runs.
        ``site``: the job environment's site-packages folder (None: the worker's own).
        ``token``: the one given to ``preload`` if this task was preloaded (it is not sent again).
        ``then()`` is called soon after the task is in the pipe (the place to ``preload`` the next
        one), before its outcome is read: other slots given a task in the same turn write theirs first.
        """
        loop = asyncio.get_running_loop()
        # Another environment needs another process; so does another task than the one preloaded
        # (the process would run that one first, and its outcome would be read as this one's).
        stale = self._preloaded is not None and self._preloaded is not token
        if site != self._site or stale:
            process = self._process
            self._kill_process()
            if process is not None:
                await loop.run_in_executor(None, process.join, CHILD_EXIT_GRACE)
            self._site = site
        self._stopping = self._timed_out = False
        self._broken = None
        conn = self.start()
        outcome: asyncio.Future = loop.create_future()
        timer = None
        try:
            if self._preloaded is None or self._preloaded is not token:
                self._send(conn, job_id, first_index, count, function, payload, shared)
            self._preloaded = None
        except FileNotFoundError:  # the job ended and its files went while this task waited
            self._preloaded = None
            return Finished(count, b"", 0.0)
        except (OSError, EOFError):
            return await self._lost()
        if then is not None:  # after the slots woken with this one wrote their first tasks: those before preloads
            loop.call_soon(then)
        loop.add_reader(conn.fileno(), self._readable, conn, outcome, on_output, on_progress)
        if self._reader is not None and self._reader.buffered:  # a read for the last task took in this one's too
            loop.call_soon(self._readable, conn, outcome, on_output, on_progress)
        # uvloop (libuv) makes a watched descriptor non-blocking; this pipe's messages are read
        # and written whole by blocking calls (a 10 MB input would fail half-written): undo it.
        os.set_blocking(conn.fileno(), True)
        if timeout is not None:
            timer = loop.call_later(timeout, self._time_out)
        watch = self._watch(outcome) if self._watched else None
        try:
            result = await outcome
        except asyncio.CancelledError:
            self.kill()  # nobody will read its outcome: a fresh process takes the next task
            raise
        finally:
            loop.remove_reader(conn.fileno())
            if timer is not None:
                timer.cancel()
            if watch is not None:
                watch.cancel()
        if isinstance(result, Lost) or (result is None and self._broken):
            return await self._lost()
        if result is None:
            if self._timed_out:
                # Reaped before the next task: a process being killed still looks alive, and the
                # task preloaded behind this one would be waited for in it and reported as crashed.
                await self._reap()
                return Lost(ErrorKind.TIMEOUT, f"the task ran longer than its timeout of {timeout:g} s and was stopped")
            return await self._lost()
        process = self._process
        if process is not None and self.settings.strict:
            if await self._processes(process) > 1 + self.settings.launcher.overhead:
                await self._restart(process)  # the task left processes running: they go with this one
        return result

    async def _processes(self, process: TaskProcess) -> int:
        """How many processes the slot's process tree holds (its cgroup's count, else a scan of /proc)."""
        if self._cgroup is not None:
            return len(self._cgroup.pids())
        return await asyncio.get_running_loop().run_in_executor(None, tree_size, process.pid)  # a few ms

    async def _restart(self, process: TaskProcess) -> None:
        process.kill()
        await asyncio.get_running_loop().run_in_executor(None, process.join, CHILD_EXIT_GRACE)
        if self._cgroup is not None:
            self._cgroup.kill_all()

    def _readable(
        self,
        conn,
        outcome: asyncio.Future,
        on_output: Callable[[int, str, str], None],
        on_progress: Callable[[int, int, str, int], None] | None,
    ) -> None:
        """Read what the child sent: output lines and progress, then the outcome (None: the pipe closed).

        The messages of one write come in with one read (``Reader``); the pipe is polled only
        when nothing read is left.
        """
        reader = self._reader
        assert reader is not None  # set with the connection
        try:
            while not outcome.done() and (reader.buffered or readable(conn.fileno())):
                message = reader.recv()
                if message[0] == "output":
                    on_output(*message[1:])
                elif message[0] == "progress":
                    if on_progress is not None:
                        on_progress(*message[1:])
                elif message[0] == "limit":  # the child found it (MemoryError, EAGAIN); it exits now
                    self._broken = message[1]
                    outcome.set_result(Lost(ErrorKind.LIMIT, self.settings.limits.reason(message[1])))
                else:
                    parts = [reader.recv_bytes() for _ in range(message[3])]
                    # A big part is the buffer it was read into (Reader.recv_bytes): sent as it is, never copied.
                    only = parts[0] if len(parts) == 1 else None
                    payload = only if isinstance(only, bytes) else Pieces([memoryview(part) for part in parts])
                    outcome.set_result(Finished(message[1], payload, message[2]))
        except (EOFError, OSError):
            if not outcome.done():
                outcome.set_result(None)

    @property
    def _watched(self) -> bool:
        limits = self.settings.limits
        return limits.cpu_seconds is not None or (limits.disk is not None and self._scratch is not None)

    def _watch(self, outcome: asyncio.Future) -> asyncio.Task:
        """Stop the task when its CPU time or scratch size passes its limit."""
        assert self._process is not None  # a task runs in it
        limits, pid = self.settings.limits, self._process.pid

        async def watch() -> None:
            start = tree_cpu_seconds(pid) if limits.cpu_seconds is not None else 0.0
            while not outcome.done():
                await asyncio.sleep(WATCH_INTERVAL)
                if limits.cpu_seconds is not None and tree_cpu_seconds(pid) - start > limits.cpu_seconds:
                    self._broken = "cpu_seconds"
                elif limits.disk is not None and self._scratch and folder_bytes(self._scratch) > limits.disk:
                    self._broken = "disk"
                else:
                    continue
                self._kill_process()
                return

        return asyncio.create_task(watch())

    def _time_out(self) -> None:
        self._timed_out = True
        self._kill_process()

    async def _reap(self) -> None:
        """Wait for the slot's dead or dying process, off the loop (join may wait a moment)."""
        process = self._process
        if process is not None:
            await asyncio.get_running_loop().run_in_executor(None, process.join, CHILD_EXIT_GRACE)
        if self._cgroup is not None:
            self._cgroup.kill_all()

    async def _lost(self) -> Lost:
        await self._reap()
        process = self._process
        if self._stopping:
            return Lost(None, "the job was released")
        exitcode = process.exitcode if process else None
        broken = self._broken or self._limit_signal(exitcode)
        if broken:
            return Lost(ErrorKind.LIMIT, self.settings.limits.reason(broken))
        return Lost(ErrorKind.CRASHED, describe_exit(exitcode))

    def _limit_signal(self, exitcode: int | None) -> str | None:
        """The limit a process killed by the kernel for breaking one broke."""
        limits = self.settings.limits
        if exitcode is None or exitcode >= 0:
            return None
        if -exitcode == getattr(signal, "SIGXCPU", None) and limits.cpu_seconds is not None:
            return "cpu_seconds"
        if -exitcode == getattr(signal, "SIGXFSZ", None) and limits.disk is not None:
            return "disk"
        return None

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
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None  # a later start() makes another
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
