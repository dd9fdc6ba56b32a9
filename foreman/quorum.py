"""Redundant execution: accept a task's outcome when a majority of its runs agree.

Runs are compared by a digest of the outcome bytes the worker sent (the
foreman hashes them; it never decodes them). Each worker's agreements and
disagreements with the majority are counted, and one that keeps disagreeing
is quarantined: it gets no more work.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from crowdcompute.wire import messages as p

from .state import Note, Task, Worker

__all__ = ["QUARANTINE_AFTER", "ROUNDS", "Verdict", "digest", "disagreement", "quorum", "tally", "vote"]

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
    task: Task, redundancy: int, worker_id: str, msg: p.TaskDone, workers: dict[str, Worker], done: bool
) -> Verdict:
    """Count ``msg`` as ``worker_id``'s run of ``task``; ``done``: the task already has its outcome."""
    ballot = digest(msg)
    verdict = Verdict()
    if done:  # a late run: count its agreement with the majority, if there was one
        note = tally(workers.get(worker_id), ballot == task.winner) if task.winner is not None else None
        verdict.notes = [note] if note else []
        return verdict
    task.votes.setdefault(ballot, []).append(worker_id)
    task.ballots.setdefault(ballot, msg)
    if len(task.votes[ballot]) >= quorum(redundancy):
        task.winner = ballot
        for voted, voters in task.votes.items():
            for voter in voters:
                note = tally(workers.get(voter), voted == ballot)
                if note:
                    verdict.notes.append(note)
        verdict.accepted, verdict.voter = task.ballots[ballot], task.votes[ballot][0]
    elif sum(len(v) for v in task.votes.values()) >= redundancy:  # every run is in, no majority
        if task.rounds + 1 < ROUNDS:
            task.rounds += 1
            task.votes.clear()
            task.ballots.clear()
            verdict.rerun = True
        else:
            verdict.failure = disagreement(task, workers)
    return verdict


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
    if agreed:
        worker.agreed += 1
        return None
    worker.disagreed += 1
    if not worker.quarantined and worker.disagreed >= QUARANTINE_AFTER and worker.disagreed > worker.agreed:
        worker.quarantined = True
        return Note(
            f"quarantined worker {worker.name}: it disagreed with the majority {worker.disagreed} times "
            f"and agreed {worker.agreed} times; it gets no more work"
        )
    return None


def disagreement(task: Task, workers: dict[str, Worker]) -> str:
    """A sentence naming the groups of workers that returned different outcomes."""
    groups = []
    for voters in task.votes.values():
        names = ", ".join(workers[w].name if w in workers else w for w in voters)
        groups.append(f"[{names}]")
    return f"{sum(len(v) for v in task.votes.values())} runs gave {len(task.votes)} different outcomes: " + " vs ".join(
        groups
    )
