"""The foreman's journal: jobs, tasks and outcomes in SQLite (WAL).

A foreman killed at any moment and restarted on the same journal resumes its
unfinished tasks and can replay every outcome to a client that attaches.
Payloads stay opaque: a task's input is stored as the client sent it, and an
outcome as the encoded frame the client will receive, so nothing here
unpickles anything. The journal applies the scheduler's records in order and
commits once per batch (one incoming frame's worth).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterator

from crowdcompute import protocol as p

from .state import DeleteJob, Job, JobState, SaveJob, SaveJobState, SaveResult, SaveTask, Task, TaskState

__all__ = ["Journal"]

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
    """An SQLite file holding what the foreman must not lose."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the process (SIGKILL); only an
        # OS crash can lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint (and fsync) every ~40 MB of WAL rather than every 4 MB: big payloads
        # otherwise pay a checkpoint per frame. The WAL file is truncated back to 64 MB.
        self._db.execute("PRAGMA wal_autocheckpoint=10000")
        self._db.execute("PRAGMA journal_size_limit=67108864")
        self._db.executescript(_SCHEMA)
        self._dirty = False

    def close(self) -> None:
        self.commit()
        self._db.close()

    # --- writing -------------------------------------------------------------

    def apply(self, record: Record) -> None:
        """Apply one scheduler record (inside the open batch)."""
        if not self._dirty:
            self._db.execute("BEGIN")
            self._dirty = True
        db = self._db
        if isinstance(record, SaveJob):
            job = record.job
            db.execute(
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
        elif isinstance(record, SaveTask):
            task = record.task
            db.execute(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?)",
                (record.job_id, task.task_id, task.first_index, task.count, task.payload),
            )
        elif isinstance(record, SaveResult):
            msg = record.message
            failed = msg.failed if isinstance(msg, p.TaskResult) else msg.count
            db.execute(
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?)",
                (record.job_id, record.task_id, msg.count, failed, p.encode(msg)),
            )
            db.execute("UPDATE tasks SET payload = NULL WHERE job_id = ? AND task_id = ?", (record.job_id, record.task_id))
        elif isinstance(record, SaveJobState):
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, completed = ?, failed = ? WHERE job_id = ?",
                (record.state, record.finished_at, record.completed, record.failed, record.job_id),
            )
        elif isinstance(record, DeleteJob):
            for table in ("outcomes", "tasks", "jobs"):
                db.execute(f"DELETE FROM {table} WHERE job_id = ?", (record.job_id,))

    def commit(self) -> None:
        if self._dirty:
            self._db.execute("COMMIT")
            self._dirty = False

    # --- reading -------------------------------------------------------------

    def outcome_frames(self, job_id: str) -> Iterator[bytes]:
        """Every stored outcome of a job, as the frames to send."""
        for task_id in self.outcome_ids(job_id):
            frame = self.outcome_frame(job_id, task_id)
            if frame is not None:
                yield frame

    def outcome_ids(self, job_id: str) -> list[int]:
        """The task ids of a job that have a stored outcome."""
        rows = self._db.execute("SELECT task_id FROM outcomes WHERE job_id = ? ORDER BY task_id", (job_id,))
        return [task_id for (task_id,) in rows]

    def outcome_frame(self, job_id: str, task_id: int) -> bytes | None:
        row = self._db.execute(
            "SELECT frame FROM outcomes WHERE job_id = ? AND task_id = ?", (job_id, task_id)
        ).fetchone()
        return row[0] if row else None

    def load(self) -> tuple[list[Job], list[dict]]:
        """Jobs to resume (running), and summaries of ended ones, as a restarted foreman needs them."""
        running: list[Job] = []
        ended: list[dict] = []
        rows = self._db.execute(
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
            for task_id, first_index, count, payload in self._db.execute(
                "SELECT task_id, first_index, count, payload FROM tasks WHERE job_id = ?", (job_id,)
            ):
                job.tasks[task_id] = Task(task_id, first_index, count, payload)
            for task_id, count, failed in self._db.execute(
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
