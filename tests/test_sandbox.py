"""``crowdcompute worker --sandbox`` and the per-task limits: real workers, a real foreman.

Each sandbox test skips, saying why, where bubblewrap cannot run here; the
test of the refusal runs everywhere.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import psutil
import pytest
from helpers import arun, printed, wait_until

from crowdcompute import CrowdComputeClient, WorkerCrashedError
from worker.limits import Limits, UnenforceableLimitError, check_processes_limit, format_size, parse_size
from worker.sandbox import SandboxUnavailableError, find_bwrap

try:
    find_bwrap()
    WHY_NOT = ""
except SandboxUnavailableError as exc:
    WHY_NOT = str(exc)

needs_bwrap = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT)

try:
    check_processes_limit(Limits(processes=20), sandbox=False)
    NO_PLAIN_PROCESS_LIMIT = ""
except UnenforceableLimitError as exc:
    NO_PLAIN_PROCESS_LIMIT = str(exc)


# --- task functions (run on the worker) ---------------------------------------


def read_file(path):
    with open(path) as file:
        return file.read()


def connect_to(port):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return "connected"


def write_file(path):
    with open(path, "w") as file:
        file.write("escaped")
    return "written"


def where_am_i(_):
    import os
    import tempfile

    with open("note.txt", "w") as file:  # in the cwd: the task's scratch folder
        file.write("mine")
    return os.getcwd(), tempfile.gettempdir(), os.path.expanduser("~"), os.listdir(".")


def write_big_file(size):
    with open("big.bin", "wb") as file:
        file.write(b"x" * size)
    return "written"


def write_many_files(size):
    import time

    for n in range(10_000):
        with open(f"part-{n}.bin", "wb") as file:
            file.write(b"x" * size)
        time.sleep(0.01)


def hog_memory(_):
    blocks = []
    while True:
        blocks.append(bytearray(64 * 1024 * 1024))


def hog_or_wait(x):
    """Item 0 hogs memory; the others take a moment, running beside it."""
    import time

    if x == 0:
        hog_memory(x)
    time.sleep(0.5)
    return x


def fork_bomb(_):
    import os
    import time

    while True:
        if os.fork() == 0:
            time.sleep(30)


def spin(_):
    while True:
        pass


def square(x):
    return x * x


def count_runs(leave_a_process):
    """How many tasks this task process ran (a fresh process starts again at 1)."""
    import builtins
    import os
    import time

    builtins.crowdcompute_runs = getattr(builtins, "crowdcompute_runs", 0) + 1
    if leave_a_process and os.fork() == 0:
        time.sleep(30)
        os._exit(0)
    return builtins.crowdcompute_runs


# --- helpers ------------------------------------------------------------------


async def _map(foreman, func, items):
    """Results, or the first error, of mapping ``func`` over ``items`` one item per task."""
    async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
        return await cc.map(func, items, chunksize=1)


def run(foreman, func, items):
    return arun(_map(foreman, func, items), timeout=45)


def fails_with(foreman, func, item) -> WorkerCrashedError | Exception:
    with pytest.raises(Exception) as caught:
        run(foreman, func, [item])
    return caught.value


@pytest.fixture
def volunteer_home(tmp_path, monkeypatch):
    """A fake volunteer home ($HOME) with a secret in it, inherited by the workers we start."""
    home = tmp_path / "volunteer"
    home.mkdir()
    (home / "secret.txt").write_text("the volunteer's secret")
    monkeypatch.setenv("HOME", str(home))
    return home


# --- the sandbox --------------------------------------------------------------


@needs_bwrap
def test_sandboxed_task_cannot_read_the_home_reach_the_host_or_write_outside(
    foreman, start_worker, volunteer_home, tmp_path
):
    start_worker(foreman.url, "--procs", "1", "--sandbox")
    secret = volunteer_home / "secret.txt"
    assert run(foreman, square, [3]) == [9]  # it works at all

    error = fails_with(foreman, read_file, str(secret))
    assert "FileNotFoundError" in str(error) or "PermissionError" in str(error), error

    with socket.socket() as listener:  # a port on the host the task must not reach
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        error = fails_with(foreman, connect_to, listener.getsockname()[1])
        assert "OSError" in str(error) or "ConnectionRefusedError" in str(error), error

    import uuid
    from pathlib import Path

    # a hidden folder (/tmp), and a folder the worker itself may write to (beside this file)
    for outside in (tmp_path / "escaped.txt", Path(__file__).parent / f"escaped-{uuid.uuid4().hex}.txt"):
        try:
            error = fails_with(foreman, write_file, str(outside))
            assert not outside.exists()
            assert "Read-only file system" in str(error), error
        finally:
            outside.unlink(missing_ok=True)

    [(cwd, tmp, home, listing)] = run(foreman, where_am_i, [0])
    assert cwd == tmp == home and listing == ["note.txt"]
    assert not _exists(cwd)  # removed after the task
    [(cwd2, _, _, listing2)] = run(foreman, where_am_i, [1])  # a fresh folder: the note is gone
    assert listing2 == ["note.txt"]


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


@needs_bwrap
def test_a_process_left_behind_goes_with_its_task_process(foreman, start_worker):
    start_worker(foreman.url, "--procs", "1", "--sandbox")
    assert run(foreman, count_runs, [False, False]) == [1, 2]  # one process, reused
    assert run(foreman, count_runs, [True]) == [3]
    assert run(foreman, count_runs, [False]) == [1]  # the leftover took its process with it


def test_the_sandbox_never_shows_a_home_even_on_the_python_path(volunteer_home, monkeypatch):
    from worker.sandbox import bwrap_command

    monkeypatch.setenv("PYTHONPATH", f"{volunteer_home}:{volunteer_home.parent}")
    monkeypatch.syspath_prepend(str(volunteer_home))  # as `python -m` run from the home would
    command = bwrap_command("bwrap", sys.executable, "/scratch", network=False)
    bound = [command[i + 1] for i, arg in enumerate(command) if arg in ("--ro-bind", "--bind")]
    assert str(volunteer_home) not in bound and str(volunteer_home.parent) not in bound
    assert ["--tmpfs", str(volunteer_home)] == command[command.index(str(volunteer_home)) - 1 :][:2]


def sleep_long(_):
    import os
    import time

    print(f"started {os.getpid()}", flush=True)
    time.sleep(60)


@pytest.mark.parametrize("options", [pytest.param(["--sandbox"], marks=needs_bwrap, id="sandboxed"), []])
def test_a_killed_worker_takes_its_task_processes_with_it(foreman, start_worker, options):
    """A worker killed outright (no chance to clean up) leaves no task running: under bwrap,
    --die-with-parent; from a forkserver, which a child keeps alive after the agent died, the
    child sees the agent's end of its pipe close (it ran on until its task ended)."""
    worker = start_worker(foreman.url, "--procs", "1", *options)
    agent = psutil.Process(worker.popen.pid)

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(sleep_long, [0])
            said = await printed(job)
            if options:
                task_process = _sandboxed_python(agent)  # the pid it printed is its sandbox's
                assert task_process is not None, "no sandboxed task process under the worker"
            else:
                task_process = psutil.Process(int(said[0].split()[1]))
            worker.popen.kill()
            await wait_until(lambda: not _alive(task_process), 10, "the task process outlived its worker")
            job.cancel()

    arun(main(), timeout=45)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _sandboxed_python(agent: psutil.Process) -> psutil.Process | None:
    for process in agent.children(recursive=True):
        try:
            if process.name().startswith("python") and any("serve_fd" in arg for arg in process.cmdline()):
                return process
        except psutil.Error:
            pass
    return None


def secret_names(_):
    import os

    return sorted(name for name in os.environ if "TOKEN" in name or "SECRET" in name)


@pytest.mark.parametrize("options", [pytest.param(["--sandbox"], marks=needs_bwrap, id="sandboxed"), []])
def test_a_task_never_sees_its_workers_credential_and_a_sandboxed_one_no_secret(
    foreman, start_worker, monkeypatch, options
):
    """The credential a volunteer keeps out of ps in $CROWDCOMPUTE_WORKER_TOKEN was handed to every
    job's task processes, which could then act as the worker; a sandboxed task saw every variable."""
    monkeypatch.setenv("CROWDCOMPUTE_WORKER_TOKEN", foreman.token)
    monkeypatch.setenv("VOLUNTEER_SECRET_KEY", "the volunteer's cloud key")
    start_worker(foreman.url, "--procs", "1", *options)
    [seen] = run(foreman, secret_names, [0])
    assert "CROWDCOMPUTE_WORKER_TOKEN" not in seen
    if options:
        assert seen == [], f"a sandboxed task saw {seen}"


@needs_bwrap
def test_sandbox_allows_the_network_when_told(foreman, start_worker):
    start_worker(foreman.url, "--procs", "1", "--sandbox", "--allow-network")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert run(foreman, connect_to, [listener.getsockname()[1]]) == ["connected"]


@needs_bwrap
def test_memory_hog_and_fork_bomb_fail_naming_the_limit_and_the_worker_goes_on(foreman, start_worker):
    worker = start_worker(foreman.url, "--procs", "1", "--sandbox", "--max-memory", "256MiB", "--max-processes", "20")
    error = fails_with(foreman, hog_memory, 0)
    assert isinstance(error, WorkerCrashedError), error
    assert "task exceeded --max-memory 256 MiB" in str(error)
    assert run(foreman, square, [4]) == [16]

    error = fails_with(foreman, fork_bomb, 0)
    assert isinstance(error, WorkerCrashedError), error
    assert "task exceeded --max-processes 20" in str(error)
    assert run(foreman, square, [5]) == [25]
    assert worker.popen.poll() is None


@needs_bwrap
def test_a_task_breaking_a_limit_leaves_its_neighbours_running(foreman, start_worker):
    start_worker(foreman.url, "--procs", "2", "--sandbox", "--max-memory", "256MiB")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(hog_or_wait, range(4), chunksize=1)
            return await job.result(return_exceptions=True)

    hogged, *others = arun(main(), timeout=45)
    assert isinstance(hogged, WorkerCrashedError) and "task exceeded --max-memory 256 MiB" in str(hogged)
    assert others == [1, 2, 3]


def test_memory_hog_without_the_sandbox_fails_naming_the_limit(foreman, start_worker):
    start_worker(foreman.url, "--procs", "1", "--max-memory", "300MB")
    error = fails_with(foreman, hog_memory, 0)
    assert isinstance(error, WorkerCrashedError), error
    assert "task exceeded --max-memory 300 MB" in str(error)
    assert run(foreman, square, [3]) == [9]


@pytest.mark.skipif(bool(NO_PLAIN_PROCESS_LIMIT), reason=NO_PLAIN_PROCESS_LIMIT)
def test_fork_bomb_without_the_sandbox_fails_and_leaves_nothing(foreman, start_worker):
    start_worker(foreman.url, "--procs", "2", "--max-processes", "20")
    error = fails_with(foreman, fork_bomb, 0)
    assert isinstance(error, WorkerCrashedError), error
    assert "task exceeded --max-processes 20" in str(error)
    assert run(foreman, square, [8, 9]) == [64, 81]  # conftest then checks that no process is left


@pytest.mark.parametrize("sandbox", [pytest.param(True, marks=needs_bwrap), False], ids=["sandbox", "plain"])
def test_cpu_seconds_stop_a_busy_loop(foreman, start_worker, sandbox):
    start_worker(foreman.url, "--procs", "1", "--max-cpu-seconds", "1", *(["--sandbox"] if sandbox else []))
    error = fails_with(foreman, spin, 0)
    assert isinstance(error, WorkerCrashedError), error
    assert "task exceeded --max-cpu-seconds 1" in str(error)
    assert run(foreman, square, [6]) == [36]


@pytest.mark.parametrize("sandbox", [pytest.param(True, marks=needs_bwrap), False], ids=["sandbox", "plain"])
def test_disk_limit_stops_a_big_file_and_a_growing_scratch_folder(foreman, start_worker, sandbox):
    start_worker(foreman.url, "--procs", "1", "--max-disk", "1MiB", *(["--sandbox"] if sandbox else []))
    assert run(foreman, write_big_file, [1000]) == ["written"]
    error = fails_with(foreman, write_big_file, 4 * 1024 * 1024)
    assert isinstance(error, WorkerCrashedError), error
    assert "task exceeded --max-disk 1 MiB" in str(error)
    error = fails_with(foreman, write_many_files, 64 * 1024)  # no file too big, but too many
    assert "task exceeded --max-disk 1 MiB" in str(error)
    assert run(foreman, square, [7]) == [49]


def test_a_worker_removes_the_scratch_of_a_killed_one(foreman, start_worker):
    import tempfile
    from pathlib import Path

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is free now, like a killed worker's
    stale = Path(tempfile.gettempdir()) / f"crowdcompute-worker-{gone.pid}-x1y2"
    (stale / "slot-0").mkdir(parents=True)
    start_worker(foreman.url, "--procs", "1", "--max-disk", "1MiB")
    assert not stale.exists()


def test_sandbox_refuses_to_start_where_bubblewrap_is_missing(foreman, tmp_path, monkeypatch):
    monkeypatch.setenv("CROWDCOMPUTE_BWRAP", str(tmp_path / "no-such-bwrap"))
    done = subprocess.run(
        [sys.executable, "-m", "crowdcompute", "worker", foreman.url, "--sandbox"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "--sandbox cannot run: the bubblewrap binary" in done.stderr
    assert "does not exist" in done.stderr
    assert "connected" not in done.stdout


def test_sandbox_refuses_to_start_where_user_namespaces_are_forbidden(foreman, tmp_path, monkeypatch):
    fake = tmp_path / "bwrap"  # says what bubblewrap says on such a machine
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to create a new namespace, likely because the kernel does "
        "not allow non-privileged user namespaces.' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CROWDCOMPUTE_BWRAP", str(fake))
    done = subprocess.run(
        [sys.executable, "-m", "crowdcompute", "worker", foreman.url, "--sandbox"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "--sandbox cannot run: bubblewrap failed: bwrap: No permissions" in done.stderr
    assert "does not let unprivileged users create user namespaces" in done.stderr
    assert "connected" not in done.stdout


def test_sizes_and_bad_limits_are_explained():
    assert parse_size("512MiB") == 512 * 1024**2
    assert parse_size("2 GB") == 2 * 1000**3
    assert parse_size("1000") == 1000
    assert [format_size(n) for n in (512 * 1024**2, 300 * 1000**2, 1536 * 1024**2, 1234567, 999)] == [
        "512 MiB",
        "300 MB",
        "1536 MiB",
        "1.2 MiB",
        "999 bytes",
    ]
    with pytest.raises(ValueError, match="KB/MB/GB"):
        parse_size("lots")
    done = subprocess.run(
        [sys.executable, "-m", "crowdcompute", "worker", "--max-memory", "lots"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "KiB/MiB/GiB" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "crowdcompute", "worker", "--max-memory", "10MB"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--max-memory 10 MB is too small" in done.stderr


def test_max_processes_is_refused_where_nothing_would_enforce_it(monkeypatch):
    import worker.limits

    monkeypatch.setattr(worker.limits, "pids_cgroups_available", lambda: False)
    limits = Limits(processes=20)
    monkeypatch.setattr(worker.limits.os, "geteuid", lambda: 0)
    for sandbox in (False, True):
        with pytest.raises(UnenforceableLimitError, match="runs as root, which RLIMIT_NPROC does not bind"):
            check_processes_limit(limits, sandbox)
    monkeypatch.setattr(worker.limits.os, "geteuid", lambda: 1000)
    with pytest.raises(UnenforceableLimitError, match="outside --sandbox RLIMIT_NPROC counts all your processes"):
        check_processes_limit(limits, sandbox=False)
    assert check_processes_limit(limits, sandbox=True) == "rlimit"
    assert check_processes_limit(Limits(), sandbox=False) == ""
