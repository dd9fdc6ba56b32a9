"""Pure tests: queued tasks that came in pieces are cut for the slots there are when they are handed out;
ties between idle workers take turns; far workers hold enough to cover their round trip. No sockets, no processes."""

from __future__ import annotations

import itertools

from scheduler_events import function, leased, make, sent, started

from crowdcompute.wire import messages as p
from foreman.limits import MAX_PREFETCH_PER_SLOT
from foreman.state import SaveJob, SaveTask


def item(index: int) -> bytes:
    return f"<{index:03d}>".encode()  # one piece per item, 5 bytes each


def pieced_task(job_id: str, task_id: int, first: int, count: int) -> p.SubmitTask:
    payload = b"".join(item(i) for i in range(first, first + count))
    return p.SubmitTask(job_id, task_id, first, count, payload, [[1, 5]] * count)


def submit_pieced(s, job_id: str, items: int, tasks: int) -> list:
    """A map of ``items`` chunked for few slots: ``tasks`` tasks, each in one-item pieces."""
    size = items // tasks
    actions = s.submit_job("c1", p.SubmitJob(job_id, function(job_id), tasks, items, None, 0, "f", ack=False))
    for n in range(tasks):
        actions += s.submit_task("c1", pieced_task(job_id, n, n * size, size))
    return actions


def assigned(actions: list) -> list[p.AssignTask]:
    return [m for _, m in sent(actions) if isinstance(m, p.AssignTask)]


def check_payloads(tasks: list[p.AssignTask]) -> None:
    for task in tasks:
        expected = b"".join(item(i) for i in range(task.first_index, task.first_index + task.count))
        assert bytes(task.payload) == expected, f"task {task.task_id} carries the wrong bytes"


def test_queued_tasks_are_cut_for_the_workers_that_join():
    s = make()
    s.add_client("c1")
    submit_pieced(s, "j1", items=100, tasks=4)  # no worker yet: all queued, whole
    assert [t.count for t in s.jobs["j1"].tasks.values()] == [25] * 4
    actions = s.add_worker("w1", "one", 8)  # 8 slots: 32 tasks of at most 4 items (100 / (8 * 4))
    handed = assigned(actions)
    assert len(handed) == 12 and all(t.count <= 4 for t in handed), [t.count for t in handed]
    check_payloads(handed)
    job = s.jobs["j1"]
    parts = sorted((t.first_index, t.count) for t in job.tasks.values())
    assert parts[:2] == [(0, 4), (4, 3)], "25 items cut as evenly as parts of at most 4 allow: 4, 3, 4, ..."
    assert all(start + count == after for (start, count), (after, _) in itertools.pairwise(parts)), parts
    assert sum(t.count for t in job.tasks.values()) == 100 and job.total_tasks == len(job.tasks) == 32
    assert [t.count for t in handed][-4:] == [2] * 4, "leases shrink (guided cuts) as the queue runs out"
    saved = [a for a in actions if isinstance(a, SaveJob)]
    assert saved and saved[-1].job.total_tasks == 32, "the journal must learn the job's new task count"
    assert {a.task.task_id for a in actions if isinstance(a, SaveTask)} == set(job.tasks)


def test_every_item_comes_back_once_after_cuts():
    s = make()
    s.add_client("c1")
    submit_pieced(s, "j1", items=40, tasks=2)
    pending = assigned(s.add_worker("w1", "one", 2) + s.add_worker("w2", "two", 2))
    seen: list[int] = []
    finished = False
    for _ in range(100):
        if not pending:
            break
        task = pending.pop(0)
        holder = next(w for w in s.workers.values() if ("j1", task.task_id) in w.running)
        actions = s.task_done(holder.worker_id, p.TaskDone("j1", task.task_id, task.attempt, 0, b"r"))
        results = [m for to, m in sent(actions) if isinstance(m, p.TaskResult)]
        seen += [i for r in results for i in range(r.first_index, r.first_index + r.count)]
        finished = finished or any(isinstance(m, p.ReleaseJob) for _, m in sent(actions))
        pending += assigned(actions)
    assert sorted(seen) == list(range(40)), "items lost or duplicated by cutting"
    assert finished and s.status()["jobs"][0]["state"] == "done"


def test_a_task_arriving_when_slots_are_there_is_cut_at_once():
    s = started(16)  # 16 slots: 64 tasks of ceil(128 / 64) = 2 items
    actions = submit_pieced(s, "j1", items=128, tasks=1)
    handed = assigned(actions)
    assert [t.count for t in handed] == [2] * 24, [t.count for t in handed]  # 16 slots + 8 prefetch
    check_payloads(handed)
    assert len(s.jobs["j1"].tasks) == 64


def test_the_first_worker_of_a_crowd_holds_only_small_tasks():
    s = make()
    s.add_client("c1")
    submit_pieced(s, "j1", items=1000, tasks=4)  # chunked for one slot: 250 items a task
    handed = assigned(s.add_worker("w1", "one", 2))  # cut for MIN_SPLIT_SLOTS: 1000 / 32 -> 32 items
    assert sum(t.count for t in handed) <= 3 * 32, [t.count for t in handed]


def test_leased_and_unpieced_tasks_are_never_cut():
    s = started(1)
    submit_pieced(s, "j1", items=20, tasks=2)  # 1 slot: target 5; both tasks cut and partly leased
    leased_counts = {t.task_id: t.count for t in s.jobs["j1"].tasks.values() if t.attempt}
    s.add_worker("w2", "two", 16)  # a much bigger crowd: queued parts shrink, leased ones do not
    job = s.jobs["j1"]
    assert all(job.tasks[task_id].count == count for task_id, count in leased_counts.items())
    s2 = make()
    s2.add_client("c1")
    s2.submit_job("c1", p.SubmitJob("j2", function("j2"), 1, 50, None, 0, "f", ack=False))
    s2.submit_task("c1", p.SubmitTask("j2", 0, 0, 50, b"x" * 50))  # no pieces: opaque, whole
    actions = s2.add_worker("w1", "one", 8)
    assert [(t.task_id, t.count) for t in assigned(actions)] == [(0, 50)]


def test_ties_between_idle_workers_take_turns():
    s = started(2, 2, 2)
    winners = []
    for n in range(6):
        job_id = f"r{n}"
        s.submit_job("c1", p.SubmitJob(job_id, function(job_id), 1, 1, None, 0, "f", ack=False))
        actions = s.submit_task("c1", p.SubmitTask(job_id, 0, 0, 1, b"x"))
        ((worker, _, _, attempt),) = leased(actions)
        winners.append(worker)
        s.task_done(worker, p.TaskDone(job_id, 0, attempt, 0, b"r"))
    assert sorted(set(winners)) == ["w1", "w2", "w3"], f"one-task jobs on idle workers went to {winners}"


# --- prefetch ---------------------------------------------------------------------------


def test_a_far_worker_holds_enough_tasks_to_cover_its_round_trip():
    s = started(2)
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 40, 40, None, 0, "f", ack=False))
    first = []
    for n in range(40):
        first += leased(s.submit_task("c1", p.SubmitTask("j1", n, n, 1, b"x")))
    assert len(first) == 3, "before anything is measured: 2 slots and 1 prefetched"
    s.note_latency("w1", 0.1)  # 50 ms each way; its tasks take 50 ms
    _, _, task_id, attempt = first[0]
    more = leased(s.task_done("w1", p.TaskDone("j1", task_id, attempt, 0, b"r", seconds=0.05)))
    worker = s.workers["w1"]
    # Each slot covers its own round trip (they may finish together): 2 x ceil((0.1 + 0.01) s / 0.05 s) = 6.
    assert worker.prefetch == 6 and len(worker.running) == 8, worker.prefetch
    assert len(more) == 6


def test_prefetch_is_bounded_however_far_the_worker_is():
    s = started(2)
    worker = s.workers["w1"]
    worker.task_seconds = 0.001
    s.note_latency("w1", 30.0)
    assert worker.capacity == 2 + 2 * MAX_PREFETCH_PER_SLOT
    worker.task_seconds = 10.0
    s.note_latency("w1", 0.0001)  # close by, slow tasks: one task queued per slot
    assert worker.prefetch == 2


def test_idle_slots_are_served_before_a_far_workers_prefetch():
    s = started(2, 2)
    s.workers["w1"].task_seconds = 0.05
    s.note_latency("w1", 0.5)  # far: room for many tasks ahead
    s.workers["w1"].running = {("old", n): 1 for n in range(2)}  # both its slots are busy
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 2, 2, None, 0, "f", ack=False))
    actions = s.submit_task("c1", p.SubmitTask("j1", 0, 0, 1, b"x")) + s.submit_task(
        "c1", p.SubmitTask("j1", 1, 1, 1, b"x")
    )
    assert [worker for worker, *_ in leased(actions)] == ["w2", "w2"], "the idle worker's slots come first"


def test_the_tail_of_a_job_is_cut_to_spread_over_every_slot():
    s = started(8)  # 8 slots, target 96 / 32 = 3 items: the client's 3-item chunks are not cut
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 32, 96, None, 0, "f", ack=False))
    pending = []
    for n in range(32):
        pending += assigned(s.submit_task("c1", pieced_task("j1", n, 3 * n, 3)))
    assert pending[0].count == 3 and max(t.count for t in pending) == 3, "the first leases are the client's chunks"
    counts, seen = [], []
    while pending:
        task = pending.pop(0)
        actions = s.task_done("w1", p.TaskDone("j1", task.task_id, task.attempt, 0, b"r"))
        seen += [
            i
            for _, m in sent(actions)
            if isinstance(m, p.TaskResult)
            for i in range(m.first_index, m.first_index + m.count)
        ]
        handed = assigned(actions)
        check_payloads(handed)
        counts += [t.count for t in handed]
        pending += handed
    assert 1 in counts, f"the last queued chunks were never cut: {counts}"
    assert sorted(seen) == list(range(96)), "items lost or duplicated by the tail's cuts"


def test_tiny_items_are_not_cut_finer_than_a_task_is_worth():
    """The tail test's job again, but its items take 1 ms each: a 3-item task takes 3 ms, under
    MIN_TASK_SECONDS, so the tail is not cut (the cost of a task would outweigh the spread)."""
    from foreman.limits import MIN_TASK_SECONDS

    s = started(8)
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 32, 96, None, 0, "f", ack=False))
    pending = []
    for n in range(32):
        pending += assigned(s.submit_task("c1", pieced_task("j1", n, 3 * n, 3)))
    counts, seen = [], []
    while pending:
        task = pending.pop(0)
        done = p.TaskDone("j1", task.task_id, task.attempt, 0, b"r", 0.001 * task.count)
        actions = s.task_done("w1", done)
        seen += [
            i
            for _, m in sent(actions)
            if isinstance(m, p.TaskResult)
            for i in range(m.first_index, m.first_index + m.count)
        ]
        handed = assigned(actions)
        counts += [t.count for t in handed]
        pending += handed
    assert 3 * 0.001 < MIN_TASK_SECONDS, "the test's tasks must be shorter than the floor"
    assert set(counts) == {3}, f"tasks of 1 ms items were cut below MIN_TASK_SECONDS: {counts}"
    assert sorted(seen) == list(range(96)), "items lost or duplicated"


def test_a_payload_kept_as_fragments_is_cut_without_joining():
    from crowdcompute.wire.framing import Pieces

    s = make()
    s.add_client("c1")
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 1, 20, None, 0, "f", ack=False))
    whole = b"".join(item(i) for i in range(20))
    fragments = Pieces([memoryview(whole)[n : n + 7] for n in range(0, len(whole), 7)])  # cuts mid-piece
    s.submit_task("c1", p.SubmitTask("j1", 0, 0, 20, fragments, [[1, 5]] * 20))
    handed = assigned(s.add_worker("w1", "one", 8))
    assert len(handed) > 1 and all(isinstance(t.payload, Pieces) for t in handed)
    check_payloads(handed)
