"""Process lifecycle shared by the foreman, worker and local commands.

SIGTERM and Ctrl-C set a stop event so that every command can shut down
cleanly and exit 0. A process started with its stdin on a pipe from its
parent (``--exit-with-parent``) stops when that pipe closes, so children of an
embedded cluster never outlive a killed client.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading

__all__ = ["configure_logging", "install_stop_handlers", "stop_with_parent"]


def install_stop_handlers(stop: asyncio.Event) -> None:
    """Make SIGTERM and SIGINT set ``stop`` instead of killing the process."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
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


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    # websockets logs every connection at INFO; ours say what matters.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
