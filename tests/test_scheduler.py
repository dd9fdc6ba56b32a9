"""Pure tests of the foreman's scheduler: feed events, compare the actions it returns.

Like dask's worker-state-machine tests: no sockets, no processes, no sleeps.
Time is an injected clock. Frames to send are compared exactly, in order;
journal records are checked where they matter. Randomized interleavings are
in test_scheduler_interleavings.py.
"""

from __future__ import annotations

from scheduler_events import (
    Clock,
    assign,
    done,
    dropped,
    function,
    leased,
    make,
    records,
    result,
    sent,
    started,
    submit,
)

from crowdcompute.wire import messages as p
from foreman.scheduler import ALLOWED_FAILURES, Scheduler
from foreman.state import Note, Replay, SaveJob, SaveJobState, SaveResult, SaveTask, Send

NO_VOTES = {
    "agreed": 0,
    "disagreed": 0,
    "quarantined": False,
    "portable_only": False,
    "identity": None,
    "trusted": True,
    "missed_deadlines": 0,
    "resources": {},
    "labels": {},
}


# --- assignment --------------------------------------------------------------------


def test_worker_gets_its_slots_plus_prefetch_and_a_freed_place_is_refilled():
    s = make()
    s.add_client("c1")
    assert s.add_worker("w1", "one", 2) == []  # nothing queued yet
    actions = submit(s, "c1", "j1", tasks=5)
    # 2 slots + 1 prefetched.
    assert sent(actions) == [
        ("c1", p.JobAccepted("j1")),  # once journaled; its tasks stream in after
        ("w1", assign("j1", 0, first=True)),  # the worker's first task of the job carries its function
        ("w1", assign("j1", 1)),
        ("w1", assign("j1", 2)),
    ]
    assert [r.task.task_id for r in records(actions, SaveTask)] == [0, 1, 2, 3, 4]
    assert sent(s.task_done("w1", done("j1", 1))) == [("c1", result("j1", 1)), ("w1", assign("j1", 3))]


def test_the_messages_of_one_frame_get_one_assignment_pass_after_them_with_the_same_leases():
    one_by_one, held = make(), make()
    for s in (one_by_one, held):
        s.add_client("c1")
        s.add_worker("w1", "one", 2)
        s.add_worker("w2", "two", 1)
    expected = leased(submit(one_by_one, "c1", "j1", tasks=6))
    held.hold_assignment()  # the server's frame of a SubmitJob and its SubmitTasks
    assert leased(submit(held, "c1", "j1", tasks=6)) == []
    assert leased(held.release_assignment()) == expected and len(expected) == 5  # 3 slots + 2 prefetched
    assert held.release_assignment() == []  # nothing asked for another pass
    held.hold_assignment()
    assert held.release_assignment() == []  # a frame that asked for none gets none


def test_a_worker_that_drops_a_task_it_was_not_told_to_cancel_hands_it_back():
    s = make()
    s.add_client("c1")
    s.add_worker("w1", "one", 1)
    (_, _, task, attempt) = leased(submit(s, "c1", "j1", tasks=1))[0]
    assert leased(s.task_cancelled("w1", p.TaskCancelled("j1", task, attempt))) == [("w1", "j1", task, attempt + 1)]


def test_tasks_queued_before_any_worker_go_to_the_first_that_joins():
    s = make()
    s.add_client("c1")
    assert sent(submit(s, "c1", "j1", tasks=2)) == [("c1", p.JobAccepted("j1"))]
    assert sent(s.add_worker("w1", "one", 4)) == [
        ("w1", assign("j1", 0, first=True)),
        ("w1", assign("j1", 1)),
    ]


def test_worker_with_the_most_free_room_is_served_first():
    s = make()
    s.add_client("c1")
    s.add_worker("small", "small", 1)  # capacity 2
    s.add_worker("big", "big", 4)  # capacity 6
    got = [worker for worker, *_ in leased(submit(s, "c1", "j1", tasks=8))]
    assert got[:4] == ["big"] * 4  # big has more room until it is down to small's
    assert got.count("big") == 6 and got.count("small") == 2
    assert s.status()["workers"] == [
        {"name": "small", "slots": 1, "busy": 1, "tasks_done": 0, "draining": False, **NO_VOTES},
        {"name": "big", "slots": 4, "busy": 4, "tasks_done": 0, "draining": False, **NO_VOTES},
    ]


def test_two_jobs_take_turns():
    s = make()
    s.add_client("c1")
    s.add_client("c2")
    submit(s, "c1", "a", tasks=6)
    submit(s, "c2", "b", tasks=6)
    got = [(job, task) for _, job, task, _ in leased(s.add_worker("w1", "one", 4))]
    assert got == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_a_job_that_arrives_late_gets_every_other_freed_slot():
    s = started(2)
    submit(s, "c1", "a", tasks=20)  # a holds all 3 places
    submit(s, "c1", "b", tasks=20)
    running = {("a", 0): 1, ("a", 1): 1, ("a", 2): 1}
    jobs = []
    for _ in range(10):
        job, task = next(iter(running))
        del running[(job, task)]
        (lease,) = leased(s.task_done("w1", done(job, task)))
        running[(lease[1], lease[2])] = 1
        jobs.append(lease[1])
    assert jobs.count("a") == jobs.count("b") == 5, jobs


def test_function_is_sent_once_per_worker_per_job():
    # Run a 10-task job to the end on two workers, collecting every frame.
    s = started(1, 1)
    frames = sent(submit(s, "c1", "j1", tasks=10))
    pending = [(to, m) for to, m in frames if isinstance(m, p.AssignTask)]
    while pending:
        to, m = pending.pop(0)
        new = sent(s.task_done(to, done(m.job_id, m.task_id, m.attempt)))
        frames += new
        pending += [(w, a) for w, a in new if isinstance(a, p.AssignTask)]
    functions = [(to, m.job_id) for to, m in frames if isinstance(m, p.AssignTask) and m.function]
    assert sorted(functions) == [("w1", "j1"), ("w2", "j1")]
    for worker in ("w1", "w2"):  # the function comes with the worker's first task of the job
        mine = [m for to, m in frames if to == worker]
        assert isinstance(mine[0], p.AssignTask) and mine[0].function == function("j1")
    assert sum(isinstance(m, p.TaskResult) for _, m in frames) == 10
    # The job ended: both workers drop its function, and a new job sends its own.
    assert [(to, m) for to, m in frames if isinstance(m, p.ReleaseJob)] == [
        ("w1", p.ReleaseJob("j1")),
        ("w2", p.ReleaseJob("j1")),
    ]
    assert ("w1", assign("j2", 0, first=True)) in sent(submit(s, "c1", "j2"))


def test_a_worker_that_joins_again_gets_the_function_again():
    s = started(1)
    submit(s, "c1", "j1", tasks=3)
    s.remove_worker("w1")
    assert sent(s.add_worker("w2", "one", 1))[0] == ("w2", assign("j1", 0, 2, first=True))


# --- results ---------------------------------------------------------------------------


def test_results_go_to_the_client_that_owns_the_job_with_the_payload_untouched():
    s = make()
    s.add_client("c1")
    s.add_client("c2")
    s.add_worker("w1", "one", 4)
    submit(s, "c1", "a", tasks=1, items_per_task=5)
    submit(s, "c2", "b", tasks=1, items_per_task=5)
    msg = done("b", 0, failed=2)
    actions = s.task_done("w1", msg)
    assert sent(actions) == [("c2", result("b", 0, failed=2, items_per_task=5)), ("w1", p.ReleaseJob("b"))]
    assert sent(actions)[0][1].payload is msg.payload  # passed through, not copied
    (saved,) = records(actions, SaveResult)
    assert (saved.job_id, saved.task_id) == ("b", 0)
    summary = {j["id"]: j for j in s.status()["jobs"]}["b"]
    assert (summary["completed"], summary["failed"], summary["state"]) == (3, 2, "done")


def test_the_last_outcome_ends_the_job_and_releases_its_workers():
    s = started(1, 1)
    submit(s, "c1", "j1", tasks=2)
    assert sent(s.task_done("w1", done("j1", 0))) == [("c1", result("j1", 0))]
    actions = s.task_done("w2", done("j1", 1))
    assert sent(actions) == [("c1", result("j1", 1)), ("w1", p.ReleaseJob("j1")), ("w2", p.ReleaseJob("j1"))]
    (state,) = records(actions, SaveJobState)
    assert (state.job_id, state.state, state.completed, state.failed) == ("j1", "done", 2, 0)


def test_late_and_duplicate_results_are_dropped():
    s = started(1)
    submit(s, "c1", "j1", tasks=1)  # leased to w1, attempt 1
    s.remove_worker("w1")  # w1 froze and was dropped
    assert leased(s.add_worker("w2", "two", 1)) == [("w2", "j1", 0, 2)]
    assert dropped(s.task_done("w1", done("j1", 0, attempt=1)))  # the old lease, from the old worker
    assert dropped(s.task_done("w2", done("j1", 0, attempt=1)))  # the old attempt number
    assert dropped(s.task_crashed("w1", p.TaskCrashed("j1", 0, 1, "crashed", "late")))
    assert sent(s.task_done("w2", done("j1", 0, attempt=2)))[0] == ("c1", result("j1", 0, attempt=2))
    assert dropped(s.task_done("w2", done("j1", 0, attempt=2)))  # the same result twice
    assert dropped(s.task_done("w2", done("nope", 0)))  # a job it never had
    assert s.status()["jobs"][0]["completed"] == 1


def test_a_worker_forging_results_does_not_fill_the_log():
    # A hostile volunteer sent 5,000 results for tasks it never held: 5,003 warning lines.
    from foreman.limits import DROPPED_LOGGED, DROPPED_LOGGED_EVERY

    s = started(1)
    submit(s, "c1", "j1", tasks=1)
    notes = []
    for n in range(2 * DROPPED_LOGGED_EVERY):
        notes += s.task_done("w1", done("forged", n))
    assert len(notes) == DROPPED_LOGGED + 2 and all(isinstance(note, Note) for note in notes)
    assert f"from now on one in {DROPPED_LOGGED_EVERY}" in notes[DROPPED_LOGGED - 1].text


def test_a_dropped_result_is_a_warning_for_a_running_job_and_routine_for_an_ended_one():
    # A cancelled job's runs still report as they stop: the operator's log should not cry wolf.
    s = started(2)
    submit(s, "c1", "j1", tasks=2)
    (running,) = s.task_done("w1", done("j1", 0, attempt=9))  # not the attempt it was leased
    assert isinstance(running, Note) and not running.routine
    s.cancel_job("c1", "j1")
    (ended,) = s.task_done("w1", done("j1", 1))
    assert isinstance(ended, Note) and "not its lease" in ended.text and ended.routine


def test_output_goes_to_the_client_only_from_the_lease_holder():
    s = started(1, 1)
    submit(s, "c1", "j1", tasks=1)
    line = p.TaskOutput("j1", 0, 0, "stdout", "hello\n")
    assert s.task_output("w1", line) == [Send("c1", line)]
    assert s.task_output("w2", line) == []


# --- failures --------------------------------------------------------------------------


def test_removing_a_worker_requeues_its_tasks_in_front_with_a_new_attempt():
    s = make()
    s.add_client("c1")
    s.add_worker("w1", "one", 1)  # capacity 2: tasks 0 and 1
    submit(s, "c1", "j1", tasks=4)
    assert s.remove_worker("w1") == []  # nobody to take them yet
    assert leased(s.add_worker("w2", "two", 2)) == [
        ("w2", "j1", 0, 2),
        ("w2", "j1", 1, 2),
        ("w2", "j1", 2, 1),
    ]
    assert s.remove_worker("w1") == []  # removing twice is harmless


def test_a_worker_that_leaves_hands_its_tasks_to_the_others_at_once():
    s = started(1, 1)
    submit(s, "c1", "j1", tasks=3)  # w1: 0, 2; w2: 1 (w2 has one free place)
    assert leased(s.remove_worker("w1")) == [("w2", "j1", 0, 2)]


def test_crashes_up_to_allowed_failures_then_task_failed():
    s = started(1)
    submit(s, "c1", "j1", tasks=1)
    for attempt in range(1, ALLOWED_FAILURES):
        actions = s.task_crashed("w1", p.TaskCrashed("j1", 0, attempt, "crashed", "killed by SIGSEGV"))
        assert sent(actions) == [("w1", assign("j1", 0, attempt + 1))]
    actions = s.task_crashed("w1", p.TaskCrashed("j1", 0, ALLOWED_FAILURES, "crashed", "killed by SIGKILL"))
    failed = p.TaskFailed("j1", 0, 0, 1, "crashed", "killed by SIGKILL", ALLOWED_FAILURES, crashes=ALLOWED_FAILURES)
    assert sent(actions) == [("c1", failed), ("w1", p.ReleaseJob("j1"))]
    summary = s.status()["jobs"][0]
    assert (summary["completed"], summary["failed"], summary["state"]) == (0, 1, "done")


def test_lost_workers_do_not_count_as_crashes():
    s = started(1, allowed_failures=2)
    submit(s, "c1", "j1", tasks=1)
    for n in range(5):  # far more than allowed_failures: the link's fault, not the task's
        s.add_worker(f"x{n}", f"flaky{n}", 1)
        s.remove_worker("w1" if n == 0 else f"x{n - 1}", "went silent (no answer to pings for 5 s)")
    holder = next(w for w in s.workers.values() if w.running)
    actions = s.task_done(holder.worker_id, done("j1", 0, attempt=6))
    assert sent(actions)[0] == ("c1", result("j1", 0, attempt=6))


def test_a_task_fails_after_max_worker_losses_saying_its_workers_went_away():
    s = started(1, max_worker_losses=3)
    submit(s, "c1", "j1", tasks=1)
    assert sent(s.remove_worker("w1")) == []
    s.add_worker("w2", "two", 1)
    assert sent(s.remove_worker("w2")) == []
    s.add_worker("w3", "three", 1)
    actions = s.remove_worker("w3", "went silent (no answer to pings for 5 s)")
    reason = "worker three went silent (no answer to pings for 5 s) (the foreman's limit is 3 lost workers per task)"
    assert sent(actions) == [("c1", p.TaskFailed("j1", 0, 0, 1, "lost", reason, 3, losses=3))]


def test_crashes_and_losses_are_counted_apart():
    s = started(1, allowed_failures=2, max_worker_losses=3)
    submit(s, "c1", "j1", tasks=1)
    s.task_crashed("w1", p.TaskCrashed("j1", 0, 1, "crashed", "killed by SIGSEGV"))  # crash 1 of 2
    s.remove_worker("w1")  # loss 1 of 3
    s.add_worker("w2", "two", 1)
    s.remove_worker("w2")  # loss 2 of 3
    s.add_worker("w3", "three", 1)
    actions = s.task_crashed("w3", p.TaskCrashed("j1", 0, 4, "crashed", "killed by SIGKILL"))  # crash 2 of 2
    failed = p.TaskFailed("j1", 0, 0, 1, "crashed", "killed by SIGKILL", 4, crashes=2, losses=2)
    assert sent(actions)[0] == ("c1", failed)


def test_a_draining_worker_gets_nothing_new_and_hands_back_without_a_crash():
    s = started(1, allowed_failures=1)
    submit(s, "c1", "j1", tasks=3)  # w1 holds 0 and 1
    assert s.worker_draining("w1") == []
    assert leased(s.task_done("w1", done("j1", 0))) == []  # its freed place is not refilled
    assert s.remove_worker("w1") == []  # task 1 goes back, not counted as a crash
    assert leased(s.add_worker("w2", "two", 2)) == [("w2", "j1", 1, 2), ("w2", "j1", 2, 1)]


def test_timeout_fails_the_task_at_once():
    s = started(1)
    submit(s, "c1", "j1", tasks=2, task_timeout=0.5)
    actions = s.task_crashed("w1", p.TaskCrashed("j1", 0, 1, "timeout", "ran past 0.5 s"))
    assert sent(actions) == [("c1", p.TaskFailed("j1", 0, 0, 1, "timeout", "ran past 0.5 s", 1))]  # not run again


def test_a_broken_worker_limit_fails_the_task_at_once():
    s = started(1)
    submit(s, "c1", "j1", tasks=2)
    reason = "task exceeded --max-memory 512 MiB"
    actions = s.task_crashed("w1", p.TaskCrashed("j1", 0, 1, "limit", reason))
    assert sent(actions) == [("c1", p.TaskFailed("j1", 0, 0, 1, "limit", reason, 1))]  # not run again


def test_the_task_timeout_travels_with_each_assignment():
    s = started(1)
    frames = sent(submit(s, "c1", "j1", tasks=1, task_timeout=2.5))
    assert [m for _, m in frames if isinstance(m, p.AssignTask)] == [assign("j1", 0, task_timeout=2.5, first=True)]


def test_tasks_with_failed_items_are_retried_then_forwarded():
    s = started(1)
    submit(s, "c1", "j1", tasks=3, items_per_task=4, retries=1)  # w1 holds 0 and 1
    actions = s.task_done("w1", done("j1", 0, failed=2))
    assert sent(actions) == [("w1", assign("j1", 0, 2, items_per_task=4))]  # in front of task 2
    actions = s.task_done("w1", done("j1", 0, attempt=2, failed=1))  # retries used up: forward it
    assert sent(actions) == [
        ("c1", result("j1", 0, 2, failed=1, items_per_task=4)),
        ("w1", assign("j1", 2, items_per_task=4)),
    ]
    summary = s.status()["jobs"][0]
    assert (summary["completed"], summary["failed"]) == (3, 1)


def test_without_retries_failed_items_are_forwarded_at_once():
    s = started(1)
    submit(s, "c1", "j1", tasks=1, items_per_task=3)
    assert sent(s.task_done("w1", done("j1", 0, failed=3)))[0] == ("c1", result("j1", 0, failed=3, items_per_task=3))


# --- cancel, clients -----------------------------------------------------------------------


def test_cancel_releases_the_workers_and_frees_their_places():
    s = started(1, 1)
    submit(s, "c1", "j1", tasks=10)  # all four places taken
    submit(s, "c1", "j2", tasks=4)  # queued behind
    actions = s.cancel_job("c1", "j1")
    frames = sent(actions)
    assert frames[:2] == [("w1", p.ReleaseJob("j1")), ("w2", p.ReleaseJob("j1"))]
    assert sorted(lease[1:] for lease in leased(actions)) == [("j2", 0, 1), ("j2", 1, 1), ("j2", 2, 1), ("j2", 3, 1)]
    (state,) = records(actions, SaveJobState)
    assert state.state == "cancelled"
    assert dropped(s.task_done("w1", done("j1", 0)))  # a result that was on the wire
    assert s.cancel_job("c1", "j1") == []  # idempotent
    assert {j["id"]: j["state"] for j in s.status()["jobs"]} == {"j2": "running", "j1": "cancelled"}
    assert sent(s.submit_job("c1", p.SubmitJob("j1", b"f", 1, 1))) == [
        ("c1", p.RequestError("j1", "a job with this id already ended"))
    ]


def test_a_client_that_leaves_does_not_stop_its_job_and_gets_it_back_on_attach():
    # Jobs outlive their client's connection (durable jobs): nothing is cancelled,
    # outcomes are kept, and attaching replays them.
    s = started(1)
    submit(s, "c1", "j1", tasks=2)
    assert s.remove_client("c1") == []
    assert sent(s.task_done("w1", done("j1", 0))) == []  # nobody to send it to
    s.add_client("c2")
    actions = s.attach_job("c2", "j1")
    assert sent(actions) == [
        ("c2", p.JobAttached("j1", 2, 2, "running", "f", finished_items=1)),
        ("c2", result("j1", 0)),
    ]
    assert sent(s.task_done("w1", done("j1", 1))) == [("c2", result("j1", 1)), ("w1", p.ReleaseJob("j1"))]


def test_a_client_attaching_to_a_followed_job_follows_it_too_and_the_first_keeps_it():
    # Attaching from a second process must not take the job from the one that submitted it
    # (it waited forever): both hear every outcome, and either one's cancel ends it for both.
    s = started(1)
    submit(s, "c1", "j1", tasks=3)
    s.task_done("w1", done("j1", 0))
    s.add_client("c2")
    assert sent(s.attach_job("c2", "j1")) == [
        ("c2", p.JobAttached("j1", 3, 3, "running", "f", finished_items=1)),
        ("c2", result("j1", 0)),
    ]
    assert sent(s.task_done("w1", done("j1", 1)))[:2] == [("c1", result("j1", 1)), ("c2", result("j1", 1))]
    assert s.busy_clients() == {"c1", "c2"}
    cancelled = sent(s.cancel_job("c2", "j1"))
    assert ("c1", p.JobAttached("j1", 3, 3, "cancelled")) in cancelled
    assert not [to for to, msg in cancelled if to == "c2"], "the client that cancelled knows"


def test_a_watcher_goes_on_hearing_a_job_whose_client_left_and_leaves_without_a_trace():
    s = started(1)
    submit(s, "c1", "j1", tasks=3)
    s.add_client("c2")
    s.attach_job("c2", "j1")
    s.remove_client("c1")
    assert sent(s.task_done("w1", done("j1", 0)))[:1] == [("c2", result("j1", 0))]
    s.remove_client("c2")
    assert s.jobs["j1"].followers() == []
    assert [to for to, _ in sent(s.task_done("w1", done("j1", 1))) if to.startswith("c")] == []  # nobody to tell
    s.add_client("c1")
    s.attach_job("c1", "j1")  # the submitter comes back: it is the job's client again
    assert s.jobs["j1"].followers() == ["c1"]


def test_a_submitter_resending_its_job_after_a_reconnect_keeps_the_client_that_attached_meanwhile():
    # c1 drops; c2 attaches (and becomes the job's client); c1 is back and resends its SubmitJob:
    # it was made the job's client and c2 was dropped from the job, waiting forever.
    s = started(1)
    submit(s, "c1", "j1", tasks=3)
    s.remove_client("c1")
    s.add_client("c2")
    s.attach_job("c2", "j1")
    s.add_client("c1b")
    s.submit_job("c1b", p.SubmitJob("j1", function("j1"), 3, 3, None, 0, "f"))
    assert sorted(s.jobs["j1"].followers()) == ["c1b", "c2"]
    assert [to for to, _ in sent(s.task_done("w1", done("j1", 0)))[:2]] == ["c1b", "c2"]


def test_only_the_jobs_client_collects_it_while_it_follows():
    # A watcher done with the job must not free the outcomes its client (briefly away) still needs.
    s = started(1)
    submit(s, "c1", "j1", tasks=1)
    s.add_client("c2")
    s.attach_job("c2", "j1")
    s.task_done("w1", done("j1", 0))
    assert s.collect_job("c2", "j1") == [] and s.jobs["j1"].results
    s.collect_job("c1", "j1")
    assert "j1" not in s.jobs or not s.jobs["j1"].results


def test_acknowledged_outcomes_are_kept_within_the_budget_then_dropped_and_only_a_resume_attaches():
    # Without a journal the foreman keeps outcomes for attach; past a budget it drops those the
    # client acknowledged, so its memory follows the window, not the job's size.
    budget = len(result("j1", 0).payload) * 2
    s = started(4, max_kept_outcome_bytes=budget)
    submit(s, "c1", "j1", tasks=4)
    for task_id in (0, 1):
        s.task_done("w1", done("j1", task_id))
    assert s.ack_results("c1", "j1", [0, 1]) == []
    assert sorted(s.jobs["j1"].results) == [0, 1]  # within the budget: kept
    s.task_done("w1", done("j1", 2))
    assert s.ack_results("c2", "j1", [2]) == []  # only the job's client acknowledges
    assert sorted(s.jobs["j1"].results) == [0, 1, 2]
    s.ack_results("c1", "j1", [2])
    assert s.jobs["j1"].results == {} and s.jobs["j1"].kept_bytes == 0
    s.add_client("c2")
    refused = sent(s.attach_job("c2", "j1"))
    assert refused[0][1].TYPE == "request_error" and "journal" in refused[0][1].reason
    resumed = sent(s.attach_job("c1", "j1", resume=True))
    assert resumed == [("c1", p.JobAttached("j1", 4, 4, "running", "f", finished_items=3))]
    assert sent(s.task_done("w1", done("j1", 3))) == [("c1", result("j1", 3)), ("w1", p.ReleaseJob("j1"))]


def test_attach_takes_the_start_of_a_job_id_as_status_views_show_it():
    s = started(1)
    submit(s, "c1", "j1-0123456789abcdef", tasks=2)
    submit(s, "c1", "j2-0123456789abcdef", tasks=2)
    s.add_client("c2")
    [(to, attached), *_] = sent(s.attach_job("c2", "j1-012"))
    assert (to, attached.job_id) == ("c2", "j1-0123456789abcdef")
    [(_, several)] = sent(s.attach_job("c2", "j"))  # too short to name one: no such job
    assert several.TYPE == "request_error" and "no such job" in several.reason
    submit(s, "c1", "j1-012999", tasks=1)
    [(_, several)] = sent(s.attach_job("c2", "j1-012"))
    assert several.TYPE == "request_error" and "give more of the id" in several.reason


def test_attach_with_a_journal_replays_from_it():
    s = make(journaled=True)
    s.add_client("c1")
    submit(s, "c1", "j1", tasks=1)
    assert s.attach_job("c1", "j1")[-1] == Replay("c1", "j1")
    assert sent(s.attach_job("c1", "nope"))[0][1].TYPE == "request_error"


def test_a_job_resubmitted_after_a_reconnect_is_followed_not_duplicated():
    s = started(1)
    first = submit(s, "c1", "j1", tasks=2)
    s.remove_client("c1")
    s.add_client("c1b")
    again = submit(s, "c1b", "j1", tasks=2)
    assert sent(again) == [("c1b", p.JobAccepted("j1"))]
    assert records(again, SaveTask) == [] and len(records(first, SaveTask)) == 2
    assert sent(s.task_done("w1", done("j1", 0)))[0] == ("c1b", result("j1", 0))


def test_collected_jobs_are_forgotten_and_ended_ones_expire():
    clock = Clock()
    s = Scheduler(clock=clock, result_ttl=60)
    s.add_client("c1")
    s.add_worker("w1", "one", 1)
    submit(s, "c1", "j1", tasks=1)
    s.task_done("w1", done("j1", 0))
    assert s.collect_job("c1", "j1") == []
    assert "j1" not in s.jobs and s.status()["jobs"][0]["state"] == "done"
    clock.now += 61
    assert [a.job_id for a in s.expire()] == ["j1"]
    assert s.status()["jobs"] == []


def test_bad_submissions_are_answered_with_a_reason():
    s = make()
    s.add_client("c1")
    ((to, error),) = sent(s.submit_task("c1", p.SubmitTask("nope", 0, 0, 1, b"x")))
    assert to == "c1" and isinstance(error, p.RequestError) and "submit_job" in error.reason
    s.submit_job("c1", p.SubmitJob("j1", b"f", 1, 2))
    ((_, error),) = sent(s.submit_task("c1", p.SubmitTask("j1", 1, 0, 1, b"x")))
    assert "out of the job's range" in error.reason
    ((_, error),) = sent(s.submit_task("c1", p.SubmitTask("j1", 0, 1, 2, b"x")))
    assert "out of the job's range" in error.reason


# --- empty job, status -------------------------------------------------------------------------


def test_an_empty_job_is_accepted_and_done_at_once():
    s = started(1)
    actions = s.submit_job("c1", p.SubmitJob("j0", b"f", 0, 0))
    assert [type(a) for a in actions] == [SaveJob, Send, SaveJobState]
    assert sent(actions) == [("c1", p.JobAccepted("j0"))]  # no worker hears of it
    assert records(actions, SaveJobState)[0].state == "done"
    assert s.status()["jobs"] == [
        {
            "id": "j0",
            "name": "",
            "total": 0,
            "completed": 0,
            "failed": 0,
            "state": "done",
            "untrusted_workers": 0,
            "waiting": "",
        }
    ]


def test_status_has_the_documented_shape():
    s = started(2)
    submit(s, "c1", "j1", tasks=4, items_per_task=5)
    s.task_done("w1", done("j1", 0, failed=1))
    status = s.status()
    assert set(status) >= {"workers", "jobs"}
    (worker,) = status["workers"]
    assert {"name": "one", "slots": 2, "busy": 2}.items() <= worker.items()
    (job,) = status["jobs"]
    assert {"id": "j1", "total": 20, "completed": 4, "failed": 1, "state": "running"}.items() <= job.items()
    assert s.total_slots == 2
    assert p.decode(p.encode(p.StatusReply.of(status))).status == status  # it travels as plain JSON


def test_a_result_carries_who_ran_it_how_long_it_queued_and_its_attempts():
    clock = Clock()
    s = make(clock=clock)
    s.add_client("c1")
    submit(s, "c1", "j1", tasks=1)
    clock.now += 2.5  # no worker for a while
    s.add_worker("w1", "one", 1)
    s.remove_worker("w1")  # reassigned once
    clock.now += 1.0
    s.add_worker("w2", "two", 1)
    (to, msg), *_ = [
        (a.to, a.message)
        for a in s.task_done("w2", p.TaskDone("j1", 0, 2, 0, b"out", seconds=0.7))
        if isinstance(a, Send)
    ]
    assert (to, msg.worker, msg.seconds, msg.queued, msg.attempts) == ("c1", "two", 0.7, 3.5, 2)


def test_a_job_whose_client_left_mid_submission_is_dropped_after_the_ttl():
    clock = Clock()
    s = make(clock=clock, result_ttl=60)
    s.add_client("c1")
    s.add_worker("w1", "one", 1)
    s.submit_job("c1", p.SubmitJob("j1", b"f", 3, 3))
    s.submit_task("c1", p.SubmitTask("j1", 0, 0, 1, b"x"))
    s.remove_client("c1")
    clock.now += 61
    actions = s.expire()
    assert any(isinstance(a, Note) and "left before sending all its tasks" in a.text for a in actions)
    assert "j1" not in s.jobs and s.ended["j1"]["state"] == "cancelled"
    assert s.workers["w1"].running == {}
