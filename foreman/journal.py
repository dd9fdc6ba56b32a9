"""The foreman's journal: jobs, tasks and outcomes in SQLite (WAL).

A foreman killed at any moment and restarted on the same journal resumes its
unfinished tasks and can replay every outcome to a client that attaches.
Payloads stay opaque: a task's input is stored as the client sent it, and an
outcome as the encoded frame the client will receive, so nothing here
unpickles anything. The journal applies the scheduler's records in order and
commits once per batch (one incoming frame's worth).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .credentials import Volunteer
from .records import BLOB_FILE_THRESHOLD, Record, blob_size, statements, write_blob
from .recovery import read_jobs, read_outcome_frame, read_outcome_ids, read_volunteers
from .state import Job

__all__ = ["BLOB_FILE_THRESHOLD", "Journal", "read_outcome_frame", "read_outcome_ids"]

log = logging.getLogger("crowdcompute.foreman")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    function BLOB NOT NULL,
    total_tasks INTEGER NOT NULL,
    total_items INTEGER NOT NULL,
    task_timeout REAL,
    retries INTEGER NOT NULL,
    name TEXT NOT NULL,
    redundancy INTEGER NOT NULL DEFAULT 1,
    serializer TEXT NOT NULL DEFAULT 'cloudpickle',
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    first_index INTEGER NOT NULL,
    count INTEGER NOT NULL,
    payload BLOB,
    payload_file TEXT,
    PRIMARY KEY (job_id, task_id)
);
CREATE TABLE IF NOT EXISTS volunteers (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    created_at REAL NOT NULL,
    slots INTEGER NOT NULL,
    trusted INTEGER NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    joined_at REAL,
    tasks_done INTEGER NOT NULL,
    agreed INTEGER NOT NULL,
    disagreed INTEGER NOT NULL,
    missed INTEGER NOT NULL,
    quarantined INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    job_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    frame BLOB,
    frame_file TEXT,
    PRIMARY KEY (job_id, task_id)
);
"""

#: Columns added after the first release: a journal written before them gets them on open.
_ADDED_COLUMNS = (
    ("jobs", "quorum", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "quorum_timeout", "REAL"),
    ("jobs", "needs", "TEXT NOT NULL DEFAULT '{}'"),  # resources, labels, requirements (JSON)
)


#: Bytes of payload files queued for the journal's thread past which the foreman stops reading
#: frames until the disk catches up (backpressure: its memory stays bounded on a slow disk).
MAX_BACKLOG_BYTES = 32 * 1024 * 1024


def _make_private(path: Path) -> None:
    """Create the database file readable by this user only, or make it so (with the files SQLite keeps
    beside it, which it creates with the database's permissions)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if name.exists():
            os.chmod(name, 0o600)


class Journal:
    """An SQLite file holding what the foreman must not lose, written by a thread of its own.

    ``apply`` and ``commit`` only queue work: the SQL runs in the journal's
    thread (SQLite releases the GIL while it writes), so big payloads do not
    stall the foreman's event loop. ``commit(then)`` calls ``then`` once the
    batch is on disk; reads run in the same thread, after every write queued
    before them, so they see everything applied so far.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_private(self.path)  # it holds jobs' inputs and results: this user's only
        self.blobs = self.path.with_name(self.path.name + ".blobs")  # big payloads, one file each
        self.blobs.mkdir(mode=0o700, exist_ok=True)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._db: sqlite3.Connection | None = None
        self._dirty = False
        # Bytes of payload files queued and not yet written: the foreman stops reading past
        # MAX_BACKLOG_BYTES, so a slow disk bounds its memory instead of growing it.
        self._backlog = 0
        self._backlog_lock = threading.Lock()
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        opened = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(opened,), name="journal", daemon=True)
        self._thread.start()
        opened.wait()
        if self._db is None:
            raise OSError(f"cannot open the journal {self.path}")

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._requests.put(("stop", None))
            self._thread.join()

    # --- the journal's thread ------------------------------------------------

    def _serve(self, opened: threading.Event) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of the process (SIGKILL); only an
            # OS crash can lose the last commits.
            db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint (and fsync) every ~40 MB of WAL rather than every 4 MB: big payloads
            # otherwise pay a checkpoint per frame. The WAL file is truncated back to 64 MB.
            db.execute("PRAGMA wal_autocheckpoint=10000")
            db.execute("PRAGMA journal_size_limit=67108864")
            db.executescript(_SCHEMA)
            for table, column, kind in _ADDED_COLUMNS:
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self._db = db
        except sqlite3.Error:
            log.exception("cannot open the journal %s", self.path)
            return
        finally:
            opened.set()
        while True:
            kind, arg = self._requests.get()
            try:
                if kind == "write":
                    if not self._dirty:
                        db.execute("BEGIN")
                        self._dirty = True
                    for sql, params in arg:
                        if sql == "file":  # written before the row that names it: no dangling name
                            try:
                                write_blob(Path(params[0]), params[1])
                            finally:
                                self._written(blob_size(params[1]))
                        elif sql == "unlink":
                            for found in self.blobs.glob(params[0]):
                                found.unlink(missing_ok=True)
                        else:
                            db.execute(sql, params)
                elif kind == "commit":
                    self._commit()
                    if arg is not None:
                        arg()
                elif kind == "call":
                    function, args, done = arg
                    done(function(db, *args), None)
                elif kind == "stop":
                    self._commit()
                    db.close()
                    return
            except Exception as exc:  # a full disk, say: say so, keep serving
                if kind == "call":
                    done(None, exc)
                else:
                    log.exception("journal %s failed to %s", self.path, kind)

    def _commit(self) -> None:
        if self._dirty and self._db is not None:
            self._db.execute("COMMIT")
            self._dirty = False

    def call(self, function, *args):
        """Run ``function(db, *args)`` in the journal's thread after what is queued; its result."""
        box: dict = {}
        finished = threading.Event()

        def done(value, error):
            box["value"], box["error"] = value, error
            finished.set()

        self._requests.put(("call", (function, args, done)))
        finished.wait()
        if box["error"] is not None:
            raise box["error"]
        return box["value"]

    async def call_async(self, function, *args):
        """``call`` for the event loop: waits without blocking it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(value, error):
            loop.call_soon_threadsafe(_settle, future, value, error)

        self._requests.put(("call", (function, args, done)))
        return await future

    def flush(self) -> None:
        """Wait until everything queued is committed."""
        self.commit()
        self.call(lambda db: None)

    # --- reading -------------------------------------------------------------

    def load(self) -> tuple[list[Job], list[dict]]:
        """Jobs to resume (running), and summaries of ended ones, as a restarted foreman needs them."""
        return self.call(read_jobs, self.blobs)

    def load_volunteers(self) -> list[Volunteer]:
        """Every invited volunteer: credential digest, terms and record."""
        return self.call(read_volunteers)

    def outcome_frames(self, job_id: str) -> Iterator[bytes]:
        """Every stored outcome of a job, as the frames to send."""
        for task_id in self.call(read_outcome_ids, job_id):
            frame = self.call(read_outcome_frame, job_id, task_id, self.blobs)
            if frame is not None:
                yield frame

    # --- writing -------------------------------------------------------------

    def apply(self, record: Record) -> None:
        """Queue one scheduler record (inside the open batch)."""
        ops = statements(record, self.blobs)
        size = sum(blob_size(params[1]) for sql, params in ops if sql == "file")
        if size:
            with self._backlog_lock:
                self._backlog += size
        self._requests.put(("write", ops))

    async def wait_for_room(self) -> None:
        """Return once the payload files still to write are at most MAX_BACKLOG_BYTES."""
        with self._backlog_lock:
            if self._backlog <= MAX_BACKLOG_BYTES:
                return
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self._room_waiters.append((loop, future))
        await future

    def _written(self, size: int) -> None:
        """In the journal's thread: a payload file is on disk; wake readers if there is room again."""
        with self._backlog_lock:
            self._backlog -= size
            if self._backlog > MAX_BACKLOG_BYTES:
                return
            waiters, self._room_waiters = self._room_waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, future, None, None)

    def commit(self, then: Callable[[], object] | None = None) -> None:
        """End the batch; ``then()`` runs in the journal's thread once it is committed."""
        self._requests.put(("commit", then))


def _settle(future: asyncio.Future, value, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
