"""The scheduler's named limits and their defaults (the server's are in foreman.server, foreman.handshake and foreman.peer)."""

from __future__ import annotations

__all__ = [
    "ALLOWED_FAILURES",
    "DROPPED_LOGGED",
    "DROPPED_LOGGED_EVERY",
    "ENDED_JOBS_SHOWN",
    "MAX_QUEUED_BYTES",
    "MAX_QUEUED_BYTES_TOTAL",
    "MAX_PREFETCH_PER_SLOT",
    "MAX_QUEUED_TASKS",
    "MAX_KEPT_OUTCOME_BYTES",
    "MAX_SLOTS_PER_WORKER",
    "MAX_WORKER_LOSSES",
    "PREFETCH_MARGIN",
    "RESULT_TTL",
    "TASK_SECONDS_WEIGHT",
    "MIN_TASK_SECONDS",
    "RTT_SAMPLES",
    "JOIN_PINGS",
]

#: How many times a task may kill its process before it fails with WorkerCrashedError.
ALLOWED_FAILURES = 3
#: How many times the worker holding a task may go away (disconnect, go silent) before the
#: task fails with WorkerCrashedError. A lost worker is its link's or its host's failure,
#: not the task's, so this is far above ALLOWED_FAILURES: only a task that keeps taking
#: its hosts down with it (or a crowd that cannot keep any worker) reaches it.
MAX_WORKER_LOSSES = 10
#: Outcomes a worker sent for leases it did not hold that the log notes one by one ...
DROPPED_LOGGED = 10
#: ... and after those, one in this many (a forging volunteer must not fill the log).
DROPPED_LOGGED_EVERY = 1000
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
#: Most tasks a worker may hold beyond its running ones, per slot, however far away it is.
MAX_PREFETCH_PER_SLOT = 8
#: Seconds added to a worker's round trip when sizing its prefetch: the foreman's and the
#: worker's own time to turn a finished task into the next one.
PREFETCH_MARGIN = 0.01
#: Weight of the newest task in a worker's running average of item durations within a job
#: (foreman.prefetch): high, so that items that grow slower stop a deep prefetch within a few tasks.
TASK_SECONDS_WEIGHT = 0.5
#: Seconds a task cut by the foreman should take at least, by the job's item durations measured
#: so far (foreman.splitting): a task costs about 1-2 ms of CPU over all processes (frames,
#: wake-ups), so cutting tiny items finer spends more on tasks than it saves at the tail.
MIN_TASK_SECONDS = 0.02
#: Pings whose least round trip is taken as a worker's round trip (foreman.prefetch.set_rtt).
RTT_SAMPLES = 4
#: Pings the foreman sends a worker as it joins, one after another, before its first task ends.
JOIN_PINGS = 2
#: Slots a worker is granted at most, whatever it claims (``--max-slots-per-worker``; an invite's
#: ``--slots`` may grant fewer). It holds at most its slots plus its prefetch (foreman.prefetch).
MAX_SLOTS_PER_WORKER = 64
