"""Redundant execution: a majority of runs on distinct workers decides; a rogue is quarantined."""

from __future__ import annotations

import asyncio
import pickle

from helpers import arun, fake_worker, wait_until
from scheduler_events import make

from crowdcompute import CrowdComputeClient, QuorumError
from crowdcompute.wire import messages as p
from foreman import quorum
from foreman.state import Note, Send


def leases(actions) -> list[tuple[str, int, int]]:
    return [
        (a.to, a.message.task_id, a.message.attempt)
        for a in actions
        if isinstance(a, Send) and isinstance(a.message, p.AssignTask)
    ]


def results(actions) -> list[p.TaskResult]:
    return [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, p.TaskResult)]


def redundant_job(s, tasks: int, redundancy: int = 3) -> list:
    actions = s.submit_job("c1", p.SubmitJob("j1", b"f", tasks, tasks, redundancy=redundancy))
    for n in range(tasks):
        actions += s.submit_task("c1", p.SubmitTask("j1", n, n, 1, b"in%d" % n))
    return actions


def started_with(*names: str):
    s = make()
    s.add_client("c1")
    for name in names:
        s.add_worker(name, name, 1)
    return s


def test_each_task_runs_on_distinct_workers_and_the_majority_wins():
    s = started_with("a", "b", "c")
    first = leases(redundant_job(s, tasks=1))
    assert sorted(w for w, _, _ in first) == ["a", "b", "c"]  # one replica each, never two on one worker
    attempt = {w: n for w, _, n in first}
    assert results(s.task_done("a", p.TaskDone("j1", 0, attempt["a"], 0, b"right"))) == []
    assert results(s.task_done("c", p.TaskDone("j1", 0, attempt["c"], 0, b"wrong"))) == []
    (accepted,) = results(s.task_done("b", p.TaskDone("j1", 0, attempt["b"], 0, b"right")))
    assert accepted.payload == b"right" and accepted.worker == "a"
    assert (s.workers["a"].agreed, s.workers["c"].disagreed) == (1, 1)


def test_a_rogue_that_keeps_disagreeing_is_quarantined():
    s = started_with("a", "b", "rogue")
    actions = redundant_job(s, tasks=quorum.QUARANTINE_AFTER + 2)
    notes = []
    for _ in range(50):
        pending = leases(actions)
        if not pending:
            break
        actions = []
        for worker, task_id, attempt in pending:
            payload = b"lies" if worker == "rogue" else b"out%d" % task_id
            answer = s.task_done(worker, p.TaskDone("j1", task_id, attempt, 0, payload))
            notes += [a for a in answer if isinstance(a, Note) and "quarantined" in a.text]
            actions += answer
    assert s.workers["rogue"].quarantined and len(notes) == 1
    assert "rogue" in notes[0].text
    status = {w["name"]: w for w in s.status()["workers"]}
    assert status["rogue"]["quarantined"] and status["rogue"]["disagreed"] >= quorum.QUARANTINE_AFTER
    assert s.workers["rogue"].free <= 0


def test_no_majority_after_the_rounds_fails_naming_the_workers():
    s = started_with("a", "b", "c", "d", "e", "f")
    actions = redundant_job(s, tasks=1)
    failed = []
    for _ in range(quorum.ROUNDS):
        answers = []
        for worker, task_id, attempt in leases(actions):
            answers += s.task_done(worker, p.TaskDone("j1", task_id, attempt, 0, worker.encode()))
        failed += [a.message for a in answers if isinstance(a, Send) and isinstance(a.message, p.TaskFailed)]
        actions = answers
    (failure,) = failed
    # Both rounds count: the reason names all six runs, each a different outcome.
    assert failure.error == "disagreement" and "6 runs gave 6 different outcomes" in failure.reason


def test_a_later_round_counts_with_the_earlier_ones_and_the_liar_is_blamed():
    # redundancy=2: a liar and an honest worker split round 1; the first honest run of round 2
    # makes two agreeing runs (the quorum). It was cleared away before: the liar was never
    # counted against, and with quorum=k one liar sank the task.
    s = started_with("rogue", "a", "b", "c")
    actions = s.submit_job("c1", p.SubmitJob("j1", b"f", 1, 1, redundancy=2))
    actions += s.submit_task("c1", p.SubmitTask("j1", 0, 0, 1, b"in0"))
    round_one = {w: n for w, _, n in leases(actions)}
    assert "rogue" in round_one, round_one
    (honest,) = [w for w in round_one if w != "rogue"]
    s.task_done("rogue", p.TaskDone("j1", 0, round_one["rogue"], 0, b"lies"))
    rerun = s.task_done(honest, p.TaskDone("j1", 0, round_one[honest], 0, b"right"))
    (worker, _, attempt), *_ = leases(rerun)
    (accepted,) = results(s.task_done(worker, p.TaskDone("j1", 0, attempt, 0, b"right")))
    assert accepted.payload == b"right"
    assert s.workers["rogue"].disagreed == 1 and s.workers[honest].agreed == 1


def test_a_task_that_fails_without_a_quorum_still_blames_the_outvoted_runs():
    # quorum=3 of 3, two rounds on six workers: two honest runs and four different lies, so no
    # quorum forms and the task fails; the lies still count against their workers (the two
    # honest runs are the plurality). Before, a liar that kept a quorum from forming was never
    # counted against, and went on to take plain jobs' tasks.
    s = started_with("r1", "r2", "a", "r3", "r4", "b")
    actions = s.submit_job("c1", p.SubmitJob("j1", b"f", 1, 1, redundancy=3, quorum=3))
    actions += s.submit_task("c1", p.SubmitTask("j1", 0, 0, 1, b"in0"))
    failed = []
    for _ in range(quorum.ROUNDS):
        answers = []
        for worker, task_id, attempt in leases(actions):
            payload = b"lies-" + worker.encode() if worker.startswith("r") else b"right"
            answers += s.task_done(worker, p.TaskDone("j1", task_id, attempt, 0, payload))
        failed += [a.message for a in answers if isinstance(a, Send) and isinstance(a.message, p.TaskFailed)]
        actions = answers
    (failure,) = failed
    assert failure.error == "disagreement"
    assert [s.workers[r].disagreed for r in ("r1", "r2", "r3", "r4")] == [1, 1, 1, 1]
    assert [s.workers[h].agreed for h in ("a", "b")] == [1, 1]


def test_a_volunteer_dropped_before_its_run_reported_may_run_the_task_again():
    # quorum=3 of 3 on exactly three volunteers: one is dropped (froze, or was killed) and comes
    # back on a new connection. Its run never reported, so it is still a distinct worker for the
    # task; before, it was barred, and the task waited for a third volunteer that never came.
    s = make()
    s.add_client("c1")
    volunteers = {name: s.volunteers.invite(name, 0.0)[1] for name in ("a", "b", "c")}
    for name, volunteer in volunteers.items():
        s.add_worker(name, name, 1, volunteer=volunteer)
    actions = s.submit_job("c1", p.SubmitJob("j1", b"f", 1, 1, redundancy=3, quorum=3))
    actions += s.submit_task("c1", p.SubmitTask("j1", 0, 0, 1, b"in0"))
    attempt = {w: n for w, _, n in leases(actions)}
    s.task_done("a", p.TaskDone("j1", 0, attempt["a"], 0, b"right"))
    s.task_done("b", p.TaskDone("j1", 0, attempt["b"], 0, b"right"))
    s.remove_worker("c", "went silent")
    ((worker, _, again),) = leases(s.add_worker("c-again", "c", 1, volunteer=volunteers["c"]))
    assert worker == "c-again"
    (accepted,) = results(s.task_done("c-again", p.TaskDone("j1", 0, again, 0, b"right")))
    assert accepted.payload == b"right"


def test_blame_handed_out_at_the_quorum_timeout_is_journaled():
    # A foreman restarting on its journal forgot a liar caught at a quorum_timeout.
    from foreman.state import SaveVolunteer

    s = make()
    s.add_client("c1")
    for name in ("a", "b", "r", "d"):
        s.add_worker(name, name, 1, volunteer=s.volunteers.invite(name, 0.0)[1])
    actions = s.submit_job("c1", p.SubmitJob("j1", b"f", 1, 1, redundancy=4, quorum=4, quorum_timeout=5))
    actions += s.submit_task("c1", p.SubmitTask("j1", 0, 0, 1, b"in0"))
    attempt = {w: n for w, _, n in leases(actions)}
    for worker, payload in (("a", b"right"), ("b", b"right"), ("r", b"lie")):
        s.task_done(worker, p.TaskDone("j1", 0, attempt[worker], 0, payload))
    s.clock.now += 10
    ticked = s.tick()
    assert s.workers["r"].disagreed == 1
    saved = {a.volunteer.name for a in ticked if isinstance(a, SaveVolunteer)}
    assert {"a", "b", "r"} <= saved, saved


# --- end to end with a rogue built on the public protocol ----------------------------


def test_a_rogue_worker_cannot_corrupt_a_redundant_job(foreman, start_worker):
    for n in range(2):
        start_worker(foreman.url, "--procs", "1", "--name", f"honest{n}")

    async def main():
        stop = asyncio.Event()
        lies = lambda task: pickle.dumps(([-1] * task.count, {}), protocol=5)  # well-formed, wrong
        rogue = asyncio.create_task(fake_worker(foreman.url, foreman.token, lies, stop, name="rogue"))
        try:
            async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:

                async def three_workers():
                    return len((await cc.status())["workers"]) == 3

                await wait_until(three_workers, 20, "the rogue never joined")
                assert await cc.map(lambda x: x * x, range(12), chunksize=1, redundancy=3) == [x * x for x in range(12)]
                assert await cc.run(lambda x, y: x + y, 40, y=2, redundancy=3) == 42  # run() takes it too
                workers = {w["name"]: w for w in (await cc.status())["workers"]}
                assert workers["rogue"]["quarantined"], workers
                assert all(workers[f"honest{n}"]["disagreed"] == 0 for n in range(2))
        finally:
            stop.set()
            await rogue

    arun(main(), timeout=60)


def test_quorum_error_is_a_task_error():
    from crowdcompute import TaskError

    assert issubclass(QuorumError, TaskError)
