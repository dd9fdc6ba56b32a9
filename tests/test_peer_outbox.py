"""What the foreman sends a peer: its outbox (in order, bounded in frames and bytes) and how a
frame becomes a websocket message (a small one in one frame, a big one in fragments)."""

from __future__ import annotations

import asyncio
import weakref

import pytest

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import CloseCode, Role
from foreman import peer as peers
from foreman.cli import main as foreman_main
from foreman.peer import Frame, Outbox, Peer, Stop


class UnreadSocket:
    """A websocket (websockets' side, not ours) whose peer never reads: it only records closes."""

    def __init__(self) -> None:
        self.closed: list[tuple[int, str]] = []

    async def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def test_the_outbox_hands_items_over_in_order_and_wakes_a_waiting_sender():
    async def scenario() -> list:
        outbox = Outbox()
        got = []

        async def sender() -> None:
            while not isinstance(item := await asyncio.wait_for(outbox.get(), 5), Stop):
                got.append(item)

        task = asyncio.create_task(sender())
        await asyncio.sleep(0)  # the sender waits on an empty outbox
        for n in range(3):
            outbox.put_nowait(Frame([b"%d" % n], 1))
        outbox.put_nowait(Stop())
        await asyncio.wait_for(task, 5)
        return [bytes(item.parts[0]) for item in got]

    assert asyncio.run(scenario()) == [b"0", b"1", b"2"]


def test_a_peer_that_lets_too_many_frames_pile_up_is_closed_with_the_limit_named(monkeypatch):
    monkeypatch.setattr(peers, "MAX_OUTBOX_FRAMES", 4)

    async def scenario() -> tuple[Peer, UnreadSocket]:
        websocket = UnreadSocket()
        peer = Peer("c1", Role.CLIENT, "client", websocket)  # type: ignore[arg-type]
        for n in range(6):
            peer.queue_frame(p.encode_parts(p.JobAccepted(f"j{n}")))
            peer.flush()  # each in a turn of its own (frames of one turn go as one batch)
        assert peer.closing is not None, "the fifth frame should close the connection"
        await asyncio.wait_for(peer.closing, 5)
        return peer, websocket

    peer, websocket = asyncio.run(scenario())
    assert len(peer.outbox) == 4, "frames past the limit are not queued"
    ((code, reason),) = websocket.closed
    assert code == CloseCode.POLICY
    assert reason.startswith("4 frames (") and "4 frames" in reason and "limits" in reason


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def test_frames_queued_in_one_turn_go_as_one_batch_when_it_ends_and_the_welcome_alone():
    async def scenario() -> list:
        peer = Peer("w1", Role.WORKER, "worker", UnreadSocket())  # type: ignore[arg-type]
        peer.queue_frame(p.encode_parts(p.Welcome(p.PROTOCOL_VERSION, "w1")), alone=True)
        tasks = [p.AssignTask("j1", n, 1, n, 1, b"x", None) for n in range(3)]
        for task in tasks:
            peer.queue_frame(p.encode_parts(task))
        assert len(peer.outbox) == 1, "only the Welcome is queued before the turn ends"
        await asyncio.wait_for(_until(lambda: len(peer.outbox) == 2), 5)
        peer.queue_frame(p.encode_parts(p.ReleaseJob("j1")))
        peer.close(CloseCode.NORMAL, "bye", logged=True)  # what this turn queued goes before the close
        peer.outbox.put_nowait(Stop())
        items = []
        while not isinstance(item := await asyncio.wait_for(peer.outbox.get(), 5), Stop):
            items.append(item)
        return [p.decode(b"".join(item.parts)) if isinstance(item, Frame) else item for item in items]

    welcome, batch, release, hangup = asyncio.run(scenario())
    assert isinstance(welcome, p.Welcome)
    assert batch == p.Batch(tuple(p.AssignTask("j1", n, 1, n, 1, b"x", None) for n in range(3)))
    assert release == p.ReleaseJob("j1") and hangup == peers.Hangup(CloseCode.NORMAL, "bye")


def test_what_a_turn_keeps_is_freed_only_after_its_frames_are_queued():
    class Thing:  # a collected job, say: freeing it must not delay the leases of this turn
        pass

    async def scenario() -> list[str]:
        turn = peers.EndOfTurn()
        peer = Peer("w1", Role.WORKER, "worker", UnreadSocket())  # type: ignore[arg-type]
        peer.turn = turn
        seen: list[str] = []
        thing = Thing()
        alive = weakref.ref(thing, lambda _: seen.append(f"freed with {len(peer.outbox)} frame(s) queued"))
        turn.keep(thing)
        del thing
        peer.queue_frame(p.encode_parts(p.AssignTask("j1", 0, 1, 0, 1, b"x", None)))
        seen.append(f"this turn: {len(peer.outbox)} frame(s) queued")
        await asyncio.wait_for(_until(lambda: alive() is None), 5)
        return seen

    assert asyncio.run(scenario()) == ["this turn: 0 frame(s) queued", "freed with 1 frame(s) queued"]


def test_frames_that_piled_up_for_a_slow_peer_go_together():
    outbox = Outbox()  # (the sender took a first frame of 30 bytes; these piled up behind it)
    for n in range(2):
        outbox.put_nowait(Frame(p.encode_parts(p.JobAccepted(f"j{n}")), 30))
    outbox.put_nowait(Frame([b"x" * p.BATCH_BYTES], p.BATCH_BYTES))
    taken = outbox.take_frames(p.BATCH_BYTES - 30)
    assert len(taken) == 2 and len(outbox) == 1, "the big frame waits for its own turn"
    alone = Outbox()
    alone.put_nowait(Frame([b"welcome"], 7, alone=True))
    assert alone.take_frames(p.BATCH_BYTES) == [], "a frame marked alone never joins a batch"


def test_a_small_message_goes_as_one_frame_and_a_big_one_in_fragments():
    small = p.encode_parts(p.AssignTask("j1", 0, 1, 0, 1, b"x" * 100, None))
    assert len(small) == 2, "the header and the payload are separate parts"
    one = p.outgoing(small, 1024)
    assert isinstance(one, bytes) and p.decode_parts([one]) == p.decode_parts(small)
    big = p.encode_parts(p.AssignTask("j1", 0, 1, 0, 1, b"y" * (p.SMALL_MESSAGE + 1), None))
    fragments = p.outgoing(big, 16 * 1024)
    assert isinstance(fragments, list) and len(fragments) > 2, "a big payload is cut, never joined"
    assert all(len(fragment) <= 16 * 1024 for fragment in fragments)
    assert p.decode_parts(fragments) == p.decode_parts(big)


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_connections_must_be_at_least_one(capsys, value):
    assert foreman_main(["--max-connections", value, "--token", "t"]) == 2
    assert "--max-connections must be at least 1" in capsys.readouterr().err


def test_outcomes_ending_apart_wait_a_moment_to_go_together_and_the_last_goes_at_once():
    def result(n: int) -> p.TaskResult:
        return p.TaskResult("j1", n, n, 1, 0, b"r")

    async def scenario() -> list:
        peer = Peer("c1", Role.CLIENT, "client", UnreadSocket())  # type: ignore[arg-type]
        for n in range(2):  # two outcomes, each in a turn of its own
            peer.queue_frame(p.encode_parts(result(n)), linger=True)
            await asyncio.sleep(0)
        assert len(peer.outbox) == 0, "an outcome that may linger went before RESULT_LINGER passed"
        await asyncio.wait_for(_until(lambda: len(peer.outbox) == 1), 5)  # RESULT_LINGER passed
        peer.queue_frame(p.encode_parts(result(2)), linger=True)
        peer.queue_frame(p.encode_parts(result(3)))  # the job's last outcome: no waiting, and it takes 2 along
        await asyncio.wait_for(_until(lambda: len(peer.outbox) == 2), 5)
        peer.outbox.put_nowait(Stop())
        items = []
        while not isinstance(item := await asyncio.wait_for(peer.outbox.get(), 5), Stop):
            items.append(p.decode(b"".join(item.parts)))
        return items

    lingered, last = asyncio.run(scenario())
    assert lingered == p.Batch((result(0), result(1)))
    assert last == p.Batch((result(2), result(3))), "the last outcome must go at once, after those before it"


def test_a_jobs_last_outcome_is_sent_without_lingering():
    from scheduler_events import done, started, submit

    from foreman.state import Send

    s = started(2)
    submit(s, "c1", "j1", tasks=2)

    def lingering(actions: list) -> list[bool]:
        return [a.linger for a in actions if isinstance(a, Send) and isinstance(a.message, p.TaskResult)]

    assert lingering(s.task_done("w1", done("j1", 0))) == [True]
    assert lingering(s.task_done("w1", done("j1", 1))) == [False], "the client waits for the last one"


def test_a_frame_written_is_not_held_while_the_sender_waits_for_the_next():
    class Payload(bytearray):  # a 200 MB result, say (a bytearray of our own can be watched)
        pass

    class RecordingSocket(UnreadSocket):
        def __init__(self) -> None:
            super().__init__()
            self.sent = 0

        async def send(self, message) -> None:
            self.sent += 1

    async def scenario() -> bool:
        websocket = RecordingSocket()
        peer = Peer("c1", Role.CLIENT, "client", websocket)  # type: ignore[arg-type]
        payload = Payload(b"x" * 1000)
        alive = weakref.ref(payload)
        peer.queue_frame(p.encode_parts(p.TaskResult("j1", 0, 0, 1, 0, payload)))
        del payload
        sender = asyncio.create_task(peer.send_frames(lambda websocket, job_id: asyncio.sleep(0)))
        try:
            await asyncio.wait_for(_until(lambda: websocket.sent == 1), 5)
            try:  # while the sender waits for its next frame
                await asyncio.wait_for(_until(lambda: alive() is None), 2)
            except asyncio.TimeoutError:
                return False
            return True
        finally:
            peer.stop_sending()
            await asyncio.wait_for(sender, 5)

    assert asyncio.run(scenario()), "the sender still holds the frame it wrote"
