"""The worker agent: holds the connection to the foreman and feeds its task processes.

It connects (retrying with exponential backoff until the foreman answers),
caches each job's function, queues the tasks it is leased, runs each in a
free slot's process, and reports outcomes, printed output and crashes. When
the foreman releases a job, its queued tasks are dropped and its running
tasks' processes are killed. A job with requirements runs in an environment
that :mod:`worker.environments` builds (once per set of requirements) before
its first task; the foreman hears "building", then "ready" or "failed".
Each slot's loop, task after task, is :mod:`worker.feeding`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from websockets.exceptions import ConnectionClosed

from crowdcompute.dialing import Backoff, RetryNotices, dial
from crowdcompute.errors import AuthenticationError, CrowdComputeError, ForemanUnavailableError
from crowdcompute.receiving import read_frame
from crowdcompute.sending import write_frames
from crowdcompute.wire import messages as p
from crowdcompute.wire.addresses import Address, read_connection_file
from crowdcompute.wire.blobs import SharedFolder, join_folder
from crowdcompute.wire.constants import Role
from crowdcompute.wire.runtime import runtime_fields

from .claims import Ends
from .environments import Environments
from .feeding import SlotFeeding
from .pool import Slot, SlotSettings

__all__ = ["RECONNECT_DELAY_MAX", "WorkerAgent"]

log = logging.getLogger("crowdcompute.worker")

T = TypeVar("T")

#: First and largest delay between attempts to reach the foreman, in seconds.
RECONNECT_DELAY_MIN = 0.1
RECONNECT_DELAY_MAX = 5.0
#: Seconds a stopping worker lets its running tasks finish before it hands them back.
DRAIN_TIMEOUT = 10.0


class WorkerAgent(SlotFeeding):
    """A worker with ``procs`` task processes, serving the foreman at ``address``."""

    def __init__(
        self,
        address: Address,
        *,
        token: str | None,
        procs: int,
        name: str | None = None,
        cafile: str | None = None,
        heartbeat_interval: float = 5.0,
        slot_settings: SlotSettings | None = None,
        resources: dict[str, float] | None = None,
        labels: dict[str, str] | None = None,
        environments: Environments | None = None,
    ) -> None:
        """``resources`` and ``labels`` route jobs that need them here; ``environments``
        builds the environments of jobs with requirements (None: this worker installs nothing)."""
        self.address = address
        self.token = token
        self.procs = procs
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.cafile = cafile
        self.heartbeat_interval = heartbeat_interval
        self.resources = dict(resources or {})
        self.labels = dict(labels or {})
        self.environments = environments
        self._requirements: dict[str, list[str]] = {}  # job id -> its requirements
        self._builds: dict[str, asyncio.Task] = {}  # job id -> its environment, being prepared
        self._setup: dict[str, float] = {}  # job id -> build seconds, reported with its next outcome
        self._keys: dict[str, str] = {}  # job id -> cache key of its environment (kept from eviction)
        self.slot_settings = slot_settings or SlotSettings()
        self.slots = [Slot(self.slot_settings, i) for i in range(procs)]
        self._active = procs  # the slots the foreman uses (``Welcome.granted``): the first ones
        self._functions: dict[str, tuple[bytes, str]] = {}  # job id -> (function, serializer)
        self._running: dict[int, p.AssignTask] = {}  # slot index -> the task it runs
        self._cancelled: set[tuple[str, int]] = set()  # (job, task) the foreman cancelled, not yet seen here
        self._queue: asyncio.Queue[tuple[p.AssignTask, float]] = asyncio.Queue()  # with arrival times
        # slot index -> how that slot, running a task with none written behind it, claims its next one
        self._claimers: dict[int, Callable[[], None]] = {}
        self._ends = Ends()  # when each running slot will need its next task (worker.claims)
        self._offering = False  # an _offer is scheduled
        self._outbox: asyncio.Queue[list[bytes | memoryview]] = asyncio.Queue()
        self._draining = False
        self._idle = asyncio.Event()  # set while no slot runs a task
        self._shared: SharedFolder | None = None  # the foreman's payload folder, when this host shares it

    async def run(self, stop: asyncio.Event, *, drain: bool = True, hurry: asyncio.Event | None = None) -> None:
        """Serve the foreman until ``stop`` is set; reconnect whenever the connection drops.

        ``drain``: once stopped, let running tasks finish and report first (a volunteer's
        Ctrl-C); False stops them at once (a worker of an embedded cluster whose owner is gone).
        ``hurry``, set while draining (a second Ctrl-C), stops them then.

        Raises AuthenticationError when the foreman refuses the token.
        """
        loop = asyncio.get_running_loop()
        # Task processes start while we dial: a first task waits for them, not the connection.
        self._started = asyncio.gather(*(loop.run_in_executor(None, slot.start) for slot in self.slots))
        backoff = Backoff(RECONNECT_DELAY_MIN, RECONNECT_DELAY_MAX)
        # Why the foreman cannot be reached (a TLS certificate it cannot verify, a wrong
        # address, ...) is said at once, then again at a lower rate while retrying.
        notices = RetryNotices(lambda text: log.warning("worker %s: %s (retrying)", self.name, text))
        try:
            while not stop.is_set():
                try:
                    hello = self._hello()
                    dialed = await _unless_stopped(
                        dial(self.address, hello, cafile=self.cafile, ping_interval=self.heartbeat_interval), stop
                    )
                    if dialed is None:
                        break  # stopped while dialing: not after the dial's own timeout
                    websocket, welcome = dialed
                except AuthenticationError:
                    raise
                except ForemanUnavailableError as exc:
                    notices.failed(_for_a_worker(exc))
                    await _wait(stop, backoff.next())
                    continue
                backoff.reset()
                notices.reset()
                print(f"worker {self.name} connected to {self.address.url}", flush=True)
                if welcome.notice:
                    print(f"worker {self.name}: {welcome.notice}", flush=True)
                await self._serve(websocket, stop, welcome, drain, hurry)
                if not stop.is_set():
                    log.warning("lost the foreman at %s; reconnecting", self.address.url)
        finally:
            await self.close()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(self._started, return_exceptions=True)
        for slot in self.slots:
            slot.kill()
        await asyncio.gather(*(loop.run_in_executor(None, slot.close) for slot in self.slots))
        if self.slot_settings.scratch is not None:
            shutil.rmtree(self.slot_settings.scratch, ignore_errors=True)

    def _hello(self) -> p.Hello:
        """The Hello to send; with no token, the one in the foreman's connection file."""
        token = self.token
        if token is None and self.address.loopback:
            found = read_connection_file(self.address.port)
            token = found["token"] if found else None
        if token is None:
            # The foreman may not have written its file yet: keep trying like an absent foreman.
            raise ForemanUnavailableError(
                self.address.url,
                "no token given and no connection file found",
                "Pass the foreman's worker token with --token (or $CROWDCOMPUTE_WORKER_TOKEN).",
            )
        return p.Hello(
            Role.WORKER,
            token,
            p.PROTOCOL_VERSION,
            name=self.name,
            slots=self.procs,
            resources=self.resources,
            labels=self.labels,
            installs=self.environments is not None,
            **runtime_fields(),
        )

    async def _serve(
        self,
        websocket,
        stop: asyncio.Event,
        welcome: p.Welcome,
        drain: bool = True,
        hurry: asyncio.Event | None = None,
    ) -> None:
        """One connection's life: read assignments, run them, send outcomes.

        ``welcome.blobs``: the foreman's payload folder; if this host shares it, big inputs and
        outcomes travel as files there (see crowdcompute.wire.blobs). ``welcome.granted``: the
        slots the foreman uses, when fewer than ours: the other task processes are stopped.
        """
        self._reset()
        joined = join_folder(welcome.blobs)
        self._shared = None if joined is None else joined[0]
        if joined is not None:
            self._outbox.put_nowait(p.encode_parts(p.ShareBlobs(joined[1])))
        used = self.slots[: welcome.granted] if 0 < welcome.granted < len(self.slots) else self.slots
        self._active = len(used)
        if len(used) < len(self.slots):  # a volunteer's machine should not keep idle processes
            await asyncio.gather(self._started, return_exceptions=True)
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, slot.close) for slot in self.slots[len(used) :]))
        tasks = [asyncio.create_task(self._run_slot(slot)) for slot in used]
        tasks.append(asyncio.create_task(self._send_frames(websocket)))
        reader = asyncio.create_task(self._read_frames(websocket))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
            if drain and stop.is_set() and not reader.done():
                await self._drain(reader, hurry or asyncio.Event())
        finally:
            for task in (reader, stopper, *tasks):
                task.cancel()
            await asyncio.gather(reader, stopper, *tasks, return_exceptions=True)
            self._release_all()
            await websocket.close()

    async def _drain(self, reader: asyncio.Task, hurry: asyncio.Event) -> None:
        """Stopping: take nothing new, let running tasks finish and report (until ``hurry`` is set),
        hand back the rest.

        Queued tasks go back to the foreman when the connection closes.
        """
        self._draining = True
        self._outbox.put_nowait(p.encode_parts(p.WorkerDraining()))
        if self._running:
            count = len(self._running)
            print(
                f"worker {self.name}: stopping; waiting up to {DRAIN_TIMEOUT:g} s for {count} running "
                f"task{'' if count == 1 else 's'} to finish (Ctrl-C again to stop {'it' if count == 1 else 'them'} now)",
                flush=True,
            )
        idle, hurried = asyncio.create_task(self._idle.wait()), asyncio.create_task(hurry.wait())
        await asyncio.wait([idle, hurried, reader], timeout=DRAIN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        hurried.cancel()
        if not reader.done():
            flushed = asyncio.create_task(self._outbox.join())
            await asyncio.wait([flushed, reader], timeout=DRAIN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            flushed.cancel()

    def _reset(self) -> None:
        self._functions.clear()
        self._requirements.clear()
        self._builds.clear()
        self._setup.clear()
        self._keys.clear()
        self._queue = asyncio.Queue()
        self._claimers.clear()
        self._cancelled.clear()
        self._ends.clear()
        self._outbox = asyncio.Queue()
        self._draining = False
        self._idle.set()

    async def _read_frames(self, websocket) -> None:
        try:
            # (A call of its own per frame: nothing of one is held while the next one is awaited.)
            while self._take(await read_frame(websocket)):
                pass
        except ConnectionClosed:
            pass

    def _take(self, fragments: list[bytes | bytearray | str]) -> bool:
        """Handle the messages of one frame; False if it was not a frame of ours."""
        try:
            decoded = p.decode_parts(fragments)
        except CrowdComputeError as exc:
            log.error("bad frame from the foreman: %s", exc)
            return False
        for msg in p.unbatch(decoded):  # a batch (the tasks of one lease round): one by one
            self._handle(msg)
        return True

    def _handle(self, msg: p.Message) -> None:
        """One message from the foreman."""
        if isinstance(msg, p.AssignTask):
            if msg.function:  # the first task of its job here
                self._functions[msg.job_id] = (bytes(msg.function), msg.serializer)
                if msg.requirements:
                    self._requirements[msg.job_id] = list(msg.requirements)
            self._queue.put_nowait((msg, time.monotonic()))
            if not self._offering:  # once the frame is read and the idle slots took theirs (see _offer)
                self._offering = True
                asyncio.get_running_loop().call_soon(self._offer)
        elif isinstance(msg, p.ReleaseJob):
            self._release(msg.job_id)
        elif isinstance(msg, p.CancelTask):
            self._cancel(msg.job_id, msg.task_id)
        else:
            log.warning("ignored unexpected %s from the foreman", msg.TYPE)

    def _release(self, job_id: str) -> None:
        """Forget a job: its queued tasks are skipped, its running ones killed."""
        self._functions.pop(job_id, None)
        self._requirements.pop(job_id, None)
        self._builds.pop(job_id, None)
        self._setup.pop(job_id, None)
        self._keys.pop(job_id, None)
        self._ends.forget(job_id)
        self._cancelled = {key for key in self._cancelled if key[0] != job_id}
        if self.environments is not None:
            self.environments.in_use = set(self._keys.values())
        for slot in self.slots:
            running = self._running.get(slot.index)
            if running is not None and running.job_id == job_id:
                slot.kill()
            slot.forget(job_id)

    def _cancel(self, job_id: str, task_id: int) -> None:
        """Another run of the task was accepted: stop it if a slot runs it, else skip it when a
        slot takes it (it waits here, or behind a running task); either way ``_run_slot``
        answers TaskCancelled. (Of a job released here already, nothing is left to stop.)"""
        if job_id not in self._functions:
            return
        self._cancelled.add((job_id, task_id))
        for slot in self.slots:
            running = self._running.get(slot.index)
            if running is not None and (running.job_id, running.task_id) == (job_id, task_id):
                slot.kill()  # a fresh process takes the slot's next task

    def _release_all(self) -> None:
        for job_id in list(self._functions) + [task.job_id for task in self._running.values()]:
            self._release(job_id)

    async def _send_frames(self, websocket) -> None:
        outbox = self._outbox
        while True:
            frames = deque([await outbox.get()])  # and every frame queued after it: they go out together
            while not outbox.empty():
                frames.append(outbox.get_nowait())
            count = len(frames)
            try:
                # A big outcome is not joined to its header, and goes in pieces, so that the foreman
                # never buffers a whole one in its websocket layer (framing.outgoing). Not in batches:
                # outcomes of a worker's slots seldom end in one turn, and batching them measured no
                # gain (docs/scaling.md); the foreman reads batches from anyone all the same.
                await write_frames(websocket, frames, batch=False)
            except ConnectionClosed:
                return
            finally:
                for _ in range(count):
                    outbox.task_done()


def _for_a_worker(exc: ForemanUnavailableError) -> str:
    """The error as a worker's operator reads it: not the client's advice to call connect()."""
    if exc.hint != exc.DEFAULT_HINT:
        return str(exc)
    return f"no foreman answered at {exc.address}: {exc.reason}. Check the URL, and that the foreman runs there (`crowdcompute foreman`)."


async def _unless_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T | None:
    """What ``awaitable`` gives, or None (it cancelled) if ``stop`` is set first."""
    work, stopped = asyncio.ensure_future(awaitable), asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if work.done():
        return work.result()
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    return None


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
