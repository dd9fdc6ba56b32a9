"""modules=[...]: the user's own modules travel with the job, by value, in their current version."""

from __future__ import annotations

import importlib
import sys

import pytest
from helpers import arun

from crowdcompute import CrowdComputeClient, LocalModuleWarning, TaskError


def _calls_helpers(x):
    import crowdtest_helpers

    return crowdtest_helpers.f(x)


def _uses(module):
    def g(x):
        return module.f(x)

    return g


@pytest.fixture
def helpers_module(tmp_path, monkeypatch):
    """A module ``crowdtest_helpers`` in a temporary folder that only this test process can import."""
    folder = tmp_path / "notebook"
    folder.mkdir()
    (folder / "crowdtest_helpers.py").write_text("def f(x):\n    return x * 3\n")
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("crowdtest_helpers")
    yield module
    sys.modules.pop("crowdtest_helpers", None)


def test_a_function_importing_the_users_module_runs_on_a_worker_that_never_saw_the_file(
    foreman, start_worker, helpers_module
):
    start_worker(foreman.url, "--procs", "2")  # started in the project folder: the module is not there

    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            with pytest.raises(TaskError) as missing:
                await cc.map(_calls_helpers, range(2))
            first = await cc.map(_calls_helpers, range(5), modules=[helpers_module])
            by_path = await cc.map(helpers_module.f, range(3), modules=[helpers_module.__file__])
            # Changed source is a new version: the same task processes pick it up.
            with open(helpers_module.__file__, "w") as source:
                source.write("def f(x):\n    return x * 4\n")
            importlib.reload(helpers_module)
            second = await cc.map(_calls_helpers, range(5), modules=[helpers_module])
            called = await cc.run(_calls_helpers, 10, modules=[helpers_module])
            return str(missing.value), first, by_path, second, called

    missing, first, by_path, second, called = arun(body(), timeout=50)
    assert "modules=[crowdtest_helpers]" in missing  # the worker's error says what to do
    assert first == [0, 3, 6, 9, 12]
    assert by_path == [0, 3, 6]
    assert second == [0, 4, 8, 12, 16]
    assert called == 40


def test_a_function_using_a_local_module_not_sent_warns_naming_it(foreman, start_worker, helpers_module):
    start_worker(foreman.url, "--procs", "1")

    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            with pytest.warns(LocalModuleWarning, match=r"modules=\[crowdtest_helpers\]") as warned:
                job = await cc.submit(_uses(helpers_module), range(2))
            job.cancel()
            # It points at the line that submitted (this file), not into CrowdCompute's code.
            assert [w.filename for w in warned] == [__file__], [w.filename for w in warned]
            sent = await cc.map(_uses(helpers_module), range(2), modules=[helpers_module])  # no warning
            return sent

    assert arun(body()) == [0, 3]


def test_a_function_calling_helpers_of_its_own_module_travels_whole_without_a_warning(
    foreman, start_worker, tmp_path, monkeypatch
):
    folder = tmp_path / "script"
    folder.mkdir()
    (folder / "crowdtest_own.py").write_text(
        "def helper(x):\n    return x + 1\n\ndef work(x):\n    return helper(x) * 2\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    own = importlib.import_module("crowdtest_own")
    start_worker(foreman.url, "--procs", "1")  # in another folder: crowdtest_own is not importable there

    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            return await cc.map(own.work, range(3))  # warnings are errors: none may be raised

    try:
        assert arun(body()) == [2, 4, 6]
    finally:
        sys.modules.pop("crowdtest_own", None)


def test_what_a_job_needs_is_checked_before_anything_is_sent(foreman, tmp_path):
    async def body():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            with pytest.raises(ValueError, match="'numpy>>2' is not a requirement"):
                await cc.map(_calls_helpers, range(2), requirements=["numpy>>2"])
            with pytest.raises(ValueError, match="resources: 'gpu' must be a number"):
                await cc.map(_calls_helpers, range(2), resources={"gpu": -1})
            with pytest.raises(ValueError, match="labels: 'site' must be text"):
                await cc.map(_calls_helpers, range(2), labels={"site": 1})
            with pytest.raises(ValueError, match="neither a .py file nor a package folder"):
                await cc.map(_calls_helpers, range(2), modules=[str(tmp_path / "nope.txt")])
            with pytest.raises(ValueError, match="portable"):
                await cc.map(_calls_helpers, range(2), modules=[sys], serializer="portable")

    arun(body())
