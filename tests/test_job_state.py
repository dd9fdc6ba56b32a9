"""Pure tests of the client's job state: feed messages, compare the instructions it returns.

Like test_scheduler.py for the foreman: no loop, no sockets, no sleeps; time
is an injected clock. The last tests drive the Job around the machine, to
show that it needs no loop to be made and that waiters wake on events.
"""

from __future__ import annotations

import asyncio
import pickle

import pytest

from crowdcompute.codecs.outcomes import describe_exception, dumps_outcomes
from crowdcompute.errors import (
    ConnectionLostError,
    CrowdComputeError,
    JobCancelledError,
    TaskError,
    TaskTimeoutError,
    UntrustedPayloadError,
    WorkerCrashedError,
)
from crowdcompute.job import Job
from crowdcompute.job_state import (
    Cancel,
    Changed,
    Deliver,
    Echo,
    Fail,
    Finish,
    Forget,
    JobMachine,
    JobState,
    Lost,
    SendCancel,
)
from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import ErrorKind


class Clock:
    """Monotonic time that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def machine(items=("a", "b", "c", "d"), clock=None, **options) -> JobMachine:
    return JobMachine("j1", list(items), clock=clock or Clock(), **options)


def result(task_id: int, first: int, values: list, errors: dict | None = None, **fields) -> p.TaskResult:
    payload = dumps_outcomes(values, errors or {})
    return p.TaskResult("j1", task_id, first, len(values), len(errors or {}), payload, **fields)


def failed(task_id: int, first: int, count: int, error=ErrorKind.TIMEOUT, reason="took over 1 s") -> p.TaskFailed:
    return p.TaskFailed("j1", task_id, first, count, error, reason, attempts=2)


def kinds(instructions: list) -> list[str]:
    return [type(i).__name__ for i in instructions]


# --- results ------------------------------------------------------------------------


def test_results_arrive_in_any_order_and_the_last_one_finishes_and_collects_the_job():
    clock = Clock()
    m = machine(clock=clock)
    clock.now = 101.0
    assert m.handle(result(1, 2, ["C", "D"], worker="w1", seconds=0.25, queued=0.5), sent_at=100.0) == [
        Deliver(2, ["C", "D"]),
        Changed(),
    ]
    assert (m.completed, m.failed, m.state, m.done) == (2, 0, JobState.RUNNING, False)
    clock.now = 102.0
    assert m.handle(result(0, 0, ["A", "B"], worker="w2")) == [
        Deliver(0, ["A", "B"]),
        Finish(JobState.DONE, None),
        Forget("j1", collect=True),
        Changed(),
    ]
    assert (m.completed, m.failed, m.state, m.finished) == (4, 0, JobState.DONE, 102.0)
    assert m.outcomes() == ["A", "B", "C", "D"]
    first, second = m.timings
    assert (first.task_id, first.worker, first.count, first.round_trip, first.arrived) == (1, "w1", 2, 1.0, 101.0)
    assert first.transit == pytest.approx(0.25)  # round trip minus running and queueing
    assert (second.task_id, second.round_trip) == (0, None)  # no send time known: after an attach, say


def test_a_replayed_task_reaches_the_user_once_and_is_timed_once():
    m = machine()
    m.handle(result(0, 0, ["A", "B"]))
    assert m.handle(result(0, 0, ["A", "B"])) == []
    assert (m.completed, len(m.timings)) == (2, 1)


def test_outcomes_out_of_the_jobs_range_are_ignored():
    m = machine()
    assert m.handle(result(9, 3, ["X", "Y"])) == []
    assert m.handle(result(9, -1, ["X"])) == []
    assert m.handle(failed(9, 4, 1)) == []
    assert (m.completed, m.failed) == (0, 0)


def test_a_users_exception_fails_its_item_naming_index_and_input():
    m = machine()
    error = describe_exception(ZeroDivisionError("division by zero"))
    done = m.handle(result(0, 0, ["A", None], {1: error}))
    assert kinds(done) == ["Deliver", "Fail", "Changed"]
    assert done[0] == Deliver(0, ["A"])
    failure = done[1].error
    assert done[1].index == 1 and failure is m.errors[1]
    assert isinstance(failure, TaskError) and isinstance(failure, ZeroDivisionError)
    assert failure.index == 1 and "'b'" in str(failure)
    done = m.handle(result(1, 2, ["C", "D"]))
    assert kinds(done) == ["Deliver", "Deliver", "Finish", "Forget", "Changed"]
    assert done[2] == Finish(JobState.FAILED, None) and done[3] == Forget("j1", collect=True)
    assert (m.completed, m.failed) == (3, 1)
    assert m.outcomes()[:1] == ["A"] and m.outcomes()[1] is failure


def test_errors_of_one_call_name_no_item():
    m = machine(items=[((), {})], call=True)
    done = m.handle(result(0, 0, [None], {0: describe_exception(KeyError("k"))}))
    assert kinds(done) == ["Fail", "Finish", "Forget", "Changed"]
    assert done[0].error.index is None


def test_a_task_that_timed_out_fails_each_of_its_items_and_a_late_result_changes_nothing():
    m = machine()
    done = m.handle(failed(0, 0, 2))
    assert kinds(done) == ["Fail", "Fail", "Changed"]
    assert done[:2] == [Fail(0, m.errors[0]), Fail(1, m.errors[1])]
    assert all(isinstance(f.error, TaskTimeoutError) for f in done[:2])
    assert m.handle(result(0, 0, ["A", "B"])) == []  # nothing new: each item has one outcome
    assert (m.completed, m.failed) == (0, 2)
    assert m.handle(failed(0, 0, 2)) == []
    done = m.handle(failed(1, 2, 2, ErrorKind.CRASHED, "signal 9"))
    assert isinstance(done[0].error, WorkerCrashedError) and "2 times" in str(done[0].error)
    assert done[-3:] == [Finish(JobState.FAILED, None), Forget("j1", collect=True), Changed()]


def test_an_untrusted_payload_holding_more_than_plain_data_fails_its_items():
    m = machine(trusted=False)
    payload = pickle.dumps(([Clock(), 1], {}))
    done = m.handle(p.TaskResult("j1", 0, 0, 2, 0, payload))
    assert kinds(done) == ["Fail", "Fail", "Changed"]
    assert all(isinstance(f.error, UntrustedPayloadError) for f in done[:2])


def test_printed_text_is_echoed_even_after_the_end():
    m = machine(items=["a"])
    assert m.handle(p.TaskOutput("j1", 0, 0, "stdout", "hi\n")) == [Echo(0, "stdout", "hi\n")]
    m.handle(result(0, 0, ["A"]))
    assert m.handle(p.TaskOutput("j1", 0, 0, "stderr", "late\n")) == [Echo(0, "stderr", "late\n")]


# --- ends other than all outcomes ---------------------------------------------------


def test_cancel_sends_a_cancel_once_and_outcomes_after_it_change_nothing():
    clock = Clock()
    m = machine(clock=clock)
    clock.now = 105.0
    done = m.handle(Cancel())
    assert kinds(done) == ["SendCancel", "Finish", "Forget", "Changed"]
    assert done[0] == SendCancel("j1") and done[2] == Forget("j1", collect=False)
    assert done[1].state is JobState.CANCELLED and isinstance(done[1].error, JobCancelledError)
    assert m.fatal is done[1].error and m.finished == 105.0
    assert m.handle(Cancel()) == []
    assert m.handle(result(0, 0, ["A", "B"])) == []
    assert m.handle(p.JobAttached("j1", 4, 2, "cancelled")) == []
    assert (m.completed, m.state) == (0, JobState.CANCELLED)


def test_a_job_cancelled_elsewhere_ends_without_sending_a_cancel():
    m = machine()
    assert m.handle(p.JobAttached("j1", 4, 2, "running")) == []
    done = m.handle(p.JobAttached("j1", 4, 2, "cancelled"))
    assert kinds(done) == ["Finish", "Forget", "Changed"]
    assert isinstance(done[0].error, JobCancelledError)


def test_a_lost_connection_ends_the_job_and_a_done_job_stays_done():
    m = machine()
    lost = ConnectionLostError("the foreman went away")
    assert m.handle(Lost(lost)) == [Finish(JobState.LOST, lost), Forget("j1", collect=False), Changed()]
    assert m.handle(Lost(ConnectionLostError("again"))) == []
    m = machine(items=["a"])
    m.handle(result(0, 0, ["A"]))
    assert m.handle(Lost(lost)) == [] and m.handle(Cancel()) == []
    assert m.state is JobState.DONE and m.fatal is None


def test_a_refused_request_ends_the_job_with_the_foremans_reason():
    m = machine()
    (finish, forget, changed) = m.handle(p.RequestError("j1", "too many jobs"))
    assert finish.state is JobState.LOST and forget == Forget("j1", collect=False)
    assert isinstance(finish.error, CrowdComputeError) and "too many jobs" in str(finish.error)


def test_an_empty_job_is_done_from_the_start_and_an_unknown_event_is_refused():
    m = machine(items=[])
    assert (m.done, m.state, m.outcomes()) == (True, JobState.DONE, [])
    with pytest.raises(TypeError, match="StatusReply"):
        m.handle(p.StatusReply("{}"))


# --- the Job around the machine ----------------------------------------------------------


def test_a_job_is_made_without_a_running_loop_and_passes_connection_work_to_its_outbox():
    sent = []
    job = Job("j1", ["a", "b"], outbox=sent.append)
    seen = []
    job.add_listener(lambda j: seen.append((j.completed, j.state)))
    job.add_listener(lambda j: 1 / 0)  # a broken listener is dropped, the job goes on
    job.handle(result(0, 0, ["A"]))
    job.cancel()
    job.cancel()
    assert sent == [SendCancel("j1"), Forget("j1", collect=False)]
    assert seen == [(1, JobState.RUNNING), (1, JobState.CANCELLED)]
    assert (job.done, job.completed, job.total) == (True, 1, 2)
    with pytest.raises(JobCancelledError):
        asyncio.run(job.result())


def test_waiters_wake_when_the_state_changes_without_waiting_for_a_timer():
    async def story() -> None:
        job = Job("j1", ["a", "b", "c"])
        waiting = asyncio.ensure_future(job.result())
        arrivals = job.as_completed()
        first = asyncio.ensure_future(arrivals.__anext__())
        await asyncio.sleep(0)
        assert not waiting.done() and not first.done()
        job.handle(result(1, 1, ["B"]))
        for _ in range(3):  # a few turns of the loop, no time passing
            await asyncio.sleep(0)
        assert first.done() and first.result() == (1, "B"), "as_completed did not wake on the arrival"
        assert not waiting.done()
        job.handle(result(0, 0, ["A"]))
        job.handle(result(2, 2, ["C"]))
        for _ in range(3):
            await asyncio.sleep(0)
        assert waiting.done(), "await job did not wake when the job finished"
        assert waiting.result() == ["A", "B", "C"]
        assert [entry async for entry in arrivals] == [(0, "A"), (2, "C")]
        assert [entry async for entry in job.as_completed()] == [(0, "A"), (1, "B"), (2, "C")]

    asyncio.run(asyncio.wait_for(story(), 10))


def test_as_completed_raises_a_failed_items_error_and_printed_text_goes_to_output_listeners():
    async def story() -> None:
        job = Job("j1", ["a", "b"])
        said = []
        job.add_output_listener(lambda index, stream, text: said.append((index, stream, text)))
        job.handle(p.TaskOutput("j1", 0, 1, "stdout", "hello\n"))
        job.handle(result(0, 0, ["A", None], {1: describe_exception(ValueError("bad"))}))
        seen = []
        with pytest.raises(ValueError, match="bad"):
            async for entry in job.as_completed():
                seen.append(entry)
        assert seen == [(0, "A")] and said == [(1, "stdout", "hello\n")]
        outcomes = await job.result(return_exceptions=True)
        assert outcomes[0] == "A" and isinstance(outcomes[1], TaskError)

    asyncio.run(asyncio.wait_for(story(), 10))


def test_outcomes_of_parts_and_of_the_whole_task_overlapping_count_each_item_once():
    # The foreman cut task 0 (items 0..3) into parts; it lost its memory (no journal) and ran
    # the whole task again, and its parts in another cut: every item still counts once.
    m = machine(items=("a", "b", "c", "d", "e", "f"))
    m.handle(result(0, 0, ["A", "B"]))  # part 1 of task 0
    m.handle(result(7, 2, ["C"]))  # another part, another id
    m.handle(result(0, 0, ["A", "B", "C", "D"]))  # the whole task, run again
    m.handle(result(9, 1, ["B", "C"]))  # a middle part, again
    assert (m.completed, m.failed) == (4, 0) and m.results[:4] == ["A", "B", "C", "D"]
    m.handle(result(1, 4, ["E", "F"]))
    assert m.done and m.results == ["A", "B", "C", "D", "E", "F"]
