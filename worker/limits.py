"""Per-task limits: memory, CPU seconds, scratch disk and processes.

Who enforces what:

- ``--max-memory``: ``RLIMIT_AS`` in each task process (a fork gets its own);
  an allocation past it raises ``MemoryError``, which the task process reports
  as the broken limit.
- ``--max-cpu-seconds``: the agent adds up the CPU time of the task process
  and its descendants while a task runs and stops the task past the limit.
- ``--max-disk``: the agent adds up the task's scratch folder while it runs
  and stops it past the limit; ``RLIMIT_FSIZE`` stops a single file at once.
- ``--max-processes``: a ``pids`` cgroup per task process where the worker
  may create one, else ``RLIMIT_NPROC``, which counts per task only inside
  the sandbox's own user namespace and never binds root. Where neither
  holds, the worker refuses the option (see :func:`check_processes_limit`).
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .cgroups import pids_cgroups_available

__all__ = [
    "LimitBroken",
    "Limits",
    "UnenforceableLimitError",
    "apply_in_task_process",
    "check_processes_limit",
    "folder_bytes",
    "format_size",
    "limit_for_error",
    "parse_size",
    "tree_cpu_seconds",
    "tree_size",
]

#: How often the agent checks a running task's CPU time and scratch size, in seconds.
WATCH_INTERVAL = 0.2
#: The smallest --max-memory: a task process takes about 110 MB of address space before any task.
MIN_MEMORY = 256 * 1024**2

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from ``"512MiB"``, ``"2 GB"``, ``"1000"``; ValueError saying what is accepted."""
    match = _SIZE.match(str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: give bytes or a number with KB/MB/GB or KiB/MiB/GiB, e.g. 512MiB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise ValueError(f"{text!r} is not a size: it must be at least 1 byte")
    return value


def format_size(size: int) -> str:
    """``536870912`` -> ``"512 MiB"``, ``300000000`` -> ``"300 MB"``: as the user likely wrote it."""
    units = (("GiB", 1024**3), ("GB", 1000**3), ("MiB", 1024**2), ("MB", 1000**2), ("KiB", 1024), ("KB", 1000))
    for unit, factor in units:
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    for unit, factor in units[::2]:
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


class UnenforceableLimitError(Exception):
    """A limit the worker was asked for cannot be enforced on this machine (the message says why)."""


class LimitBroken(BaseException):
    """Raised in a task process when the user's code broke a limit; ``args[0]`` is the limit's name."""


@dataclass(frozen=True)
class Limits:
    """The per-task limits of a worker; None means unlimited."""

    memory: int | None = None  # bytes of address space per task process
    cpu_seconds: float | None = None
    disk: int | None = None  # bytes in the task's scratch folder
    processes: int | None = None

    @property
    def any(self) -> bool:
        return any(value is not None for value in (self.memory, self.cpu_seconds, self.disk, self.processes))

    def option(self, name: str) -> str:
        """The command-line option of limit ``name`` with its value, e.g. ``--max-memory 512 MiB``."""
        value = getattr(self, name)
        if name in ("memory", "disk"):
            return f"--max-{name} {format_size(value)}"
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        return f"--max-{name.replace('_', '-')} {shown}"

    def reason(self, name: str) -> str:
        """The sentence a task that broke limit ``name`` fails with."""
        return f"task exceeded {self.option(name)}"

    def to_dict(self) -> dict:
        return asdict(self)


def check_processes_limit(limits: Limits, sandbox: bool) -> str:
    """How ``--max-processes`` will be enforced: "cgroup" or "rlimit"; or UnenforceableLimitError why not."""
    if limits.processes is None:
        return ""
    if pids_cgroups_available():
        return "cgroup"
    if sandbox and os.geteuid() != 0:
        return "rlimit"  # counted per user namespace, i.e. per sandboxed task process
    if os.geteuid() == 0:
        why = "the worker runs as root, which RLIMIT_NPROC does not bind, and it cannot create a pids cgroup"
    else:
        why = "outside --sandbox RLIMIT_NPROC counts all your processes, not one task's, and no pids cgroup is writable"
    raise UnenforceableLimitError(f"--max-processes cannot be enforced here: {why}")


def apply_in_task_process(limits: Limits, nproc: int | None) -> None:
    """Set the resource limits of this (task) process; hard limits, so user code cannot raise them.

    ``nproc``: the RLIMIT_NPROC to set, where it counts per task (see check_processes_limit).
    """
    if not limits.any and nproc is None:
        return
    import resource  # POSIX only, as the limits are

    if limits.memory is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    if limits.disk is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.disk, limits.disk))
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def limit_for_error(exc: BaseException, limits: Limits) -> str | None:
    """The limit an exception from user code means it broke, or None."""
    if isinstance(exc, MemoryError) and limits.memory is not None:
        return "memory"
    if isinstance(exc, OSError):
        if exc.errno == errno.EAGAIN and limits.processes is not None:
            return "processes"  # fork/clone past the process limit
        if exc.errno in (errno.EFBIG, errno.ENOSPC) and limits.disk is not None:
            return "disk"
    return None


_snapshot: tuple[float, dict[int, list[int]], dict[int, int]] = (-1.0, {}, {})


def _processes(max_age: float) -> tuple[dict[int, list[int]], dict[int, int]]:
    """(children of each pid, CPU clock ticks of each pid incl. its reaped children), from /proc.

    A scan at most ``max_age`` seconds old is reused: the slots of one worker share it.
    """
    global _snapshot
    taken, children, used = _snapshot
    if time.monotonic() - taken <= max_age:
        return children, used
    children, used = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()
        # fields[1]: ppid; [11..14]: utime, stime, cutime, cstime
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        used[int(entry.name)] = sum(int(value) for value in fields[11:15])
    _snapshot = (time.monotonic(), children, used)
    return children, used


def _tree(pid: int, max_age: float = 0.0) -> dict[int, int]:
    """Process ``pid`` and its living descendants, each with its CPU clock ticks."""
    children, used = _processes(max_age)
    tree: dict[int, int] = {}
    todo = [pid] if pid in used else []
    while todo:
        current = todo.pop()
        tree[current] = used[current]
        todo.extend(children.get(current, ()))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used by process ``pid`` and its descendants (living, and reaped ones)."""
    return sum(_tree(pid, WATCH_INTERVAL / 2).values()) / os.sysconf("SC_CLK_TCK")


def tree_size(pid: int) -> int:
    """How many processes ``pid`` and its living descendants are."""
    return len(_tree(pid))


def folder_bytes(path: str) -> int:
    """Bytes the files under ``path`` take on disk (0 if it is gone)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total
