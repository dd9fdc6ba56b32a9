"""Shared fixtures: real foremen and workers on 127.0.0.1, port 0, torn down for sure.

Every test gets its own ``$CROWDCOMPUTE_HOME`` (so connection files never touch
the user's), and after every test no process started with that home may be
left running: foremen, worker agents and their task processes included.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

#: Seconds any process we start gets to say it is ready.
START_TIMEOUT = 20.0
#: Seconds processes get to go away after a test before it fails as a leak.
LEAK_TIMEOUT = 10.0


@dataclass
class Proc:
    """A command-line process whose output lines we read in a thread."""

    popen: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        try:
            for raw in self.popen.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                self._queue.put(line)
        except (ValueError, OSError):  # closed under us by close()
            pass
        self._queue.put(None)

    def wait_for_line(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """The first new output line containing ``prefix``; fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(
                    f"process exited ({self.popen.poll()}) before printing {prefix!r}; output:\n"
                    + "\n".join(self.lines)
                )
            if prefix in line:
                return line
        pytest.fail(f"no line with {prefix!r} within {timeout} s; output so far:\n" + "\n".join(self.lines))

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then kill after ``timeout``; return the exit code."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self.close()
        return self.popen.returncode

    def close(self) -> None:
        """Wait for the output pipe to drain (children may hold it a moment) and close it."""
        self._pump_thread.join(timeout=10)
        if not self._pump_thread.is_alive():  # else a grandchild still holds the pipe: closing would block
            self.popen.stdout.close()


@dataclass
class Foreman:
    proc: Proc
    url: str
    port: int
    token: str


def spawn(*args: str, env: dict | None = None) -> Proc:
    """Start ``crowdcompute ARGS`` with stdout and stderr merged into one pipe."""
    popen = subprocess.Popen(
        [sys.executable, "-m", "crowdcompute", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    return Proc(popen)


@pytest.fixture(autouse=True)
def crowd_home(tmp_path, monkeypatch) -> Path:
    """A private $CROWDCOMPUTE_HOME per test; fails the test if its processes outlive it."""
    home = tmp_path / "crowdhome"
    home.mkdir()
    monkeypatch.setenv("CROWDCOMPUTE_HOME", str(home))
    monkeypatch.delenv("CROWDCOMPUTE_ADDRESS", raising=False)
    monkeypatch.delenv("CROWDCOMPUTE_TOKEN", raising=False)
    yield home
    deadline = time.monotonic() + LEAK_TIMEOUT
    left = _processes_with_home(str(home))
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _processes_with_home(str(home))
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    assert not left, "processes left behind: " + "; ".join(_describe(p) for p in left)


def _processes_with_home(home: str) -> list[psutil.Process]:
    found = []
    me = os.getpid()
    for process in psutil.process_iter():
        try:
            if process.pid == me or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("CROWDCOMPUTE_HOME") == home:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())}"
    except psutil.Error:
        return str(process.pid)


@pytest.fixture
def start_foreman(crowd_home):
    """Factory: start ``crowdcompute foreman --port PORT ARGS`` (port 0 by default); stopped after the test."""
    started: list[Proc] = []

    def start(*args: str, port: int = 0) -> Foreman:
        proc = spawn("foreman", "--port", str(port), *args)
        started.append(proc)
        line = proc.wait_for_line("foreman listening on ")
        url = line.rsplit(" ", 1)[1]
        port = int(url.rsplit(":", 1)[1])
        token = None
        if "--token" in args:
            token = args[args.index("--token") + 1]
        else:
            token = json.loads((crowd_home / f"foreman-{port}.json").read_text())["token"]
        return Foreman(proc, url, port, token)

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_worker(crowd_home):
    """Factory: start ``crowdcompute worker URL ARGS`` and wait until it is connected."""
    started: list[Proc] = []

    def start(url: str, *args: str, wait: bool = True) -> Proc:
        proc = spawn("worker", url, *args)
        started.append(proc)
        if wait:
            proc.wait_for_line("connected to")
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def foreman(start_foreman) -> Foreman:
    return start_foreman()


@pytest.fixture
def cluster(foreman, start_worker) -> Foreman:
    """A foreman with one worker of two task processes."""
    start_worker(foreman.url, "--procs", "2", "--name", "w1")
    return foreman
