"""Per-job requirements: workers build one environment per set of requirements with uv, and cache it.

The packages come from wheels built here (tests/wheels.py) and a worker run
with ``--find-links DIR --no-index``: no registry is involved.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers import arun, wait_until
from wheels import tinypkg_wheels

from crowdcompute import CrowdComputeClient, EnvironmentBuildError


@pytest.fixture
def wheels(tmp_path, monkeypatch):
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    return tinypkg_wheels(tmp_path / "wheels")


def _tinypkg_version(_item):
    import tinypkg

    return tinypkg.version()


def _plain(x):
    return x + 1


def test_jobs_with_different_versions_run_side_by_side_and_a_cached_environment_is_not_rebuilt(
    foreman, start_worker, wheels
):
    start_worker(foreman.url, "--procs", "2", "--name", "w1", "--find-links", str(wheels), "--no-index")

    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            old = await cc.submit(_tinypkg_version, range(8), chunksize=1, requirements=["tinypkg==1.0"])
            new = await cc.submit(_tinypkg_version, range(8), chunksize=1, requirements=["tinypkg==1.1"])
            notices = []
            old.add_listener(lambda job: notices.append(job.waiting))
            first = await asyncio.gather(old, new)
            assert "preparing environment on 1 worker" in notices, notices
            assert old.waiting == ""
            again = await cc.submit(_tinypkg_version, range(4), chunksize=1, requirements=["tinypkg == 1.0"])
            second = await again
            plain = await cc.map(_plain, range(3))
            portable = await cc.map(_tinypkg_version, [0], serializer="portable", requirements=["tinypkg==1.1"])
            assert portable == ["1.1"]  # portable jobs carry requirements too
            return first, second, plain, old.stats, new.stats, again.stats

    (old, new), again, plain, old_stats, new_stats, again_stats = arun(body(), timeout=50)
    assert old == ["1.0"] * 8 and new == ["1.1"] * 8, (old, new)
    assert again == ["1.0"] * 4
    assert plain == [1, 2, 3]  # the worker's own packages, no environment: unaffected
    assert old_stats.environment > 0 and new_stats.environment > 0  # each built its environment once
    assert again_stats.environment == 0  # the same (normalized) requirements: the cached environment
    assert {t.worker for t in old_stats.tasks + new_stats.tasks} == {"w1"}


def test_an_unresolvable_requirement_fails_the_job_naming_it_and_the_worker_stays_healthy(
    foreman, start_worker, wheels
):
    worker = start_worker(foreman.url, "--procs", "2", "--find-links", str(wheels), "--no-index")

    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(_tinypkg_version, range(4), chunksize=1, requirements=["tinypkg==9.9"])
            with pytest.raises(EnvironmentBuildError) as info:
                await job
            errors = job.errors
            after = await cc.map(_plain, range(4))
            return info.value, errors, after

    error, errors, after = arun(body(), timeout=50)
    assert "tinypkg==9.9" in str(error)
    assert "the installer (uv) said" in str(error)
    assert sorted(errors) == [0, 1, 2, 3] and all(isinstance(e, EnvironmentBuildError) for e in errors.values())
    assert after == [1, 2, 3, 4]
    assert worker.popen.poll() is None


def test_a_no_install_worker_refuses_jobs_with_requirements_and_says_so(foreman, start_worker, wheels):
    start_worker(foreman.url, "--procs", "1", "--no-install")

    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(_tinypkg_version, range(2), requirements=["tinypkg==1.0"])
            await wait_until(lambda: "--no-install" in job.waiting, 10, f"no refusal shown: {job.waiting!r}")
            status = await cc.status()
            plain = await cc.map(_plain, range(2))
            start_worker(foreman.url, "--procs", "1", "--find-links", str(wheels), "--no-index")
            return job.completed, status, plain, await job

    completed, status, plain, results = arun(body(), timeout=50)
    assert completed == 0
    (entry,) = [j for j in status["jobs"] if j["requirements"] == ["tinypkg==1.0"]]
    assert "--no-install" in entry["waiting"]
    assert plain == [1, 2]
    assert results == ["1.0", "1.0"]  # an installing worker joined and ran it


def test_the_cache_evicts_the_least_recently_used_environment_but_never_one_in_use(wheels, tmp_path):
    from worker.environments import Environments, InstallSource

    cache = Environments(InstallSource([str(wheels)], None, True), cache_size=1, root=tmp_path / "envs")

    async def body():
        old, built = await cache.ensure(["tinypkg==1.0"])
        assert built > 0 and (old / "tinypkg" / "__init__.py").exists()
        assert await cache.ensure(["tinypkg==1.0"]) == (old, 0.0)  # cached: no build
        cache.in_use = {cache.key(["tinypkg==1.0"])}
        new, _ = await cache.ensure(["tinypkg==1.1"])  # over the 1-byte limit, but both are protected
        assert old.exists() and new.exists()
        cache.in_use = set()
        newest, _ = await cache.ensure(["TinyPkg>=1.1"])  # another set: the two older ones go
        return old, new, newest

    old, new, newest = arun(body())
    assert not old.exists() and not new.exists() and newest.exists()


def test_by_default_packages_come_from_where_pip_is_configured(tmp_path, monkeypatch):
    from worker.environments import InstallSource

    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://mirror.example/simple\nfind-links = /srv/wheels\n")
    for name in ("PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))  # read last: it wins over the machine's files
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://extra.example/simple")
    source = InstallSource.from_pip([], None, False)
    assert source.uv_options() == [
        "--find-links=/srv/wheels",
        "--index-url=https://mirror.example/simple",
        "--extra-index-url=https://extra.example/simple",
    ]
    given = InstallSource.from_pip([str(tmp_path)], None, True)  # the worker's options win
    assert given.uv_options() == [f"--find-links={tmp_path}", "--index-url=https://mirror.example/simple", "--no-index"]


def test_two_jobs_needing_the_same_environment_build_it_once(wheels, tmp_path):
    from worker.environments import Environments, InstallSource

    cache = Environments(InstallSource([str(wheels)], None, True), root=tmp_path / "envs")
    builds = []
    build = cache._build

    def counted(folder, requirements):
        builds.append(requirements)
        build(folder, requirements)

    cache._build = counted

    async def body():
        # Two jobs of this worker, and a second cache object standing for another worker of this user.
        other = Environments(cache.source, root=cache.root)
        other._build = counted
        return await asyncio.gather(
            cache.ensure(["tinypkg==1.1"]), cache.ensure(["tinypkg==1.1"]), other.ensure(["tinypkg==1.1"])
        )

    (first, _), (second, _), (third, _) = arun(body())
    assert first == second == third
    assert builds == [["tinypkg==1.1"]]


def _sandboxed_version(_item):
    import tinypkg

    return tinypkg.version()


def test_a_sandboxed_worker_runs_a_job_in_its_environment(foreman, start_worker, wheels):
    from worker.sandbox import SandboxUnavailableError, find_bwrap

    try:
        find_bwrap()
    except SandboxUnavailableError as exc:
        pytest.skip(str(exc))
    # The environment lives under $CROWDCOMPUTE_HOME, in /tmp here: a folder the sandbox hides unless shown.
    start_worker(foreman.url, "--procs", "1", "--sandbox", "--find-links", str(wheels), "--no-index")

    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            return await cc.map(_sandboxed_version, range(2), requirements=["tinypkg==1.1"])

    assert arun(body(), timeout=50) == ["1.1", "1.1"]
