"""How each scheduler record becomes SQL statements and payload files, for the journal's thread."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from crowdcompute.wire import messages as p

from .state import DeleteJob, Job, SaveJob, SaveJobState, SaveResult, SaveTask, SaveVolunteer

__all__ = ["BLOB_FILE_THRESHOLD", "Record", "blob_size", "statements", "write_blob"]

#: What the scheduler asks the journal to store.
Record = SaveJob | SaveTask | SaveResult | SaveJobState | DeleteJob | SaveVolunteer

#: Payloads larger than this (bytes) go to a file beside the journal, not into SQLite,
#: which writes big blobs several times slower than a plain file.
BLOB_FILE_THRESHOLD = 1024 * 1024


def _needs(job: Job) -> str:
    return json.dumps({"resources": job.resources, "labels": job.labels, "requirements": job.requirements})


def _blob_name(job_id: str, task_id: int, kind: str) -> str:
    # Job ids come from clients: hash them, never use them as file names.
    return f"{hashlib.sha256(job_id.encode()).hexdigest()[:32]}-{task_id}.{kind}"


def statements(record: Record, blobs: Path) -> list[tuple[str, tuple[Any, ...]]]:
    """The SQL (and blob files) for one record, built now: the thread must not read objects the loop may change."""
    if isinstance(record, SaveJob):
        job = record.job
        return [
            (
                "INSERT OR REPLACE INTO jobs (job_id, function, total_tasks, total_items, task_timeout, retries,"
                " name, redundancy, serializer, state, created_at, quorum, quorum_timeout, needs)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    _needs(job),
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


def blob_size(parts: list) -> int:
    return sum(len(part) for part in parts)


def write_blob(path: Path, parts: list) -> None:
    with open(path, "wb") as out:
        for part in parts:  # a payload kept in the pieces it arrived in is written piece by piece
            out.writelines(part.pieces if isinstance(part, p.Pieces) else (part,))
