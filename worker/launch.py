"""How a task process is started: the one place that knows.

A launcher starts a process running :func:`worker.child.main` and returns
it with the agent's end of its pipe. Two kinds:

- :class:`ForkLauncher`: from a ``multiprocessing`` forkserver (spawn where
  there is none): cheap, the default.
- :class:`CommandLauncher`: ``PYTHON -c "...serve_fd(FD, SETTINGS)"`` as a new
  program, with the pipe passed as an inherited socket; optionally under
  bubblewrap (``--sandbox``), and with any Python (e.g. a job's own
  environment) that can import ``worker``.

Either way the child gets ``settings`` (its limits and scratch folder) and
serves tasks over the pipe in the same protocol (see :mod:`worker.child`).
"""

from __future__ import annotations

import json
import multiprocessing
import shlex
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any, Protocol

from . import child
from .pipes import readable
from .sandbox import bwrap_command

__all__ = ["CommandLauncher", "ForkLauncher", "Launcher", "TaskProcess"]


class TaskProcess:
    """A started task process: ``pid`` is the process whose descendants are the task's."""

    def __init__(self, pid: int, process, wrapped: bool = False) -> None:
        self.pid = pid
        self._process = process
        self._wrapped = wrapped  # under bwrap, whose exit code says 128 + N for "killed by signal N"

    def is_alive(self) -> bool:
        return self._process.poll() is None

    def kill(self) -> None:
        if self.is_alive():
            self._process.kill()

    def join(self, timeout: float | None = None) -> None:
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def exitcode(self) -> int | None:
        code = self._process.poll()
        if code is not None and code > 128 and self._wrapped:  # bwrap: 128 + the signal that killed it
            return -(code - 128)
        return code


class _ForkedProcess(TaskProcess):
    """A multiprocessing Process seen as a TaskProcess."""

    def __init__(self, pid: int, process) -> None:
        super().__init__(pid, process)
        self._ended = False  # its exit code was read (from the sentinel, which may then look quiet)

    def is_alive(self) -> bool:
        # The sentinel turns readable when the process ends: polled cheaply, asked for the exit only
        # then. Once the exit code was read from it, a forkserver's sentinel can stay quiet a moment
        # before it reports the end of the pipe: the answer is remembered, not asked of it again.
        if self._ended:
            return False
        if not readable(self._process.sentinel):
            return True
        self._ended = not self._process.is_alive()
        return not self._ended

    def kill(self) -> None:
        if self.is_alive():
            self._process.kill()

    def join(self, timeout: float | None = None) -> None:
        self._process.join(timeout)
        self._ended = self._ended or self._process.exitcode is not None

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode


class Launcher(Protocol):
    """Starts task processes; ``overhead``: processes it adds besides the task's own (e.g. bwrap's)."""

    overhead: int

    def start(
        self, index: int, settings: dict[str, Any], cgroup_procs: str | None = None
    ) -> tuple[TaskProcess, Connection[Any, Any]]:
        """Start a task process with ``settings``, in the cgroup whose ``cgroup.procs`` is given."""
        ...

    def warm(self) -> None:
        """Get ready to start task processes soon (called once, early); may do nothing."""
        ...


class ForkLauncher:
    """Task processes from a forkserver where there is one (no forked threads), else spawn."""

    overhead = 0  # processes besides the task's own

    def __init__(self) -> None:
        self._ctx: multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext
        if "forkserver" in multiprocessing.get_all_start_methods():
            self._ctx = multiprocessing.get_context("forkserver")
            self._ctx.set_forkserver_preload(["worker.child"])
        else:
            self._ctx = multiprocessing.get_context("spawn")

    def warm(self) -> None:
        """Start the forkserver now, so that it boots (and preloads) while the agent goes on starting."""
        if self._ctx.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()

    def start(
        self, index: int, settings: dict[str, Any], cgroup_procs: str | None = None
    ) -> tuple[TaskProcess, Connection[Any, Any]]:
        parent, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=child.main, args=(child_end, settings), name=f"crowdcompute-task-{index}", daemon=True
        )
        process.start()
        child_end.close()
        if cgroup_procs is not None:  # before its first task: nothing of the user's has run yet
            with open(cgroup_procs, "w") as file:
                file.write(str(process.pid))
        assert process.pid is not None  # it started
        return _ForkedProcess(process.pid, process), parent


_SERVE = "import sys; from worker.child import serve_fd; serve_fd(*sys.argv[1:])"


class CommandLauncher:
    """Task processes as a new ``python`` program, under bubblewrap when ``bwrap`` is given."""

    def __init__(self, python: str = sys.executable, bwrap: str | None = None, network: bool = True) -> None:
        self.python = python
        self.bwrap = bwrap
        self.network = network
        self.overhead = 2 if bwrap else 0  # bwrap and the sandbox's init process

    def warm(self) -> None:
        """Nothing to start ahead: each task process is a new program."""

    def with_python(self, python: str) -> CommandLauncher:
        """The same launcher (sandbox and all) for another Python, e.g. a job's virtual environment."""
        return CommandLauncher(python, self.bwrap, self.network)

    def start(
        self, index: int, settings: dict[str, Any], cgroup_procs: str | None = None
    ) -> tuple[TaskProcess, Connection[Any, Any]]:
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        command = [self.python, "-c", _SERVE, str(fd), json.dumps(settings)]
        if self.bwrap is not None:
            readable = [settings["site"]] if settings.get("site") else []  # the job's environment
            command = bwrap_command(self.bwrap, self.python, settings["scratch"], self.network, readable) + command
        if cgroup_procs is not None:  # join the cgroup first, so that everything it starts is in it
            command = ["/bin/sh", "-c", f'echo $$ > {shlex.quote(cgroup_procs)} && exec "$@"', "sh", *command]
        try:
            process = subprocess.Popen(command, pass_fds=(fd,), stdin=subprocess.DEVNULL, cwd=settings.get("scratch"))
        finally:
            theirs.close()
        return TaskProcess(process.pid, process, wrapped=self.bwrap is not None), Connection(ours.detach())
