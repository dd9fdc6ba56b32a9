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
import hashlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import Serializer

from .credentials import Record as Reputation
from .credentials import Volunteer
from .state import DeleteJob, Job, JobState, SaveJob, SaveJobState, SaveResult, SaveTask, SaveVolunteer, Task, TaskState

__all__ = ["Journal", "read_outcome_frame", "read_outcome_ids"]

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
_ADDED_COLUMNS = (("jobs", "quorum", "INTEGER NOT NULL DEFAULT 0"), ("jobs", "quorum_timeout", "REAL"))

Record = SaveJob | SaveTask | SaveResult | SaveJobState | DeleteJob | SaveVolunteer

#: Payloads larger than this (bytes) go to a file beside the journal, not into SQLite,
#: which writes big blobs several times slower than a plain file.
BLOB_FILE_THRESHOLD = 1024 * 1024
#: Bytes of payload files queued for the journal's thread past which the foreman stops reading
#: frames until the disk catches up (backpressure: its memory stays bounded on a slow disk).
MAX_BACKLOG_BYTES = 32 * 1024 * 1024


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
                                _write_blob(Path(params[0]), params[1])
                            finally:
                                self._written(_blob_size(params[1]))
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
        statements = _statements(record, self.blobs)
        size = sum(_blob_size(params[1]) for sql, params in statements if sql == "file")
        if size:
            with self._backlog_lock:
                self._backlog += size
        self._requests.put(("write", statements))

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


def _blob_name(job_id: str, task_id: int, kind: str) -> str:
    # Job ids come from clients: hash them, never use them as file names.
    return f"{hashlib.sha256(job_id.encode()).hexdigest()[:32]}-{task_id}.{kind}"


def _statements(record: Record, blobs: Path) -> list[tuple[str, tuple[Any, ...]]]:
    """The SQL (and blob files) for one record, built now: the thread must not read objects the loop may change."""
    if isinstance(record, SaveJob):
        job = record.job
        return [
            (
                "INSERT OR REPLACE INTO jobs (job_id, function, total_tasks, total_items, task_timeout, retries,"
                " name, redundancy, serializer, state, created_at, quorum, quorum_timeout)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    job.function,
                    job.total_tasks,
                    job.total_items,
                    job.task_timeout,
                    job.retries,
                    job.name,
                    job.redundancy,
                    job.serializer,
                    job.state.value,
                    job.created_at,
                    job.quorum,
                    job.quorum_timeout,
                ),
            )
        ]
    if isinstance(record, SaveTask):
        task = record.task
        payload, name = task.payload, None
        ops: list[tuple[str, tuple[Any, ...]]] = []
        if payload is not None and len(payload) > BLOB_FILE_THRESHOLD:
            name = _blob_name(record.job_id, task.task_id, "in")
            ops.append(("file", (str(blobs / name), [payload])))  # the bytes that arrived, not a copy
            payload = None
        elif isinstance(payload, p.Pieces):  # small, but cut by someone on the way: SQLite wants one buffer
            payload = bytes(payload)
        ops.append(
            (
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
                (record.job_id, task.task_id, task.first_index, task.count, payload, name),
            )
        )
        return ops
    if isinstance(record, SaveResult):
        msg = record.message
        failed = msg.failed if isinstance(msg, p.TaskResult) else msg.count
        parts = p.encode_parts(msg)
        frame: bytes | None = None
        name, ops = None, []
        if p.frame_size(parts) > BLOB_FILE_THRESHOLD:
            name = _blob_name(record.job_id, record.task_id, "out")
            ops.append(("file", (str(blobs / name), parts)))  # header, then the payload as it arrived
        else:
            frame = b"".join(parts)
        ops.append(
            (
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?, ?)",
                (record.job_id, record.task_id, msg.count, failed, frame, name),
            )
        )
        ops.append(
            (
                "UPDATE tasks SET payload = NULL, payload_file = NULL WHERE job_id = ? AND task_id = ?",
                (record.job_id, record.task_id),
            )
        )
        ops.append(("unlink", (_blob_name(record.job_id, record.task_id, "in"),)))
        return ops
    if isinstance(record, SaveJobState):
        return [
            (
                "UPDATE jobs SET state = ?, finished_at = ?, completed = ?, failed = ? WHERE job_id = ?",
                (record.state, record.finished_at, record.completed, record.failed, record.job_id),
            )
        ]
    if isinstance(record, SaveVolunteer):
        v, r = record.volunteer, record.volunteer.record
        return [
            (
                "INSERT OR REPLACE INTO volunteers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    v.name,
                    v.digest,
                    v.created_at,
                    v.slots,
                    int(v.trusted),
                    v.expires_at,
                    v.revoked_at,
                    v.joined_at,
                    r.tasks_done,
                    r.agreed,
                    r.disagreed,
                    r.missed,
                    int(r.quarantined),
                ),
            )
        ]
    if isinstance(record, DeleteJob):
        prefix = _blob_name(record.job_id, 0, "x").split("-")[0]
        ops = [(f"DELETE FROM {table} WHERE job_id = ?", (record.job_id,)) for table in ("outcomes", "tasks", "jobs")]
        return ops + [("unlink", (f"{prefix}-*",))]
    raise TypeError(f"not a journal record: {record!r}")


# --- reads: functions of the connection, run in the journal's thread ---------------


def read_outcome_ids(db: sqlite3.Connection, job_id: str) -> list[int]:
    """The task ids of a job that have a stored outcome."""
    rows = db.execute("SELECT task_id FROM outcomes WHERE job_id = ? ORDER BY task_id", (job_id,))
    return [task_id for (task_id,) in rows]


def read_outcome_frame(db: sqlite3.Connection, job_id: str, task_id: int, blobs: Path) -> bytes | None:
    """One stored outcome, as the frame to send."""
    row = db.execute(
        "SELECT frame, frame_file FROM outcomes WHERE job_id = ? AND task_id = ?", (job_id, task_id)
    ).fetchone()
    if row is None:
        return None
    return row[0] if row[1] is None else _read_blob(blobs / row[1])


def _blob_size(parts: list) -> int:
    return sum(len(part) for part in parts)


def _write_blob(path: Path, parts: list) -> None:
    with open(path, "wb") as out:
        for part in parts:  # a payload kept in the pieces it arrived in is written piece by piece
            out.writelines(part.pieces if isinstance(part, p.Pieces) else (part,))


def _read_blob(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        log.error("journal blob %s is missing", path)
        return None


def read_jobs(db: sqlite3.Connection, blobs: Path) -> tuple[list[Job], list[dict]]:
    """Jobs to resume (running), and summaries of ended ones, as a restarted foreman needs them."""
    running: list[Job] = []
    ended: list[dict] = []
    rows = db.execute(
        "SELECT job_id, function, total_tasks, total_items, task_timeout, retries, name, state,"
        " created_at, finished_at, completed, failed, redundancy, serializer, quorum, quorum_timeout FROM jobs"
    ).fetchall()
    for row in rows:
        job_id, function, total_tasks, total_items, timeout, retries, name, state, created, finished = row[:10]
        if state != JobState.RUNNING.value:
            ended.append(
                {
                    "id": job_id,
                    "name": name,
                    "total": total_items,
                    "completed": row[10],
                    "failed": row[11],
                    "state": state,
                    "tasks": total_tasks,
                    "finished_at": finished or created,
                    "serializer": row[13],
                }
            )
            continue
        job = Job(
            job_id,
            None,
            function,
            total_tasks,
            total_items,
            timeout,
            retries,
            name,
            redundancy=row[12],
            serializer=Serializer(row[13]),
            quorum=row[14],
            quorum_timeout=row[15],
            created_at=created,
        )
        for task_id, first_index, count, payload, name in db.execute(
            "SELECT task_id, first_index, count, payload, payload_file FROM tasks WHERE job_id = ?", (job_id,)
        ):
            job.tasks[task_id] = Task(
                task_id, first_index, count, payload if name is None else _read_blob(blobs / name)
            )
        for task_id, count, failed in db.execute(
            "SELECT task_id, count, failed FROM outcomes WHERE job_id = ?", (job_id,)
        ):
            task = job.tasks.get(task_id)
            if task is not None:
                task.state = TaskState.DONE
                task.payload = None
                job.finished_tasks += 1
                job.completed_items += count - failed
                job.failed_items += failed
        job.accepted = job.all_received
        running.append(job)
    return running, ended


def read_volunteers(db: sqlite3.Connection) -> list[Volunteer]:
    """Every volunteer in the journal."""
    volunteers = []
    for row in db.execute("SELECT * FROM volunteers"):
        name, digest, created, slots, trusted, expires, revoked, joined = row[:8]
        tasks_done, agreed, disagreed, missed, quarantined = row[8:]
        record = Reputation(tasks_done, agreed, disagreed, missed, bool(quarantined))
        volunteers.append(
            Volunteer(name, digest, created, slots, bool(trusted), expires, revoked, joined, record=record)
        )
    return volunteers
