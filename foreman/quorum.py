"""Redundant execution: accept a task's outcome when ``quorum`` of its runs agree.

A job asks for ``redundancy=k`` runs of each task on distinct workers and
``quorum=q`` agreeing outcomes (default: a strict majority of k). An outcome
is accepted the moment q runs returned the same bytes: with k=3 and the
default q=2, two agreeing runs decide and the third run's outcome is only
counted for its worker's record. When all k runs of a round are in and no
outcome has q votes, a fresh round of k runs starts on workers that have not
run the task, and its runs count with the earlier rounds' (one liar among
k=3, q=3 no longer sinks a task that three honest workers answered alike);
after ROUNDS rounds the task fails with QuorumError. A task that fails
(no quorum, or its quorum_timeout) still counts its runs against the
outcome most of them returned, when one did: a liar that keeps a quorum from
forming is quarantined as one that is outvoted is.

Runs are compared by a digest of the outcome bytes the worker sent (the
foreman hashes them; it never decodes them). Each worker's agreements and
disagreements with the majority are counted, and one that keeps disagreeing
is quarantined: it gets no more work.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from crowdcompute.wire import messages as p

from .state import Job, Note, Task, Worker

__all__ = [
    "QUARANTINE_AFTER",
    "ROUNDS",
    "Verdict",
    "digest",
    "disagreement",
    "missed_deadline",
    "quorum",
    "tally",
    "tally_plurality",
    "timed_out",
    "vote",
    "waiting",
]

#: Rounds of k runs a task gets to reach a majority before it fails.
ROUNDS = 2
#: Disagreements with the majority after which a worker that disagreed more than it agreed is quarantined.
QUARANTINE_AFTER = 3


@dataclass
class Verdict:
    """What one more run of a redundant task decided."""

    notes: list[Note] = field(default_factory=list)  # quarantines to log
    accepted: p.TaskDone | None = None  # a majority agreed on this outcome
    voter: str = ""  # the first worker that returned it
    rerun: bool = False  # every run is in and no majority: run a fresh round
    failure: str | None = None  # no majority after the last round: why


def vote(
    task: Task,
    redundancy: int,
    worker_id: str,
    msg: p.TaskDone,
    workers: dict[str, Worker],
    done: bool,
    needed: int = 0,
) -> Verdict:
    """Count ``msg`` as ``worker_id``'s run of ``task``; ``done``: the task already has its outcome.

    ``needed``: agreeing runs that accept an outcome (0: a strict majority of ``redundancy``).
    """
    ballot = digest(msg)
    verdict = Verdict()
    if done:  # a late run: count its agreement with the majority, if there was one
        note = tally(workers.get(worker_id), ballot == task.winner) if task.winner is not None else None
        verdict.notes = [note] if note else []
        return verdict
    task.votes.setdefault(ballot, []).append(worker_id)
    task.ballots.setdefault(ballot, msg)
    if len(task.votes[ballot]) >= (needed or quorum(redundancy)):
        task.winner = ballot
        for voted, voters in task.votes.items():
            for voter in voters:
                note = tally(workers.get(voter), voted == ballot)
                if note:
                    verdict.notes.append(note)
        verdict.accepted, verdict.voter = task.ballots[ballot], task.votes[ballot][0]
    elif sum(len(v) for v in task.votes.values()) >= redundancy * (task.rounds + 1):  # the round is in
        if task.rounds + 1 < ROUNDS:
            task.rounds += 1
            verdict.rerun = True
        else:
            verdict.failure = disagreement(task, workers)
            verdict.notes += tally_plurality(task, workers)
    return verdict


def tally_plurality(task: Task, workers: dict[str, Worker]) -> list[Note]:
    """A task failed without a quorum: count its runs against the outcome most of them returned,
    if one did (no blame in a tie); the quarantines that follow."""
    sizes = sorted((len(voters) for voters in task.votes.values()), reverse=True)
    if not sizes or (len(sizes) > 1 and sizes[0] == sizes[1]):
        return []
    winner = max(task.votes, key=lambda ballot: len(task.votes[ballot]))
    notes = []
    for ballot, voters in task.votes.items():
        for voter in voters:
            note = tally(workers.get(voter), ballot == winner)
            if note:
                notes.append(note)
    return notes


def waiting(job: Job, workers: Iterable[Worker]) -> str:
    """What a redundant job waits for beyond free slots: its first task that has fewer
    distinct workers left to run it than it has runs queued; "" when none."""
    queued = Counter(job.queue)
    if not queued:
        return ""
    able = {w.key for w in workers if w.capacity > 0 and not (w.portable_only and job.serializer != "portable")}
    short = []
    for task_id, runs in queued.items():
        missing = runs - len(able - job.tasks[task_id].tried)
        if missing > 0:
            short.append((task_id, missing))
    if not short:
        return ""
    task_id, missing = min(short)
    text = f"task {task_id} needs {missing} more distinct worker{'s' if missing > 1 else ''}"
    if len(short) > 1:
        text += f" (and {len(short) - 1} more tasks)"
    return text


def timed_out(task: Task, job: Job, workers: dict[str, Worker]) -> str:
    """Why a redundant task fails at its quorum_timeout: what it got, and what it lacked."""
    needed = job.quorum or quorum(job.redundancy)
    best = max((len(v) for v in task.votes.values()), default=0)
    text = (
        f"no {needed} agreeing outcomes within quorum_timeout={job.quorum_timeout:g} s "
        f"(best: {best} of {job.redundancy} runs agree"
    )
    if len(task.votes) > 1:
        text += "; " + disagreement(task, workers)
    return text + ")"


def digest(msg: p.TaskDone) -> bytes:
    """What runs are compared by: the failed count and the outcome bytes."""
    digest = hashlib.sha256(b"%d:" % msg.failed)
    payload = msg.payload
    for piece in payload.pieces if isinstance(payload, p.Pieces) else (payload,):
        digest.update(piece)
    return digest.digest()


def quorum(redundancy: int) -> int:
    """Agreeing runs needed: a strict majority."""
    return redundancy // 2 + 1


def tally(worker: Worker | None, agreed: bool) -> Note | None:
    """Count a run against the majority; a Note when the worker is quarantined by it."""
    if worker is None:
        return None
    record = worker.record  # its volunteer's, when it joined with an invite: quarantine follows the credential
    if agreed:
        record.agreed += 1
        return None
    record.disagreed += 1
    return _judge(worker, "disagreed with the majority")


def _judge(worker: Worker, what: str) -> Note | None:
    """Quarantine a worker that disagrees more than it agrees, or a volunteer that misses more
    deadlines than it finishes tasks (a slow but honest one finishes more than it misses; the
    operator's own shared-token machines are never quarantined for being slow)."""
    record = worker.record
    disagrees = record.disagreed >= QUARANTINE_AFTER and record.disagreed > record.agreed
    misses = worker.volunteer is not None and record.missed >= QUARANTINE_AFTER and record.missed > record.tasks_done
    if not record.quarantined and (disagrees or misses):
        record.quarantined = True
        who = worker.name if worker.identity in (None, worker.name) else f"{worker.name} (volunteer {worker.identity})"
        return Note(
            f"quarantined worker {who}: it {what}; it disagreed {record.disagreed} times, missed "
            f"{record.missed} deadlines and agreed {record.agreed} times; it gets no more work"
        )
    return None


def missed_deadline(worker: Worker) -> Note | None:
    """Count a lease the worker held past its deadline; a Note when that quarantines it."""
    worker.record.missed += 1
    return _judge(worker, "missed a deadline")


def disagreement(task: Task, workers: dict[str, Worker]) -> str:
    """A sentence naming the groups of workers that returned different outcomes."""
    groups = []
    for voters in task.votes.values():
        names = ", ".join(workers[w].name if w in workers else w for w in voters)
        groups.append(f"[{names}]")
    return f"{sum(len(v) for v in task.votes.values())} runs gave {len(task.votes)} different outcomes: " + " vs ".join(
        groups
    )
