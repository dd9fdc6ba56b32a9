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
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Iterator

from crowdcompute import protocol as p

from .state import DeleteJob, Job, JobState, SaveJob, SaveJobState, SaveResult, SaveTask, Task, TaskState

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
    PRIMARY KEY (job_id, task_id)
);
CREATE TABLE IF NOT EXISTS outcomes (
    job_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    frame BLOB NOT NULL,
    PRIMARY KEY (job_id, task_id)
);
"""

Record = SaveJob | SaveTask | SaveResult | SaveJobState | DeleteJob


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
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._db: sqlite3.Connection | None = None
        self._dirty = False
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
        if self._dirty:
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
        return self.call(read_jobs)

    def outcome_frames(self, job_id: str) -> Iterator[bytes]:
        """Every stored outcome of a job, as the frames to send."""
        for task_id in self.call(read_outcome_ids, job_id):
            frame = self.call(read_outcome_frame, job_id, task_id)
            if frame is not None:
                yield frame

    # --- writing -------------------------------------------------------------

    def apply(self, record: Record) -> None:
        """Queue one scheduler record (inside the open batch)."""
        self._requests.put(("write", _statements(record)))

    def commit(self, then: Callable[[], None] | None = None) -> None:
        """End the batch; ``then()`` runs in the journal's thread once it is committed."""
        self._requests.put(("commit", then))


def _settle(future: asyncio.Future, value, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _statements(record: Record) -> list[tuple[str, tuple]]:
    """The SQL for one record, built now: the thread must not read objects the loop may change."""
    if isinstance(record, SaveJob):
        job = record.job
        return [
            (
                "INSERT OR REPLACE INTO jobs (job_id, function, total_tasks, total_items, task_timeout, retries,"
                " name, redundancy, serializer, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
        ]
    if isinstance(record, SaveTask):
        task = record.task
        return [
            (
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?)",
                (record.job_id, task.task_id, task.first_index, task.count, task.payload),
            )
        ]
    if isinstance(record, SaveResult):
        msg = record.message
        failed = msg.failed if isinstance(msg, p.TaskResult) else msg.count
        return [
            (
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?)",
                (record.job_id, record.task_id, msg.count, failed, p.encode(msg)),
            ),
            ("UPDATE tasks SET payload = NULL WHERE job_id = ? AND task_id = ?", (record.job_id, record.task_id)),
        ]
    if isinstance(record, SaveJobState):
        return [
            (
                "UPDATE jobs SET state = ?, finished_at = ?, completed = ?, failed = ? WHERE job_id = ?",
                (record.state, record.finished_at, record.completed, record.failed, record.job_id),
            )
        ]
    if isinstance(record, DeleteJob):
        return [(f"DELETE FROM {table} WHERE job_id = ?", (record.job_id,)) for table in ("outcomes", "tasks", "jobs")]
    raise TypeError(f"not a journal record: {record!r}")


# --- reads: functions of the connection, run in the journal's thread ---------------


def read_outcome_ids(db: sqlite3.Connection, job_id: str) -> list[int]:
    """The task ids of a job that have a stored outcome."""
    rows = db.execute("SELECT task_id FROM outcomes WHERE job_id = ? ORDER BY task_id", (job_id,))
    return [task_id for (task_id,) in rows]


def read_outcome_frame(db: sqlite3.Connection, job_id: str, task_id: int) -> bytes | None:
    """One stored outcome, as the frame to send."""
    row = db.execute("SELECT frame FROM outcomes WHERE job_id = ? AND task_id = ?", (job_id, task_id)).fetchone()
    return row[0] if row else None


def read_jobs(db: sqlite3.Connection) -> tuple[list[Job], list[dict]]:
    """Jobs to resume (running), and summaries of ended ones, as a restarted foreman needs them."""
    running: list[Job] = []
    ended: list[dict] = []
    rows = db.execute(
        "SELECT job_id, function, total_tasks, total_items, task_timeout, retries, name, state,"
        " created_at, finished_at, completed, failed, redundancy, serializer FROM jobs"
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
            job_id, None, function, total_tasks, total_items, timeout, retries, name, redundancy=row[12],
            serializer=row[13], created_at=created,
        )
        for task_id, first_index, count, payload in db.execute(
            "SELECT task_id, first_index, count, payload FROM tasks WHERE job_id = ?", (job_id,)
        ):
            job.tasks[task_id] = Task(task_id, first_index, count, payload)
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

