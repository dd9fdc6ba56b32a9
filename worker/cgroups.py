"""A ``pids`` cgroup per task process, where the worker may create one.

Used for ``--max-processes``: unlike ``RLIMIT_NPROC`` it counts exactly the
processes of one task, binds root too, and lets the agent kill every process
a task left behind. cgroup v1 (a ``pids`` hierarchy) and v2 (a ``pids``
controller enabled in the worker's own cgroup's subtree) are both tried;
anything that fails means "not available" and the caller says so.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["PidsCgroup", "pids_cgroups_available"]

_ROOT = Path("/sys/fs/cgroup")
#: Rounds of killing a cgroup's processes before giving up (each one a few ms).
KILL_ROUNDS = 200


def _own_parent() -> Path | None:
    """The folder where this worker may create pids cgroups, or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):  # cgroup v1
            return _ROOT / "pids" / path.lstrip("/")
    for line in lines:
        if line.startswith("0::"):  # cgroup v2: needs pids in our cgroup's subtree_control
            base = _ROOT / line[3:].lstrip("/")
            try:
                if "pids" in (base / "cgroup.subtree_control").read_text().split():
                    return base
            except OSError:
                return None
    return None


_available: bool | None = None


def pids_cgroups_available() -> bool:
    """Whether this worker can create a pids cgroup and set its limit (tried once, then remembered)."""
    global _available
    if _available is None:
        _remove_stale()
        try:
            probe = PidsCgroup(f"probe-{os.getpid()}", 2)
        except OSError:
            _available = False
        else:  # can we move a process into it, as a slot will?
            procs = shlex.quote(str(probe.path / "cgroup.procs"))
            moved = subprocess.run(["/bin/sh", "-c", f"echo $$ > {procs}"], capture_output=True, check=False)
            probe.remove()
            _available = moved.returncode == 0
    return _available


def _remove_stale() -> None:
    """Remove the cgroups of workers killed before they could (``crowdcompute-worker-PID-SLOT``)."""
    parent = _own_parent()
    if parent is None or not parent.is_dir():
        return
    for path in parent.glob("crowdcompute-worker-*"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            PidsCgroup(path.name.removeprefix("crowdcompute-"), None).remove()  # takes it over


class PidsCgroup:
    """A cgroup holding at most ``limit`` processes (None: any number). OSError if it cannot be made."""

    def __init__(self, name: str, limit: int | None) -> None:
        parent = _own_parent()
        if parent is None:
            raise FileNotFoundError("no pids cgroup controller found")
        self.path = parent / f"crowdcompute-{name}"
        self.path.mkdir(exist_ok=True)
        try:
            (self.path / "pids.max").write_text("max" if limit is None else str(limit))
        except OSError:
            self.path.rmdir()
            raise

    def pids(self) -> list[int]:
        try:
            return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        """Kill every process in it (a fork bomb refills it: repeat until it is empty)."""
        for _ in range(KILL_ROUNDS):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(KILL_ROUNDS):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # killed processes not reaped yet
                time.sleep(0.005)
