"""Process lifecycle shared by the foreman, worker and local commands.

SIGTERM and Ctrl-C set a stop event so that every command can shut down
cleanly and exit 0. A process started with its stdin on a pipe from its
parent (``--exit-with-parent``) stops when that pipe closes, so children of an
embedded cluster never outlive a killed client.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import gc
import logging
import signal
import sys
import threading

__all__ = [
    "GC_YOUNG_THRESHOLD",
    "add_log_level",
    "collect_garbage_less_often",
    "configure_logging",
    "install_stop_handlers",
    "keep_read_buffers_off_mmap",
    "HeapRelease",
    "trim_heap",
    "stop_with_parent",
]

#: glibc's mallopt parameters, and what the foreman and the worker set them to.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 4 * 1024 * 1024
#: Bytes of big frames that pass through the foreman before it trims its heap (``HeapRelease``).
RELEASE_AFTER_BYTES = 32 * 1024 * 1024
#: Container objects allocated (net) between two collections of the garbage collector's youngest
#: generation in the foreman; Python's default is 700.
GC_YOUNG_THRESHOLD = 50_000


def keep_read_buffers_off_mmap() -> None:
    """Make each socket read cheaper in this process (glibc only; elsewhere nothing happens).

    asyncio reads a socket with ``recv(256 KiB)``: glibc gives a buffer that
    big its own mmap, which Python shrinks to what arrived and later unmaps,
    three system calls and a page fault on every read (about 14 us here,
    several times the read itself). Above these thresholds it does not.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):  # (macOS's C library has none)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


class HeapRelease:
    """Hands the C heap's free pages back to the system after big payloads have passed (glibc only).

    A big payload forwarded in 1 MiB pieces and then dropped leaves its pages
    in glibc's heap, between objects that live on, where they count in the
    process's resident memory until they are reused: a foreman that forwarded
    200 MB results stayed at 241-245 MB with 9 MB in use. ``malloc_trim``
    gives them back (about 20 ms for 200 MB; it walks every free chunk, 35 ms
    for 200,000 of them).
    So it runs only once at least ``least`` bytes of big frames went through
    (``passed``) and a whole ``tick`` went by without one: pages given back
    while payloads still flow would only be faulted in again. (Asking glibc how
    much is free, ``mallinfo2``, walks every free chunk too: 37 ms for 200,000.)
    """

    def __init__(self, least: int = RELEASE_AFTER_BYTES) -> None:
        self.least = least
        self._passed = 0  # bytes of big frames since the last release
        self._flowing = False  # one came since the last tick

    def passed(self, size: int) -> None:
        """A big frame of ``size`` bytes went through."""
        self._passed += size
        self._flowing = True

    def tick(self) -> bool:
        """Called regularly; whether the heap was trimmed now."""
        if self._flowing or self._passed < self.least:
            self._flowing = False
            return False
        self._passed = 0
        trim_heap()
        return True


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def collect_garbage_less_often() -> None:
    """Run the cyclic garbage collector far less often in this process (the foreman).

    Every message the foreman handles allocates a few dicts and objects that
    die at once; Python's default starts a collection every 700 of them, and
    with thousands of connected workers the older generations it then walks
    are large: 10-15 % of the foreman's CPU per task (issue 12, measured with
    1,000 simulated workers). Cycles still go, a little later.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def install_stop_handlers(stop: asyncio.Event, again: asyncio.Event | None = None) -> None:
    """Make SIGTERM and SIGINT set ``stop`` instead of killing the process; once it is set, ``again``
    (if given: a second Ctrl-C, to stop without waiting for what stopping waits for)."""
    loop = asyncio.get_running_loop()

    def signalled() -> None:
        (again if again is not None and stop.is_set() else stop).set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, signalled)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass


def stop_with_parent(stop: asyncio.Event) -> None:
    """Set ``stop`` when stdin reaches end of file (the parent closed it or died)."""
    loop = asyncio.get_running_loop()

    def wait_for_eof() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, name="parent-watch", daemon=True).start()


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """The ``--log-level`` option of a long-running command (an unknown level is refused, not taken as info)."""
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=("debug", "info", "warning", "error"),
        help="debug, info, warning or error (default: info)",
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    # websockets logs every connection at INFO; ours say what matters.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
