"""Reads of the journal: what a restarted foreman resumes and what an attaching client is sent.

Each is a function of the SQLite connection, run in the journal's thread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from crowdcompute.wire.constants import Serializer

from .credentials import Record as Reputation
from .credentials import Volunteer
from .state import Job, JobState, Task, TaskState

__all__ = ["read_jobs", "read_outcome_frame", "read_outcome_ids", "read_volunteers"]

log = logging.getLogger("crowdcompute.foreman")


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
        " created_at, finished_at, completed, failed, redundancy, serializer, quorum, quorum_timeout, needs FROM jobs"
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
            **json.loads(row[16] or "{}"),
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
