"""Plain records the scheduler keeps: jobs, tasks, workers, and the actions it returns."""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass, field

from crowdcompute.wire.constants import Serializer
from crowdcompute.wire.messages import Message, TaskDone, TaskFailed, TaskResult

from .credentials import Record, Volunteer
from .limits import MAX_PREFETCH_PER_SLOT, RTT_SAMPLES

__all__ = [
    "items_ahead",
    "Action",
    "Close",
    "DeleteJob",
    "Note",
    "Job",
    "JobState",
    "Replay",
    "SaveJob",
    "SaveJobState",
    "SaveResult",
    "SaveTask",
    "SaveVolunteer",
    "Send",
    "Task",
    "TaskState",
    "Worker",
]


@dataclass(frozen=True)
class Send:
    """Action: send ``message`` to the connection ``to``."""

    to: str
    message: Message
    linger: bool = False  # it may wait a moment for others to the same peer (foreman.peer.RESULT_LINGER)


@dataclass(frozen=True)
class Close:
    """Action: close the connection ``to`` with a websocket close code and reason."""

    to: str
    code: int
    reason: str


@dataclass(frozen=True)
class Note:
    """Action: log ``text`` (a dropped result, a refused request); ``routine`` ones at INFO (a backup
    run, an operator's own action), the rest as warnings."""

    text: str
    routine: bool = False


@dataclass(frozen=True)
class Replay:
    """Action: send ``to`` every outcome the journal holds for ``job_id``."""

    to: str
    job_id: str


# Journal records: actions the server applies to the journal, in order.


@dataclass(frozen=True)
class SaveJob:
    job: Job


@dataclass(frozen=True)
class SaveTask:
    job_id: str
    task: Task


@dataclass(frozen=True)
class SaveResult:
    """A task's outcome (TaskResult or TaskFailed); its input is no longer needed."""

    job_id: str
    task_id: int
    message: TaskResult | TaskFailed


@dataclass(frozen=True)
class SaveJobState:
    job_id: str
    state: str
    finished_at: float | None
    completed: int
    failed: int


@dataclass(frozen=True)
class DeleteJob:
    job_id: str


@dataclass(frozen=True)
class SaveVolunteer:
    """A volunteer's credential digest, terms and record (never the credential itself)."""

    volunteer: Volunteer


class TaskState(enum.Enum):
    QUEUED = "queued"  # waiting for a worker slot
    RUNNING = "running"  # leased to a worker (possibly still in its prefetch queue)
    DONE = "done"  # its outcome went to the client


class JobState(enum.Enum):
    RUNNING = "running"  # accepted; tasks queued or running
    DONE = "done"  # every task has an outcome
    CANCELLED = "cancelled"  # the client cancelled it


@dataclass
class Task:
    """One chunk of a job. ``attempt`` grows with every lease, fencing late results."""

    task_id: int
    first_index: int
    count: int
    payload: bytes | None
    state: TaskState = TaskState.QUEUED
    attempt: int = 0  # grows with every lease, so each lease is unique
    leases: dict[str, int] = field(default_factory=dict)  # worker id -> attempt it holds
    tried: set[str] = field(default_factory=set)  # Worker.key of those that ran or run it (replicas go elsewhere)
    votes: dict[bytes, list[str]] = field(default_factory=dict)  # outcome digest -> workers (redundancy)
    ballots: dict[bytes, TaskDone] = field(default_factory=dict)  # outcome digest -> first TaskDone with it
    winner: bytes | None = None  # the digest a quorum agreed on
    rounds: int = 0  # extra rounds of runs after a round without a majority
    crashes: int = 0  # times it killed its process (counts toward allowed_failures)
    losses: int = 0  # times its worker went away while holding it (counts toward max_worker_losses)
    retries_used: int = 0
    pieces: list[list[int]] | None = None  # [items, bytes] of its payload's pieces: where it may be cut
    received_at: float = 0.0  # when the client's task arrived
    assigned_at: float = 0.0  # when its current lease began
    progress: int = 0  # items its current lease reported done (TaskProgress), for the status page
    first_outcome_at: float | None = None  # when its first redundant run reported (quorum_timeout counts from it)
    lease_started: dict[str, float] = field(default_factory=dict)  # worker id -> when its lease began
    overdue: set[str] = field(default_factory=set)  # workers whose lease passed its deadline
    reissues: int = 0  # runs queued because every lease passed its deadline
    backups: int = 0  # backup copies run at the tail of its job


@dataclass
class Job:
    """A client's job: its function, its tasks and their progress."""

    job_id: str
    client: str | None  # the connection following it; None while its client is away
    function: bytes
    total_tasks: int
    total_items: int
    task_timeout: float | None
    retries: int
    name: str = ""
    redundancy: int = 1  # runs of each task on distinct workers
    quorum: int = 0  # agreeing runs that accept an outcome; 0: a strict majority of redundancy
    quorum_timeout: float | None = None  # seconds after a task's first outcome to reach the quorum
    serializer: Serializer = Serializer.CLOUDPICKLE  # portable jobs run on any worker
    ack: bool = True  # the client wants JobAccepted
    tasks: dict[int, Task] = field(default_factory=dict)
    queue: deque[int] = field(default_factory=deque)
    workers: set[str] = field(default_factory=set)  # workers holding the function
    finished_tasks: int = 0
    completed_items: int = 0
    failed_items: int = 0
    state: JobState = JobState.RUNNING
    accepted: bool = False  # JobAccepted went out (all tasks received and journaled)
    results: dict[int, TaskResult | TaskFailed] = field(default_factory=dict)  # task id -> outcome, if kept
    kept_bytes: int = 0  # payload bytes of ``results``
    acked: set[int] = field(default_factory=set)  # task ids in ``results`` the client acknowledged
    dropped: int = 0  # acknowledged outcomes dropped to bound memory: only a resuming client may attach
    created_at: float = 0.0
    finished_at: float | None = None
    queued_bytes: int = 0  # input bytes of received tasks without an outcome yet
    splits: int = 0  # tasks the foreman made by cutting the client's (their ids follow the client's)
    splittable: bool = False  # some queued task may be cut (it came in pieces)
    item_seconds: float = 0.0  # the longest item duration measured in its tasks so far (0: none yet)
    cuts: list[Task] = field(default_factory=list)  # tasks cut as they were leased, for the journal
    untrusted: set[str] = field(default_factory=set)  # untrusted volunteers leased its tasks
    waiting: str = ""  # what it waits for beyond free slots ("task 12 needs 1 more distinct worker")
    durations: list[float] = field(default_factory=list)  # recent lease round trips (its deadlines follow them)
    resources: dict[str, float] = field(default_factory=dict)  # each task needs this much free on its worker
    labels: dict[str, str] = field(default_factory=dict)  # each task runs only on workers with these labels
    requirements: list[str] = field(default_factory=list)  # packages the workers install for it
    preparing: set[str] = field(default_factory=set)  # workers building its environment
    unbuildable: dict[str, str] = field(default_factory=dict)  # worker id -> why its environment failed there
    notice: str = ""  # why it does not run yet, as its client was last told
    environment_error: str = ""  # set when no worker could build its environment: its tasks fail
    watchers: set[str] = field(default_factory=set)  # other connections that attached while ``client`` followed it

    @property
    def all_received(self) -> bool:
        return len(self.tasks) == self.total_tasks

    def followers(self) -> list[str]:
        """The connections that hear its outcomes, output and notices: its client, then its watchers."""
        if not self.watchers:
            return [self.client] if self.client is not None else []
        return ([self.client] if self.client is not None else []) + sorted(self.watchers)

    @property
    def all_finished(self) -> bool:
        return self.finished_tasks == self.total_tasks

    def summary(self) -> dict:
        """The job as the status reply shows it."""
        return {
            "id": self.job_id,
            "name": self.name,
            "total": self.total_items,
            "completed": self.completed_items,
            "failed": self.failed_items,
            "state": self.state.value,
            "untrusted_workers": len(self.untrusted),
            "waiting": self.notice or self.waiting,
            **self.needs(),
        }

    def needs(self) -> dict:
        """What the job needs, for the status views (nothing for a plain job)."""
        if not (self.resources or self.labels or self.requirements):
            return {}
        return {
            "preparing": len(self.preparing),
            "resources": dict(self.resources),
            "labels": dict(self.labels),
            "requirements": list(self.requirements),
        }


@dataclass
class Worker:
    """A connected worker agent with ``slots`` task processes (as many as the foreman granted)."""

    worker_id: str
    name: str
    slots: int
    # (job_id, task_id) leased -> its items, in the order leased (the worker runs them in that order)
    running: dict[tuple[str, int], int] = field(default_factory=dict)
    jobs: set[str] = field(default_factory=set)  # jobs whose function it holds
    draining: bool = False  # stopping: it gets no new tasks
    portable_only: bool = False  # its Python or cloudpickle differs: it gets portable jobs only
    rtt: float = 0.0  # seconds: its round trip, the least of its latest pings (0: not measured yet)
    rtts: deque[float] = field(default_factory=lambda: deque(maxlen=RTT_SAMPLES))  # those pings
    item_seconds: float = 0.0  # running average of its items' durations in ``timed_job`` (0: none finished yet)
    task_seconds: float = 0.0  # what its next tasks should take (item_seconds times their items)
    timed_job: str = ""  # the job its durations were measured in
    # seconds an item of ``paced_job`` took from lease to outcome as the foreman saw it (0: none yet)
    lease_pace: float = 0.0
    paced_job: str = ""
    prefetch: int = 0  # tasks it holds beyond its running ones (see foreman.prefetch); set on creation
    prefetch_items: int = 0  # items it holds beyond its running tasks, once durations are measured (0: not yet)
    last_lease: int = 0  # order of its latest lease: among equally free workers, the longest unserved goes first
    volunteer: Volunteer | None = None  # the invite it joined with; None: the shared worker token
    record: Record = field(default_factory=Record)  # the volunteer's record, or this connection's
    claimed: int = 0  # slots it asked for
    dropped: int = 0  # outcomes it sent for running jobs' leases it did not hold (the first are logged, then fewer)
    dropped_late: int = 0  # the same for jobs that ended (a cancelled job's runs report as they stop)

    @property
    def identity(self) -> str | None:
        """Who it is for reputation and quarantine: its volunteer's name (None with the shared token)."""
        return self.volunteer.name if self.volunteer is not None else None

    @property
    def key(self) -> str:
        """What "distinct workers" means: one per volunteer (however many connections it opens)."""
        return f"volunteer:{self.volunteer.name}" if self.volunteer is not None else self.worker_id

    @property
    def trusted(self) -> bool:
        """Shared-token workers are the operator's own machines; volunteers only if invited --trusted."""
        return self.volunteer is None or self.volunteer.trusted

    @property
    def tasks_done(self) -> int:
        return self.record.tasks_done

    @property
    def agreed(self) -> int:
        return self.record.agreed

    @property
    def disagreed(self) -> int:
        return self.record.disagreed

    @property
    def quarantined(self) -> bool:
        return self.record.quarantined

    resources: dict[str, float] = field(default_factory=dict)  # what it has: name -> amount
    labels: dict[str, str] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)  # resources its leased tasks hold
    installs: bool = True  # it builds environments for jobs with requirements

    def summary(self) -> dict:
        """The worker as the status reply shows it."""
        return {
            "name": self.name,
            "identity": self.identity,
            "trusted": self.trusted,
            "slots": self.slots,
            "busy": min(len(self.running), self.slots),
            "tasks_done": self.tasks_done,
            "draining": self.draining,
            "agreed": self.agreed,
            "disagreed": self.disagreed,
            "missed_deadlines": self.record.missed,
            "quarantined": self.quarantined,
            "portable_only": self.portable_only,
            "resources": dict(self.resources),
            "labels": dict(self.labels),
        }

    @property
    def capacity(self) -> int:
        """Tasks it may hold at once: its slots plus prefetch, so that no slot waits for the network."""
        if self.draining or self.quarantined:
            return 0
        return self.slots + self.prefetch

    def __post_init__(self) -> None:
        self.prefetch = max(1, self.slots // 2)  # nothing measured yet (foreman.prefetch sizes it later)

    @property
    def free(self) -> int:
        """Room for more tasks (0: none). Once its items' durations are known, a worker whose every
        slot is busy has room while it holds fewer tasks beyond its running ones than it has slots
        (its slots may all end at once, and a task runs on one slot however many items it holds),
        and beyond that exactly while the items in them are fewer than ``prefetch_items``: tasks
        are counted by what they hold, so a worker holding big chunks does not also hoard small
        ones at a job's tail, and one given small tasks (a job's pieces cut fine) still holds
        enough to cover its round trip; at most MAX_PREFETCH_PER_SLOT tasks per slot."""
        capacity = self.capacity
        room = capacity - len(self.running)
        if not capacity or not self.prefetch_items or len(self.running) < self.slots:
            return room
        ahead = len(self.running) - self.slots
        if ahead >= self.slots * MAX_PREFETCH_PER_SLOT:
            return 0
        if ahead >= self.slots and items_ahead(self) >= self.prefetch_items:
            return 0
        return max(room, 1)


def items_ahead(worker: Worker) -> int:
    """Items in the tasks ``worker`` holds beyond its running ones: its leases after the ``slots``
    oldest (it runs them in the order it was leased them)."""
    if len(worker.running) <= worker.slots:
        return 0
    return sum(itertools.islice(worker.running.values(), worker.slots, None))


#: Everything an event of the scheduler may return, for the server to carry out in order.
Action = Send | Close | Note | Replay | SaveJob | SaveTask | SaveResult | SaveJobState | DeleteJob | SaveVolunteer
