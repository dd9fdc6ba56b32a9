"""The async SDK against a real foreman and real workers."""

from __future__ import annotations

import asyncio
import threading

import numpy
import pytest
from helpers import arun, wait_until

import crowdcompute
from crowdcompute import ConnectionLostError, CrowdComputeClient, JobCancelledError, SerializationError, TaskError
from crowdcompute.feed import FIRST_TASKS
from crowdcompute.stats import HINT_MIN_SECONDS


def test_map_keeps_input_order_and_chunks(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            assert await cc.map(lambda x: x * 2, range(1000)) == [x * 2 for x in range(1000)]
            assert await cc.map(lambda x: x, [], chunksize=3) == []
            assert await cc.map(str.upper, iter(["a", "b"]), chunksize=1) == ["A", "B"]
            many = FIRST_TASKS * 3 + 1  # the tasks after the first ones go in a later turn of the loop
            assert await cc.map(lambda x: -x, range(many), chunksize=1) == [-x for x in range(many)]

    arun(main())


def test_error_in_user_code_is_a_task_error_and_other_items_survive(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(lambda x: 10 // x, [5, 2, 0, 1], chunksize=1)
            with pytest.raises(ZeroDivisionError) as caught:
                await job
            error = caught.value
            assert isinstance(error, TaskError)
            assert error.index == 2 and error.exc_type == "ZeroDivisionError"
            assert "ZeroDivisionError" in error.remote_traceback
            assert "Remote traceback" in str(error)
            results = await job.result(return_exceptions=True)
            assert results[:2] == [2, 5] and results[3] == 10
            assert job.completed == 3 and job.failed == 1

    arun(main())


def test_unpicklable_function_and_item_fail_before_sending(cluster):
    lock = threading.Lock()

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            with pytest.raises(SerializationError, match="'lock'"):
                await cc.map(lambda x: lock, [1])
            with pytest.raises(SerializationError, match="item 1"):
                await cc.map(lambda x: x, [1, lock])
            status = await cc.status()
            assert status["jobs"] == []  # nothing reached the foreman

    arun(main())


def test_run_passes_args_and_kwargs(cluster):
    def power(base, *, exponent):
        return base**exponent

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            assert await cc.run(power, 3, exponent=4) == 81
            with pytest.raises(TaskError) as caught:
                await cc.run(power, "x", exponent=2)
            assert caught.value.index is None

    arun(main())


def test_as_completed_yields_every_index_once(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(lambda x: x * x, range(50), chunksize=7)
            seen = {index: value async for index, value in job.as_completed()}
            assert seen == {x: x * x for x in range(50)}
            assert job.done and job.completed == 50

    arun(main())


def test_module_functions_use_the_default_client(cluster):
    async def main():
        await crowdcompute.connect(cluster.url, token=cluster.token)
        try:
            assert await crowdcompute.map(abs, [-1, -2]) == [1, 2]
            assert await crowdcompute.run(max, 1, 5) == 5
        finally:
            await crowdcompute.disconnect()
            await crowdcompute.disconnect()  # idempotent
        with pytest.raises(crowdcompute.CrowdComputeError, match="connect"):
            await crowdcompute.map(abs, [1])

    arun(main())


def test_embedded_cluster_starts_and_stops_with_the_client():
    import psutil

    async def main():
        async with CrowdComputeClient(workers=2) as cc:
            assert await cc.map(lambda x: x + 1, range(10)) == list(range(1, 11))
            status = await cc.status()
            assert len(status["workers"]) <= 2
            # The token never shows on a command line, where any local user could read it.
            for process in [cc.cluster.foreman, *cc.cluster.agents]:
                assert cc.cluster.token not in " ".join(psutil.Process(process.pid).cmdline())

    arun(main(), timeout=60)


def _sleep(seconds):
    import time

    time.sleep(seconds)
    return seconds


async def _running(cc: CrowdComputeClient) -> bool:
    return any(worker["busy"] for worker in (await cc.status())["workers"])


def test_a_job_left_running_at_disconnect_fails_its_waiters_and_is_attached_later(cluster):
    """Nothing waits forever: awaiting a job after disconnect() says what happened and how to
    collect it, and the job goes on on the foreman for a new connection to attach."""

    async def main():
        cc = await CrowdComputeClient(cluster.url, token=cluster.token).connect()
        job = await cc.submit(_sleep, [1.0, 1.0], chunksize=1)
        waiting = asyncio.ensure_future(job.result())
        await cc.disconnect()
        with pytest.raises(ConnectionLostError, match=f"attach\\('{job.id}'\\)"):
            await asyncio.wait_for(waiting, 10)
        async with CrowdComputeClient(cluster.url, token=cluster.token) as again:
            assert await asyncio.wait_for(await again.attach(job.id), 30) == [1.0, 1.0]

    arun(main(), timeout=60)


def test_a_job_attached_by_another_client_still_reaches_the_one_that_submitted_it(cluster):
    """attach() from a second process follows the job too: the first gets its results (it waited
    forever: the foreman sent them to the last client to attach only)."""

    async def main():
        async with (
            CrowdComputeClient(cluster.url, token=cluster.token) as first,
            CrowdComputeClient(cluster.url, token=cluster.token) as second,
        ):
            job = await first.submit(_sleep, [0.2] * 6, chunksize=1)
            attached = await second.attach(job.id[:12])  # as `crowdcompute status` shows it
            assert attached.id == job.id
            assert await asyncio.wait_for(attached.result(), 30) == [0.2] * 6
            assert await asyncio.wait_for(job.result(), 30) == [0.2] * 6
            # Either one's cancel ends it for both.
            running = await first.submit(_sleep, [30, 30], chunksize=1)
            watched = await second.attach(running.id)
            watched.cancel()
            with pytest.raises(JobCancelledError):
                await asyncio.wait_for(running.result(), 10)

    arun(main(), timeout=60)


def test_an_embedded_clusters_processes_keep_routine_news_out_of_the_owners_output(capfd):
    """Their stderr is the owner's (a notebook cell, a script's output): a task that times out is
    the owner's TaskTimeoutError, not also a worker's warning line above it."""

    async def main():
        async with CrowdComputeClient(workers=1) as cc:
            with pytest.raises(crowdcompute.TaskTimeoutError):
                await cc.map(_sleep, [5, 0], timeout=0.5, chunksize=1)

    arun(main(), timeout=60)
    err = capfd.readouterr().err
    assert "WARNING" not in err, err


def test_a_job_no_worker_can_take_says_so_where_no_progress_is_shown(cluster, caplog):
    """A script (no terminal, no widget) waited in silence for a label no worker has."""

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(abs, [1], labels={"site": "nowhere"})
            with caplog.at_level("WARNING", logger="crowdcompute.client"):
                mapped = asyncio.ensure_future(cc.map(abs, [1], labels={"site": "nowhere"}, progress=False))
                called = asyncio.ensure_future(cc.run(abs, 1, labels={"site": "nowhere"}))
                await wait_until(lambda: len(caplog.records) >= 2, 20, "nothing said why the jobs wait")
            for waiting in (mapped, called):
                waiting.cancel()
            job.cancel()
            await asyncio.gather(mapped, called, return_exceptions=True)
        said = [record.getMessage() for record in caplog.records]
        assert all("no connected worker has site=nowhere" in line for line in said), said

    arun(main(), timeout=60)


def test_attach_by_the_start_of_an_id_gets_the_foremans_refusal_at_once(start_foreman, start_worker):
    """The foreman answered a refusal with the whole id; the waiter, under the start the user gave,
    missed it and attach() waited out its timeout, then raised a bare TimeoutError."""
    foreman = start_foreman("--journal", "none")  # a collected job's results are gone
    start_worker(foreman.url, "--procs", "1")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token, timeout=30) as cc:
            job = await cc.submit(abs, [-1])
            assert await job == [1]
            assert await cc.map(abs, [-2]) == [2]  # its frame carries the first job's CollectJob
            async with CrowdComputeClient(foreman.url, token=foreman.token, timeout=30) as other:
                with pytest.raises(crowdcompute.CrowdComputeError, match="already collected"):
                    await asyncio.wait_for(other.attach(job.id[:12]), 10)

    arun(main(), timeout=60)


def test_an_embedded_cluster_stops_its_running_tasks_at_disconnect():
    """Its owner gone, an embedded worker stops at once (not after its stop timeout, killed):
    nobody is left to take what the running tasks would return."""

    async def main():
        cc = await CrowdComputeClient(workers=1).connect()
        job = await cc.submit(_sleep, [60], chunksize=1)
        await wait_until(lambda: _running(cc), 30, "the task never started")
        agents = list(cc.cluster.agents)
        await cc.disconnect()
        with pytest.raises(ConnectionLostError, match="embedded foreman stopped"):
            await asyncio.wait_for(job.result(), 10)
        assert [agent.returncode for agent in agents] == [0], "the worker was killed after its stop timeout"

    arun(main(), timeout=60)


def test_printed_output_comes_back(cluster, capsys):
    def talk(x):
        print(f"item says {x}")
        return x

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(talk, range(3), chunksize=1)
            heard = []
            job.add_output_listener(lambda index, stream, text: heard.append((index, text)))
            await job
            return heard

    heard = arun(main())
    assert sorted(heard) == [(i, f"item says {i}\n") for i in range(3)]


def test_job_stats_explain_where_the_time_went(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            job = await cc.submit(lambda x: x + 1, range(40), chunksize=1)
            await job
            stats = job.stats
            assert stats.items == 40 and len(stats.tasks) == 40
            assert sum(w.items for w in stats.workers.values()) == 40
            assert list(stats.workers) == ["w1"]
            assert all(t.round_trip is not None and t.round_trip >= t.seconds for t in stats.tasks)
            summary = stats.summary()
            assert summary.startswith("40\u00a0items of 40 in") and "  w1: 40\u00a0items, busy" in summary, summary
            assert "on the network" in summary and "queued on the worker" in summary
            hinted = any("larger chunksize" in hint for hint in stats.hints())  # 40 trivial tasks
            assert hinted == (stats.wall >= HINT_MIN_SECONDS), (stats.wall, stats.hints())

    arun(main())


def test_bad_options_are_refused_before_anything_is_sent(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            for options in (
                {"timeout": float("inf")},
                {"timeout": float("nan")},
                {"timeout": 0},
                {"chunksize": 0},
                {"retries": -1},
                {"redundancy": 10},
                {"serializer": "yaml"},
            ):
                with pytest.raises(ValueError):
                    await cc.map(abs, [1], **options)
            assert (await cc.status())["jobs"] == []

    arun(main())


def test_options_of_the_wrong_type_are_refused_with_what_is_expected(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            for name, value, expected in (
                ("chunksize", 2.5, "chunksize must be a whole number (int), not 2.5"),
                ("chunksize", "3", "chunksize must be a whole number (int), not '3'"),
                ("chunksize", True, "chunksize must be a whole number (int), not True"),
                ("retries", "x", "retries must be a whole number (int), not 'x'"),
                ("retries", 1.0, "retries must be a whole number (int), not 1.0"),
                ("redundancy", "2", "redundancy must be a whole number (int), not '2'"),
                ("quorum", 1.5, "quorum must be a whole number (int), not 1.5"),
                ("timeout", "5", "timeout must be a number of seconds (int or float), not '5'"),
                ("timeout", False, "timeout must be a number of seconds (int or float), not False"),
                ("quorum_timeout", "5", "quorum_timeout must be a number of seconds (int or float), not '5'"),
                ("labels", ["a", "b"], 'labels must be a dict of label names and values, such as {"site": "lab1"}'),
                ("labels", "site=lab1", "labels must be a dict"),
                ("resources", ["gpu"], 'resources must be a dict of resource names and amounts, such as {"gpu": 1}'),
                ("resources", 1, "resources must be a dict"),
            ):
                with pytest.raises(TypeError) as caught:
                    await cc.map(abs, [1], **{name: value})
                assert expected in str(caught.value), (name, value, str(caught.value))
                if name not in ("chunksize", "retries", "timeout"):  # what run() takes as the call's needs
                    with pytest.raises(TypeError, match=f"^{name} must be"):
                        await cc.run(abs, 1, **{name: value})
            assert (await cc.status())["jobs"] == []
            # numpy's integers and floats are whole numbers and numbers all the same
            options = {"chunksize": numpy.int64(1), "retries": numpy.int32(0), "timeout": numpy.float64(30)}
            assert await cc.map(abs, [-1, -2], **options) == [1, 2]

    arun(main())
