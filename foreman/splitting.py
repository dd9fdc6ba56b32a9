"""Cutting queued tasks down to the crowd there is when they are handed out. Pure functions.

A client sizes automatic chunks for the slots connected when it maps (about
CHUNKS_PER_SLOT tasks per slot): workers that join later would find too few
tasks to share, and a few workers would hold the whole map. Such chunks are
sent as pieces (standalone pickles, one after another; ``SubmitTask.pieces``
gives their sizes), so the foreman can cut a queued task between pieces
without reading its payload. When slots join, or a task arrives, each queued
task that was never leased and holds more than the job's target (its items
over CHUNKS_PER_SLOT tasks per slot, counting at least MIN_SPLIT_SLOTS
slots) is cut into parts of about the target.
As each task is leased it is cut down to a guided share (guided
self-scheduling): at most the job's queued items over GUIDED_PARTS tasks
per slot. Early leases are the job's full-size chunks,
later ones shrink down to one item, so that at the tail no slot idles while
another works through a big chunk, also one a far worker holds in its prefetch.
At a job's tail, when fewer tasks are queued than there are slots, what is
left is cut to spread over every slot.
The first part keeps the task's id; the others take ids after the client's
and follow it in the queue. Results carry their items' indexes, so the client
needs to know nothing of it.
"""

from __future__ import annotations

import math
from collections import deque

from crowdcompute.wire.constants import CHUNKS_PER_SLOT
from crowdcompute.wire.framing import Pieces

from .limits import MIN_TASK_SECONDS
from .state import Job, Task, TaskState

__all__ = [
    "GUIDED_PARTS",
    "MIN_SPLIT_SLOTS",
    "cut_for_lease",
    "guided_target",
    "least_items",
    "observe_items",
    "next_items",
    "split_queued",
    "split_task",
    "tail_target",
    "target_items",
]

#: Cuts assume at least this many slots. A crowd grows in bursts: the first worker to
#: join is the whole crowd for a moment, and what it leases then (its slots and its
#: prefetch) it keeps; with this floor that is at most a few small tasks.
MIN_SPLIT_SLOTS = 8


#: A task being leased holds at most the job's items without an outcome over this many
#: tasks per slot: leases shrink as the job runs out, to one item at its tail. Factoring's
#: 2 assumes a lease starts at once; one held in a worker's prefetch starts later, when the
#: queue is shorter than it was: with 2, 400 items of 50 ms over 16 slots ended with some
#: slots two items behind others (24 against 26) at 0 and 50 ms one-way; with 4, all ran 25.
GUIDED_PARTS = 4


def guided_target(job: Job, slots: int) -> int:
    """Items a task being leased may hold now: a share of the items still queued (GUIDED_PARTS
    tasks per slot), never more than the job's usual size (``target_items``).

    The queued items are estimated as the tasks queued or still to come from the client
    times the job's mean task size, so that a lease costs O(1) however long the queue is.
    """
    coming = job.total_tasks - len(job.tasks)  # the client streams its tasks in
    queued = (len(job.queue) + coming) * job.total_items / max(1, job.total_tasks)
    guided = math.ceil(queued / (max(1, slots) * GUIDED_PARTS))
    return max(1, min(max(guided, least_items(job)), target_items(job, slots)))


def least_items(job: Job) -> int:
    """Items a cut task holds at least: what takes MIN_TASK_SECONDS by the job's durations so far
    (1 before any is measured). Tiny items are not cut finer than their cost per task is worth."""
    if job.item_seconds <= 0:
        return 1
    return max(1, math.ceil(MIN_TASK_SECONDS / job.item_seconds))


def observe_items(job: Job, seconds: float, items: int) -> None:
    """A task of ``items`` items took ``seconds``: the job's item duration (its slowest seen so
    far: the floor of a cut must not make the tail's tasks long)."""
    if seconds > 0 and items > 0:
        job.item_seconds = max(job.item_seconds, seconds / items)


def next_items(job: Job, slots: int) -> int:
    """About how many items the job's next lease holds (at least): its first queued task, cut
    evenly to ``guided_target`` (a worker sizes what it holds ahead by it)."""
    guided = guided_target(job, slots)
    if not job.queue:
        return guided
    head = job.tasks[job.queue[0]].count
    return head // math.ceil(head / guided)  # its smallest part once cut evenly


def cut_for_lease(job: Job, task: Task, slots: int) -> None:
    """``task`` (just taken from the queue) is about to be leased: cut it to ``guided_target``.

    The parts after the first go to the front of the queue, in order; every task
    changed or made is kept in ``job.cuts`` for the journal.
    """
    if not job.splittable or job.redundancy != 1 or task.pieces is None:
        return
    parts = split_task(job, task, guided_target(job, slots))
    if parts:
        job.queue.extendleft(part.task_id for part in reversed(parts))
        job.cuts += [task, *parts]


def tail_target(job: Job, slots: int) -> int | None:
    """At a job's tail (fewer queued tasks than ``slots``): items per task that spread what is
    left over every slot (as guided self-scheduling does), or None before the tail."""
    if len(job.queue) >= slots or not job.queue:
        return None
    left = sum(job.tasks[task_id].count for task_id in job.queue)
    return max(1, math.ceil(left / slots), least_items(job))


def target_items(job: Job, slots: int) -> int:
    """Items per task that give the job about CHUNKS_PER_SLOT tasks per slot (at least MIN_SPLIT_SLOTS slots)."""
    return max(1, math.ceil(job.total_items / (max(MIN_SPLIT_SLOTS, slots) * CHUNKS_PER_SLOT)))


def split_task(job: Job, task: Task, target: int) -> list[Task]:
    """Cut a queued, never leased ``task`` into parts of at most ``target`` items (whole pieces),
    as even as its pieces allow (25 items for 4 a part: 4, 3, 4, 3, 4, 3, 4, not six 4s and a 1:
    a worker sizes what it holds ahead by the tasks it gets, and a small last part would leave
    it short).

    ``task`` keeps the first part; the others are added to the job and returned
    (the caller queues them right after ``task``). Nothing to cut: [].
    """
    if task.pieces is None or task.count <= target or task.attempt or task.state is not TaskState.QUEUED:
        return []
    parts_wanted = math.ceil(task.count / target)
    groups: list[list[list[int]]] = [[]]
    held = done = 0  # items in the group being filled, items in the groups before it
    for piece in task.pieces:
        if groups[-1] and held + piece[0] > target:
            groups.append([])
            done, held = done + held, 0
        groups[-1].append(piece)
        held += piece[0]
        if done + held >= round(len(groups) * task.count / parts_wanted) and len(groups) < parts_wanted:
            groups.append([])  # this part has its even share
            done, held = done + held, 0
    if not groups[-1]:
        groups.pop()
    if len(groups) == 1:
        return []
    payload = task.payload
    assert payload is not None
    parts: list[tuple[int, int, bytes, list[list[int]] | None]] = []
    first, offset = task.first_index, 0
    for group in groups:
        count, size = sum(items for items, _ in group), sum(size for _, size in group)
        parts.append((first, count, _cut(payload, offset, offset + size), group if len(group) > 1 else None))
        first, offset = first + count, offset + size
    _, task.count, task.payload, task.pieces = parts[0]
    made = []
    for first, count, blob, pieces in parts[1:]:
        part = Task(job.total_tasks, first, count, blob, pieces=pieces, received_at=task.received_at)
        job.tasks[part.task_id] = part
        job.total_tasks += 1
        job.splits += 1
        made.append(part)
    return made


def _cut(payload, start: int, stop: int):
    """``payload[start:stop]``, also of a payload kept as the fragments it arrived in (never joined)."""
    if not isinstance(payload, Pieces):
        return payload[start:stop]
    kept, offset = [], 0
    for fragment in payload.pieces:
        end = offset + len(fragment)
        if end > start and offset < stop:
            kept.append(fragment[max(0, start - offset) : min(len(fragment), stop - offset)])
        offset = end
        if offset >= stop:
            break
    return Pieces(kept)


def split_queued(job: Job, slots: int, target: int | None = None) -> list[Task]:
    """Cut the job's queued tasks for ``slots`` (or to ``target`` items); the tasks changed or made (to journal)."""
    if not job.splittable or job.redundancy != 1:
        return []
    target = target or target_items(job, slots)
    queue: deque[int] = deque()
    changed: list[Task] = []
    splittable = False
    for task_id in job.queue:
        queue.append(task_id)
        task = job.tasks[task_id]
        parts = split_task(job, task, target)
        if parts:
            changed += [task, *parts]
            queue.extend(part.task_id for part in parts)
        splittable = splittable or any(t.pieces for t in (task, *parts))
    job.queue = queue
    job.splittable = splittable
    return changed
