"""Portable jobs: source text and JSON, so workers of another Python can run them."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import portable_funcs as funcs
import pytest
from helpers import arun

from crowdcompute import CrowdComputeClient, SerializationError, TaskError
from crowdcompute.codecs.portable import dumps_portable_function

REPO = Path(__file__).resolve().parents[1]


def test_a_function_from_a_module_runs_portably(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token, serializer="portable") as cc:
            assert await cc.map(funcs.scale, [0, 1, 2.5]) == [2, 5, 9]
            assert await cc.run(funcs.scale, 10) == 32
            with pytest.raises(ZeroDivisionError) as caught:  # builtin types are rebuilt from the JSON error
                await cc.map(funcs.fails_on_zero, [1, 0])
            assert isinstance(caught.value, TaskError) and caught.value.index == 1

    arun(main())


def test_helpers_from_the_users_module_travel_as_source(cluster):
    document = json.loads(dumps_portable_function(funcs.hypot))
    assert document["imports"] == {} and document["modules"] == {"math": "math"}  # not portable_funcs.hypot
    assert json.loads(dumps_portable_function(funcs.doubled_range))["helpers"] == ["def _double(x):\n    return 2 * x"]

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token, serializer="portable") as cc:
            # The worker cannot import portable_funcs (it is not on its path): all of it travels as source.
            assert await cc.map(funcs.hypot, [3.0]) == [5.0]
            assert await cc.map(funcs.doubled_range, [3]) == [[0, 2, 4]]
            assert await cc.map(funcs.uses_a_class, [1, 2]) == [6, 12]

    arun(main())


def test_what_cannot_travel_portably_is_named_before_sending(cluster):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
            with pytest.raises(SerializationError, match="lambda"):
                await cc.map(lambda x: x, [1], serializer="portable")
            with pytest.raises(SerializationError, match="'LOCK' used by function uses_a_lock"):
                await cc.map(funcs.uses_a_lock, [1], serializer="portable")
            with pytest.raises(SerializationError, match="item 1"):
                await cc.map(funcs.scale, [1, {2}], serializer="portable")
            assert (await cc.status())["jobs"] == []

    arun(main())


def test_a_function_defined_in_an_ipython_cell_travels_as_source(cluster):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_cell("import math\nOFFSET = 0.5\ndef cell_func(x):\n    return math.ceil(x + OFFSET)\n")
        cell_func = shell.user_ns["cell_func"]
        assert b"math.ceil" in dumps_portable_function(cell_func)

        async def main():
            async with CrowdComputeClient(cluster.url, token=cluster.token) as cc:
                return await cc.map(cell_func, [1, 2.6], serializer="portable")

        assert arun(main()) == [2, 4]
    finally:
        InteractiveShell.clear_instance()


def _other_python() -> str | None:
    """A Python of another minor version on this machine (pyenv keeps several), or None."""
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in ("3.12", "3.13", "3.10"):
        if candidate == mine:
            continue
        roots = sorted(Path(os.path.expanduser("~/.pyenv/versions")).glob(f"{candidate}.*"))
        for found in [shutil.which(f"python{candidate}"), *(str(r / "bin" / "python") for r in roots)]:
            if found and subprocess.run([found, "-c", "pass"], capture_output=True).returncode == 0:
                return found
    return None


def _pure_python_deps(target: Path) -> Path:
    """websockets and cloudpickle (pure Python parts) for another interpreter, without installing anything."""
    import cloudpickle
    import websockets

    for module in (websockets, cloudpickle):
        source = Path(module.__path__[0])
        shutil.copytree(source, target / source.name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        info = Path(importlib.metadata.distribution(module.__name__)._path)
        shutil.copytree(info, target / info.name)
    return target


def test_a_worker_on_another_python_gets_portable_jobs_only(foreman, start_worker, tmp_path, crowd_home):
    other = _other_python()
    if other is None:
        pytest.skip("no Python of another minor version on this machine")
    deps = _pure_python_deps(tmp_path / "deps")
    env = {**os.environ, "PYTHONPATH": f"{deps}{os.pathsep}{REPO}"}
    from conftest import Proc

    popen = subprocess.Popen(
        [other, "-m", "worker", foreman.url, "--procs", "1", "--name", "elsewhere", "--token", foreman.token],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    elsewhere = Proc(popen)
    try:
        elsewhere.wait_for_line("connected to")
        elsewhere.wait_for_line("portable jobs only")

        async def main():
            async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
                versions = await cc.map(funcs.python_version, range(4), chunksize=1, serializer="portable")
                assert set(versions) == {other_minor}
                pickled = await cc.submit(funcs.python_version, range(3), chunksize=1)
                start_worker(foreman.url, "--procs", "1", "--name", "same", wait=False)
                assert set(await pickled) == {f"{sys.version_info[0]}.{sys.version_info[1]}"}
                assert set(pickled.stats.workers) == {"same"}

        other_minor = subprocess.run(
            [other, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        ).stdout.strip()
        arun(main(), timeout=60)
    finally:
        elsewhere.stop()
