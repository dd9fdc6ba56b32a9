"""Pure tests: how much a worker holds ahead (foreman.prefetch) and how big the tasks it is
leased are (guided cuts, foreman.splitting). No sockets, no processes."""

from __future__ import annotations

import math

from scheduler_events import function, leased, make, sent, started

from crowdcompute.wire import messages as p
from foreman.limits import MAX_PREFETCH_PER_SLOT
from foreman.prefetch import PRIOR_ITEM_SECONDS


def submit_single(s, job_id: str, tasks: int) -> list:
    actions = s.submit_job("c1", p.SubmitJob(job_id, function(job_id), tasks, tasks, None, 0, "f", ack=False))
    for n in range(tasks):
        actions += s.submit_task("c1", p.SubmitTask(job_id, n, n, 1, b"x"))
    return actions


def finish(s, worker_id: str, job_id: str, task_id: int, attempt: int, seconds: float) -> list:
    return s.task_done(worker_id, p.TaskDone(job_id, task_id, attempt, 0, b"r", seconds=seconds))


def test_a_new_job_does_not_inherit_the_last_jobs_durations():
    s = started(2)
    s.note_latency("w1", 0.1)
    worker = s.workers["w1"]
    first = leased(submit_single(s, "quick", 2))
    for _, _, task_id, attempt in first:
        finish(s, "w1", "quick", task_id, attempt, 0.0001)  # instant tasks: the deepest prefetch
    assert worker.prefetch == 2 * MAX_PREFETCH_PER_SLOT
    handed = leased(submit_single(s, "slow", 100))
    # Its tasks may take 10 s each: it starts from the prior, not from the instant tasks.
    prior = 2 * math.ceil((0.1 + 0.01) / PRIOR_ITEM_SECONDS)  # per slot, items of PRIOR_ITEM_SECONDS cover 110 ms
    assert len(handed) == 2 + prior < 2 + 2 * MAX_PREFETCH_PER_SLOT, len(handed)
    _, _, task_id, attempt = handed[0]
    finish(s, "w1", "slow", task_id, attempt, 10.0)
    assert worker.prefetch == 2, "10 s tasks 100 ms away: one queued per slot"


def test_the_prior_is_no_more_than_a_share_of_a_short_job():
    s = started(2, 2)
    for worker_id in ("w1", "w2"):
        s.note_latency(worker_id, 0.5)  # far: the prior alone would hold many
    handed = leased(submit_single(s, "j1", 12))
    holders = {worker for worker, *_ in handed}
    assert holders == {"w1", "w2"}, "a short job must not all go to the first far worker"


def test_the_round_trip_measured_as_a_worker_joins_lets_it_take_more_at_once():
    s = started(2)
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 40, 40, None, 0, "f", ack=False))
    for n in range(40):
        s.submit_task("c1", p.SubmitTask("j1", n, n, 1, b"x"))
    first = leased(s.task_done("w1", p.TaskDone("j1", 0, 1, 0, b"r", seconds=0.05)))
    assert first, "a finished task frees a place"
    more = leased(s.note_latency("w1", 0.2))  # its ping came back: 200 ms away
    assert more, "a deeper prefetch must be filled at once, not at the next result"


def test_prefetch_counts_the_items_of_the_tasks_to_come():
    s = started(2)
    s.note_latency("w1", 0.1)
    worker = s.workers["w1"]
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 1, 10, None, 0, "f", ack=False))
    s.submit_task("c1", p.SubmitTask("j1", 0, 0, 10, b"x" * 10))  # opaque: never cut
    finish(s, "w1", "j1", 0, 1, 0.5)  # 10 items in 0.5 s: 50 ms an item, tasks of 10 items
    assert worker.item_seconds == 0.05 and worker.task_seconds == 0.5
    assert worker.prefetch == 2, "one 0.5 s task per slot covers 110 ms"
    s.submit_job("c1", p.SubmitJob("j2", function("j2"), 1, 1, None, 0, "f", ack=False))
    s.submit_task("c1", p.SubmitTask("j2", 0, 0, 1, b"x"))
    finish(s, "w1", "j2", 0, 1, 0.05)  # one item of 50 ms a task: 110 ms needs 3 per slot
    assert worker.prefetch == 6


# --- guided cuts --------------------------------------------------------------------------


def pieced(job_id: str, task_id: int, first: int, count: int) -> p.SubmitTask:
    payload = b"".join(f"<{i:03d}>".encode() for i in range(first, first + count))
    return p.SubmitTask(job_id, task_id, first, count, payload, [[1, 5]] * count)


def test_leases_shrink_as_the_job_runs_out_and_every_item_comes_back_once():
    s = started(2, 2)  # 4 slots, seen as MIN_SPLIT_SLOTS = 8: usual tasks of 200 / 32 -> 7 items
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 10, 200, None, 0, "f", ack=False))
    pending = []
    for n in range(10):
        pending += [(w, m) for w, m in sent(s.submit_task("c1", pieced("j1", n, 20 * n, 20)))]
    counts, seen = [], []
    while pending:
        worker, task = pending.pop(0)
        if not isinstance(task, p.AssignTask):
            continue
        counts.append(task.count)
        assert bytes(task.payload) == b"".join(
            f"<{i:03d}>".encode() for i in range(task.first_index, task.first_index + task.count)
        ), "a cut task carries the wrong bytes"
        actions = s.task_done(worker, p.TaskDone("j1", task.task_id, task.attempt, 0, b"r"))
        seen += [
            i
            for _, m in sent(actions)
            if isinstance(m, p.TaskResult)
            for i in range(m.first_index, m.first_index + m.count)
        ]
        pending += sent(actions)
    assert max(counts) <= 7 and counts[-1] == 1 and max(counts[-4:]) <= 2, counts  # a fine tail
    assert sorted(seen) == list(range(200)), "items lost or duplicated by the guided cuts"


def test_cuts_made_as_tasks_are_leased_are_journaled():
    from foreman.state import SaveJob, SaveTask

    s = make()
    s.add_client("c1")
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 1, 64, None, 0, "f", ack=False))
    s.submit_task("c1", pieced("j1", 0, 0, 64))
    actions = s.add_worker("w1", "one", 2)
    job = s.jobs["j1"]
    saved = {a.task.task_id for a in actions if isinstance(a, SaveTask)}
    assert saved == set(job.tasks), "every task made by a cut must reach the journal"
    assert [a for a in actions if isinstance(a, SaveJob)][-1].job.total_tasks == len(job.tasks)
    assert not job.cuts


def test_a_worker_holding_big_chunks_ahead_is_full_however_few_tasks_it_holds():
    from foreman.state import Worker

    worker = Worker("w1", "w1", slots=2)
    worker.prefetch = 6  # tasks: room for six beyond its running ones
    worker.running = {("j1", 0): 7, ("j1", 1): 7}  # both slots busy with chunks of 7 items
    assert worker.free == 6, "before durations are measured, tasks are counted"
    worker.prefetch_items = 6  # 50 ms items, 100 ms away: 3 items ahead per slot
    worker.running["j1", 2] = 7
    assert worker.free > 0, "one task ahead feeds one slot: both may end at once"
    worker.running["j1", 9] = 7
    assert worker.free == 0, "14 items ahead, a task for each slot: a small task now would be hoarded at the tail"
    del worker.running["j1", 2], worker.running["j1", 9]
    worker.running["j1", 3] = 1
    assert worker.free == 5, "one item ahead does not cover it"
    worker.running = {("j1", 5): 2, ("j1", 6): 2, **{("j1", 7 + n): 1 for n in range(6)}}
    assert worker.free == 0, "six one-item tasks ahead cover the round trip"
    worker.running.popitem()
    worker.prefetch = 2  # tasks: sized for chunks bigger than those it got
    assert worker.free == 1, "five one-item tasks ahead do not cover it, whatever the count of tasks allows"
    worker.running = {("j1", n): 1 for n in range(18)}
    worker.prefetch_items = 100
    assert worker.free == 0, "at most MAX_PREFETCH_PER_SLOT tasks per slot ahead"
    worker.running = {("j1", 4): 7}
    assert worker.free > 0, "an idle slot always has room"


def test_a_ping_answered_late_does_not_deepen_the_prefetch():
    s = started(2)
    worker = s.workers["w1"]
    s.note_latency("w1", 0.1)
    submit_single(s, "j1", 100)
    s.note_latency("w1", 0.1)  # the same ping, reported again with the next outcome
    s.note_latency("w1", 0.4)  # answered late: the worker was busy, the network was not slower
    assert worker.rtt == 0.1, worker.rtt
    for n in range(4):  # ... until every recent ping is that slow: then the network is
        s.note_latency("w1", 0.4 + n / 100)
    assert worker.rtt == 0.4
