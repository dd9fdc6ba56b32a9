"""Several hosts on one machine: Linux network namespaces joined by a bridge, for tests and benchmarks.

A :class:`Network` makes a namespace per host (the foreman's, the workers',
the client's) and one for the switch, which holds a bridge; each host has an
``eth0`` whose veth peer sits on the bridge. Nothing is added to the
machine's own namespace, so every packet stays inside the namespaces the
test made, and the same subnet serves parallel tests. Names carry a random
tag, so that parallel or crashed runs never collide. ``close()`` (a
finalizer) kills every process started here and deletes every namespace,
whatever happened.

Processes run in a host with ``ip netns exec``; the test's own client code
runs in a host through :meth:`Network.run_in` (a thread that entered the
host's namespace). A :class:`Relay` process adds one-way delay to TCP
connections (there is no netem here) and can cut them all at once. ``kill_host``
powers a host off: its link drops, then every process in it is SIGKILLed.

Needs root and iproute2 (``ip``): :func:`unavailable` says why not.

Run as a script, this module is the relay:
``python tests/netns.py relay LISTEN_HOST TARGET_HOST TARGET_PORT DELAY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from conftest import Proc

#: Seconds a process started here gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
#: The hosts' subnet: every Network has its own namespaces, so each can use the same one.
SUBNET = "10.77.0"
#: Rounds of SIGKILL kill_host sends before it gives up on a host's processes.
KILL_ROUNDS = 20
#: The relay's line once it listens (followed by HOST:PORT).
RELAY_READY = "relay listening on "
#: The relay's scheduling priority (nice value; root may raise it): hosts sharing this machine's CPUs
#: must not hold up the bytes on their wire, as separate machines would not.
RELAY_NICE = -10
#: Bytes the relay reads at a time (asyncio's own size for a plain Protocol).
RELAY_READ_BYTES = 256 * 1024

_CLONE_NEWNET = 0x40000000


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip`"
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


class Host:
    """One namespace with an address on the bridge."""

    def __init__(self, network: Network, name: str, address: str, port_name: str) -> None:
        self.network = network
        self.name = name
        self.namespace = f"{network.tag}-{name}"
        self.address = address
        self.port_name = port_name  # its veth peer on the bridge, in the switch's namespace

    def command(self, *args: str) -> list[str]:
        """``args`` run in this host."""
        return ["ip", "netns", "exec", self.namespace, *args]


class Network:
    """A switch and the hosts on it; close() removes everything."""

    def __init__(self) -> None:
        self.tag = f"cc{uuid.uuid4().hex[:6]}"
        self.switch = f"{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        self.processes: list[Proc] = []
        self._made: list[str] = []  # namespaces, to delete
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        self._in(self.switch, "link", "add", "br0", "type", "bridge")
        self._in(self.switch, "link", "set", "br0", "up")

    def _in(self, namespace: str, *args: str) -> None:
        _ip("-n", namespace, *args)

    def add_host(self, name: str) -> Host:
        """A new host with the next address on the subnet."""
        number = len(self.hosts) + 1
        host = Host(self, name, f"{SUBNET}.{number}", f"p{number}")
        _ip("netns", "add", host.namespace)
        self._made.append(host.namespace)
        # Both ends are made inside their namespaces: nothing appears in the machine's own.
        _ip(
            "link", "add", "eth0", "netns", host.namespace, "type", "veth",
            "peer", "name", host.port_name, "netns", self.switch,
        )  # fmt: skip
        self._in(self.switch, "link", "set", host.port_name, "master", "br0", "up")
        self._in(host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        self._in(host.namespace, "link", "set", "eth0", "up")
        self._in(host.namespace, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Unplug the host: its packets go nowhere (connections are not closed, they go silent)."""
        self._in(self.switch, "link", "set", host.port_name, "down")

    def kill_host(self, host: Host) -> None:
        """Power the host off: its link goes down first (nothing it sends gets out, as when a machine
        loses power), then every process in its namespace is SIGKILLed."""
        self.cut(host)
        for _ in range(KILL_ROUNDS):  # a process may fork while we kill: again until none is left
            listed = subprocess.run(
                ["ip", "netns", "pids", host.namespace], capture_output=True, text=True, timeout=10
            ).stdout.split()
            if not listed:
                return
            for pid in listed:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)  # let the kernel reap them before the next look
        raise RuntimeError(f"processes still run in host {host.name} after {KILL_ROUNDS} rounds of SIGKILL")

    def mend(self, host: Host) -> None:
        """Plug the host back in."""
        self._in(self.switch, "link", "set", host.port_name, "up")

    def start(self, host: Host, *args: str) -> Proc:
        """``python ARGS`` in ``host``, its output lines read in a thread; stopped by close()."""
        popen = subprocess.Popen(
            host.command(sys.executable, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        proc = Proc(popen)
        self.processes.append(proc)
        return proc

    def run_in(self, host: Host, main: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        """Run the coroutine ``main()`` in a thread inside ``host``'s namespace; its result.

        Fails after ``timeout`` seconds. Sockets it opens belong to the host.
        """
        outcome: dict[str, Any] = {}

        def body() -> None:
            try:
                _enter(host.namespace)
                outcome["value"] = asyncio.run(asyncio.wait_for(main(), timeout))
            except BaseException as exc:  # handed to the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=body, name=f"in-{host.name}", daemon=True)
        thread.start()
        thread.join(timeout + 5)
        if thread.is_alive():
            raise AssertionError(f"the code run in host {host.name} did not end within {timeout} s")
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, asyncio.TimeoutError):
                raise AssertionError(f"the code run in host {host.name} did not end within {timeout} s") from error
            raise error
        return outcome.get("value")

    def close(self) -> None:
        """Kill every process started here, then delete every namespace (in any state)."""
        for proc in self.processes:
            if proc.popen.poll() is None:
                try:
                    os.kill(proc.popen.pid, signal.SIGCONT)  # a stopped process would not see SIGTERM
                    proc.popen.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.processes:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(STOP_TIMEOUT)
            proc.close()
        for namespace in reversed(self._made):
            try:
                _ip("netns", "del", namespace)
            except RuntimeError:
                pass
        self._made.clear()


def _enter(namespace: str) -> None:
    """Move the calling thread into a named network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(Path("/run/netns") / namespace, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
    finally:
        os.close(fd)


class Relay:
    """The relay process in a host: ``port`` forwards to ``target`` with ``delay`` seconds each way."""

    def __init__(self, network: Network, host: Host, target: tuple[str, int], delay: float) -> None:
        self.proc = network.start(
            host, str(Path(__file__).resolve()), "relay", host.address, target[0], str(target[1]), str(delay)
        )
        self.port = int(self.proc.wait_for_line(RELAY_READY).rsplit(":", 1)[1])
        self.host = host

    def cut(self) -> None:
        """Abort every connection through the relay (new ones are accepted)."""
        os.kill(self.proc.popen.pid, signal.SIGUSR1)


# --- the relay process --------------------------------------------------------------


class _Leg(asyncio.BufferedProtocol):
    """One side of a relayed connection: what it reads leaves the other side ``delay`` seconds later.

    A deque and one timer per side keep chunks in order; an end of stream
    (EOF, a reset, a cut) travels the same way and closes the other side.
    Chunks are read into one buffer and copied out at their size: a plain
    Protocol is handed a fresh 256 KiB bytes per read, which costs this
    process an mmap, an mremap and a munmap per chunk, CPU a network does
    not take from its hosts.
    """

    def __init__(self, delay: float, transports: set[asyncio.BaseTransport], buffer: memoryview) -> None:
        self.delay = delay
        self.transports = transports
        self.buffer = buffer  # shared by every leg: a chunk is copied out before the next read
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.other: _Leg | None = None
        self.due: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transports.add(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._pass_on(bytes(self.buffer[:nbytes]))

    def eof_received(self) -> bool:
        self._pass_on(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transports.discard(self.transport)
        self._pass_on(None)

    def _pass_on(self, data: bytes | None) -> None:
        loop = self.loop
        self.due.append((loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = loop.call_at(self.due[0][0], self.deliver)

    def deliver(self) -> None:
        """Write every chunk that is due to the other side (once it is connected)."""
        self.timer = None
        loop = self.loop
        target = self.other.transport if self.other else None
        while self.due and self.due[0][0] <= loop.time() and target is not None:
            _, data = self.due.popleft()
            if data is None:
                self.due.clear()
                target.close()
            elif not target.is_closing():
                target.write(data)
        if self.due and target is not None:
            self.timer = loop.call_at(self.due[0][0], self.deliver)


async def _relay(listen_host: str, target_host: str, target_port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    transports: set[asyncio.BaseTransport] = set()
    buffer = memoryview(bytearray(RELAY_READ_BYTES))

    def accepted() -> _Leg:
        near = _Leg(delay, transports, buffer)
        loop.create_task(dial(near))
        return near

    async def dial(near: _Leg) -> None:
        far = _Leg(delay, transports, buffer)
        try:
            await loop.create_connection(lambda: far, target_host, target_port)
        except OSError:
            if near.transport is not None:
                near.transport.close()
            return
        near.other, far.other = far, near
        near.deliver()  # what arrived while dialling
        far.deliver()

    def cut_all() -> None:
        for transport in list(transports):
            transport.abort()  # type: ignore[attr-defined]

    server = await loop.create_server(accepted, listen_host, 0)
    port = server.sockets[0].getsockname()[1]
    print(f"{RELAY_READY}{listen_host}:{port}", flush=True)
    loop.add_signal_handler(signal.SIGUSR1, cut_all)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "relay":
        sys.exit("usage: netns.py relay LISTEN_HOST TARGET_HOST TARGET_PORT DELAY_SECONDS")
    with contextlib.suppress(OSError):  # a network does not wait for the hosts' CPUs: run ahead of them
        os.setpriority(os.PRIO_PROCESS, 0, RELAY_NICE)
    # epoll waits in whole milliseconds, rounded up, so every delayed chunk would go out
    # 0.5-1 ms late; select() waits in microseconds, and a relay has few sockets.
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(_relay(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    finally:
        loop.close()
