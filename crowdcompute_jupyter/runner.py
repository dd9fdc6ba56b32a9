"""Running the async SDK from synchronous magics, inside the kernel's event loop.

A magic is a plain function, but in a Jupyter kernel it runs while the
kernel's asyncio loop is running (ipykernel executes cells from a
coroutine), so it can neither start a new loop nor call
``run_until_complete`` on that one. nest_asyncio2 makes the running loop
reentrant; :func:`run_sync` applies it to that loop the first time a magic
needs it, never at import. (Not ``nest_asyncio`` 1.6: under ipykernel 7 it
drops a cell that is queued while a magic waits, so "Run All" hangs.)

Outside a kernel (a terminal IPython, a test's ``InteractiveShell``) no loop
runs during a cell, and :func:`run_sync` uses IPython's own loop, the one
top-level ``await`` runs on. Either way the client a magic connects lives on
the same loop as the user's ``await crowdcompute.map(...)``.

Interrupts: while the coroutine runs, the first SIGINT (Ctrl-C, or
"Interrupt kernel") cancels it instead of raising KeyboardInterrupt at
whatever line the main thread is on, which, with a reentrant loop, could be
inside the kernel's own message handlers. The coroutine sees CancelledError
where it awaits, and can cancel its job on the foreman. A second SIGINT
raises KeyboardInterrupt at once, in case the loop itself is stuck.

A top-level ``await crowdcompute.map(...)`` is interrupted by ipykernel
itself, which cancels the cell's coroutine; the SDK then cancels the job.
:func:`crowdcompute_jupyter.cell_errors.install_error_display` shows the
resulting CancelledError as that job's JobCancelledError, in one line.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["Interrupted", "event_loop", "run_sync"]


class Interrupted(KeyboardInterrupt):
    """Raised by :func:`run_sync` when an interrupt cancelled the coroutine.

    IPython shows it as one line, not as a traceback: an interrupt is no bug.
    """

    def __init__(self, message: str = "interrupted") -> None:
        super().__init__(message)
        self.message = message

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31mKeyboardInterrupt\x1b[0m: {self.message}"]


def event_loop() -> asyncio.AbstractEventLoop:
    """The loop the magics use: the running one in a kernel, else IPython's."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        from IPython.core.async_helpers import get_asyncio_loop

        return get_asyncio_loop()


def _make_reentrant(loop: asyncio.AbstractEventLoop) -> None:
    import nest_asyncio2

    nest_asyncio2.apply(loop)


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to the end on :func:`event_loop` and return its result.

    Raises what ``coro`` raises; Interrupted when a SIGINT cancelled it (the
    coroutine may instead turn the CancelledError into an error of its own,
    which is then raised as it is).
    """
    loop = event_loop()
    if loop.is_running():
        _make_reentrant(loop)
    task = loop.create_task(coro)
    interrupts = 0
    previous = None

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        # Thread- and signal-safe: it only queues the call and wakes the loop's selector.
        loop.call_soon_threadsafe(task.cancel)

    watching = threading.current_thread() is threading.main_thread()
    if watching:
        previous = signal.signal(signal.SIGINT, on_sigint)
        if previous is None:  # a handler not set from Python: put Python's default back after
            previous = signal.default_int_handler
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        if interrupts:
            raise Interrupted() from None
        raise
    except KeyboardInterrupt:
        task.cancel()  # a second interrupt: the coroutine ends when the loop next runs
        raise
    finally:
        if watching:
            signal.signal(signal.SIGINT, previous)
