"""The progress widget: an ipywidgets renderer of :class:`crowdcompute.progress.ProgressModel`.

    name [██████████░░░░░░░░]  37% · 37/100 · 2 failed · 153 items/s · 3 s left
    first error: item 12: ValueError: bad input

A ``VBox`` of an ``HBox`` (an ``IntProgress`` bar and an ``HTML`` line) and
an ``HTML`` line for the first error. While the job runs the bar is blue,
and red ("danger") from its first failed item on, with that error named
under it; at the end it is green ("success") when every item succeeded,
red when some failed or the connection was lost, and orange ("warning")
when the job was cancelled. The function's full name shows on hover.

The widget is displayed with a plain-text twin (a text bar with the
counts), updated to the final state when the job ends: a saved notebook
opened where the widget cannot be drawn shows how the job ended, not a
frozen ``HBox(...)``.

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

__all__ = ["BAR_STYLES", "ProgressWidget", "describe_progress", "first_error"]

#: Shortest time between two redraws, in seconds (throttles busy jobs).
REFRESH_INTERVAL = 0.1
#: Longest time between two redraws while the job runs, in seconds.
TICK_INTERVAL = 0.5

#: Longest function name shown before the bar (the full name shows on hover).
NAME_WIDTH = 28
#: Width of the bar with its name: the name takes what it needs, the bar the rest.
BAR_WIDTH = "480px"
#: Characters of the text bar in the plain-text twin.
TEXT_BAR_WIDTH = 24
#: Longest first-error text shown under the bar.
ERROR_WIDTH = 200

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
    percent = 100 * finished // model.total if model.total else 100
    parts = [f"{percent}%", f"{finished}/{model.total}"]
    if model.failed:
        parts.append(f"{model.failed} failed")
    ended_before = model.state != "running" and model.before > 0 and model.followed == 0
    if not ended_before:  # a job that had ended when we attached: no rate or time of ours to show
        parts.append(f"{model.rate:,.1f} items/s")
    parts += model.notes()
    if model.state == "running":
        left = model.time_left
        parts.append("time left unknown" if left is None else f"{_duration(left)} left")
    else:
        ended = {"done": "done", "failed": "failed", "cancelled": "cancelled", "lost": "connection lost"}.get(
            model.state, model.state
        )
        parts += [f"{ended} before attach"] if ended_before else [_duration(model.elapsed), ended]
    return " · ".join(parts)


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def first_error(job: Job) -> str:
    """``item 12: ValueError: bad input`` for the job's first failed item so far, or "".

    Before the failed item's task ends, the error its worker reported early.
    """
    errors = getattr(job, "errors", None) or {}
    if not errors:
        early = getattr(job, "early_error", None)
        return _short(f"item {early[0]}: {early[1]}".splitlines()[0], ERROR_WIDTH) if early else ""
    index = min(errors)
    error = errors[index]
    kind = getattr(error, "exc_type", None) or type(error).__name__
    message = getattr(error, "message", None)
    if message is None:
        message = str(error)
    return _short(f"item {index}: {kind}: {message}".splitlines()[0], ERROR_WIDTH)


class ProgressWidget:
    """A live progress bar for one job, displayed in the cell that made it.

    ``bar`` (IntProgress) and ``label`` (HTML) sit in an HBox, above
    ``error`` (HTML, the first failure), all in ``box`` (VBox). With
    ``display=False`` the widget is built and kept up to date but not shown
    (a terminal IPython has nowhere to show it). :meth:`close` draws the
    final state and stops following the job; the widget stays on screen.
    """

    def __init__(self, job: Job, *, display: bool = True) -> None:
        import ipywidgets

        self.job = job
        self.model = ProgressModel.of(job)
        name = job.name or "map"
        self.bar = ipywidgets.IntProgress(
            value=0,
            min=0,
            max=job.total,
            description=_short(name, NAME_WIDTH),
            tooltip=name,
            bar_style=BAR_STYLES["running"],
            style={"description_width": "initial"},
            layout=ipywidgets.Layout(width=BAR_WIDTH),
        )
        self.label = ipywidgets.HTML(value="")
        self.error = ipywidgets.HTML(value="")
        self.box = ipywidgets.VBox([ipywidgets.HBox([self.bar, self.label]), self.error])
        self._changed = asyncio.Event()
        self._follower: asyncio.Task | None = None
        self._display = None
        self.refresh()
        if display:
            from IPython.display import display as show

            self._display = show(self._bundle(), raw=True, display_id=True)
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
        style = BAR_STYLES.get(model.state, "")
        if model.failed and model.state == "running":
            style = BAR_STYLES["failed"]  # a failure shows at once, not at the end
        self.bar.bar_style = style
        self.label.value = f'<span style="font-family: monospace">{html.escape(describe_progress(model))}</span>'
        error = self._error_line()
        if error:
            text = html.escape(error)
            self.error.value = f'<span style="color: #c62828; font-family: monospace">{text}</span>'

    def _error_line(self) -> str:
        """``first error: item 12: ValueError: ...`` ("error" when it is the only one, at the end), or ""."""
        model = self.model
        error = first_error(self.job) if model.failed else ""
        if not error:
            return ""
        words = "first error" if model.failed > 1 or model.state == "running" else "error"
        return f"{words}: {error}"

    @property
    def state(self) -> str:
        """The job state the widget shows: running, done, failed, cancelled or lost."""
        return self.model.state

    def text(self) -> str:
        """The widget as plain text: a text bar and the counts (what a saved notebook shows)."""
        model = self.model
        finished = model.done + model.failed
        filled = TEXT_BAR_WIDTH * finished // model.total if model.total else TEXT_BAR_WIDTH
        bar = "█" * filled + "░" * (TEXT_BAR_WIDTH - filled)
        lines = [f"{self.job.name or 'map'} {bar} {describe_progress(model)}", self._error_line()]
        return "\n".join(line for line in lines if line)

    def _bundle(self) -> dict:
        """The widget's view, with :meth:`text` for wherever the view cannot be drawn."""
        view = {"version_major": 2, "version_minor": 0, "model_id": self.box.model_id}
        return {"application/vnd.jupyter.widget-view+json": view, "text/plain": self.text()}

    def _show_final_text(self) -> None:
        if self._display is not None:
            try:
                self._display.update(self._bundle(), raw=True)
            except Exception:  # nowhere to draw (the kernel's output went away): the job matters more
                pass

    def close(self) -> None:
        """Draw the final state and stop following the job (the widget stays displayed)."""
        if self._follower is not None and not self._follower.done():
            self._follower.cancel()
        self.refresh()
        self._show_final_text()

    async def finish(self) -> None:
        """As :meth:`close`, and wait until the follower task has ended."""
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        self.refresh()
        self._show_final_text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())
