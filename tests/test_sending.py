"""Writing several frames at once: over a real loopback websocket, and on a task process's pipe."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import tracemalloc
from collections import deque

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from crowdcompute.sending import HOLD_DELAY, Held, corked, take_batch, write_frames
from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import FRAGMENT_SIZE
from worker import pipes
from worker.pipes import READ_BYTES, TOGETHER_BYTES, Reader, pickled, send_together

WAIT = 10.0


async def _received_by_a_server(send, expected: int = 3, frames: list | None = None) -> list[p.Message]:
    """What a loopback websocket server reads while ``send(websocket)`` writes and then closes:
    the messages (a batch's one by one); ``frames`` gets each websocket message as it came."""
    got: list[p.Message] = []

    async def handler(websocket) -> None:
        async for frame in websocket:
            if frames is not None:
                frames.append(p.decode(frame))
            got.extend(p.unbatch(p.decode(frame)))

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", max_size=None) as websocket:
            await asyncio.wait_for(send(websocket), WAIT)
        await asyncio.wait_for(_until(lambda: len(got) >= expected), WAIT)
    return got


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_frames_written_together_arrive_whole_and_in_order_and_leave_the_queue():
    big = b"b" * (FRAGMENT_SIZE + 10)  # goes as fragments, inside the corked write
    messages = [p.CancelJob("job-1"), p.SubmitTask("job-1", 0, 0, 1, big), p.CollectJob("job-1")]
    frames = deque(p.encode_parts(m) for m in messages)

    async def send(websocket) -> None:
        await write_frames(websocket, frames)

    assert asyncio.run(_received_by_a_server(send)) == messages
    assert not frames  # each frame is taken off the queue once written


def test_small_frames_go_in_batches_within_the_limit_and_a_big_one_alone_in_its_place():
    small = [p.SubmitTask("job-1", n, n, 1, b"s" * 100) for n in range(3)]
    big = p.SubmitTask("job-1", 3, 3, 1, b"b" * (p.BATCH_BYTES + 1))  # bigger than a batch: never copied into one
    many = [p.SubmitTask("job-1", n, n, 1, b"m" * 1000) for n in range(4, 4 + 2 * p.BATCH_BYTES // 1000)]
    messages = [*small, big, *many]
    queued = deque(p.encode_parts(m) for m in messages)
    received: list[p.Message] = []

    async def send(websocket) -> None:
        await write_frames(websocket, queued)

    assert asyncio.run(_received_by_a_server(send, len(messages), received)) == messages  # in order
    assert not queued
    kinds = [type(frame).__name__ for frame in received]
    assert kinds[:2] == ["Batch", "SubmitTask"] and len(received[0].messages) == 3
    assert len(received) == 2 + 3, "the frames after the big one fill three batches of at most BATCH_BYTES"
    assert all(len(p.encode(frame)) <= p.SMALL_MESSAGE for frame in received if isinstance(frame, p.Batch))


def test_take_batch_counts_the_frames_it_joined():
    frames = [p.encode_parts(p.CancelJob(f"j{n}")) for n in range(3)]
    parts, count = take_batch(frames)
    assert count == 3 and p.decode(b"".join(parts)) == p.Batch(tuple(p.CancelJob(f"j{n}") for n in range(3)))
    assert take_batch(frames, 2) == (frames[2], 1)  # one frame goes as it is


def test_corking_a_socket_that_is_not_tcp_does_nothing():
    class NoTransport:
        pass

    with corked(NoTransport()):
        pass


def test_a_held_frame_goes_with_the_next_one_or_alone_after_the_delay():
    async def scenario() -> tuple[list, list, list]:
        released: list = []
        held = Held(released.append)
        held.hold([b"release j1"])
        held.hold([b"release j2"])
        taken = held.take()  # the owner sends them ahead of its next frame
        assert not held and held.take() == []
        held.hold([b"release j3"])  # nothing follows: it goes alone once HOLD_DELAY passed
        await asyncio.wait_for(_until(lambda: bool(released)), WAIT + HOLD_DELAY)
        return taken, released, held.take()

    taken, released, left = asyncio.run(scenario())
    assert taken == [[b"release j1"], [b"release j2"]]  # in order, and not released on their own
    assert released == [[[b"release j3"]]] and left == []


@pytest.mark.parametrize("size", [10, TOGETHER_BYTES + 1])
def test_messages_sent_together_are_read_back_one_by_one(size):
    ours, theirs = multiprocessing.Pipe()
    try:
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        send_together(ours, [pickled(("forget", "j0")), pickled(("run", "j1", 0, 1)), payload])
        assert theirs.recv() == ("forget", "j0")
        assert theirs.recv() == ("run", "j1", 0, 1)
        assert theirs.recv_bytes() == payload
        assert not theirs.poll()
    finally:
        ours.close()
        theirs.close()


def _payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


@pytest.mark.parametrize("size", [10, TOGETHER_BYTES + 1, 3 * READ_BYTES + 7])
def test_a_reader_reads_back_what_was_sent_together_or_one_by_one(size):
    ours, theirs = multiprocessing.Pipe()
    payload = _payload(size)

    def write() -> None:  # a big message fills the pipe: written beside the reads
        send_together(ours, [pickled(("forget", "j0")), pickled(("run", "j1", 0, 1)), payload])
        ours.send(("output", 0, "stdout", "hello\n" * (size // 6)))  # a pickled message as big as the payload
        ours.send_bytes(payload)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        reader = Reader(theirs.fileno())
        assert reader.recv() == ("forget", "j0")
        assert reader.recv() == ("run", "j1", 0, 1)
        into = bytearray(size)
        reader.recv_bytes_into(into)
        assert into == payload
        assert reader.recv() == ("output", 0, "stdout", "hello\n" * (size // 6))
        assert reader.recv_bytes() == payload
        writer.join(timeout=10)
        assert not writer.is_alive() and not theirs.poll()
        ours.close()
        with pytest.raises(EOFError):
            reader.recv()
    finally:
        writer.join(timeout=10)
        ours.close()
        theirs.close()


def test_a_small_task_written_together_is_read_with_one_call(monkeypatch):
    ours, theirs = multiprocessing.Pipe()
    reads: list[int] = []
    readv = pipes.os.readv
    monkeypatch.setattr(pipes.os, "readv", lambda fd, buffers: reads.append(fd) or readv(fd, buffers))
    try:
        send_together(ours, [pickled(("run", "j1", 0, 1)), b"input"])
        reader = Reader(theirs.fileno())
        assert reader.recv() == ("run", "j1", 0, 1)
        into = bytearray(5)
        reader.recv_bytes_into(into)
        assert into == b"input" and len(reads) == 1
    finally:
        ours.close()
        theirs.close()


def test_a_reader_hands_over_a_big_message_in_the_buffer_it_was_read_into():
    """A 100 MB outcome would be held twice if it were copied out of the buffer it was read into."""
    size = 8 * 1024 * 1024
    ours, theirs = multiprocessing.Pipe()
    writer = threading.Thread(target=ours.send_bytes, args=(_payload(size),))
    writer.start()
    try:
        reader = Reader(theirs.fileno())
        tracemalloc.start()
        try:
            message = reader.recv_bytes()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert message == _payload(size)
        assert peak < 1.5 * size, f"reading {size} bytes took {peak} bytes at the peak: the message was copied"
    finally:
        writer.join(timeout=10)
        ours.close()
        theirs.close()
