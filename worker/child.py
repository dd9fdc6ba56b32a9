"""The task process: runs user code, one task at a time, and nothing else.

It talks to its worker agent over a ``multiprocessing`` pipe:

    agent -> child   ("run", job_id, first_index, count, function_bytes | None, serializer, size, shared) + payload
                     (size: a path instead when the input is a shared payload file the child maps itself;
                     shared: the shared payload folder, where a big outcome goes as a file, or None)
                     ("forget", job_id)
    child -> agent   ("output", index, stream, text)      while the task runs
                     ("progress", done, failed, error, error_index)   now and then while it runs
                     ("done", failed, seconds, parts) + the outcome in that many parts   when it ends
                     ("limit", name)                       the task broke a limit; then it exits

``settings`` (from the launcher) holds the worker's ``limits`` (a
:class:`~worker.limits.Limits` as a dict), ``nproc`` (the ``RLIMIT_NPROC``
to set, or None) and ``scratch``: a folder in which each task gets a fresh
folder of its own (its cwd and TMPDIR), removed when it ends.

A crash here (segfault, ``os._exit``, out of memory) kills this process only;
the agent notices, reports it and starts a fresh one. If the agent dies, this
process notices within half a second and exits, leaving no orphan.
"""

from __future__ import annotations

import mmap
import os
import select
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from crowdcompute.codecs.modules import WithModules
from crowdcompute.codecs.pickled import loads, loads_items
from crowdcompute.codecs.portable import load_portable_function
from crowdcompute.wire.blobs import BLOB_THRESHOLD, SharedFolder, payload_parts
from crowdcompute.wire.constants import Serializer
from crowdcompute.wire.framing import Pieces

from .execution import module_hint, run_items, run_portable
from .limits import LimitBroken, Limits, apply_in_task_process, limit_for_error
from .pipes import Reader, pickled, send_together

__all__ = ["main", "serve_fd"]

#: Functions of this many jobs stay loaded in a task process.
CACHED_FUNCTIONS = 8
#: Where a closed pipe is not reported (no POLLRDHUP): how often the process checks its parent, in seconds.
PARENT_CHECK_INTERVAL = 0.5
#: Seconds between two progress reports of a running task; a task that ends sooner reports none,
#: so fast maps send no extra message. A first failure is reported at the next item after it.
PROGRESS_INTERVAL = 0.25
#: Looks at the clock per PROGRESS_INTERVAL (the stride between looks follows the items' pace),
#: and most items between two looks.
CLOCK_READS_PER_INTERVAL = 4
MAX_STRIDE = 256
#: A scratch folder whose times are this much older than the moment it was found empty is
#: "settled" (nanoseconds): file times tick coarsely, so a change within the same tick as the
#: look could leave them equal; a change to a settled folder cannot.
SETTLED_NS = 50_000_000
#: Longest error text a progress report carries.
PROGRESS_ERROR_LIMIT = 300


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


def _exit_when_orphaned(fd: int) -> None:
    """Exit when the agent is gone, whatever the task is doing: nobody is left to take its outcome.

    The agent's end of the pipe (a socket) closes when it dies, which ``poll`` reports as
    POLLRDHUP without reading anything. The parent is no sign: a forkserver's child keeps
    the forkserver alive (it holds the forkserver's "alive" pipe) after the agent was killed.
    Elsewhere, a change of parent is the sign (the agent, or a forkserver that outlives it).
    """
    hangup = getattr(select, "POLLRDHUP", 0) | select.POLLHUP
    if hasattr(select, "POLLRDHUP"):
        poller = select.poll()
        poller.register(fd, hangup)
        while True:
            if any(events & (hangup | select.POLLERR | select.POLLNVAL) for _, events in poller.poll()):
                os._exit(1)
    parent_pid = os.getppid()
    while True:
        time.sleep(PARENT_CHECK_INTERVAL)
        if os.getppid() != parent_pid:
            os._exit(1)


def use_environment(site: str) -> None:
    """Put a job environment's site-packages first on ``sys.path`` (its .pth files included).

    Modules already imported (cloudpickle, ours) stay the worker's: the job's
    pickles decode with the cloudpickle the worker speaks.
    """
    before = list(sys.path)
    import site as site_module

    site_module.addsitedir(site)
    added = [path for path in sys.path if path not in before]
    sys.path[:] = added + before


def main(conn: Connection, settings: dict | None = None) -> None:
    """Serve tasks from ``conn`` until it closes."""
    settings = settings or {}
    limits = Limits(**settings.get("limits", {}))
    apply_in_task_process(limits, settings.get("nproc"))
    # Ctrl-C in the terminal of `crowdcompute worker` reaches its whole process group: it is the
    # agent's to act on (it lets running tasks finish, and stops them at a second Ctrl-C).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(conn.fileno(),), daemon=True).start()
    if settings.get("site"):
        use_environment(settings["site"])
    _Server(conn, limits, settings.get("scratch")).serve()


class _Server:
    """What a task process keeps from one task to the next: its pipe, the jobs' functions, its
    spare scratch folder. Each task is one call (``run``): its input and outcome go when it
    returns, not when the next task comes (a process idle between jobs holds neither)."""

    def __init__(self, conn: Connection, limits: Limits, scratch: str | None) -> None:
        self.conn = conn
        self.limits = limits
        self.scratch = scratch
        self.task_pid = os.getpid()
        self.outputs = (_Output(conn, "stdout"), _Output(conn, "stderr"))
        sys.stdout, sys.stderr = self.outputs
        self.functions: dict[str, Callable[[Any], Any] | BaseException] = {}
        self.reader = Reader(conn.fileno())
        self.spare: str | None = None  # the last task's scratch folder, left empty: the next one's
        self.seen: os.stat_result | None = None  # the spare folder, as last found empty and settled

    def serve(self) -> None:
        while True:
            try:
                header = self.reader.recv()
            except (EOFError, OSError):
                return
            if header[0] == "forget":
                self.functions.pop(header[1], None)
            else:
                self.run(header)

    def run(self, header: tuple) -> None:
        """Run one task: read its input, call the function on each item, send the outcome."""
        conn, reader, functions, limits, scratch = self.conn, self.reader, self.functions, self.limits, self.scratch
        stdout, stderr = outputs = self.outputs
        task_pid = self.task_pid
        _, job_id, first_index, count, function_bytes, serializer, size, shared = header
        portable = serializer == Serializer.PORTABLE
        payload: bytearray | memoryview
        if isinstance(size, str):  # a file in the foreman's shared payload folder (wire.blobs)
            payload = _map_file(size)
        else:
            payload = bytearray(size)  # writable: a numpy input sent out of band is used where it lands
            reader.recv_bytes_into(payload)
        if function_bytes is not None:
            while len(functions) >= CACHED_FUNCTIONS:
                functions.pop(next(iter(functions)))
            try:
                functions[job_id] = load_portable_function(function_bytes) if portable else loads(function_bytes)
            except Exception as exc:  # e.g. a module the function needs is missing here
                functions[job_id] = RuntimeError(
                    f"cannot load the job's function on this worker: {exc!r}{module_hint(exc)}"
                )
        func = functions.get(job_id)
        if func is None:
            func = RuntimeError(f"the worker lost the function of job {job_id}")

        progress = _Progress(conn, first_index)

        def on_item(offset: int, errors: dict, first_index: int = first_index, progress: _Progress = progress) -> None:
            if stdout._buffer or stderr._buffer:  # a partial line belongs to the item before
                stdout.flush()
                stderr.flush()
            stdout.index = stderr.index = first_index + offset
            if offset >= progress.check_at or (errors and not progress.failed):
                progress.item(offset, errors)

        if isinstance(func, BaseException):
            func = _raiser(func)
        if isinstance(func, WithModules):  # the job's own modules, before its inputs unpickle
            func.activate()
        if limits.any:
            func = _watched(func, limits, task_pid)
        folder = _enter_scratch(scratch, job_id, first_index, self.spare) if scratch else None
        if folder != self.spare:
            self.seen = None  # a new folder: nothing seen of it yet
        self.spare = None
        started = time.perf_counter()
        result: bytes | Pieces
        try:
            if portable:
                result, failed = run_portable(func, payload, count, on_item)
            else:
                try:
                    items = loads_items(payload)
                except Exception as exc:  # an input whose type this worker cannot import
                    items, func = [None] * count, _raiser(RuntimeError(f"cannot load the task's input here: {exc!r}"))
                result, failed = run_items(func, items, on_item)
        except LimitBroken as broken:
            conn.send(("limit", broken.args[0]))
            os._exit(1)  # a fresh process takes the next task
        finally:
            if os.getpid() != task_pid:  # the user's function forked and this copy returned
                os._exit(0)
            if scratch is not None and folder is not None:
                self.spare, self.seen = _leave_scratch(scratch, folder, self.seen)
        seconds = time.perf_counter() - started
        for output in outputs:
            output.flush()
        if shared is not None and len(result) >= BLOB_THRESHOLD:
            result = _write_file(shared, job_id, result)
        parts = result.pieces if isinstance(result, Pieces) else (result,)
        # A small outcome wakes the agent once; big out-of-band buffers go as they are, not joined.
        send_together(conn, [pickled(("done", failed, seconds, len(parts))), *parts])


class _Progress:
    """Reports items done within a running task, at most every PROGRESS_INTERVAL seconds.

    Reading the clock before every item would cost tiny items more than
    their work: the clock is read every ``stride`` items, a stride sized
    from the items' pace so that it is read a few times per interval.
    """

    def __init__(self, conn: Connection, first_index: int) -> None:
        self._conn = conn
        self._first_index = first_index
        now = time.monotonic()
        self._next = now + PROGRESS_INTERVAL
        self._checked = (now, 0)  # (time, offset) of the last look at the clock
        self.check_at = 1  # the offset of the next look
        self.failed = 0  # failures reported so far

    def item(self, offset: int, errors: dict) -> None:
        """Called before item ``offset`` (the ``offset`` items before it are done) when it is time to look."""
        now = time.monotonic()
        then, before = self._checked
        if offset > before and now > then:
            pace = (now - then) / (offset - before)  # seconds per item
            stride = int(PROGRESS_INTERVAL / CLOCK_READS_PER_INTERVAL / pace) if pace > 0 else MAX_STRIDE
            self.check_at = offset + max(1, min(MAX_STRIDE, stride))
        else:
            self.check_at = offset + 1
        self._checked = (now, offset)
        first_failure = bool(errors) and not self.failed
        if now < self._next and not first_failure:
            return
        self._next = now + PROGRESS_INTERVAL
        error, error_index = "", -1
        if first_failure:  # the task's first failure: say what it was
            first = min(errors)
            described = errors[first]
            if isinstance(described, dict):
                error = f"{described.get('type', 'Exception')}: {described.get('message', '')}"
            else:
                error = f"{type(described).__name__}: {described}"
            error, error_index = error[:PROGRESS_ERROR_LIMIT], self._first_index + first
        self.failed = len(errors)
        self._conn.send(("progress", offset, len(errors), error, error_index))


def _map_file(path: str) -> memoryview:
    """A private, writable (copy-on-write) mapping of a shared payload file; empty if it is gone."""
    try:
        with open(path, "rb") as file:
            return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY))
    except (OSError, ValueError):  # gone (its job ended), or empty: the input fails to load, named
        return memoryview(b"")


def _write_file(folder: str, job_id: str, result: bytes | Pieces) -> bytes | Pieces:
    """A big outcome written to the shared payload folder: its reference; or itself if it cannot be."""
    try:
        return SharedFolder(folder).write(job_id, payload_parts(result))
    except OSError:  # a full disk, say: the agent gets the bytes
        return result


def _watched(func: Callable[[Any], Any], limits: Limits, task_pid: int) -> Callable[[Any], Any]:
    """``func``, raising LimitBroken when it fails because it broke a limit."""

    def call(item: Any) -> Any:
        try:
            return func(item)
        except (MemoryError, OSError) as exc:
            name = limit_for_error(exc, limits)
            if name is None:
                raise
            if os.getpid() != task_pid:  # a process the task forked: it must not talk on our pipe
                os._exit(1)
            raise LimitBroken(name) from None

    return call


def _enter_scratch(scratch: str, job_id: str, first_index: int, spare: str | None = None) -> str:
    """Make a fresh, empty folder the task's cwd and TMPDIR: ``spare``, the one the last task left
    empty, as it is (a tenth of the cost of making a folder and removing it), or a new one."""
    folder = spare or os.path.join(scratch, f"task-{job_id}-{first_index}")
    if spare is None:
        os.makedirs(folder, exist_ok=True)
    os.chdir(folder)
    for name in ("TMPDIR", "TEMP", "TMP", "HOME") if os.environ.get("HOME") == scratch else ("TMPDIR", "TEMP", "TMP"):
        if os.environ.get(name) != folder:
            os.environ[name] = folder  # HOME too where the sandbox made the scratch folder the home
    tempfile.tempdir = None
    return folder


def _leave_scratch(
    scratch: str, folder: str, seen: os.stat_result | None = None
) -> tuple[str | None, os.stat_result | None]:
    """The task ended: its folder, kept for the next task if the task left it empty (and usable),
    with its ``lstat`` when that can stand for a look inside next time; else (None, None) once
    it is removed.

    ``seen``: the folder's ``lstat`` when it was last found empty and settled. Unchanged, nothing
    was made, removed or renamed in it and its mode is the same: one call, where looking inside
    takes five and, after a task that slept, about 0.1 ms.
    """
    tempfile.tempdir = None
    try:
        now = os.lstat(folder)
        if seen is not None and _identity(seen) == _identity(now):
            return folder, seen
        if stat.S_ISDIR(now.st_mode) and _is_empty(folder) and os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            settled = max(now.st_mtime_ns, now.st_ctime_ns) < time.time_ns() - SETTLED_NS
            return folder, (now if settled else None)
    except OSError:
        pass
    os.chdir(scratch)
    if os.environ.get("HOME") == folder:
        os.environ["HOME"] = scratch
    shutil.rmtree(folder, ignore_errors=True)
    return None, None


def _is_empty(folder: str) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def _identity(folder: os.stat_result) -> tuple[int, ...]:
    """What anything made, removed or renamed in a folder, or a chmod or chown of it, changes."""
    return (folder.st_ino, folder.st_dev, folder.st_mode, folder.st_uid, folder.st_mtime_ns, folder.st_ctime_ns)


def _raiser(exc: BaseException) -> Callable[[Any], Any]:
    def fail(_item: Any) -> Any:
        raise exc

    return fail


def serve_fd(fd: str, settings: str) -> None:
    """Serve tasks over the inherited socket ``fd``, with ``settings`` as JSON (a CommandLauncher's child)."""
    import json

    main(Connection(int(fd)), json.loads(settings))
