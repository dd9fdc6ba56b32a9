"""The examples users run first, against a foreman and worker started from the command line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import spawn

EXAMPLE = textwrap.dedent(
    """
    import asyncio
    from crowdcompute import connect, map, run, disconnect

    async def main():
        await connect("localhost", PORT)
        def square(x):
            return x ** 2
        print(await map(square, [1, 2, 3, 4, 5]))
        def process_data(data):
            import time
            time.sleep(0.1)
            return sum(data) * 2
        print(await map(process_data, [[1, 2, 3, 4, 5], [10, 20, 30, 40, 50], [100, 200, 300, 400, 500]]))
        print(await run(lambda x: x * 10, 42))
        await disconnect()

    asyncio.run(main())
    """
)


def test_seed_example_with_no_token_typed(start_foreman, start_worker):
    foreman = start_foreman()  # no --token: it writes a connection file
    start_worker(f"ws://localhost:{foreman.port}")  # reads the token from that file
    script = EXAMPLE.replace("PORT", str(foreman.port))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[1, 4, 9, 16, 25]", "[30, 300, 3000]", "420"]


def test_demo_runs_and_summarises(crowd_home):
    proc = spawn("demo", "--workers", "2", "--items", "40")
    assert proc.popen.wait(60) == 0, "\n".join(proc.lines)
    proc.wait_for_line("demo: 40 items on 2 workers")
    proc.wait_for_line("found")
    proc.close()


def test_worker_waits_for_a_foreman_that_starts_later(start_foreman, start_worker, crowd_home):
    import socket

    with socket.socket() as s:  # a port that is free now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = start_worker(f"ws://127.0.0.1:{port}", "--procs", "1", wait=False)
    proc = spawn("foreman", "--port", str(port))
    try:
        proc.wait_for_line("foreman listening on")
        worker.wait_for_line("connected to")
    finally:
        assert proc.stop() == 0


EMBEDDED_THEN_WAIT = textwrap.dedent(
    """
    import asyncio, sys
    from crowdcompute import CrowdComputeClient

    async def main():
        cc = await CrowdComputeClient(workers=2).connect()
        assert await cc.map(abs, [-1, -2]) == [1, 2]
        print(" ".join(str(p.pid) for p in [cc.cluster.foreman, *cc.cluster.agents]), flush=True)
        await asyncio.sleep(3600)  # killed before this ends

    asyncio.run(main())
    """
)


def test_a_killed_client_leaves_no_embedded_process_behind(crowd_home):
    import signal

    import psutil

    client = subprocess.Popen([sys.executable, "-c", EMBEDDED_THEN_WAIT], stdout=subprocess.PIPE, text=True)
    try:
        import select

        ready, _, _ = select.select([client.stdout], [], [], 30)
        assert ready, "the client did not start its embedded cluster within 30 s"
        line = client.stdout.readline()
        assert line.strip(), "the client printed no process ids"
        pids = [int(pid) for pid in line.split()]
        family = [psutil.Process(pid) for pid in pids]
        family += [child for process in family for child in process.children(recursive=True)]
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"still running after the client was killed: {[p.pid for p in alive]}"
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
        client.stdout.close()
