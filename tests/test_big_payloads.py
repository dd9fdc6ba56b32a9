"""Big payloads: small tasks, frames as parts (no copy), and a foreman whose memory follows the window.

Pure tests for chunking and framing; integration tests run a real foreman
without a journal (its outcomes live in memory) and real workers.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import tracemalloc

import psutil
import pytest
from helpers import Proxy, arun, wait_until
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

import crowdcompute.codecs.pickled as pickled
from crowdcompute import CrowdComputeClient
from crowdcompute.errors import CrowdComputeError, ProtocolError, SerializationError
from crowdcompute.feed import ACK_AFTER_BYTES
from crowdcompute.receiving import read_frame
from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import FRAGMENT_SIZE, SHARE_FILES_VARIABLE
from foreman.limits import MAX_KEPT_OUTCOME_BYTES

MB = 1_000_000


def echo_slow_last(item):
    """Echo; the item "slow" waits, so the job is still running while the test looks at it."""
    if isinstance(item, str):
        import time

        time.sleep(4)
    return item


def made(size):
    return b"x" * size


def test_plain_items_one_per_task_are_pickled_as_one_by_one_and_one_too_big_is_named():
    items = [1, 2.5, "three", None, True, 10**30]
    fast = pickled.dumps_chunks(items, 1, 10**9)
    assert fast == [(n, 1, pickled.dumps_items([item], n)) for n, item in enumerate(items)]
    with pytest.raises(SerializationError, match=r"item 2 \('x{10}.*over the foreman's limit"):
        pickled.dumps_chunks(["small", 7, "x" * 5000], 1, 4096)


def test_big_items_make_tasks_near_the_target_and_each_item_is_pickled_about_once(monkeypatch):
    calls: list[int] = []
    dumps = pickled.dumps_items
    monkeypatch.setattr(pickled, "dumps_items", lambda items, first=0: calls.append(len(items)) or dumps(items, first))
    items = [os.urandom(1000) for _ in range(100)]
    chunks = pickled.dumps_chunks(items, 30, 10**9, target=4500)
    assert all(len(payload) <= 4500 for _, _, payload in chunks)
    assert [x for _, _, payload in chunks for x in pickle.loads(payload)] == items
    assert [first for first, _, _ in chunks] == sorted({first for first, _, _ in chunks})
    assert sum(calls) < 2 * len(items), f"items pickled {sum(calls)} times for {len(items)} items"
    # Without a target the chunk size holds; one item over the target still makes a task of its own.
    assert [count for _, count, _ in pickled.dumps_chunks(items, 30, 10**9)] == [30, 30, 30, 10]
    assert [count for _, count, _ in pickled.dumps_chunks([os.urandom(9000)], 30, 10**9, target=4500)] == [1]


def test_a_frame_as_parts_holds_the_payload_itself_and_joins_to_the_frame():
    payload = os.urandom(3 * MB)
    view = memoryview(payload)[MB:]
    msg = p.TaskResult("job-1", 2, 20, 5, 0, view, worker="w")
    parts = p.encode_parts(msg)
    assert parts[1] is view  # not copied
    assert b"".join(parts) == p.encode(msg) and p.frame_size(parts) == len(p.encode(msg))
    assert p.decode(b"".join(parts)).payload == view
    assert len(p.encode_parts(p.TaskResult("job-1", 2, 20, 5, 0, b""))) == 1  # no empty part


def test_a_frame_received_in_the_pieces_we_send_uses_each_piece_as_its_payload():
    function, payload = os.urandom(1000), os.urandom(2 * MB)
    msg = p.SubmitTask("job-1", 3, 30, 10, payload)
    parts = p.encode_parts(msg)
    decoded = p.decode_parts([*parts, b""])  # websockets ends a fragmented message with an empty piece
    assert decoded == msg and decoded.payload.obj is payload  # the piece itself, not a copy
    two = p.SubmitJob("job-1", function, 1, 10)
    assert p.decode_parts(p.encode_parts(two)).function.obj is function
    # Cut anywhere else (a proxy may re-fragment), the pieces are joined and decode the same.
    whole = p.encode(msg)
    for cut in (2, 10, len(parts[0]) + 7, len(whole) - 1):
        assert p.decode_parts([whole[:cut], whole[cut:]]) == msg
    # Sent in pieces of at most a fragment, each payload is joined once, from its own pieces only.
    pieces = p.split_parts(p.encode_parts(p.TaskResult("job-1", 2, 20, 5, 0, payload)), 300_000)
    assert max(len(piece) for piece in pieces) <= 300_000 and len(pieces) == 1 + -(-len(payload) // 300_000)
    assert p.decode_parts(pieces).payload == payload
    with pytest.raises(ProtocolError, match="payloads should take"):
        p.decode_parts([*parts, b"extra"])
    with pytest.raises(ProtocolError, match="text frame"):
        p.decode_parts(["text"])


def test_a_big_frame_is_gathered_in_one_buffer_as_it_comes_and_its_payloads_are_views_of_it():
    function, payload = os.urandom(3 * MB + 1), os.urandom(5 * MB + 3)
    msg = p.AssignTask("job-1", 3, 1, 30, 10, payload, function=function)

    async def main():
        async def send(websocket):
            await websocket.send(p.outgoing(p.encode_parts(msg), FRAGMENT_SIZE))
            await websocket.send(p.encode(p.ReleaseJob("job-1")))
            await websocket.wait_closed()

        async with serve(send, "127.0.0.1", 0, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", max_size=None) as websocket:
                return await read_frame(websocket), await read_frame(websocket)

    pieces, small = arun(main(), timeout=30)
    # The header, then one buffer: 9 pieces of at most FRAGMENT_SIZE were added to it as they came.
    assert len(pieces) == 2 and p.header_only(pieces[0]) and len(pieces[1]) == len(function) + len(payload)
    decoded = p.decode_parts(pieces)
    assert decoded == msg
    assert decoded.function.obj is pieces[1] and decoded.payload.obj is pieces[1]  # views, not copies
    assert small == [p.encode(p.ReleaseJob("job-1"))]  # a small frame: one piece, as it came


def test_the_foreman_keeps_a_payload_in_the_pieces_it_arrived_in_and_forwards_them_as_they_are():
    payload = os.urandom(2 * MB + 5)
    pieces = p.split_parts(p.encode_parts(p.TaskDone("job-1", 2, 1, 0, payload)), 500_000)
    done = p.decode_parts(pieces, join=False)
    assert isinstance(done.payload, p.Pieces) and len(done.payload) == len(payload)
    assert [piece.obj for piece in done.payload.pieces] == [piece.obj for piece in pieces[1:]]  # no copy
    forwarded = p.encode_parts(p.TaskResult("job-1", 2, 20, 5, 0, done.payload))
    assert forwarded[1:] == list(done.payload.pieces)  # the same pieces go out
    assert p.decode_parts(forwarded).payload == payload == done.payload
    # A frame stored whole (the journal's) goes out the same way: its header, then its payload in pieces.
    stored = p.encode(p.TaskResult("job-1", 2, 20, 5, 0, payload))
    replayed = p.split_parts(p.frame_parts(stored), 500_000)
    assert len(replayed) == 1 + 5 and p.decode_parts(replayed, join=False).payload == payload
    assert p.frame_parts(p.encode(p.CancelJob("job-1"))) == [p.encode(p.CancelJob("job-1"))]


def test_outcomes_past_the_budget_are_dropped_once_delivered_and_only_their_client_attaches(
    start_foreman, start_worker, monkeypatch
):
    # Payloads inline, in the foreman's memory (payload files are not: see test_payload_files.py).
    monkeypatch.setenv(SHARE_FILES_VARIABLE, "0")
    foreman = start_foreman("--journal", "none")
    start_worker(foreman.url, "--procs", "2")
    size = 2 * MB
    blobs = [os.urandom(size) for _ in range((MAX_KEPT_OUTCOME_BYTES // size) + 4)]
    assert size >= ACK_AFTER_BYTES

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(echo_slow_last, [*blobs, "slow"])
            await wait_until(lambda: job.completed >= len(blobs), 30, "the big outcomes did not arrive")
            async with CrowdComputeClient(foreman.url, token=foreman.token) as other:
                with pytest.raises(CrowdComputeError, match="journal"):
                    await other.attach(job.id)
            assert await job == [*blobs, "slow"]

    arun(main(), timeout=60)


def test_a_client_cut_off_mid_job_gets_every_big_outcome_exactly(start_foreman, start_worker):
    foreman = start_foreman("--journal", "none")
    start_worker(foreman.url, "--procs", "2")
    blobs = [os.urandom(2 * MB) for _ in range(16)]

    async def main():
        proxy = Proxy(foreman.port)
        await proxy.start()
        try:
            async with CrowdComputeClient(f"ws://127.0.0.1:{proxy.port}", token=foreman.token) as cc:
                job = await cc.submit(echo_slow_last, [*blobs, "slow"])
                await wait_until(lambda: job.completed >= 10, 30, "no outcomes before the drop")
                proxy.drop_all()
                assert await asyncio.wait_for(job.result(), 40) == [*blobs, "slow"]
                assert proxy.connections >= 2, "the client never reconnected"
        finally:
            await proxy.close()

    arun(main(), timeout=60)


async def _lets_go(process: psutil.Process, before: int, size: int, what: str) -> None:
    """Wait until ``process`` holds less than half of the ``size`` bytes a task moved through it."""
    await wait_until(
        lambda: process.memory_info().rss < before + size // 2,
        10,
        f"the idle {what} still holds {(process.memory_info().rss - before) // MB} MB more than before "
        f"a task moved {size // MB} MB through it",
    )


def test_a_worker_that_sent_a_big_outcome_does_not_hold_it_while_it_waits_for_work(
    start_foreman, start_worker, monkeypatch
):
    monkeypatch.setenv(SHARE_FILES_VARIABLE, "0")  # the outcome passes through the agent, not a payload file
    foreman = start_foreman("--journal", "none")
    agent = psutil.Process(start_worker(foreman.url, "--procs", "1").popen.pid)
    size = 64 * MB

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            assert await cc.run(made, 10) == b"x" * 10
            before = agent.memory_info().rss
            assert len(await cc.run(made, size)) == size
            await _lets_go(agent, before, size, "worker's agent")

    arun(main(), timeout=60)


def test_a_client_holds_no_result_the_user_let_go_of(start_foreman, start_worker, monkeypatch):
    monkeypatch.setenv(SHARE_FILES_VARIABLE, "0")  # the result comes inline, not as a payload file
    foreman = start_foreman("--journal", "none")
    start_worker(foreman.url, "--procs", "1")
    size = 32 * MB

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            assert await cc.run(made, 10) == b"x" * 10
            tracemalloc.start()
            try:
                assert len(await cc.run(made, size)) == size  # and let go of at once
                await wait_until(
                    lambda: tracemalloc.get_traced_memory()[0] < size // 2,
                    10,
                    f"the client still holds {tracemalloc.get_traced_memory()[0] // MB} MB after a {size // MB} MB "
                    "result was let go of",
                )
            finally:
                tracemalloc.stop()

    arun(main(), timeout=60)


def test_a_task_process_holds_nothing_of_its_last_task_while_it_waits_for_the_next(
    start_foreman, start_worker, monkeypatch
):
    monkeypatch.setenv(SHARE_FILES_VARIABLE, "0")  # the input comes through the pipe, into the task process's memory
    foreman = start_foreman("--journal", "none")
    agent = psutil.Process(start_worker(foreman.url, "--procs", "1").popen.pid)
    size = 64 * MB

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            assert await cc.map(len, [b"warm"]) == [4]
            # (The task process is a child of the agent's forkserver.)
            (task_process,) = [process for child in agent.children() for process in child.children()]
            before = task_process.memory_info().rss
            assert await cc.map(len, [b"x" * size]) == [size]
            await _lets_go(task_process, before, size, "task process")

    arun(main(), timeout=60)
