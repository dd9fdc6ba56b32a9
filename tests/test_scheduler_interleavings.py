"""Randomized runs of the scheduler: many interleavings, the invariants checked at every step.

Hypothesis draws a seed; the seed drives a plausible history (workers join,
drain and vanish, jobs arrive and are cancelled, tasks succeed, fail, crash
or time out, answers arrive late or twice). The invariants are what the design
promises: one lease per task, capacity respected, the function before the
tasks, one outcome per task, and every job ends.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scheduler_events import dropped, make, sent, submit

from crowdcompute.wire import messages as p
from foreman.state import TaskState


def run_random_schedule(seed: int, allowed_failures: int = 3) -> None:
    """Random workers, jobs, outcomes, crashes, disconnects, cancels; check invariants at every step.

    Events are drawn from what a real foreman could see: a worker answers only
    leases it was sent (sometimes late, after losing them), clients submit,
    cancel, leave. At the end the remaining workers answer everything and every
    job must have ended with one outcome per task.
    """
    rng = random.Random(seed)
    s = make(allowed_failures=allowed_failures)
    holding: dict[str, set[str]] = {}  # worker -> jobs whose function it was sent and not released
    inbox: dict[str, list[p.AssignTask]] = {}  # worker -> leases it was sent, not yet answered
    outcomes: dict[tuple[str, int], int] = {}  # (job, task) -> final outcomes the client got
    cancelled: set[str] = set()
    jobs: dict[str, int] = {}  # job -> tasks
    counter = 0

    def apply(actions: list) -> None:
        for to, m in sent(actions):
            if isinstance(m, p.AssignTask):
                if m.function:
                    assert m.job_id not in holding[to], f"function of {m.job_id} sent twice to {to}"
                    holding[to].add(m.job_id)
                assert m.job_id in holding[to], f"{to} got a task of {m.job_id} without its function"
                inbox[to].append(m)
            elif isinstance(m, p.ReleaseJob):
                holding[to].discard(m.job_id)
                inbox[to] = [a for a in inbox[to] if a.job_id != m.job_id]
            elif isinstance(m, (p.TaskResult, p.TaskFailed)):
                assert m.job_id not in cancelled, f"an outcome of cancelled job {m.job_id}"
                outcomes[(m.job_id, m.task_id)] = outcomes.get((m.job_id, m.task_id), 0) + 1
        check()

    def check() -> None:
        for worker in s.workers.values():
            if not worker.draining:
                assert len(worker.running) <= worker.capacity
        owners: dict[tuple[str, int], str] = {}
        for worker in s.workers.values():
            for key in worker.running:
                assert key not in owners, f"task {key} leased to {owners[key]} and {worker.worker_id}"
                owners[key] = worker.worker_id
        for job in s.jobs.values():
            for task in job.tasks.values():
                if task.state is TaskState.RUNNING and job.state.value == "running":
                    assert [owners.get((job.job_id, task.task_id))] == list(task.leases)
        assert all(n == 1 for n in outcomes.values()), "a task's outcome reached the client twice"

    def answer(worker: str, lease: p.AssignTask) -> list:
        roll = rng.random()
        if roll < 0.1:
            return s.task_crashed(worker, p.TaskCrashed(lease.job_id, lease.task_id, lease.attempt, "crashed", "x"))
        if roll < 0.15:
            return s.task_crashed(worker, p.TaskCrashed(lease.job_id, lease.task_id, lease.attempt, "timeout", "x"))
        failed = rng.choice([0, 0, 0, lease.count])
        return s.task_done(worker, p.TaskDone(lease.job_id, lease.task_id, lease.attempt, failed, b"r"))

    s.add_client("c")
    for _ in range(200):
        roll = rng.random()
        if roll < 0.1 or not s.workers:
            counter += 1
            name = f"w{counter}"
            holding[name], inbox[name] = set(), []
            apply(s.add_worker(name, name, rng.randint(1, 3)))
        elif roll < 0.2:
            counter += 1
            job_id, tasks = f"j{counter}", rng.randint(0, 6)
            jobs[job_id] = tasks
            apply(submit(s, "c", job_id, tasks, retries=rng.randint(0, 1)))
        elif roll < 0.25 and len(s.workers) > 1:
            worker = rng.choice(sorted(s.workers))
            if rng.random() < 0.5:
                apply(s.worker_draining(worker))
            else:
                apply(s.remove_worker(worker))
                stale = inbox.pop(worker)
                for lease in stale[:1]:  # a late answer from the dead worker is dropped
                    assert dropped(answer(worker, lease))
        elif roll < 0.28 and jobs:
            job_id = rng.choice(sorted(jobs))
            if job_id in s.jobs and s.jobs[job_id].state.value == "running":
                cancelled.add(job_id)
            apply(s.cancel_job("c", job_id))
        else:
            busy = [w for w in sorted(inbox) if inbox[w] and w in s.workers]
            if busy:
                worker = rng.choice(busy)
                lease = inbox[worker].pop(rng.randrange(len(inbox[worker])))
                apply(answer(worker, lease))
                if rng.random() < 0.1:  # the same answer again (a resend): dropped
                    assert dropped(answer(worker, lease))
    # Drain: whoever is left answers everything; a fresh worker joins so nothing is stuck.
    holding["last"], inbox["last"] = set(), []
    apply(s.add_worker("last", "last", 2))
    for _ in range(10_000):
        busy = [w for w in sorted(inbox) if inbox[w] and w in s.workers]
        if not busy:
            break
        worker = busy[0]
        apply(answer(worker, inbox[worker].pop(0)))
    for job_id, tasks in jobs.items():
        if job_id in cancelled:
            continue
        got = sum(outcomes.get((job_id, t), 0) for t in range(tasks))
        assert got == tasks, f"job {job_id}: {got} of {tasks} outcomes (seed {seed})"
        assert s.jobs[job_id].state.value == "done"
    for worker in s.workers.values():
        assert worker.running == {}, f"{worker.worker_id} still holds {worker.running}"


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_random_schedules_keep_the_invariants(seed, allowed_failures):
    run_random_schedule(seed, allowed_failures)


@pytest.mark.parametrize("seed", range(5))
def test_fixed_random_schedules(seed):
    run_random_schedule(seed)
