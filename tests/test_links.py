"""Links that fail as real networks do: silent peers dropped on time, lost workers not blamed on tasks.

Real foreman and worker processes on loopback; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import time

from helpers import Proxy, arun, wait_until

from crowdcompute import CrowdComputeClient, WorkerCrashedError
from crowdcompute.results import build_failed_task_error
from foreman.limits import ALLOWED_FAILURES

#: --heartbeat-timeout the drop test gives the foreman, in seconds.
HEARTBEAT_TIMEOUT = 2.0
#: How late after --heartbeat-timeout a silent worker may still hold its tasks (the README's promise).
DROP_GRACE = 1.0


def test_silent_worker_is_dropped_within_the_heartbeat_timeout(start_foreman, start_worker):
    foreman = start_foreman("--heartbeat-timeout", str(HEARTBEAT_TIMEOUT))
    silent = start_worker(foreman.url, "--procs", "1", "--name", "silent")

    async def names(cc):
        return [w["name"] for w in (await cc.status())["workers"]]

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            await wait_until(lambda: _has(cc, "silent"), 10, "the worker never showed in the status")
            os.kill(silent.popen.pid, signal.SIGSTOP)  # alive, connected, silent: as a frozen host
            stopped = time.monotonic()
            try:
                await wait_until(
                    lambda: _lacks(cc, "silent"),
                    HEARTBEAT_TIMEOUT + 10,
                    "the foreman kept a silent worker far past its heartbeat timeout",
                )
                took = time.monotonic() - stopped
            finally:
                os.kill(silent.popen.pid, signal.SIGCONT)
            assert took <= HEARTBEAT_TIMEOUT + DROP_GRACE, (
                f"a silent worker was dropped after {took:.2f} s; the bound is --heartbeat-timeout "
                f"{HEARTBEAT_TIMEOUT:g} s + {DROP_GRACE:g} s"
            )
            # Awake again, it rejoins by itself.
            silent.wait_for_line("connected to", timeout=15)
            assert "silent" in await names(cc)

    arun(main(), timeout=45)


async def _has(cc, name: str) -> bool:
    return name in [w["name"] for w in (await cc.status())["workers"]]


async def _lacks(cc, name: str) -> bool:
    return not await _has(cc, name)


def _sleep_for(seconds):
    import time

    time.sleep(seconds)
    return seconds


#: Times the flaky-link test cuts the worker's connection while it holds the task (> ALLOWED_FAILURES).
CUTS = ALLOWED_FAILURES + 2


def test_a_long_task_survives_its_workers_link_being_cut_repeatedly(foreman, start_worker):
    async def main():
        proxy = Proxy(foreman.port)
        await proxy.start()
        try:
            url = f"ws://127.0.0.1:{proxy.port}"
            # Not waited for here: the proxy runs in this loop, which a blocking wait would stall.
            start_worker(url, "--procs", "1", "--name", "flaky", "--token", foreman.token, wait=False)
            async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
                job = await cc.submit(_sleep_for, [1.0], chunksize=1)
                for cut in range(CUTS):
                    await wait_until(
                        lambda cut=cut: _holds_task(cc, job, "flaky", proxy, cut + 1),
                        15,
                        f"the worker did not take the task back after {cut} cuts of its link",
                    )
                    proxy.drop_all()
                assert await job == [1.0], "the task was blamed for its worker's lost link"
                timing = job.timings[0]
                assert timing.attempts == CUTS + 1, f"expected {CUTS + 1} leases, saw {timing.attempts}"
        finally:
            await proxy.close()

    arun(main(), timeout=50)


async def _holds_task(cc, job, name: str, proxy: Proxy, connections: int) -> bool:
    """The worker is on its ``connections``-th connection through the proxy and holds a task."""
    if job.done:
        errors = [r for r in await job.result(return_exceptions=True) if isinstance(r, Exception)]
        raise AssertionError(f"the job ended while its worker's link was being cut: {errors}")
    if proxy.connections < connections:
        return False
    return any(w["name"] == name and w["busy"] for w in (await cc.status())["workers"])


def test_the_error_says_whether_the_task_crashed_or_its_worker_went_away():
    error = build_failed_task_error("lost", "worker h01 went silent (no answer to pings for 5 s)", 5, 10, losses=10)
    assert isinstance(error, WorkerCrashedError) and (error.crashes, error.losses) == (0, 10)
    assert "went away 10 times" in str(error) and "not the task" in str(error) and "h01 went silent" in str(error)
    error = build_failed_task_error("crashed", "killed by SIGSEGV", 5, 5, crashes=3, losses=2)
    assert "killed its process 3 times; last cause: killed by SIGSEGV" in str(error)
    assert "went away 2 times" in str(error)
