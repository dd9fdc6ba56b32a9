"""The scheduler's named limits and their defaults (the server's are in foreman.server)."""

from __future__ import annotations

__all__ = [
    "ALLOWED_FAILURES",
    "ENDED_JOBS_SHOWN",
    "MAX_QUEUED_BYTES",
    "MAX_QUEUED_BYTES_TOTAL",
    "MAX_QUEUED_TASKS",
    "MAX_KEPT_OUTCOME_BYTES",
    "MAX_SLOTS_PER_WORKER",
    "RESULT_TTL",
]

#: How many times a task may kill its process before it fails with WorkerCrashedError.
ALLOWED_FAILURES = 3
#: Seconds a finished job's outcomes are kept for ``attach`` before they are purged.
RESULT_TTL = 24 * 3600.0
#: How many ended jobs the status keeps showing.
ENDED_JOBS_SHOWN = 20
#: Tasks of one job a client may have sent without their outcome yet (its window).
MAX_QUEUED_TASKS = 4096
#: Input bytes of one job a client may have sent without their outcome yet (at least one task
#: always goes): the window that bounds the foreman's memory, so 10 MB inputs keep 3 tasks in flight.
MAX_QUEUED_BYTES = 32 * 1024 * 1024
#: Outcome bytes of one job a foreman without a journal keeps after its client acknowledged
#: them (so that another process can still attach); past this it drops the acknowledged ones.
MAX_KEPT_OUTCOME_BYTES = 16 * 1024 * 1024
#: Input bytes waiting on the foreman over all jobs; past this, new jobs are refused until it drains.
MAX_QUEUED_BYTES_TOTAL = 2 * 1024 * 1024 * 1024
#: Slots a worker is granted at most, whatever it claims (``--max-slots-per-worker``; an invite's
#: ``--slots`` may grant fewer). It holds at most its slots plus a prefetch of half as many.
MAX_SLOTS_PER_WORKER = 64
