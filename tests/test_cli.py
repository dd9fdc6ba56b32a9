"""The command line: local, status, and the environment a shared cluster exports."""

from __future__ import annotations

import json
import signal

import psutil
import pytest
from conftest import spawn
from helpers import arun, printed

from crowdcompute import AuthenticationError, CrowdComputeClient
from crowdcompute.wire import addresses


def test_local_runs_a_cluster_that_ctrl_c_stops_completely(crowd_home):
    proc = spawn("local", "--workers", "2", "--port", "0")
    try:
        url = proc.wait_for_line("foreman listening on ").rsplit(" ", 1)[1]
        for _ in range(2):
            proc.wait_for_line("connected to")
        port = int(url.rsplit(":", 1)[1])
        token = json.loads((crowd_home / f"foreman-{port}.json").read_text())["token"]

        async def main():
            async with CrowdComputeClient("localhost", port) as cc:  # no token: the connection file
                assert await cc.map(lambda x: x * 2, range(10)) == [x * 2 for x in range(10)]
                assert len((await cc.status())["workers"]) == 2

        arun(main())
        status = spawn("status", url, "--token", token)
        assert status.popen.wait(30) == 0, "\n".join(status.lines)
        status.close()
        table = "\n".join(status.lines)
        assert "2 workers" in table and "local-1" in table and "local-2" in table
        children = psutil.Process(proc.popen.pid).children(recursive=True)
        proc.popen.send_signal(signal.SIGINT)
        assert proc.popen.wait(30) == 0
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left behind: {alive}"
    finally:
        proc.stop()


def test_status_of_an_absent_foreman_says_so(crowd_home):
    status = spawn("status", "ws://127.0.0.1:9", "--token", "x")
    assert status.popen.wait(30) == 1
    status.close()
    assert any("no foreman answered" in line for line in status.lines), status.lines


def test_connect_with_no_address_uses_the_exported_cluster(cluster, monkeypatch):
    monkeypatch.setenv("CROWDCOMPUTE_ADDRESS", cluster.url)
    monkeypatch.setenv("CROWDCOMPUTE_TOKEN", cluster.token)

    async def main():
        async with CrowdComputeClient() as cc:
            assert cc.cluster is None  # no embedded cluster: the exported one
            assert await cc.run(sum, [1, 2, 3]) == 6

    arun(main())


def test_foreman_sigterm_exits_zero(foreman):
    assert foreman.proc.stop() == 0


def test_the_foreman_imports_no_cloudpickle():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import foreman.cli, foreman.server, foreman.scheduler, foreman.journal, foreman.http\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cloudpickle'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"the foreman imported {result.stdout.strip()}"


def test_a_foreman_started_again_on_its_port_reuses_its_token(start_foreman):
    first = start_foreman()
    first.proc.stop()
    again = start_foreman(port=first.port)
    assert again.token == first.token


def test_the_connection_file_is_for_this_user_only(foreman, crowd_home):
    import stat

    path = crowd_home / f"foreman-{foreman.port}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["url"] == foreman.url


def test_a_generated_token_never_reads_as_an_option(monkeypatch):
    """``crowdcompute worker URL --token -abc`` is an argparse error: a token never starts with "-"."""
    drawn = iter(["-starts-with-a-dash", "fine-token"])
    monkeypatch.setattr(addresses.secrets, "token_urlsafe", lambda nbytes: next(drawn))
    assert addresses.generate_token() == "fine-token"


def test_the_token_exported_with_this_foremans_address_beats_a_connection_file_left_on_its_port(monkeypatch):
    """A tunnel to a remote foreman on a local port where a local foreman once ran: the exported
    pair is what the user means (CONTRACT's connect() with no host); the old file's token was sent."""
    from crowdcompute.tokens import choose_client_token

    address = addresses.parse_address("ws://127.0.0.1:9123")
    addresses.write_connection_file(9123, address.url, "old-local-token")
    monkeypatch.setenv("CROWDCOMPUTE_ADDRESS", address.url)
    monkeypatch.setenv("CROWDCOMPUTE_TOKEN", "exported-token")
    assert choose_client_token(address, None).value == "exported-token"
    monkeypatch.delenv("CROWDCOMPUTE_ADDRESS")  # not said which foreman it is for: the file's, on loopback
    assert choose_client_token(address, None).value == "old-local-token"


def test_the_exported_token_goes_to_a_named_foreman_only_where_the_user_meant_it(start_foreman, monkeypatch):
    foreman = start_foreman("--token", "s3cret")  # writes no connection file
    monkeypatch.setenv("CROWDCOMPUTE_TOKEN", "s3cret")

    async def connect(**kwargs):
        async with CrowdComputeClient(foreman.url, **kwargs) as cc:
            return (await cc.status())["jobs"]

    async def main():
        assert await connect() == []  # $CROWDCOMPUTE_TOKEN with no $CROWDCOMPUTE_ADDRESS: for any foreman
        monkeypatch.setenv("CROWDCOMPUTE_ADDRESS", foreman.url)
        assert await connect() == []  # the address it goes with
        # It goes with another foreman: not sent here, and the error says so.
        monkeypatch.setenv("CROWDCOMPUTE_ADDRESS", "wss://elsewhere.example:9000")
        with pytest.raises(AuthenticationError) as caught:
            await connect()
        text = str(caught.value)
        assert "$CROWDCOMPUTE_TOKEN" in text and "wss://elsewhere.example:9000" in text and "token=" in text, text
        assert await connect(token="s3cret") == []  # an explicit token always goes
        monkeypatch.delenv("CROWDCOMPUTE_ADDRESS")
        monkeypatch.setenv("CROWDCOMPUTE_TOKEN", "wrong")
        with pytest.raises(AuthenticationError, match=r"refused the token in \$CROWDCOMPUTE_TOKEN"):
            await connect()

    arun(main())
    status = spawn("status", foreman.url)  # `crowdcompute status URL` chooses the same way
    assert status.popen.wait(30) == 1
    status.close()
    assert any("refused the token in $CROWDCOMPUTE_TOKEN" in line for line in status.lines), status.lines


def test_with_no_token_at_all_the_error_names_the_connection_file_looked_for(start_foreman, crowd_home):
    foreman = start_foreman("--token", "s3cret")
    looked_for = crowd_home / f"foreman-{foreman.port}.json"

    async def main():
        with pytest.raises(AuthenticationError) as caught:
            await CrowdComputeClient(foreman.url).connect()
        text = str(caught.value)
        assert "no token was given" in text and str(looked_for) in text, text
        assert "refused this client token" not in text, text

    arun(main())


def test_a_loopback_foremans_connection_file_comes_before_the_exported_token(cluster, monkeypatch):
    monkeypatch.setenv("CROWDCOMPUTE_TOKEN", "the token of some other foreman")

    async def main():
        async with CrowdComputeClient("localhost", cluster.port) as cc:
            assert await cc.run(sum, [2, 3]) == 5

    arun(main())


def _say_and_sleep(seconds):
    import time

    print("started", flush=True)
    time.sleep(seconds)
    return seconds


def test_a_stopping_worker_says_what_it_waits_for_and_a_second_ctrl_c_stops_its_tasks(foreman, start_worker):
    """Ctrl-C lets running tasks finish (up to DRAIN_TIMEOUT) in silence, and a second one did not
    hurry it: a volunteer saw nothing for 10 s."""
    from worker.agent import DRAIN_TIMEOUT

    worker = start_worker(foreman.url, "--procs", "1")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(_say_and_sleep, [60])
            await printed(job)
            worker.popen.send_signal(signal.SIGINT)
            worker.wait_for_line("Ctrl-C again", timeout=10)
            worker.popen.send_signal(signal.SIGINT)
            assert worker.popen.wait(DRAIN_TIMEOUT / 2) == 0, "the second Ctrl-C did not stop the task"
            job.cancel()

    arun(main(), timeout=60)


def test_a_worker_stopped_while_it_dials_stops_at_once(crowd_home):
    """Ctrl-C during a dial to an address that never answers waited for the dial's timeout (10 s)."""
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        worker = spawn("worker", f"ws://127.0.0.1:{silent.getsockname()[1]}", "--token", "x", "--procs", "1")
        try:
            silent.settimeout(20)
            connection, _ = silent.accept()  # the worker is dialing
            with connection:
                worker.popen.send_signal(signal.SIGINT)
                assert worker.popen.wait(5) == 0
        finally:
            worker.stop()


def test_a_worker_without_a_token_for_another_host_says_so_at_once(crowd_home):
    """It retried forever, saying no connection file was found: a file only helps on loopback."""
    worker = spawn("worker", "ws://192.0.2.1:9000", "--procs", "1")  # exits before dialing anything
    assert worker.popen.wait(30) == 2
    worker.close()
    assert any("--token" in line and "loopback" in line for line in worker.lines), worker.lines


def test_a_workers_retry_notice_gives_a_workers_advice(crowd_home):
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        worker = spawn("worker", f"ws://127.0.0.1:{closed.getsockname()[1]}", "--token", "x", "--procs", "1")
        try:
            line = worker.wait_for_line("no foreman answered")
            assert "connect()" not in line and "Check the URL" in line, line
        finally:
            worker.stop()


def test_a_local_cluster_on_any_port_leaves_no_connection_file(crowd_home):
    """The file of a foreman on a port the system picked is never read again: they piled up."""
    proc = spawn("local", "--workers", "1", "--port", "0")
    try:
        url = proc.wait_for_line("foreman listening on ").rsplit(" ", 1)[1]
        path = addresses.connection_file_path(int(url.rsplit(":", 1)[1]))
        assert path.exists()
        proc.popen.send_signal(signal.SIGINT)
        assert proc.popen.wait(30) == 0
        assert not path.exists(), "the connection file of a stopped foreman on port 0 was left behind"
    finally:
        proc.stop()


def test_ctrl_c_of_a_short_command_is_one_line_not_a_traceback(crowd_home):
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        status = spawn("status", f"ws://127.0.0.1:{silent.getsockname()[1]}", "--token", "x")
        try:
            silent.settimeout(20)
            connection, _ = silent.accept()  # it is connecting
            with connection:
                status.popen.send_signal(signal.SIGINT)
                assert status.popen.wait(10) == 130
        finally:
            status.stop()
    assert not any("Traceback" in line for line in status.lines), status.lines


@pytest.mark.parametrize(
    "args, said",
    [
        (["foreman", "--log-level", "loud"], "invalid choice: 'loud'"),
        (["worker", "--log-level", "loud"], "invalid choice: 'loud'"),
        (["demo", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_command_line_values_are_refused_not_ignored(crowd_home, args, said):
    """Each was taken silently: an unknown log level as 'info', --workers 0 as the CPU count."""
    proc = spawn(*args)
    assert proc.popen.wait(30) == 2
    proc.close()
    assert any(said in line for line in proc.lines), proc.lines


def test_status_printed_to_a_pipe_keeps_each_row_on_one_line(foreman, start_worker):
    """Piped, rich assumed 80 columns and wrapped headers and dates over several lines."""
    import os

    start_worker(foreman.url, "--procs", "1", "--name", "a-rather-long-volunteer-machine-name.physics-lab")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    status = spawn("status", foreman.url, "--token", foreman.token, env=env)
    assert status.popen.wait(30) == 0, status.lines
    status.close()
    (header,) = [line for line in status.lines if "worker" in line and "identity" in line]
    assert "slots" in header and "tasks done" in header and "state" in header, "\n".join(status.lines)
