"""The progress widget: an ipywidgets renderer of :class:`crowdcompute.progress.ProgressModel`.

    [name ██████████░░░░░░░░]  37/100 · 2 failed · 153 items/s · 3 s left

An ``HBox`` of an ``IntProgress`` bar and an ``HTML`` line. While the job
runs the bar is blue; at the end it is green ("success") when every item
succeeded, red ("danger") when some failed or the connection was lost, and
orange ("warning") when the job was cancelled.

Why updates come from a task of our own and not straight from the job's
listener: ipykernel 7 tags every message a cell sends (stdout, widget
updates) with the cell found in the *current* ``contextvars`` context. Job
listeners run in the client's frame reader, whose context belongs to the
cell that connected, so an update sent from there would be filed under that
old cell (and nbclient would drop it). The listener only marks the model as
changed; a task started here, in the context of the code that made the
widget, redraws it at most every REFRESH_INTERVAL seconds and at least every
TICK_INTERVAL seconds (so that rate and time left keep moving).
"""

from __future__ import annotations

import asyncio
import html
from typing import TYPE_CHECKING, Any

from crowdcompute.progress import ProgressModel

if TYPE_CHECKING:
    from crowdcompute.job import Job

__all__ = ["BAR_STYLES", "ProgressWidget", "describe_progress"]

#: Shortest time between two redraws, in seconds (throttles busy jobs).
REFRESH_INTERVAL = 0.1
#: Longest time between two redraws while the job runs, in seconds.
TICK_INTERVAL = 0.5

#: The bar's style for each job state (ipywidgets bar_style names).
BAR_STYLES = {
    "running": "info",
    "done": "success",
    "failed": "danger",
    "cancelled": "warning",
    "lost": "danger",
}


def _duration(seconds: float) -> str:
    """A short human duration: ``0.4 s``, ``12 s``, ``3 min 5 s``, ``2 h 1 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def describe_progress(model: ProgressModel) -> str:
    """The widget's text line for ``model``, as plain text."""
    finished = model.done + model.failed
    parts = [f"{finished}/{model.total}"]
    if model.failed:
        parts.append(f"{model.failed} failed")
    parts.append(f"{model.rate:,.1f} items/s")
    parts += model.notes()
    if model.state == "running":
        left = model.time_left
        parts.append("time left unknown" if left is None else f"{_duration(left)} left")
    else:
        parts.append(f"{_duration(model.elapsed)}")
        parts.append(
            {"done": "done", "failed": "failed", "cancelled": "cancelled", "lost": "connection lost"}.get(
                model.state, model.state
            )
        )
    return " · ".join(parts)


class ProgressWidget:
    """A live progress bar for one job, displayed in the cell that made it.

    ``bar`` (IntProgress) and ``label`` (HTML) sit in ``box`` (HBox). With
    ``display=False`` the widget is built and kept up to date but not shown
    (a terminal IPython has nowhere to show it). :meth:`close` draws the
    final state and stops following the job; the widget stays on screen.
    """

    def __init__(self, job: Job, *, display: bool = True) -> None:
        import ipywidgets

        self.job = job
        self.model = ProgressModel.of(job)
        self.bar = ipywidgets.IntProgress(
            value=0,
            min=0,
            max=job.total,
            description=(job.name or "map")[:20],
            bar_style=BAR_STYLES["running"],
        )
        self.label = ipywidgets.HTML(value="")
        self.box = ipywidgets.HBox([self.bar, self.label])
        self._changed = asyncio.Event()
        self._follower: asyncio.Task | None = None
        self.refresh()
        if display:
            from IPython.display import display as show

            show(self.box)
        job.add_listener(self._on_change)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # no loop: whoever made us calls refresh() or close()
        if loop is not None and not job.done:
            self._follower = loop.create_task(self._follow())

    def _on_change(self, job: Job) -> None:
        # Runs in the client's frame reader: note the change, draw nothing (see the module doc).
        self._changed.set()

    async def _follow(self) -> None:
        try:
            while not self.job.done:
                try:
                    await asyncio.wait_for(self._changed.wait(), TICK_INTERVAL)
                except asyncio.TimeoutError:
                    pass
                self._changed.clear()
                self.refresh()
                if not self.job.done:
                    await asyncio.sleep(REFRESH_INTERVAL)  # throttle: a burst of results makes one redraw
            self.refresh()
        except Exception:  # a widget that cannot draw (its comm closed, say) must not break the job
            pass

    def refresh(self) -> None:
        """Redraw from the job's current counts."""
        self.model.update(self.job)
        model = self.model
        self.bar.value = min(model.done + model.failed, model.total)
        self.bar.bar_style = BAR_STYLES.get(model.state, "")
        self.label.value = f'<span style="font-family: monospace">{html.escape(describe_progress(model))}</span>'

    @property
    def state(self) -> str:
        """The job state the widget shows: running, done, failed, cancelled or lost."""
        return self.model.state

    def close(self) -> None:
        """Draw the final state and stop following the job (the widget stays displayed)."""
        if self._follower is not None and not self._follower.done():
            self._follower.cancel()
        self.refresh()

    async def finish(self) -> None:
        """As :meth:`close`, and wait until the follower task has ended."""
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        self.refresh()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<ProgressWidget {describe_progress(self.model)}>")
