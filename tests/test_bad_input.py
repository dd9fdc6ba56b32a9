"""Bad input: wrong tokens, undecodable frames, absent foremen."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from helpers import arun
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from crowdcompute import AuthenticationError, CrowdComputeClient, ForemanUnavailableError
from crowdcompute.wire import messages as p
from crowdcompute.wire.runtime import runtime_fields


def test_wrong_token_is_refused_and_runs_nothing(cluster):
    async def main():
        with pytest.raises(AuthenticationError, match="token"):
            await CrowdComputeClient(cluster.url, token="wrong").connect()

    arun(main())
    assert any("wrong or missing client token" in line for line in cluster.proc.lines)


def test_no_foreman_gives_a_clear_error_after_timeout():
    async def main():
        with pytest.raises(ForemanUnavailableError, match="no foreman answered"):
            await CrowdComputeClient("ws://127.0.0.1:9", timeout=2).connect()

    arun(main())


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\x00\x00", 1002),
        (b"\xff\xff\xff\xffgarbage", 1002),
        ("a text frame", 1003),
    ],
)
def test_undecodable_frame_closes_only_that_connection(cluster, frame, code):
    async def main():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as good:
            async with ws_connect(cluster.url) as bad:
                hello = p.Hello("client", cluster.token, p.PROTOCOL_VERSION, **runtime_fields())
                await bad.send(p.encode(hello))
                assert isinstance(p.decode(await bad.recv()), p.Welcome)
                await bad.send(frame)
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(bad.recv(), 10)
                assert closed.value.rcvd.code == code
                assert closed.value.rcvd.reason
            assert await good.map(lambda x: -x, range(5)) == [0, -1, -2, -3, -4]

    arun(main())


def test_protocol_version_mismatch_names_both_versions(cluster):
    async def main():
        async with ws_connect(cluster.url) as ws:
            await ws.send(p.encode(p.Hello("client", cluster.token, 999)))
            reply = p.decode(await ws.recv())
            assert isinstance(reply, p.Refused) and reply.code == "version"
            assert "999" in reply.reason and str(p.PROTOCOL_VERSION) in reply.reason

    arun(main())


def test_a_client_may_not_send_worker_messages(cluster):
    async def main():
        async with ws_connect(cluster.url) as ws:
            await ws.send(p.encode(p.Hello("client", cluster.token, p.PROTOCOL_VERSION, **runtime_fields())))
            p.decode(await ws.recv())
            await ws.send(p.encode(p.TaskDone("j", 0, 1, 0, b"")))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1008

    arun(main())


def _frame(header: dict) -> bytes:
    """A frame made by hand: its header only."""
    head = json.dumps(header).encode()
    return struct.pack("!I", len(head)) + head


async def _raw_client(url: str, token: str):
    """A websocket that said Hello as a client and read its Welcome."""
    ws = await ws_connect(url)
    await ws.send(p.encode(p.Hello("client", token, p.PROTOCOL_VERSION, **runtime_fields())))
    assert isinstance(p.decode(await ws.recv()), p.Welcome)  # the Welcome comes alone, never in a batch
    return ws


@pytest.mark.parametrize(
    "batch, code",
    [
        # A batch whose second message is malformed: nothing of it is handled.
        (
            b"".join(
                p.join_frames([p.encode_parts(p.CancelJob("j")), p.encode_parts(p.TaskDone("j", 0, 1, 0, b"x"))])
            ).replace(b'"attempt":1', b'"attempt":"1"'),
            1002,
        ),
        # A client may not send a worker's message, inside a batch either.
        (p.encode(p.Batch((p.StatusRequest(), p.TaskDone("j", 0, 1, 0, b"")))), 1008),
        (_frame({"type": "batch", "messages": [{"type": "status_request"}, {"type": "batch", "messages": []}]}), 1002),
    ],
    ids=["malformed", "forbidden", "nested"],
)
def test_a_bad_batch_closes_the_connection_like_a_bad_frame(cluster, batch, code):
    async def main():
        bad = await _raw_client(cluster.url, cluster.token)
        try:
            await bad.send(batch)
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # (a StatusRequest must not be answered: the whole frame is refused)
                    assert not isinstance(p.decode(await asyncio.wait_for(bad.recv(), 10)), p.StatusReply)
            assert closed.value.rcvd.code == code and closed.value.rcvd.reason
        finally:
            await bad.close()

    arun(main())


def test_a_job_and_its_tasks_in_one_batch_come_back_as_results(cluster):
    from crowdcompute.codecs.pickled import dumps_function, dumps_items

    async def main():
        ws = await _raw_client(cluster.url, cluster.token)
        try:
            tasks = [p.SubmitTask("j-batch", n, n, 1, dumps_items([n])) for n in range(20)]
            await ws.send(p.encode(p.Batch((p.SubmitJob("j-batch", dumps_function(abs), 20, 20), *tasks))))
            results: set[int] = set()
            while len(results) < 20:
                for msg in p.unbatch(p.decode(await asyncio.wait_for(ws.recv(), 30))):
                    if isinstance(msg, p.TaskResult):
                        results.add(msg.task_id)
            assert results == set(range(20))
        finally:
            await ws.close()

    arun(main())
