"""Bad input: wrong tokens, undecodable frames, absent foremen."""

from __future__ import annotations

import asyncio

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
