"""Pure tests of the index of workers with free room (foreman.free_workers), and of the
scheduler's use of it: the order it serves workers in is the order the old scan over every
worker chose, and a worker that leaves, is quarantined, drains or changes its room is
never served on a stale rank."""

from __future__ import annotations

import random

from scheduler_events import function, leased, make

from crowdcompute.wire import messages as p
from foreman.free_workers import STALE_ENTRIES_SLACK, FreeWorkers
from foreman.state import Worker


def scan(workers: dict[str, Worker]) -> Worker | None:
    """The old assignment's choice: a scan over every worker."""
    candidates = [w for w in workers.values() if w.free > 0]
    if not candidates:
        return None
    return max(candidates, key=lambda w: (w.slots > len(w.running), w.free, -sum(w.running.values()), -w.last_lease))


def crowd(*slots: int) -> tuple[dict[str, Worker], FreeWorkers]:
    workers = {f"w{n}": Worker(f"w{n}", f"w{n}", s) for n, s in enumerate(slots)}
    free = FreeWorkers()
    for worker in workers.values():
        free.add(worker)
    return workers, free


def hold(worker: Worker, count: int, lease: int, items: int = 1) -> None:
    """Give ``worker`` ``count`` more leases of ``items`` items each, the latest numbered ``lease``."""
    start = len(worker.running)
    worker.running.update((("j", start + n), items) for n in range(count))
    worker.last_lease = lease


def test_the_most_free_room_first_then_the_order_of_joining():
    workers, free = crowd(1, 4, 4)  # room 2, 6, 6
    assert [free.pop().worker_id for _ in range(3)] == ["w1", "w2", "w0"]
    assert free.pop() is None, "every worker was taken out"


def test_an_idle_slot_comes_before_a_far_workers_prefetch_room():
    workers, free = crowd(2, 1)
    far = workers["w0"]
    far.prefetch = 10  # room 12, but both its slots are busy
    hold(far, 2, lease=1)
    free.touch(far)
    assert free.pop() is workers["w1"], "the idle slot of w1 (room 2) comes before w0's room of 10"


def test_of_workers_with_as_much_room_the_one_holding_fewer_items_comes_first():
    workers, free = crowd(2, 2)
    hold(workers["w0"], 2, lease=1, items=4)  # its slots end later, though its lease is older
    hold(workers["w1"], 2, lease=2, items=1)
    for worker in workers.values():
        free.touch(worker)
    assert free.pop() is workers["w1"], "w1 runs out of work first: the next task is its"


def test_ties_take_turns_oldest_lease_first():
    workers, free = crowd(1, 1, 1)
    order = []
    for lease in range(1, 7):
        worker = free.pop()
        order.append(worker.worker_id)
        hold(worker, 1, lease)
        worker.running.clear()  # it finished at once: same room as before, a newer lease
        free.touch(worker)
    assert order == ["w0", "w1", "w2", "w0", "w1", "w2"]


def test_a_worker_that_left_is_never_served_and_one_that_rejoins_under_its_id_is():
    workers, free = crowd(1, 1)
    free.remove("w0")
    del workers["w0"]
    assert free.pop() is workers["w1"]
    assert free.pop() is None, "the stale entry of w0 is dropped"
    again = Worker("w0", "again", 1)
    free.add(again)
    old = Worker("w0", "old", 1)  # an object the index no longer knows under this id
    free.touch(old)
    assert free.pop() is again
    assert free.pop() is None


def test_a_quarantined_or_draining_worker_is_skipped_without_a_touch():
    workers, free = crowd(1, 1, 1)
    workers["w0"].record.quarantined = True
    workers["w1"].draining = True
    assert free.pop() is workers["w2"]
    assert free.pop() is None


def test_room_that_shrank_without_a_touch_is_ranked_as_it_is_now():
    workers, free = crowd(4, 2)  # room 6, 3
    hold(workers["w0"], 5, lease=1)  # room 1 now; its entry still says 6
    assert [free.pop().worker_id for _ in range(2)] == ["w1", "w0"]


def test_room_that_grew_is_served_once_touched():
    workers, free = crowd(2, 2)  # room 3 each
    workers["w1"].prefetch = 5  # room 7
    free.touch(workers["w1"])
    assert free.pop() is workers["w1"]
    full = workers["w0"]
    hold(full, full.free, lease=2)
    assert free.pop() is None, "w0 has no room, w1 was taken out"
    full.running.clear()  # a lease ended
    free.touch(full)
    assert free.pop() is full


def test_stale_entries_are_dropped_so_the_heap_stays_about_the_size_of_the_crowd():
    workers, free = crowd(*[2] * 10)
    for lease in range(1, 5_000):
        worker = workers[f"w{lease % 10}"]
        hold(worker, 1, lease)
        free.touch(worker)
        worker.running.clear()
        free.touch(worker)
    assert len(free) <= 2 * len(workers) + STALE_ENTRIES_SLACK
    assert sorted(free.pop().worker_id for _ in range(10)) == sorted(workers)


def test_the_index_serves_workers_in_the_order_a_scan_over_every_worker_would():
    rng = random.Random(12)
    workers, free = crowd(*[rng.randint(1, 4) for _ in range(30)])
    lease = 0
    for step in range(3_000):
        worker = rng.choice(list(workers.values()))
        move = rng.random()
        if move < 0.4 and worker.running:  # a lease ends
            worker.running.popitem()
            free.touch(worker)
        elif move < 0.5:  # its prefetch changes (sized from its round trip and task durations)
            worker.prefetch = rng.randint(1, 8)
            free.touch(worker)
        elif move < 0.52:
            worker.record.quarantined = True
        elif move < 0.54:  # it leaves; another joins
            free.remove(worker.worker_id)
            del workers[worker.worker_id]
            new = Worker(f"n{step}", f"n{step}", rng.randint(1, 4))
            workers[new.worker_id] = new
            free.add(new)
        else:  # the best worker gets a lease
            expected = scan(workers)
            chosen = free.pop()
            assert chosen is expected, f"step {step}: the index chose {chosen}, the scan {expected}"
            if chosen is not None:
                lease += 1
                hold(chosen, 1, lease, items=rng.randint(1, 3))
                free.touch(chosen)


# --- through the scheduler ---------------------------------------------------------


def test_the_scheduler_gives_nothing_to_a_worker_that_left_or_was_quarantined():
    s = make()
    s.add_client("c1")
    for n in range(3):
        s.add_worker(f"w{n}", f"w{n}", 1)
    s.remove_worker("w0")
    s.workers["w1"].record.quarantined = True
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 6, 6, None, 0, "f", ack=False))
    taken = []
    for n in range(6):
        taken += leased(s.submit_task("c1", p.SubmitTask("j1", n, n, 1, b"x")))
    assert [worker for worker, *_ in taken] == ["w2", "w2"], "only w2 takes tasks: its slot and its prefetch"


def test_a_finished_task_frees_room_that_the_next_task_fills():
    s = make()
    s.add_client("c1")
    s.add_worker("w0", "w0", 1)
    s.add_worker("w1", "w1", 1)
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 5, 5, None, 0, "f", ack=False))
    first = []
    for n in range(5):
        first += leased(s.submit_task("c1", p.SubmitTask("j1", n, n, 1, b"x")))
    assert [w for w, *_ in first] == ["w0", "w1", "w0", "w1"], "slots first, then prefetch, turn about"
    worker, _, task_id, attempt = first[1]
    more = leased(s.task_done(worker, p.TaskDone("j1", task_id, attempt, 0, b"r")))
    assert [w for w, *_ in more] == ["w1"], "the room w1's finished task left takes the last task"


def test_workers_of_a_kind_no_queued_job_suits_are_passed_over_whole():
    s = make()
    s.add_client("c1")
    for n in range(2):
        s.add_worker(f"g{n}", f"gpu-{n}", 1, labels={"gpu": "yes"})
    for n in range(200):
        s.add_worker(f"c{n}", f"cpu-{n}", 1)
    popped: list[str] = []
    pop = s._free.pop

    def counted(skipping=frozenset()):
        worker = pop(skipping)
        if worker is not None:
            popped.append(worker.worker_id)
        return worker

    s._free.pop = counted  # type: ignore[method-assign]
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 20, 20, None, 0, "f", ack=False, labels={"gpu": "yes"}))
    handed = []
    for n in range(20):
        handed += leased(s.submit_task("c1", p.SubmitTask("j1", n, n, 1, b"x")))
    assert {worker for worker, *_ in handed} == {"g0", "g1"}
    assert len([w for w in popped if w.startswith("c")]) <= 20, "the CPU workers were looked at one by one"
    popped.clear()
    worker, _, task_id, attempt = handed[0]
    more = leased(s.task_done(worker, p.TaskDone("j1", task_id, attempt, 0, b"r")))
    assert [w for w, *_ in more] == [worker] and len(popped) <= 2, popped


def test_kinds_beyond_the_limit_share_one_heap_that_is_never_passed_over():
    from foreman.free_workers import MAX_KINDS

    free = FreeWorkers()
    workers = [Worker(f"w{n}", f"w{n}", 1, labels={"host": str(n)}) for n in range(MAX_KINDS + 5)]
    for worker in workers:
        free.add(worker)
    assert free.kind_of(workers[0]) is not None and free.kind_of(workers[-1]) is None
    kept = {free.kind_of(w) for w in workers[:MAX_KINDS]}
    assert sorted(free.pop(kept).worker_id for _ in range(5)) == sorted(w.worker_id for w in workers[MAX_KINDS:])
    assert free.pop(kept) is None


def test_a_kind_whose_last_worker_left_no_longer_counts_toward_the_limit():
    from foreman.free_workers import MAX_KINDS

    free = FreeWorkers()
    gone = [Worker(f"g{n}", f"g{n}", 1, labels={"host": f"g{n}"}) for n in range(MAX_KINDS)]
    for worker in gone:
        free.add(worker)
    for worker in gone:
        free.remove(worker.worker_id)
    assert len(free) == 0, "the heaps of kinds that left must go with them"
    new = Worker("n1", "n1", 1, labels={"host": "n1"})
    free.add(new)
    assert free.kind_of(new) is not None, "a new kind must get a heap of its own once old kinds left"
    assert free.pop() is new
