"""Small helpers for tests that drive the async SDK from plain test functions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

#: Default limit for one test's async body, in seconds.
ASYNC_TIMEOUT = 30.0


def arun(awaitable: Awaitable[Any], timeout: float = ASYNC_TIMEOUT) -> Any:
    """Run ``awaitable`` in a fresh event loop, failing after ``timeout`` seconds."""

    async def bounded() -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"the test's async body did not finish within {timeout} s") from None

    return asyncio.run(bounded())


async def wait_until(predicate, timeout: float, message: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` (sync or async) until true; fail with ``message`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{message} (waited {timeout} s)")
        await asyncio.sleep(interval)


async def printed(job, timeout: float = 20) -> list[str]:
    """The text ``job``'s tasks print, once they printed something (a task that says it started)."""
    said: list[str] = []
    job.add_output_listener(lambda index, stream, text: said.append(text))
    await wait_until(lambda: said, timeout, "the task never started (printed nothing)")
    return said


class Proxy:
    """A TCP proxy on 127.0.0.1 that can cut every connection through it, to simulate a network drop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def drop_all(self) -> None:
        """Cut every open connection (both directions), as a network failure would."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def fake_worker(url: str, token: str, answer, stop: asyncio.Event, name: str = "fake") -> None:
    """A worker built on the public protocol: answers each AssignTask with the bytes ``answer(task)`` returns.

    For hostile workers in tests (wrong results, crafted pickles); runs until ``stop`` is set.
    """
    from crowdcompute.dialing import dial
    from crowdcompute.wire import messages as p
    from crowdcompute.wire.addresses import parse_address
    from crowdcompute.wire.runtime import runtime_fields

    hello = p.Hello("worker", token, p.PROTOCOL_VERSION, name=name, slots=1, **runtime_fields())
    ws, _ = await dial(parse_address(url), hello)
    try:
        while not stop.is_set():
            try:
                frame = p.decode(await asyncio.wait_for(ws.recv(), 0.2))
            except asyncio.TimeoutError:
                continue
            for msg in p.unbatch(frame):
                if isinstance(msg, p.AssignTask):
                    await ws.send(p.encode(p.TaskDone(msg.job_id, msg.task_id, msg.attempt, 0, answer(msg))))
    finally:
        await ws.close()
