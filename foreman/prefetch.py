"""How many tasks a worker holds beyond its running ones: enough that no slot waits for the network.

Pure functions over a :class:`foreman.state.Worker`. While one finished task's
outcome travels to the foreman and the next task travels back (the worker's
ping round trip, ``rtt``), each slot goes through ``rtt / task_seconds`` more
tasks: the worker must already hold them, rounded up per slot, since its
slots may all finish at once (a job's first tasks start together). A task's duration is the
worker's running average of its item durations *in one job* (``item_seconds``)
times the items of the tasks it will get next: automatic chunks shrink as a
job runs out (``splitting.guided_target``), and a worker that held one big
chunk ahead must hold several small ones to cover the same round trip. A
job of 0.1 s tasks says nothing about the next job's 10 s tasks, so a
worker's first task of a job starts from a prior instead:

- the round trip is not known yet (the foreman's first ping has not come
  back): half a task per slot, at least one (``least``);
- it is known: what covers the round trip if each item took
  PRIOR_ITEM_SECONDS, but no more than a share of what the job has left
  (half of its remaining tasks per slot of the crowd). Too little ahead
  costs a slot at most one round trip, at the job's start; too much costs
  at its tail, as long as the hoarded tasks take, so the guess leans low:
  shorter items are better sent several to a task (automatic chunks), and
  the first outcome sizes the prefetch anyway. A long job gives a far worker
  enough at once to cover its round trip before any duration is measured; a
  worker close by holds little; a short job (a few tasks per slot) does not
  let the first workers hold it all.

At most MAX_PREFETCH_PER_SLOT per slot, however far the worker is, so that
little is held back from other workers at a job's tail. The assignment reads
``Worker.free`` for every worker on every lease, so the result is kept in
``Worker.prefetch``, set only when an input changes.
"""

from __future__ import annotations

import math

from .limits import MAX_PREFETCH_PER_SLOT, PREFETCH_MARGIN, TASK_SECONDS_WEIGHT
from .splitting import next_items
from .state import Job, Worker

__all__ = ["PRIOR_ITEM_SECONDS", "begin_job", "items_for", "least", "observe_task", "prefetch_for", "set_rtt"]

#: Item duration assumed, in seconds, before a worker ran any task of a job (see the docstring).
PRIOR_ITEM_SECONDS = 0.05


def least(slots: int) -> int:
    """The prefetch of a worker with nothing measured: half a task per slot, at least one."""
    return max(1, slots // 2)


def prefetch_for(slots: int, rtt: float, task_seconds: float) -> int:
    """Tasks to hold beyond the running ones with ``slots`` slots, a round trip of ``rtt``
    seconds and tasks of ``task_seconds`` (0: not measured)."""
    if rtt <= 0 or task_seconds <= 0:
        return least(slots)
    needed = slots * math.ceil((rtt + PREFETCH_MARGIN) / task_seconds)
    return min(max(least(slots), needed), slots * MAX_PREFETCH_PER_SLOT)


def _prior(worker: Worker, job: Job, crowd_slots: int) -> int:
    """Before the worker ran any task of ``job``: see the module's docstring."""
    if worker.rtt <= 0:
        return least(worker.slots)
    remaining = job.total_tasks - job.finished_tasks
    share = remaining // (2 * max(1, crowd_slots)) * worker.slots
    items = next_items(job, crowd_slots) if job.splittable else job.total_items / max(1, job.total_tasks)
    guess = prefetch_for(worker.slots, worker.rtt, PRIOR_ITEM_SECONDS * max(1.0, items))
    return max(least(worker.slots), min(share, guess))


def begin_job(worker: Worker, job: Job, crowd_slots: int) -> None:
    """``worker`` is leased its first task of ``job`` (the crowd has ``crowd_slots`` slots):
    durations measured in another job no longer size its prefetch."""
    if worker.timed_job == job.job_id:
        return
    worker.timed_job = job.job_id
    worker.item_seconds = worker.task_seconds = 0.0
    worker.prefetch = _prior(worker, job, crowd_slots)
    worker.prefetch_items = 0


def observe_task(worker: Worker, job_id: str, seconds: float, items: int, next_items: int) -> None:
    """One of the worker's tasks of ``job_id``, of ``items`` items, took ``seconds``; its next
    tasks will hold about ``next_items`` items. The running average sizes the prefetch."""
    if seconds <= 0 or items <= 0:
        return
    seen = worker.item_seconds if worker.timed_job == job_id else 0.0
    worker.timed_job = job_id
    per_item = seconds / items
    worker.item_seconds = per_item if not seen else seen + TASK_SECONDS_WEIGHT * (per_item - seen)
    worker.task_seconds = worker.item_seconds * max(1, next_items)
    worker.prefetch = prefetch_for(worker.slots, worker.rtt, worker.task_seconds)
    worker.prefetch_items = items_for(worker.slots, worker.rtt, worker.item_seconds)


def items_for(slots: int, rtt: float, item_seconds: float) -> int:
    """Items to hold beyond the running tasks with ``slots`` slots, a round trip of ``rtt``
    seconds and items of ``item_seconds``: what each slot goes through while an outcome
    travels to the foreman and the next task back (0 when the round trip is not known:
    the task count alone bounds the prefetch)."""
    if rtt <= 0 or item_seconds <= 0:
        return 0
    return slots * math.ceil((rtt + PREFETCH_MARGIN) / item_seconds)


def set_rtt(worker: Worker, rtt: float) -> bool:
    """The latest ping round trip to ``worker``; whether its prefetch grew (it may take more now).

    The worker's round trip is the least of its last RTT_SAMPLES (limits) pings: a ping answered late
    because the worker was busy (starting up, say) says nothing of the network, and a prefetch
    sized from it would hold back more at a job's tail than the worker needs.
    """
    if rtt <= 0:
        return False
    if not worker.rtts or worker.rtts[-1] != rtt:  # (the same ping is reported with every outcome)
        worker.rtts.append(rtt)
    rtt = min(worker.rtts)
    worker.rtt = rtt
    before = worker.prefetch, worker.prefetch_items
    if worker.task_seconds > 0:
        worker.prefetch = prefetch_for(worker.slots, rtt, worker.task_seconds)
        worker.prefetch_items = items_for(worker.slots, rtt, worker.item_seconds)
    return worker.prefetch > before[0] or worker.prefetch_items > before[1]
