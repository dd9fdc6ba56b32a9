"""A task process is handed its next task while it runs one (worker.pool.Slot.preload), so that it
starts it at once. Real task processes: the preloaded task's outcome is its own, and a crash of
the running task is never blamed on the one behind it."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import pickle
import subprocess
import sys
import termios
import time

import pytest
from helpers import arun, wait_until

from crowdcompute import CrowdComputeClient
from crowdcompute.codecs.pickled import dumps_function, dumps_items
from worker.launch import CommandLauncher, ForkLauncher
from worker.pool import Finished, Lost, Slot, SlotSettings


def _function(kind: str) -> tuple[bytes, str]:
    def tag(x):
        import os
        import time

        if x == "crash":
            os._exit(3)
        time.sleep(30 if x == "slow" else 0.2)
        return f"{kind}:{x}"

    return dumps_function(tag), "cloudpickle"


def _ignore(*args) -> None:
    return None


async def _run(slot: Slot, job: str, index: int, item, token=None, then=None, timeout=30.0):
    function = _function(job)
    outcome = await slot.execute(
        job, index, 1, function, dumps_items([item]), timeout, _ignore, None, None, token=token, then=then
    )
    if isinstance(outcome, Finished):
        values, errors = pickle.loads(outcome.payload)
        assert not errors, errors
        return values[0]
    return outcome


@pytest.fixture
def slot():
    slot = Slot(SlotSettings(launcher=CommandLauncher()), 0)  # a process of its own, not a forkserver's
    try:
        yield slot
    finally:
        slot.kill()
        slot.close()


def test_a_preloaded_task_runs_next_with_its_own_outcome(slot):
    async def main():
        behind = object()
        preloaded = []
        function = _function("j")

        def then():
            preloaded.append(slot.preload(behind, "j", 1, 1, function, dumps_items(["b"])))

        first = await _run(slot, "j", 0, "a", then=then)
        pid = slot.pid
        assert preloaded == [True]
        second = await _run(slot, "j", 1, "b", token=behind)
        assert (first, second) == ("j:a", "j:b")
        assert slot.pid == pid, "the preloaded task ran in the same process"

    asyncio.run(asyncio.wait_for(main(), 30))


def _waiting_bytes(fd: int) -> int:
    found = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, found, True)
    return found[0]


def test_an_outcome_read_in_with_the_one_before_it_is_taken_from_what_was_read(slot):
    """One read of the pipe may take in the preloaded task's outcome with the running one's: the
    wait for it must look at what was read, not at the pipe, which stays quiet."""

    async def main():
        behind = object()
        function = _function("j")
        running = asyncio.ensure_future(
            _run(slot, "j", 0, "a", then=lambda: slot.preload(behind, "j", 1, 1, function, dumps_items(["b"])))
        )
        while slot._conn is None or slot._preloaded is not behind:  # bounded by wait_for below
            await asyncio.sleep(0.005)
        # Hold this loop (the agent's) until both outcomes wait in the pipe: they are the same size.
        fd, one, deadline = slot._conn.fileno(), 0, time.monotonic() + 10
        while not (one and _waiting_bytes(fd) >= 2 * one):
            assert time.monotonic() < deadline, f"the two outcomes never waited together ({one} bytes)"
            one = one or _waiting_bytes(fd)
            time.sleep(0.005)
        assert await running == "j:a"
        assert await asyncio.wait_for(_run(slot, "j", 1, "b", token=behind), 10) == "j:b"

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_crash_of_the_running_task_is_not_blamed_on_the_preloaded_one(slot):
    async def main():
        behind = object()
        function = _function("j")
        crashed = await _run(
            slot, "j", 0, "crash", then=lambda: slot.preload(behind, "j", 1, 1, function, dumps_items(["b"]))
        )
        assert isinstance(crashed, Lost) and "code 3" in crashed.reason, crashed
        assert await _run(slot, "j", 1, "b", token=behind) == "j:b", "the preloaded task was lost with the crash"

    asyncio.run(asyncio.wait_for(main(), 30))


async def _time_out_with_a_task_behind(slot: Slot) -> None:
    """The process killed for the timeout must be gone before the preloaded task is run: while
    the kill was under way it looked alive, and the task behind was waited for in it and reported
    as killed by SIGKILL (a crash charged to a task that never ran)."""
    function = _function("j")
    for index in range(0, 10, 2):
        behind = object()
        preload = lambda: slot.preload(behind, "j", index + 1, 1, function, dumps_items(["b"]))
        timed_out = await _run(slot, "j", index, "slow", then=preload, timeout=0.3)
        assert isinstance(timed_out, Lost) and "timeout" in timed_out.reason, timed_out
        assert await _run(slot, "j", index + 1, "b", token=behind) == "j:b", "the task behind was lost"


def _kill_and_reap(slot: Slot) -> None:
    """A forkserver's sentinel can look quiet for a moment after the exit code was read from it:
    the process must not be taken for alive then (the next task would be written to a dead one)."""
    for _ in range(5):
        slot.start()
        process = slot._process
        assert process is not None and process.is_alive()
        process.kill()
        process.join(5)
        assert process.exitcode is not None, "the killed process did not end within 5 s"
        assert not process.is_alive(), f"a process that exited with {process.exitcode} looks alive"


def test_a_timeout_of_the_running_task_is_not_blamed_on_the_preloaded_one(slot):
    asyncio.run(asyncio.wait_for(_time_out_with_a_task_behind(slot), 60))


def test_a_killed_and_reaped_task_process_is_not_alive(slot):
    _kill_and_reap(slot)


def forkserver_checks() -> None:
    """The two checks above with the agent's default launcher (run in a process of its own, whose
    forkserver and resource tracker end with it)."""
    slot = Slot(SlotSettings(launcher=ForkLauncher()), 0)
    try:
        _kill_and_reap(slot)
        asyncio.run(asyncio.wait_for(_time_out_with_a_task_behind(slot), 60))
    finally:
        slot.kill()
        slot.close()


def test_the_same_with_task_processes_from_a_forkserver():
    here = os.path.dirname(os.path.abspath(__file__))
    code = "import test_preload; test_preload.forkserver_checks()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_another_task_than_the_preloaded_one_never_gets_its_outcome(slot):
    async def main():
        function = _function("j")
        await _run(slot, "j", 0, "a", then=lambda: slot.preload(object(), "j", 1, 1, function, dumps_items(["b"])))
        # The preloaded task's job was released: the next task is another one, and must get its own outcome.
        assert await _run(slot, "k", 0, "c") == "k:c"

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_big_input_is_never_preloaded(slot):
    async def main():
        function = _function("j")
        written = []
        big = dumps_items(["x" * 100_000])
        await _run(slot, "j", 0, "a", then=lambda: written.append(slot.preload(object(), "j", 1, 1, function, big)))
        assert written == [False], "a write bigger than the pipe holds would block the agent until the task ends"

    asyncio.run(asyncio.wait_for(main(), 30))


def _where(seconds):
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


@contextlib.asynccontextmanager
async def _two_slots():
    """A worker agent of two real task processes, not connected: ``assign(task_id, seconds, items)``
    hands it a task as a lease from the foreman would, ``done()`` is the next answer's (task id,
    process id or "cancelled"), ``running(count)`` waits until that many slots run a task,
    ``claimed()`` until none waits, ``cancel(task_id)`` cancels a task as the foreman does when
    another run of it won."""
    from crowdcompute.wire import messages as p
    from crowdcompute.wire.addresses import parse_address
    from worker.agent import WorkerAgent

    settings = SlotSettings(launcher=CommandLauncher())
    agent = WorkerAgent(parse_address("127.0.0.1", 9), token=None, procs=2, slot_settings=settings)
    loop = asyncio.get_running_loop()
    agent._started = asyncio.gather(*(loop.run_in_executor(None, slot.start) for slot in agent.slots))
    runners = [asyncio.create_task(agent._run_slot(slot)) for slot in agent.slots]
    function = dumps_function(_where)

    def assign(task_id: int, seconds: float, items: int = 1) -> None:
        """Task ``task_id``: ``items`` items (indexes from 10 * task_id) of ``seconds`` each."""
        payload = dumps_items([seconds] * items)
        agent._handle(p.AssignTask("j", task_id, 1, 10 * task_id, items, payload, 30.0, function=function))

    async def done() -> tuple[int, int | str]:
        message = p.decode_parts(await asyncio.wait_for(agent._outbox.get(), 30))
        while isinstance(message, p.TaskProgress):  # a task of several items reports them as they end
            message = p.decode_parts(await asyncio.wait_for(agent._outbox.get(), 30))
        if isinstance(message, p.TaskCancelled):
            return message.task_id, "cancelled"
        assert isinstance(message, p.TaskDone), message
        values, errors = pickle.loads(message.payload)
        assert not errors, errors
        return message.task_id, values[0]

    async def running(count: int = 1) -> None:
        await wait_until(lambda: len(agent._running) >= count, 30, f"{count} slot(s) never ran a task at once")

    async def claimed() -> None:
        await wait_until(agent._queue.empty, 30, "the waiting task was neither claimed nor started")

    def cancel(task_id: int) -> None:
        agent._handle(p.CancelTask("j", task_id))

    try:
        yield assign, done, running, claimed, cancel
    finally:
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await agent._started
        for slot in agent.slots:
            slot.kill()
            slot.close()


def test_tasks_arriving_together_go_first_to_an_idle_slot_then_behind_a_running_one():
    """Two tasks in one frame, one slot busy with a long task and one idle: the idle slot takes
    the first (the foreman counts a worker's tasks as run in the order it leased them)."""

    async def main():
        async with _two_slots() as (assign, done, running, _, _):
            assign(0, 2.0)
            await running()  # a slot runs the long task
            assign(1, 0.0)  # these two arrive in one frame
            assign(2, 0.0)
            pids = dict([await done() for _ in range(3)])
            assert pids[1] != pids[0], "the first task of the two went behind the long task, not to the idle slot"

    asyncio.run(main())


def test_a_task_waits_for_the_slot_that_needs_it_first_not_behind_a_long_task():
    """One slot runs a 4-item task; the other is handed a 1-item task with another 1-item task in
    the same frame, then one more task comes. Claimed behind the long task, either would leave
    the short tasks' slot idle until the long one ends (a round trip of the foreman's, in a
    crowd); both go to the slot that will need them first."""

    async def main():
        async with _two_slots() as (assign, done, running, claimed, _):
            assign(0, 0.5, items=4)  # 2 s
            await running()
            assign(1, 0.5)  # these two arrive in one frame
            assign(2, 0.5)
            await claimed()
            assign(3, 0.5)
            order = [await done() for _ in range(4)]
            assert [task for task, _ in order] == [1, 2, 3, 0], (
                f"outcomes (task, process) in the order {order}: a short task waited behind the long one"
            )
            assert len({pid for task, pid in order if task}) == 1, (
                "the short tasks did not share the slot that freed first"
            )

    asyncio.run(main())


def test_a_cancelled_task_stops_at_once_and_its_slot_runs_the_next():
    """Both slots run a 20 s task; the foreman cancels one (another run of it won elsewhere): its
    process stops, the agent answers that it did, and the next task runs on that slot at once."""

    async def main():
        async with _two_slots() as (assign, done, running, _, cancel):
            assign(0, 20.0)
            assign(1, 20.0)
            await running(2)
            cancel(0)
            assign(2, 0.0)
            first = dict([await done(), await done()])
            assert first.keys() == {0, 2} and first[0] == "cancelled", (
                f"first answers (task: process or 'cancelled'): {first}; the cancelled task's slot did not take the next"
            )
            cancel(1)

    asyncio.run(main())


def test_a_cancelled_task_waiting_behind_a_running_one_never_runs():
    """Both slots run a task, and the next two wait behind them (claimed, written to their
    processes' pipes, or queued here); one of those is cancelled: it never runs, and the agent
    answers that it skipped it."""

    async def main():
        async with _two_slots() as (assign, done, running, claimed, cancel):
            assign(0, 0.5)
            assign(1, 0.5)
            await running(2)
            assign(2, 0.5)
            assign(3, 0.5)
            await claimed()
            cancel(2)
            seen = dict([await done() for _ in range(4)])
            assert seen.keys() == {0, 1, 2, 3} and seen[2] == "cancelled", f"answers (task: process): {seen}"

    asyncio.run(main())


def span(seconds):
    import os
    import time

    start = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), start, time.monotonic()


def test_a_worker_starts_the_tasks_of_a_lease_in_its_order(start_foreman, start_worker):
    """Two idle slots handed four tasks at once start the first two together, the others preloaded
    behind them. A slot that preloaded the second would start it only after its own first task."""
    foreman = start_foreman("--journal", "none")
    start_worker(foreman.url, "--procs", "2")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            await cc.map(span, [0.0, 0.0], chunksize=1, progress=False)  # both task processes are up
            return await cc.map(span, [0.3] * 4, chunksize=1, progress=False)

    (pid0, _, end0), (pid1, start1, _), *_ = arun(main(), timeout=60)
    assert pid1 != pid0 and start1 < end0, "the second task waited behind the first instead of starting at once"


def test_a_running_slot_needs_its_next_task_once_the_items_it_holds_are_done():
    from worker.claims import Ends

    ends = Ends()
    ends.started(0, "j", 4)
    ends.started(1, "j", 1)
    assert ends.sooner(1, [0, 1]) == 1 and ends.sooner(0, [0, 1]) == 2
    assert ends.first([0, 1]) == [1, 0]
    ends.claimed(1, "j", 4)  # slot 1 now holds 5 items: slot 0 needs a task first
    assert ends.sooner(0, [0, 1]) == 1 and ends.first([0, 1]) == [0, 1]
    ends.ended("j", 1, 10.0)  # the job's items take 10 s here
    ends.started(1, "j", 1)
    assert ends.first([0, 1]) == [0, 1]
    assert ends.sooner(2, [0, 1, 2]) == 3, "a slot with nothing known counts every running slot"
