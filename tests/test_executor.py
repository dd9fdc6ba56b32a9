"""crowdcompute.Executor: concurrent.futures code, unchanged, on a real foreman and real workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import threading
import time

import pytest
from helpers import arun, wait_until

from crowdcompute import CrowdComputeClient, Executor, TaskError

#: Seconds any future in these tests may take.
RESULT_TIMEOUT = 30.0


@pytest.fixture
def executor(cluster):
    with Executor(cluster.url, token=cluster.token) as ex:
        yield ex


def test_submit_map_and_errors_as_with_any_executor(executor):
    assert isinstance(executor, concurrent.futures.Executor)
    future = executor.submit(pow, 2, 10)
    assert future.result(RESULT_TIMEOUT) == 1024
    assert executor.submit(sorted, [3, 1, 2], reverse=True).result(RESULT_TIMEOUT) == [3, 2, 1]

    offset = 100
    assert list(executor.map(lambda x: x + offset, range(10), chunksize=3)) == list(range(100, 110))
    assert list(executor.map(lambda a, b: a * b, range(5), [10, 20, 30, 40])) == [0, 20, 60, 120]
    assert list(executor.map(abs, [])) == []

    def fails_at_three(x):
        if x == 3:
            raise ValueError(f"bad item {x}")
        return x

    with pytest.raises(ValueError, match="bad item 3") as raised:
        executor.submit(fails_at_three, 3).result(RESULT_TIMEOUT)
    assert isinstance(raised.value, TaskError)  # the original type, with the remote details
    results = executor.map(fails_at_three, range(6), chunksize=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(results)

    done, _ = concurrent.futures.wait([executor.submit(abs, -n) for n in range(8)], timeout=RESULT_TIMEOUT)
    assert sorted(f.result() for f in done) == list(range(8))


def test_map_timeout_and_cancel_stop_the_jobs_on_the_foreman(executor, cluster):
    def nap(seconds):
        import time

        time.sleep(seconds)
        return seconds

    started = time.monotonic()
    results = executor.map(nap, [0.05, 30, 30], timeout=2, chunksize=1)
    assert next(results) == 0.05
    with pytest.raises(TimeoutError):
        next(results)
    assert time.monotonic() - started < 10

    future = executor.submit(nap, 30)
    assert future.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(RESULT_TIMEOUT)

    async def all_cancelled():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as client:
            await wait_until(
                lambda: _all_cancelled(client), 10, "the foreman still runs the timed-out and cancelled jobs"
            )

    arun(all_cancelled())
    # The slots are free again: a new call runs at once.
    assert executor.submit(abs, -7).result(RESULT_TIMEOUT) == 7


async def _all_cancelled(client) -> bool:
    jobs = (await client.status())["jobs"]
    return len(jobs) == 2 and all(job["state"] == "cancelled" for job in jobs)


def test_shutdown_waits_cancels_and_refuses_new_work(cluster):
    ex = Executor(cluster.url, token=cluster.token)

    def nap(seconds):
        import time

        time.sleep(seconds)
        return seconds

    quick = ex.submit(nap, 0.3)
    ex.shutdown(wait=True)
    assert quick.result(0) == 0.3  # shutdown(wait=True) waited for it
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(abs, 1)
    ex.shutdown()  # idempotent

    ex = Executor(cluster.url, token=cluster.token)
    slow = [ex.submit(nap, 30) for _ in range(3)]
    started = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 10
    assert all(f.cancelled() for f in slow)


def test_usable_from_a_thread_running_an_event_loop(executor):
    async def inside_a_loop():
        # Blocking works (the executor has a loop of its own), and so does awaiting.
        assert executor.submit(abs, -3).result(RESULT_TIMEOUT) == 3
        assert await asyncio.wrap_future(executor.submit(abs, -4)) == 4
        assert list(executor.map(abs, [-1, -2])) == [1, 2]

    arun(inside_a_loop())
    results = []
    thread = threading.Thread(target=lambda: results.append(executor.submit(abs, -5).result(RESULT_TIMEOUT)))
    thread.start()
    thread.join(RESULT_TIMEOUT)
    assert results == [5]


def test_with_no_address_an_embedded_cluster_starts_and_stops(crowd_home):
    with Executor(workers=1) as ex:
        assert ex.client.cluster is not None and ex.address.startswith("ws://127.0.0.1:")
        assert list(ex.map(lambda x: -x, range(4))) == [0, -1, -2, -3]
        cluster = ex.client.cluster
    assert ex.client.cluster is None and cluster.foreman is None  # stopped by shutdown


def test_importing_crowdcompute_imports_no_optional_package():
    code = (
        "import sys, crowdcompute, crowdcompute_jupyter\n"
        "heavy = ('joblib', 'jupyter_server', 'tornado', 'IPython', 'ipywidgets', 'nest_asyncio', 'nest_asyncio2')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
