"""Lease deadlines and backup runs: a hoarding or stalled worker does not hold a job back."""

from __future__ import annotations

import asyncio

from helpers import arun, wait_until
from scheduler_events import Clock, done, function, leased, make, sent, submit, task_input, task_output

from crowdcompute import CrowdComputeClient
from crowdcompute.dialing import dial
from crowdcompute.wire import messages as p
from crowdcompute.wire.addresses import parse_address
from crowdcompute.wire.runtime import runtime_fields
from foreman import deadlines
from foreman.state import Note


def results(actions) -> list[p.TaskResult]:
    return [m for _, m in sent(actions) if isinstance(m, p.TaskResult)]


def test_a_lease_past_its_deadline_runs_again_elsewhere_the_first_outcome_wins_and_the_other_run_is_cancelled():
    clock = Clock()
    s = make(clock=clock)
    s.add_client("c1")
    s.add_worker("hoarder", "hoarder", 1)
    s.add_worker("honest", "honest", 1)
    first = leased(submit(s, "c1", "j1", tasks=4))  # two for each: nothing left for the honest one
    held = [(task, attempt) for worker, _, task, attempt in first if worker == "hoarder"]
    assert held and s.tick() == []  # no outcome yet: no deadline yet
    clock.now += 0.1
    honest = [(task, attempt) for worker, _, task, attempt in first if worker == "honest"]
    for task, attempt in honest:
        actions = s.task_done("honest", done("j1", task, attempt))
    assert deadlines.allowance(s.jobs["j1"]) == deadlines.MIN_LEASE_DEADLINE  # 4 x 0.1 s is below the minimum
    clock.now += deadlines.MIN_LEASE_DEADLINE + 0.5
    actions = s.tick()
    assert any(isinstance(a, Note) and "passed its deadline on worker hoarder" in a.text for a in actions)
    assert s.workers["hoarder"].record.missed == len(held)
    reissued = [(task, attempt) for worker, _, task, attempt in leased(actions) if worker == "honest"]
    assert reissued, "the overdue tasks were not run again elsewhere"
    task, attempt = reissued[0]
    actions = s.task_done("honest", done("j1", task, attempt))
    (accepted,) = results(actions)
    assert accepted.reissued == 1
    assert ("hoarder", p.CancelTask("j1", task)) in sent(actions)  # the hoarder's run is to stop
    late = dict(held)[task]
    assert ("j1", task) in s.workers["hoarder"].running  # its room stays taken until it answers...
    s.task_cancelled("hoarder", p.TaskCancelled("j1", task, late))
    assert ("j1", task) not in s.workers["hoarder"].running  # ...that it stopped
    stray = s.task_done("hoarder", done("j1", task, late))
    assert [type(action) for action in stray] == [Note]  # a result after that is any stray one


def test_a_slow_worker_that_answers_gets_the_time_its_own_pace_needs_for_a_big_task():
    """Once the job's recent outcomes all come from a fast worker, a slow worker that answered at
    1 s an item is not overdue on its next 4-item task before 4 x 4 s (the job's own deadline
    is 2 s): 21 items at 250 ms were reissued to fast slots, which ran them for nothing, and
    the slow worker's record counted a missed deadline. A worker with no outcome of the job
    has no pace of its own and keeps the job's deadline."""
    clock = Clock()
    s = make(clock=clock)
    s.add_client("c1")
    s.add_worker("slow", "slow", 1)
    s.add_worker("fast", "fast", 1)
    leases = leased(submit(s, "c1", "j1", tasks=3, items_per_task=4))
    assert [(w, t) for w, _, t, _ in leases] == [("slow", 0), ("fast", 1), ("slow", 2)]
    clock.now += 4.0
    s.task_done("slow", done("j1", 0))  # 1 s an item, as the foreman saw it
    assert s.workers["slow"].lease_pace == 1.0
    job = s.jobs["j1"]
    job.durations[:] = [0.4] * deadlines.DURATIONS_KEPT  # since then, only the fast worker's outcomes
    assert deadlines.allowance(job) == deadlines.MIN_LEASE_DEADLINE
    assert deadlines.allowance(job, items=4, pace=1.0) == 16.0
    clock.now += 10.0  # task 2 leased 14 s ago: past the job's 2 s and the fast worker's, not the slow one's
    notes = [a.text for a in s.tick() if isinstance(a, Note)]
    assert not any("deadline on worker slow" in text for text in notes), notes
    assert any("passed its deadline on worker fast" in text for text in notes), "it never answered: the job's 2 s"
    clock.now += 3.0  # 17 s
    notes = [a.text for a in s.tick() if isinstance(a, Note)]
    assert any("passed its deadline on worker slow" in text for text in notes), notes
    assert s.workers["slow"].record.missed == 1


def test_a_volunteer_that_misses_more_deadlines_than_it_finishes_tasks_is_quarantined():
    clock = Clock()
    s = make(clock=clock)
    s.add_client("c1")
    _, volunteer = s.volunteers.invite("hoarder", clock.now)
    s.add_worker("hoarder", "hoarder", 2, volunteer=volunteer)
    s.add_worker("honest", "honest", 1)
    actions = submit(s, "c1", "j1", tasks=12)
    notes = []
    for _ in range(20):
        clock.now += 0.1
        for worker, _, task, attempt in leased(actions):
            if worker == "honest":
                actions += s.task_done("honest", done("j1", task, attempt))
        clock.now += deadlines.MIN_LEASE_DEADLINE + 0.1
        actions = s.tick() + [a for a in actions if not isinstance(a, Note)]
        notes += [a.text for a in actions if isinstance(a, Note) and "quarantined" in a.text]
        if s.workers["hoarder"].quarantined:
            break
    assert s.workers["hoarder"].quarantined and "missed a deadline" in notes[0]
    assert not s.workers["honest"].quarantined
    assert volunteer.record.quarantined  # the credential's record: it stays quarantined if it comes back


def test_the_operators_own_slow_worker_is_never_quarantined_for_missed_deadlines():
    clock = Clock()
    s = make(clock=clock)
    s.add_client("c1")
    s.add_worker("slow", "slow", 2)  # the shared worker token: trusted
    s.add_worker("fast", "fast", 1)
    actions = submit(s, "c1", "j1", tasks=20)
    for _ in range(10):
        clock.now += 0.1
        for worker, _, task, attempt in leased(actions):
            if worker == "fast":
                actions += s.task_done("fast", done("j1", task, attempt))
        clock.now += deadlines.MIN_LEASE_DEADLINE + 0.1
        actions = s.tick() + [a for a in actions if not isinstance(a, Note)]
    assert s.workers["slow"].record.missed >= 3 and not s.workers["slow"].quarantined


def test_at_the_tail_of_a_job_an_idle_slot_runs_a_backup_of_the_slowest_task():
    clock = Clock()
    s = make(clock=clock)
    s.add_client("c1")
    s.add_worker("slow", "slow", 1)
    s.add_worker("fast", "fast", 1)
    first = leased(submit(s, "c1", "j1", tasks=2))
    by_worker = {worker: (task, attempt) for worker, _, task, attempt in first}
    clock.now += 1.0
    s.task_done("fast", done("j1", *by_worker["fast"]))
    clock.now += 1.5  # the slow task has run 2.5 s, more than twice the typical 1 s
    backup = leased(s.tick())
    assert [(w, t) for w, _, t, _ in backup] == [("fast", by_worker["slow"][0])]
    (accepted,) = results(s.task_done("fast", done("j1", by_worker["slow"][0], backup[0][3])))
    assert accepted.backups == 1 and s.jobs["j1"].state.value == "done"
    assert make(clock=clock, backup_tasks=False).tick() == []


def _fast_worker_to_the_end(slow_item_seconds: float | None = None) -> tuple:
    """A job of 8 tasks on a worker at 0.5 s an item and one at 0.06 s (one slot each): the slow
    one runs its first task, then the fast one runs what it is given, the server's tail timer
    asking for backups after each of its outcomes, until it has nothing left. ``slow_item_seconds``
    overrides the slow worker's measured pace. Returns the scheduler, its clock, the slow worker's
    leases (task ids, in lease order) before the fast one ran, and the backups leased, as
    (worker, task)."""
    from scheduler_events import task_output

    clock = Clock()
    s = make(clock=clock)
    s.add_client("c1")
    s.add_worker("slow", "slow", 1)
    s.add_worker("fast", "fast", 1)
    s.note_latency("slow", 0.01)
    s.note_latency("fast", 0.01)
    first = leased(submit(s, "c1", "j1", tasks=8))

    def finish(worker: str, task: int, seconds: float) -> list:
        return s.task_done(worker, p.TaskDone("j1", task, 1, 0, task_output("j1", task, 1), seconds))

    clock.now += 0.5
    finish("slow", 0, 0.5)
    if slow_item_seconds is not None:
        s.workers["slow"].item_seconds = slow_item_seconds
    slow_leases = [task_id for _, task_id in s.workers["slow"].running]
    fast = [t for w, _, t, _ in first if w == "fast"]
    backups = []
    while fast:
        clock.now += 0.06
        got = leased(finish("fast", fast.pop(0), 0.06)) + leased(s.tail_check())
        fast += [t for w, _, t, a in got if w == "fast" and a == 1]
        backups += [(w, t) for w, _, t, a in got if a > 1]
    return s, clock, slow_leases, backups


def test_a_task_waiting_behind_a_slow_workers_running_one_runs_on_an_idle_fast_one():
    s, clock, (running, waiting), backups = _fast_worker_to_the_end()
    assert backups == [("fast", waiting)], "the fast worker should run the slow one's waiting task, not idle"
    assert s.at_tail() and not leased(s.tail_check()), "its running task has not run long yet"
    clock.now += 1.1  # now it has
    assert [(w, t) for w, _, t, _ in leased(s.tail_check())] == [("fast", running)]


def test_a_job_its_client_still_feeds_is_not_at_its_tail():
    s = make(clock=Clock())
    s.add_client("c1")
    s.add_worker("w1", "one", 2)
    s.submit_job("c1", p.SubmitJob("j1", function("j1"), 3, 3, None, 0, "f"))
    for task_id in range(2):  # both leased at once: its queue is empty, but a task is still to come
        s.submit_task("c1", p.SubmitTask("j1", task_id, task_id, 1, task_input("j1", task_id)))
    assert not s.jobs["j1"].queue and not s.at_tail()
    s.submit_task("c1", p.SubmitTask("j1", 2, 2, 1, task_input("j1", 2)))
    s.task_done("w1", p.TaskDone("j1", 0, 1, 0, task_output("j1", 0, 1), 0.1))  # the last one is leased
    assert not s.jobs["j1"].queue and s.at_tail()


def test_tasks_their_worker_will_end_soon_get_no_backup():
    *_, backups = _fast_worker_to_the_end(slow_item_seconds=0.06)  # as fast as the other after all
    assert backups == []


def sleepy_abs(x):
    import time

    time.sleep(0.1)
    return abs(x)


def test_a_worker_that_takes_tasks_and_never_answers_does_not_stall_a_job(foreman, start_worker):
    start_worker(foreman.url, "--procs", "1", "--name", "honest")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            credential, _ = await cc.invite("hoarder")
            hello = p.Hello("worker", credential, p.PROTOCOL_VERSION, name="hoarder", slots=4, **runtime_fields())
            hoarder, _ = await dial(parse_address(foreman.url), hello)  # answers pings, never a task
            try:

                async def joined():
                    return len((await cc.status())["workers"]) == 2

                await wait_until(joined, 20, "the hoarder never joined")
                job = await cc.submit(sleepy_abs, range(-50, 0), chunksize=1)  # 5 s on the honest worker
                assert await asyncio.wait_for(job.result(), 30) == list(range(50, 0, -1))
                # Its tasks ran again elsewhere: as backups at the tail, or reissued past their deadline.
                assert job.stats.reissued + job.stats.backups >= 1, job.stats.summary()
                assert "reissued past their deadline" in job.stats.summary()
                (record,) = await cc.volunteers()
                assert record["missed_deadlines"] >= 1 and record["tasks_done"] == 0, record
            finally:
                await hoarder.close()

    arun(main(), timeout=50)


def test_an_expired_volunteer_is_closed_on_the_next_tick():
    clock = Clock()
    s = make(clock=clock)
    _, volunteer = s.volunteers.invite("temp", clock.now, expires_in=60)
    s.add_worker("w1", "laptop", 2, volunteer=volunteer)
    assert s.tick() == []
    clock.now += 61
    actions = s.tick()
    assert [(a.to, a.reason) for a in actions if type(a).__name__ == "Close"] == [("w1", "credential expired")]
    assert "w1" not in s.workers


def test_losing_a_worker_that_runs_a_backup_copy_is_not_a_crash_of_the_task():
    clock = Clock()
    s = make(clock=clock)
    s.add_client("c1")
    s.add_worker("slow", "slow", 1)
    s.add_worker("fast", "fast", 1)
    by_worker = {worker: (task, attempt) for worker, _, task, attempt in leased(submit(s, "c1", "j1", tasks=2))}
    clock.now += 1.0
    s.task_done("fast", done("j1", *by_worker["fast"]))
    clock.now += 1.5
    assert leased(s.tick())  # a backup of the slow worker's task on the fast one
    s.remove_worker("fast")
    task = s.jobs["j1"].tasks[by_worker["slow"][0]]
    assert task.crashes == 0 and list(task.leases) == ["slow"]  # the first run goes on


def test_a_waiting_task_runs_again_on_a_worker_with_room_when_a_copy_there_ends_in_half_the_time():
    worth = deadlines._worth_a_copy
    fast = (0.05, 0.001)  # a worker with room: 50 ms an item, 1 ms away
    assert worth(1.1, 3, fast, 2.0), (
        "3 items behind 1 s of work: a copy ends in 0.15 s, however long tasks usually take"
    )
    assert not worth(0.075, 1, fast, 0.1), "its worker starts it in 25 ms: a copy would end about as late"
    assert not worth(0.3, 1, (0.05, 0.1), 0.1), "a copy 100 ms away ends at 0.25 s: not worth it"
    assert worth(0.3, 1, None, 0.1) and not worth(0.3, 1, None, 0.5), "no worker with room measured: the typical trip"


def test_a_running_task_its_slow_worker_ends_before_a_copy_could_gets_no_backup():
    worth = deadlines._worth_a_backup
    fast = (0.05, 0.001)  # a worker with room: 50 ms an item, 1 ms away
    assert not worth(4.6, 21, 0.25, fast, 0.15), "0.65 s left on its worker; a copy needs 1.05 s"
    assert worth(1.0, 21, 0.25, fast, 0.15), "4.25 s left on its worker; a copy ends in 1.05 s"
    assert worth(5.5, 21, 0.25, fast, 0.15), "past what its worker's pace allows: stalled or slowed"
    assert worth(1.0, 21, 0.0, fast, 0.15), "its worker's pace in the job is not known"


def test_a_worker_whose_copy_of_a_task_lost_the_race_is_free_at_once_for_the_rest_of_the_job(
    foreman, start_worker, tmp_path
):
    """Item 0's first run hangs (a minute); past its deadline it runs again on the other worker,
    which wins. The first run is cancelled: its worker's only slot goes on with the job's other
    items (without the cancel it would hang until the job ended, the other worker doing them all)."""
    start_worker(foreman.url, "--procs", "1", "--name", "a")
    start_worker(foreman.url, "--procs", "1", "--name", "b")
    markers = str(tmp_path)

    def first_run_hangs(item: int) -> int:
        import os
        import time

        marker = os.path.join(markers, "item-0-ran")
        if item == 0 and not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(60)
        time.sleep(0.2)
        return item * 10

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            await wait_until(lambda: cc.slots >= 2, 20, "the two workers never joined")
            job = await cc.submit(first_run_hangs, range(30), chunksize=1)
            assert await asyncio.wait_for(job.result(), 40) == [item * 10 for item in range(30)]
            assert job.stats.reissued >= 1, job.stats.summary()
            assert set(job.stats.workers) == {"a", "b"}, (
                "the worker whose run of item 0 lost the race finished no task: its slot stayed stuck "
                + job.stats.summary()
            )

    arun(main(), timeout=60)
