"""Hardening: TLS, separate roles, limits, hostile peers; the foreman keeps serving everyone else."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import subprocess
import sys
import threading

import pytest
from conftest import spawn
from helpers import arun, fake_worker, wait_until
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from crowdcompute import (
    AuthenticationError,
    CrowdComputeClient,
    ForemanUnavailableError,
    SerializationError,
    UntrustedPayloadError,
    processes,
)
from crowdcompute.wire import messages as p
from crowdcompute.wire.addresses import parse_address
from crowdcompute.wire.runtime import runtime_fields


def hello(role: str, token: str) -> p.Hello:
    return p.Hello(role, token, p.PROTOCOL_VERSION, slots=1 if role == "worker" else 0, **runtime_fields())


async def authenticated(url: str, token: str, role: str = "client"):
    """A raw websocket that has said hello: for sending what the SDK never would."""
    ws = await ws_connect(url, max_size=None)
    await ws.send(p.encode(hello(role, token)))
    assert isinstance(p.decode(await ws.recv()), p.Welcome)
    return ws


async def closed_with(ws) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    return closed.value.rcvd.code


async def still_serving(url: str, token: str) -> None:
    async with CrowdComputeClient(url, token=token) as cc:
        assert await cc.map(lambda x: x + 1, range(3)) == [1, 2, 3]


# --- TLS ------------------------------------------------------------------------


def test_tls_end_to_end_with_a_custom_ca(start_foreman, start_worker, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    ca.cert_pem.write_to_path(cafile)
    foreman = start_foreman("--token", "tls-token", "--certfile", str(certfile), "--keyfile", str(keyfile))
    assert foreman.url.startswith("wss://")
    start_worker(foreman.url, "--procs", "1", "--token", "tls-token", "--cafile", str(cafile))

    async def main():
        async with CrowdComputeClient(foreman.url, token="tls-token", cafile=str(cafile)) as cc:
            assert await cc.map(lambda x: -x, [1, 2]) == [-1, -2]
        with pytest.raises(ForemanUnavailableError, match="TLS"):
            await CrowdComputeClient(foreman.url, token="tls-token", timeout=5).connect()  # unknown CA
        plain = foreman.url.replace("wss://", "ws://")
        with pytest.raises(ForemanUnavailableError):
            await CrowdComputeClient(plain, token="tls-token", timeout=5).connect()

    arun(main())
    # An invite for this foreman says that volunteers need the CA too (its join command alone failed).
    invite = spawn("invite", "vol1", foreman.url, "--token", "tls-token", "--cafile", str(cafile))
    assert invite.popen.wait(30) == 0, invite.lines
    invite.close()
    assert any("--cafile" in line and str(cafile) in line for line in invite.lines[:-1]), invite.lines
    assert invite.lines[-1].startswith(f"crowdcompute worker {foreman.url} --token ")


def test_non_loopback_without_tls_warns(crowd_home):
    proc = spawn("foreman", "--host", "0.0.0.0", "--port", "0", "--journal", "none")
    try:
        line = proc.wait_for_line("warning:")
        assert "without TLS" in line and "--certfile" in line
        proc.wait_for_line("foreman listening on ws://0.0.0.0:")
    finally:
        assert proc.stop() == 0


# --- roles ------------------------------------------------------------------------


def test_client_and_worker_tokens_are_separate(start_foreman, start_worker, crowd_home):
    foreman = start_foreman("--token", "client-secret", "--worker-token", "worker-secret")

    async def main():
        with pytest.raises(AuthenticationError):
            await CrowdComputeClient(foreman.url, token="worker-secret").connect()

    arun(main())
    intruder = spawn("worker", foreman.url, "--procs", "1", "--token", "client-secret")
    assert intruder.popen.wait(30) == 1
    intruder.wait_for_line("refused this worker token")
    intruder.close()
    start_worker(foreman.url, "--procs", "1", "--token", "worker-secret")
    arun(still_serving(foreman.url, "client-secret"))
    assert sum("wrong or missing" in line for line in foreman.proc.lines) == 2


# --- limits -------------------------------------------------------------------------


def test_the_client_refuses_an_item_over_the_frame_limit_before_sending(start_foreman, start_worker):
    foreman = start_foreman("--max-frame-size", str(1024 * 1024))
    start_worker(foreman.url, "--procs", "1")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            with pytest.raises(SerializationError, match=r"item 1 .*over the foreman's limit") as caught:
                await cc.map(len, [b"small", b"x" * 2_000_000])
            text = str(caught.value)  # sizes in MiB as the README writes them; what raises the limit
            assert "it pickles to 1.9 MiB, over the foreman's limit of 0.9 MiB per task" in text, text
            assert "--max-frame-size" in text, text
            with pytest.raises(SerializationError) as caught:  # run(): the argument, not item 0's ((args), {kwargs})
                await cc.run(len, b"x" * 2_000_000, key=1)
            text = str(caught.value)
            assert text.startswith("cannot serialize argument 1 (b'xxx") and "1.9 MiB" in text, text
            assert "item 0" not in text and "((" not in text, text
            lock = threading.Lock()
            with pytest.raises(SerializationError, match=r"^cannot serialize argument key= \(<unlocked _thread.lock"):
                await cc.run(len, b"", key=lock)
            assert (await cc.status())["jobs"] == []
            # Chunks that would be too big together are split; each item fits.
            assert await cc.map(len, [b"y" * 300_000] * 6, chunksize=6) == [300_000] * 6

    arun(main())


def test_oversized_frames_close_only_their_connection(start_foreman, start_worker):
    foreman = start_foreman("--max-frame-size", str(1024 * 1024))
    start_worker(foreman.url, "--procs", "1")

    async def main():
        ws = await authenticated(foreman.url, foreman.token)
        await ws.send(b"\x00" * (2 * 1024 * 1024))
        assert await closed_with(ws) == 1009
        async with ws_connect(foreman.url, max_size=None) as early:  # a huge first frame, before any hello
            await early.send(b"\x00" * (100 * 1024))
            assert await closed_with(early) == 1009
        async with ws_connect(foreman.url, max_size=None) as fragmented:  # a 64 MB first message in pieces
            pieces = (b"\x00" * (64 * 1024) for _ in range(1024))
            with contextlib.suppress(ConnectionClosed):
                await fragmented.send(pieces)
            assert await closed_with(fragmented) == 1009
        await still_serving(foreman.url, foreman.token)

    arun(main())


def test_half_open_handshakes_do_not_block_others(cluster):
    async def main():
        address = parse_address(cluster.url)
        stalled = []
        for _ in range(50):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            stalled.append(writer)
        try:
            await still_serving(cluster.url, cluster.token)
        finally:
            for writer in stalled:
                writer.close()

    arun(main())


def test_a_hello_trickled_one_fragment_at_a_time_is_assembled(cluster):
    async def main():
        frame = p.encode(hello("client", cluster.token))

        async def fragments():
            for i in range(0, len(frame), 8):
                await asyncio.sleep(0.005)  # trickle: this is the traffic pattern under test
                yield frame[i : i + 8]

        async with ws_connect(cluster.url) as ws:
            await ws.send(fragments())
            assert isinstance(p.decode(await ws.recv()), p.Welcome)
        await still_serving(cluster.url, cluster.token)

    arun(main())


@pytest.mark.parametrize(
    "frame",
    [
        os.urandom(64),
        b'\x00\x00\x00\x0f{"type":"nope"}',
        b'\x00\x00\x00\x2b{"type":"submit_job","job_id":7,"sizes":[0]}',
    ],
)
def test_garbage_after_hello_closes_with_1002_and_is_logged(cluster, frame):
    async def main():
        ws = await authenticated(cluster.url, cluster.token)
        await ws.send(frame)
        assert await closed_with(ws) == 1002
        await still_serving(cluster.url, cluster.token)

    arun(main())
    assert any("closed client" in line for line in cluster.proc.lines)


# --- hostile workers ---------------------------------------------------------------


class Evil:
    """Unpickling this runs a shell command: what a malicious worker would send."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("trusted", [False, True])
def test_untrusted_results_never_run_code(foreman, tmp_path, trusted):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(([Evil(str(marker))], {}), protocol=5)

    async def main():
        stop = asyncio.Event()
        worker = asyncio.create_task(fake_worker(foreman.url, foreman.token, lambda task: payload, stop))
        try:
            async with CrowdComputeClient(foreman.url, token=foreman.token, trust_workers=trusted) as cc:
                job = await cc.submit(abs, [1], chunksize=1)
                if trusted:  # the control: trusting a malicious worker runs its code
                    await job
                else:
                    with pytest.raises(UntrustedPayloadError, match="posix.system|os.system"):
                        await job
        finally:
            stop.set()
            await worker

    arun(main())
    assert marker.exists() == trusted


def test_plain_data_and_numpy_pass_the_untrusted_decoder(cluster):
    np = pytest.importorskip("numpy")

    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token, trust_workers=False) as cc:
            results = await cc.map(lambda n: {"n": n, "squares": [i * i for i in range(n)], "t": (n, 1.5)}, [2])
            assert results == [{"n": 2, "squares": [0, 1], "t": (2, 1.5)}]
            (array,) = await cc.map(lambda n: __import__("numpy").arange(n, dtype="float32"), [5])
            assert array.dtype == np.float32 and array.tolist() == [0, 1, 2, 3, 4]
            with pytest.raises(ValueError) as caught:  # builtin exception types are rebuilt
                await cc.run(int, "not a number")
            assert "invalid literal" in caught.value.remote_traceback

            class Point:  # defined here: it travels by value, rebuilt by cloudpickle's helpers
                pass

            # The refusal names what the user wrote and the way out, not cloudpickle's internals.
            with pytest.raises(UntrustedPayloadError, match="defined in __main__ or a notebook.*trust_workers=True"):
                await cc.run(lambda: Point())

    arun(main())


def test_forged_results_are_dropped_and_logged(cluster):
    async def main():
        ws = await authenticated(cluster.url, cluster.token, role="worker")
        await ws.send(p.encode(p.TaskDone("no-such-job", 0, 1, 0, b"forged")))
        await wait_until(
            lambda: any("dropped a result" in line for line in cluster.proc.lines), 10, "the forgery was not logged"
        )
        await ws.close()  # it would take tasks and never answer
        await still_serving(cluster.url, cluster.token)

    arun(main())


def test_a_runtime_mismatch_gets_portable_jobs_only_naming_both(cluster):
    mine = ".".join(map(str, sys.version_info[:2]))

    async def main():
        async with ws_connect(cluster.url) as ws:
            other = p.Hello("worker", cluster.token, p.PROTOCOL_VERSION, slots=1, python="2.7.18", cloudpickle="0.5")
            await ws.send(p.encode(other))
            welcome = p.decode(await ws.recv())
            assert isinstance(welcome, p.Welcome) and "portable jobs only" in welcome.notice
            assert "Python 2.7" in welcome.notice and f"Python {mine}" in welcome.notice
        async with ws_connect(cluster.url) as ws:
            other = p.Hello("client", cluster.token, p.PROTOCOL_VERSION, python="2.7.18", cloudpickle="0.5")
            await ws.send(p.encode(other))
            assert isinstance(p.decode(await ws.recv()), p.Welcome)
            await ws.send(p.encode(p.SubmitJob("j", b"pickle", 1, 1)))
            refusal = p.decode(await ws.recv())
            assert isinstance(refusal, p.RequestError)
            assert "Python 2.7" in refusal.reason and f"Python {mine}" in refusal.reason
            assert "serializer='portable'" in refusal.reason

    arun(main())


def test_an_idle_client_is_closed_and_comes_back_when_it_has_work(start_foreman, start_worker):
    foreman = start_foreman("--idle-timeout", "0.5")
    start_worker(foreman.url, "--procs", "1")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            await wait_until(
                lambda: any("closed idle client" in line for line in foreman.proc.lines), 15, "the idle client stayed"
            )
            assert await cc.map(lambda x: x * 3, [1, 2]) == [3, 6]

    arun(main())


def test_a_full_foreman_refuses_new_jobs_with_a_reason():
    from foreman.scheduler import Scheduler

    s = Scheduler(max_queued_bytes_total=10)
    s.add_client("c1")
    s.submit_job("c1", p.SubmitJob("j1", b"f", 2, 2))
    s.submit_task("c1", p.SubmitTask("j1", 0, 0, 1, b"x" * 20))
    (refusal,) = s.submit_job("c1", p.SubmitJob("j2", b"f", 1, 1))
    assert isinstance(refusal.message, p.RequestError) and "the foreman is full" in refusal.message.reason


RELEASE_SCRIPT = """
from crowdcompute.processes import keep_read_buffers_off_mmap, trim_heap

def rss():
    with open("/proc/self/status") as file:
        return next(int(line.split()[1]) * 1024 for line in file if line.startswith("VmRSS:"))

keep_read_buffers_off_mmap()  # as the foreman does: pieces under 1 MiB come from the heap
pieces, keep = [], []
for _ in range(400):  # 200 MB in pieces, with small objects that live on between them
    pieces.append(b"x" * (512 * 1024))
    keep.append(bytes(64))
before = rss()
del pieces
held = rss()
trim_heap()
print(before // 2**20, held // 2**20, rss() // 2**20)
"""


def test_the_foreman_hands_back_memory_freed_in_its_heap():
    if sys.platform != "linux" or not os.path.exists("/proc/self/status"):
        pytest.skip("glibc's heap and /proc: Linux only")
    out = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, held, after = (int(figure) for figure in out.stdout.split())
    assert held > before - 50, f"the heap kept the freed pieces ({before} -> {held} MiB): nothing to test"
    assert after < held - 150, f"RSS {held} -> {after} MiB: the freed 200 MB stayed resident"


def test_the_heap_is_trimmed_once_big_frames_stopped_passing(monkeypatch):
    trims: list[int] = []
    monkeypatch.setattr(processes, "trim_heap", lambda: trims.append(1))
    heap = processes.HeapRelease(least=100)
    heap.passed(60)
    assert not heap.tick() and not heap.tick(), "under its threshold: nothing given back"
    heap.passed(60)
    assert not heap.tick(), "frames still flowed during this tick: their pages would come back at once"
    assert heap.tick() and trims == [1], "a quiet tick after 120 bytes: trimmed"
    assert not heap.tick() and trims == [1], "once per burst"
