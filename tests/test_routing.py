"""Resources and labels: a task goes only to a worker that has its labels and enough free resources."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from conftest import spawn
from helpers import arun, wait_until
from scheduler_events import make

from crowdcompute import CrowdComputeClient
from crowdcompute.wire import messages as p
from foreman.state import Send


def _running_alone(item: tuple[str, int]) -> int:
    """How many tasks of the job run at once (their marker files), seen from inside one."""
    folder, index = item
    marker = Path(folder) / str(index)
    marker.touch()
    try:
        time.sleep(0.05)
        return len(list(Path(folder).iterdir()))
    finally:
        marker.unlink()


def test_a_gpu_job_waits_visibly_then_runs_one_task_at_a_time_on_the_gpu_worker(foreman, start_worker, tmp_path):
    start_worker(foreman.url, "--procs", "2", "--name", "plain")
    folder = tmp_path / "running"
    folder.mkdir()

    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(
                _running_alone, [(str(folder), i) for i in range(6)], chunksize=1, resources={"gpu": 1}
            )
            await wait_until(
                lambda: "no connected worker has gpu=1" in job.waiting, 10, f"no waiting notice: {job.waiting!r}"
            )
            status = await cc.status()
            (entry,) = [j for j in status["jobs"] if j["id"] == job.id]
            assert entry["waiting"] == "waiting: no connected worker has gpu=1"
            assert job.completed == 0
            table = await asyncio.get_running_loop().run_in_executor(None, _status_table, foreman)
            assert "waiting: no connected worker has gpu=1" in table, table
            start_worker(foreman.url, "--procs", "3", "--name", "gpu", "--resources", "gpu=1,memory=64GB")
            results = await job
            assert job.waiting == ""
            status = await cc.status()
            return results, {t.worker for t in job.stats.tasks}, status

    results, workers, status = arun(body(), timeout=50)  # two process starts inside: slow on a loaded machine
    assert results == [1] * 6, f"tasks of a gpu=1 job overlapped on a worker with one gpu: {results}"
    assert workers == {"gpu"}
    (gpu,) = [w for w in status["workers"] if w["name"] == "gpu"]
    assert gpu["resources"] == {"gpu": 1, "memory": 64e9}
    assert gpu["labels"] == {}


def _status_table(foreman) -> str:
    """What ``crowdcompute status`` prints, on a wide terminal."""
    status = spawn("status", foreman.url, "--token", foreman.token, env={**os.environ, "COLUMNS": "200"})
    assert status.popen.wait(30) == 0, "\n".join(status.lines)
    status.close()
    return "\n".join(status.lines)


def _identity(x: int) -> int:
    return x


def test_labels_route_tasks_only_to_matching_workers(foreman, start_worker):
    start_worker(foreman.url, "--procs", "2", "--name", "lab1w", "--labels", "site=lab1,os=linux")
    start_worker(foreman.url, "--procs", "2", "--name", "lab2w", "--labels", "site=lab2")

    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(_identity, range(20), chunksize=1, labels={"site": "lab2"})
            results = await job
            other = await cc.submit(_identity, range(20), chunksize=1, labels={"os": "linux"})
            await other
            status = await cc.status()
            return results, {t.worker for t in job.stats.tasks}, {t.worker for t in other.stats.tasks}, status

    results, first, second, status = arun(body())
    assert results == list(range(20))
    assert first == {"lab2w"} and second == {"lab1w"}
    labels = {w["name"]: w["labels"] for w in status["workers"]}
    assert labels == {"lab1w": {"site": "lab1", "os": "linux"}, "lab2w": {"site": "lab2"}}


def test_the_scheduler_holds_a_workers_resources_while_its_lease_lasts():
    s = make()
    s.add_client("c1")
    s.add_worker("w1", "w1", 4, resources={"gpu": 2})
    actions = s.submit_job("c1", p.SubmitJob("j1", b"f", 5, 5, resources={"gpu": 1}))
    for n in range(5):
        actions += s.submit_task("c1", p.SubmitTask("j1", n, n, 1, b"x"))
    assigned = [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, p.AssignTask)]
    assert [m.task_id for m in assigned] == [0, 1]
    done = s.task_done("w1", p.TaskDone("j1", 0, 1, 0, b"r"))
    assigned = [a.message for a in done if isinstance(a, Send) and isinstance(a.message, p.AssignTask)]
    assert [m.task_id for m in assigned] == [2]
    assert s.workers["w1"].used == {"gpu": 2.0}


def _environment_job(s, tasks: int) -> list:
    actions = s.submit_job("c1", p.SubmitJob("j1", b"f", tasks, tasks, requirements=["tinypkg==9.9"]))
    for n in range(tasks):
        actions += s.submit_task("c1", p.SubmitTask("j1", n, n, 1, b"x"))
    return actions


def test_an_environment_that_fails_on_one_worker_runs_on_another_that_holds_the_job():
    s = make()
    s.add_client("c1")
    s.add_worker("w1", "one", 1)
    s.add_worker("w2", "two", 1)
    _environment_job(s, 4)
    assert s.jobs["j1"].workers == {"w1", "w2"}
    failed = s.environment_status("w1", p.EnvironmentStatus("j1", "failed", "could not install tinypkg==9.9"))
    assert ("w1", p.ReleaseJob("j1")) in [(a.to, a.message) for a in failed if isinstance(a, Send)]
    assert not [a for a in failed if isinstance(a, Send) and isinstance(a.message, p.TaskFailed)]
    assert all(w == "w2" for t in s.jobs["j1"].tasks.values() for w in t.leases)  # w1 gets no more of it


def test_an_environment_no_worker_holding_the_job_could_build_fails_its_tasks_once():
    s = make()
    s.add_client("c1")
    s.add_worker("w1", "one", 1)
    s.add_worker("w2", "two", 1)
    _environment_job(s, 4)
    s.environment_status("w1", p.EnvironmentStatus("j1", "building"))
    assert s.status()["jobs"][0]["waiting"] == "preparing environment on 1 worker"
    s.environment_status("w1", p.EnvironmentStatus("j1", "failed", "could not install tinypkg==9.9"))
    actions = s.environment_status("w2", p.EnvironmentStatus("j1", "failed", "could not install tinypkg==9.9"))
    failed = [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, p.TaskFailed)]
    assert sorted(m.task_id for m in failed) == [0, 1, 2, 3]
    assert {m.error for m in failed} == {"environment"}
    assert s.status()["jobs"][0]["state"] == "done"
