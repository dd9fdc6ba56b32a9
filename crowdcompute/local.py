"""A foreman and workers on loopback, as child processes of this one.

Used by ``connect()`` with no address (the embedded cluster), by
``crowdcompute local`` and by ``crowdcompute demo``. Each child reads its
stdin from a pipe held by this process: when this process exits or is
killed, the pipe closes and the children stop, so none is left behind. They
run in their own session, so a Ctrl-C or kernel interrupt aimed at this
process does not reach them.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import subprocess
import sys
import weakref

from .errors import CrowdComputeError
from .wire.addresses import Address, generate_token, parse_address, remove_connection_file
from .wire.constants import FOREMAN_READY, FOREMAN_TOKEN_VARIABLE, WORKER_TOKEN_VARIABLE

__all__ = ["LocalCluster", "STOP_TIMEOUT"]


#: Seconds the children get to exit cleanly before they are killed.
STOP_TIMEOUT = 5.0

_running: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


class LocalCluster:
    """One foreman and ``workers`` single-process worker agents on 127.0.0.1.

    With ``token=None`` the foreman generates (or reuses) one and writes its
    connection file, which the workers read; otherwise the token stays private.
    """

    def __init__(
        self,
        workers: int,
        *,
        port: int = 0,
        token: str | None = "",
        log_level: str = "error",
        show_workers: bool = False,
        journal: str = "none",
    ) -> None:
        """``journal``: the foreman's --journal ("none": an embedded cluster lives and dies with its client).

        ``log_level``: its processes' (stderr is the owner's: a notebook cell, a script's output). By
        default they say only what breaks them; the owner hears of failed tasks through its jobs.
        """
        if workers < 1:
            raise ValueError(f"a local cluster needs at least one worker, not {workers}")
        self.workers = workers
        self.port = port
        self.token = generate_token() if token == "" else token
        self.log_level = log_level
        self.show_workers = show_workers
        self.journal = journal
        self.address: Address | None = None
        self.foreman: subprocess.Popen | None = None
        self.agents: list[subprocess.Popen] = []

    @property
    def slots(self) -> int:
        return self.workers

    async def start(self, timeout: float = 30.0) -> Address:
        """Start the foreman, wait for its address, start the workers; return the address.

        Raises CrowdComputeError if the foreman does not start within ``timeout``.
        """
        _running.add(self)
        # Bind here and hand the listening socket to the foreman, so the workers can
        # start now, in parallel: their connections wait in its backlog.
        try:
            listener = socket.create_server(("127.0.0.1", self.port))
        except OSError as exc:
            raise CrowdComputeError(f"cannot listen on 127.0.0.1:{self.port}: {exc.strerror or exc}") from None
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}"
        command = ["-m", "foreman", "--fd", str(listener.fileno()), "--port", str(listener.getsockname()[1])]
        command += ["--journal", self.journal, "--log-level", self.log_level]
        try:
            self.foreman = foreman = self._spawn(command, stdout=subprocess.PIPE, pass_fds=(listener.fileno(),))
        finally:
            listener.close()  # the foreman has its own copy
        for n in range(self.workers):
            command = ["-m", "worker", url, "--procs", "1", "--name", f"local-{n + 1}"]
            command += ["--log-level", self.log_level]
            self.agents.append(self._spawn(command, stdout=None if self.show_workers else subprocess.DEVNULL))
        loop = asyncio.get_running_loop()
        try:
            assert foreman.stdout is not None  # stdout=PIPE
            line = await asyncio.wait_for(loop.run_in_executor(None, foreman.stdout.readline), timeout)
        except asyncio.TimeoutError:
            raise CrowdComputeError(f"the local foreman did not start within {timeout:g} s") from None
        text = line.decode(errors="replace").strip()
        if not text.startswith(FOREMAN_READY):
            code = foreman.poll()
            raise CrowdComputeError(f"the local foreman did not start (exit code {code}): {text or 'no output'}")
        self.address = parse_address(text.rsplit(" ", 1)[1])
        return self.address

    def _spawn(self, args: list[str], stdout, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
        # The token goes in the environment, not the command line (ps shows that to every user).
        env = {k: v for k, v in os.environ.items() if k not in (FOREMAN_TOKEN_VARIABLE, WORKER_TOKEN_VARIABLE)}
        if self.token is not None:
            env[FOREMAN_TOKEN_VARIABLE] = env[WORKER_TOKEN_VARIABLE] = self.token
        return subprocess.Popen(
            [sys.executable, *args, "--exit-with-parent"],
            stdin=subprocess.PIPE,
            stdout=stdout,
            start_new_session=True,
            env=env,
            pass_fds=pass_fds,
        )

    def stop(self) -> None:
        """Stop the workers, then the foreman (blocking, at most about 2 * STOP_TIMEOUT s).

        Workers first, so that none of them sees its foreman vanish and tries to reconnect.
        """
        _close_stdin(self.agents)
        _wait(self.agents)
        foreman = [self.foreman] if self.foreman else []
        _close_stdin(foreman)
        _wait(foreman)
        if foreman and self.port == 0 and self.address is not None:
            # The connection file of a foreman on a port the system picked is never read again
            # (they piled up): an embedded foreman removes its own, 'crowdcompute local's is here.
            remove_connection_file(self.address.port, pid=foreman[0].pid)
        self.agents, self.foreman = [], None
        _running.discard(self)


def _close_stdin(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.stdin is not None and not process.stdin.closed:
            try:
                process.stdin.close()  # the child's parent watch stops it
            except OSError:
                pass


def _wait(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_running):
        cluster.stop()
