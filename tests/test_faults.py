"""Faults survived with nothing lost or duplicated: real processes, loopback, every wait bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
from helpers import Proxy, arun, wait_until

from crowdcompute import (
    ConnectionLostError,
    CrowdComputeClient,
    JobCancelledError,
    TaskError,
    TaskTimeoutError,
    WorkerCrashedError,
)


def slow_square(x):
    import time

    time.sleep(0.15)
    return x * x


def test_worker_killed_mid_map_loses_nothing(foreman, start_worker):
    doomed = start_worker(foreman.url, "--procs", "1", "--name", "doomed")
    start_worker(foreman.url, "--procs", "1", "--name", "survivor")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(slow_square, range(30), chunksize=1)
            await wait_until(lambda: job.completed >= 4, 20, "no results arrived before the kill")
            doomed.popen.kill()
            assert await job == [x * x for x in range(30)]
            assert job.completed == 30 and job.failed == 0

    arun(main(), timeout=60)


def test_frozen_worker_is_dropped_and_its_late_result_discarded(start_foreman, start_worker):
    foreman = start_foreman("--heartbeat-timeout", "1.5")
    frozen = start_worker(foreman.url, "--procs", "1", "--name", "frozen")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(slow_square, range(6), chunksize=1)
            await wait_until(lambda: job.completed >= 1, 20, "the worker produced nothing")
            os.kill(frozen.popen.pid, signal.SIGSTOP)

            async def frozen_dropped():
                return "frozen" not in [w["name"] for w in (await cc.status())["workers"]]

            try:
                await wait_until(frozen_dropped, 15, "the foreman kept a silent worker past its heartbeat timeout")
            finally:
                os.kill(frozen.popen.pid, signal.SIGCONT)
            start_worker(foreman.url, "--procs", "1", "--name", "fresh")
            assert await job == [x * x for x in range(6)]
            assert job.completed == 6

    arun(main(), timeout=60)


def _exit_on_three(x):
    import os

    if x == 3:
        os._exit(3)
    return x


def _segfault_on_two(x):
    if x == 2:
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return x


@pytest.mark.parametrize(
    "func, bad, cause", [(_exit_on_three, 3, "exited with code 3"), (_segfault_on_two, 2, "SIGSEGV")]
)
def test_poison_task_fails_alone_and_the_worker_stays(cluster, func, bad, cause):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(func, range(6), chunksize=1)
            with pytest.raises(WorkerCrashedError) as caught:
                await job
            error = caught.value
            assert error.index == bad and error.attempts == 3 and cause in error.cause
            results = await job.result(return_exceptions=True)
            assert [r for i, r in enumerate(results) if i != bad] == [x for x in range(6) if x != bad]
            status = await cc.status()
            assert [w["name"] for w in status["workers"]] == ["w1"]
            assert await cc.map(abs, [-1]) == [1]

    arun(main(), timeout=60)


def _exit_on_one(x):
    import sys

    if x == 1:
        sys.exit(3)
    return x


def _interrupt_on_one(x):
    if x == 1:
        raise KeyboardInterrupt("from the function")
    return x


@pytest.mark.parametrize("func, exc_type", [(_exit_on_one, "SystemExit"), (_interrupt_on_one, "KeyboardInterrupt")])
def test_system_exit_or_keyboard_interrupt_raised_by_the_function_is_its_error(cluster, func, exc_type):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(func, range(3), chunksize=1)
            with pytest.raises(TaskError) as caught:
                await job
            error = caught.value
            assert not isinstance(error, WorkerCrashedError), str(error)
            assert not isinstance(error, (SystemExit, KeyboardInterrupt))  # which would stop the caller
            assert error.index == 1 and error.exc_type == exc_type
            assert exc_type in error.remote_traceback and func.__name__ in error.remote_traceback
            assert job.completed == 2 and job.failed == 1
            with pytest.raises(TaskError, match=exc_type):  # run() too
                await cc.run(func, 1)

    arun(main(), timeout=60)


def _wait_for_go(folder):
    """Writes its pid, then runs until the test says go; returns its pid and how many times it ran."""
    import os
    import time

    runs = os.path.join(folder, "runs")
    with open(runs, "a") as f:
        f.write("x")
    with open(os.path.join(folder, "pid.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(folder, "pid.tmp"), os.path.join(folder, "pid"))
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.01)
    return os.getpid(), len(open(runs).read())


def test_a_real_sigint_to_a_task_process_leaves_its_task_running(cluster, tmp_path):
    # Ctrl-C in the terminal of `crowdcompute worker` reaches its task processes (one process
    # group): it is the agent's to act on (it lets running tasks finish). The task goes on in
    # its process, once; it is neither the function's KeyboardInterrupt nor a crash.
    pid_file = tmp_path / "pid"

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(_wait_for_go, [str(tmp_path)], chunksize=1)
            await wait_until(pid_file.exists, 20, "the task never started")
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGINT)
            (tmp_path / "go").touch()
            assert await job == [(pid, 1)]

    arun(main(), timeout=60)


def _sleep_for(seconds):
    import time

    time.sleep(seconds)
    return seconds


def test_task_timeout_stops_the_task_and_the_worker_stays_healthy(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(_sleep_for, [0.01, 30, 0.01], timeout=1)
            with pytest.raises(TaskTimeoutError) as caught:
                await job
            assert caught.value.index == 1 and isinstance(caught.value, TimeoutError)
            results = await job.result(return_exceptions=True)
            assert results[0] == 0.01 and results[2] == 0.01
            assert await cc.map(abs, [-2, -3]) == [2, 3]

    arun(main(), timeout=60)


def test_retries_rerun_a_task_whose_function_raised(cluster, tmp_path):
    marker = tmp_path / "failed-once"

    def flaky(x):
        if x == 1 and not marker.exists():
            marker.write_text("x")
            raise RuntimeError("first time fails")
        return x

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            assert await cc.map(flaky, range(3), chunksize=1, retries=1) == [0, 1, 2]
            marker.unlink()
            with pytest.raises(RuntimeError, match="first time fails"):
                await cc.map(flaky, range(3), chunksize=1)  # no retries unless asked

    arun(main())


def _burn(path):
    import os

    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        pass


def test_cancel_stops_running_tasks_within_two_seconds(cluster, tmp_path):
    pid_file = tmp_path / "pid"

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(_burn, [str(pid_file)] * 4, chunksize=1)
            await wait_until(pid_file.exists, 20, "the task never started")
            await wait_until(lambda: pid_file.read_text().strip(), 5, "the task wrote no pid")
            pid = int(pid_file.read_text())
            job.cancel()
            with pytest.raises(JobCancelledError):
                await job
            loop = asyncio.get_running_loop()
            started = loop.time()
            await wait_until(lambda: not psutil.pid_exists(pid), 2.5, "the cancelled task kept running")
            assert loop.time() - started <= 2.5
            assert await cc.map(abs, [-4]) == [4]

    arun(main(), timeout=60)


def test_foreman_killed_and_restarted_mid_job_resumes_with_the_client_waiting(start_foreman, start_worker, tmp_path):
    journal = str(tmp_path / "journal.sqlite3")
    foreman = start_foreman("--journal", journal, "--token", "t0ken")
    start_worker(foreman.url, "--procs", "2", "--token", "t0ken")

    async def main():
        async with CrowdComputeClient(foreman.url, token="t0ken", reconnect_timeout=30) as cc:
            job = await cc.submit(slow_square, range(24), chunksize=1)
            await wait_until(lambda: job.completed >= 4, 20, "no results before the foreman was killed")
            foreman.proc.popen.kill()
            foreman.proc.popen.wait(10)
            again = start_foreman("--journal", journal, "--token", "t0ken", port=foreman.port)
            assert again.port == foreman.port
            assert await job == [x * x for x in range(24)]
            assert job.completed == 24

    arun(main(), timeout=90)


def test_client_network_drop_mid_job(cluster):
    """Every result comes back; meanwhile the job's progress says it is reconnecting (a widget sat at
    '0.0 items/s, time left unknown' for the whole reconnect budget)."""
    from crowdcompute.progress import ProgressModel

    async def main():
        proxy = Proxy(cluster.port)
        await proxy.start()
        try:
            async with CrowdComputeClient(f"ws://127.0.0.1:{proxy.port}", token=cluster.token) as cc:
                job = await cc.submit(slow_square, range(16), chunksize=1)
                shown: list[list[str]] = []
                job.add_listener(lambda job: shown.append(ProgressModel.of(job).notes()))
                await wait_until(lambda: job.completed >= 2, 20, "no results before the drop")
                proxy.drop_all()
                assert await job == [x * x for x in range(16)]
                assert proxy.connections >= 2, "the client never reconnected"
                assert any("reconnecting" in note for notes in shown for note in notes), "no reconnecting note"
                assert not any("reconnecting" in note for note in shown[-1]), "the note outlived the reconnect"
        finally:
            await proxy.close()

    arun(main(), timeout=60)


def test_worker_network_drop_mid_job(foreman, start_worker):
    async def main():
        proxy = Proxy(foreman.port)
        await proxy.start()
        try:
            worker = start_worker(f"ws://127.0.0.1:{proxy.port}", "--procs", "2", "--token", foreman.token, wait=False)
            # The proxy runs in this event loop: wait without blocking it.
            await wait_until(lambda: any("connected to" in line for line in worker.lines), 20, "worker never connected")
            async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
                job = await cc.submit(slow_square, range(16), chunksize=1)
                await wait_until(lambda: job.completed >= 2, 20, "no results before the drop")
                proxy.drop_all()
                assert await job == [x * x for x in range(16)]
        finally:
            await proxy.close()

    arun(main(), timeout=60)


def test_connection_lost_after_the_reconnect_budget(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token, reconnect_timeout=1) as cc:
            job = await cc.submit(_sleep_for, [30], chunksize=1)
            cluster.proc.popen.kill()
            with pytest.raises(ConnectionLostError, match="reconnect"):
                await job

    arun(main(), timeout=30)


SUBMIT_AND_LEAVE = textwrap.dedent(
    """
    import asyncio, os, sys
    from crowdcompute import CrowdComputeClient

    def cube(x):
        import time
        time.sleep(0.05)
        return x ** 3

    async def main():
        cc = await CrowdComputeClient(sys.argv[1], token=sys.argv[2]).connect()
        job = await cc.submit(cube, range(20), chunksize=2)
        print(job.id, flush=True)
        os._exit(0)  # gone without a goodbye, like a crashed kernel

    asyncio.run(main())
    """
)


def test_client_gone_and_attach_from_a_new_process(cluster):
    result = subprocess.run(
        [sys.executable, "-c", SUBMIT_AND_LEAVE, cluster.url, cluster.token],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.attach(job_id)
            assert job.id == job_id and job.total == 20
            assert await job == [x**3 for x in range(20)]

    arun(main())


def test_sigterm_on_a_worker_hands_back_its_tasks(foreman, start_worker):
    leaving = start_worker(foreman.url, "--procs", "1", "--name", "leaving")
    start_worker(foreman.url, "--procs", "1", "--name", "staying")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(slow_square, range(20), chunksize=1)
            await wait_until(lambda: job.completed >= 2, 20, "no results before SIGTERM")
            leaving.popen.terminate()
            assert await asyncio.get_running_loop().run_in_executor(None, leaving.popen.wait, 20) == 0
            assert await job == [x * x for x in range(20)]

    arun(main(), timeout=60)


def test_chaos_random_worker_kills_every_result_exactly_once(foreman, start_worker):
    import random

    rng = random.Random(7)
    workers = [start_worker(foreman.url, "--procs", "1", "--name", f"c{i}") for i in range(3)]

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            jobs = [await cc.submit(slow_square, range(n * 10, n * 10 + 12), chunksize=1) for n in range(3)]
            arrivals: dict[str, list[int]] = {job.id: [] for job in jobs}
            for job in jobs:
                job.add_listener(lambda j: arrivals[j.id].append(j.completed))
            for round_ in range(3):
                await wait_until(lambda: sum(j.completed for j in jobs) >= 6 * (round_ + 1), 30, "the cluster stalled")
                victim = workers.pop(rng.randrange(len(workers)))
                victim.popen.kill()
                workers.append(start_worker(foreman.url, "--procs", "1", "--name", f"r{round_}", wait=False))
            results = await asyncio.gather(*jobs)
            for n, result in enumerate(results):
                assert result == [x * x for x in range(n * 10, n * 10 + 12)]
            for job in jobs:
                assert job.completed == 12 and job.failed == 0
                counts = arrivals[job.id]
                assert counts == sorted(counts) and counts[-1] == 12  # never counted twice

    arun(main(), timeout=120)
