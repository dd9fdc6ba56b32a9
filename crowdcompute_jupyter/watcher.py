"""Following a job from a magic: its progress, and interrupt = cancel.

:func:`watch_job` runs inside the coroutine a magic hands to
:func:`crowdcompute_jupyter.runner.run_sync`. Text that tasks print needs
nothing here: the Job prints it in the context that submitted it, the
magic's, so ipykernel puts it in the magic's cell (each line marked with
its item's index).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from crowdcompute.errors import CrowdComputeError, JobCancelledError
from crowdcompute.job import JobState
from crowdcompute.progress import RichProgress, choose_renderer

from .widget import ProgressWidget

if TYPE_CHECKING:
    from crowdcompute.client import CrowdComputeClient
    from crowdcompute.job import Job

__all__ = ["CANCEL_CONFIRM_TIMEOUT", "confirm_cancel", "make_progress", "watch_job"]

#: Seconds an interrupted magic waits for the foreman to confirm it saw the cancel.
CANCEL_CONFIRM_TIMEOUT = 5.0


def make_progress(job: Job) -> ProgressWidget | RichProgress:
    """The renderer :func:`crowdcompute.progress.choose_renderer` picks for a magic.

    Where it picks none, a widget kept up to date but not shown, so that
    ``last_progress`` still tells how the job went. The magic prints the
    stats line itself, so the rich bar does not.
    """
    shown = choose_renderer(None)
    if shown == "rich":
        return RichProgress(job, summary=False)
    return ProgressWidget(job, display=shown == "widget")


async def watch_job(
    client: CrowdComputeClient, job: Job, *, progress: ProgressWidget | RichProgress | None
) -> list[Any]:
    """Wait for ``job``; its results, errors in place.

    A cancellation of the waiting task (an interrupt) cancels the job on the
    foreman, waits until the foreman has seen the cancel, and raises
    JobCancelledError. Raises ConnectionLostError if the connection is lost.
    """
    try:
        return await job.result(return_exceptions=True)
    except asyncio.CancelledError:
        if job.state in (JobState.DONE, JobState.FAILED):
            return await job.result(return_exceptions=True)  # interrupted just after the end: keep it
        job.cancel()
        await confirm_cancel(client)
        raise JobCancelledError(job.id) from None
    finally:
        if isinstance(progress, ProgressWidget):
            await progress.finish()
        elif progress is not None:
            progress.close()


async def confirm_cancel(client: CrowdComputeClient) -> None:
    """Wait until the foreman has handled what we sent before (a cancel, say).

    The foreman handles a client's messages in order, so the answer to a
    status request proves the cancel before it was handled. Outside a kernel
    nothing runs the event loop between cells: without this wait, the cancel
    could sit unsent until the next magic.
    """
    try:
        await asyncio.wait_for(client.status(), CANCEL_CONFIRM_TIMEOUT)
    except (asyncio.TimeoutError, CrowdComputeError):
        pass  # the connection is gone or slow: the foreman cancels a lost client's jobs anyway
