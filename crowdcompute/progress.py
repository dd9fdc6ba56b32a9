"""Progress of a job: one model, several renderers.

:class:`ProgressModel` holds the counts and derives rate and time left. A
renderer draws it: :class:`RichProgress` on a terminal here, the ipywidgets
widget in ``crowdcompute_jupyter``. :func:`choose_renderer` is the one
policy that says which to show; :func:`show_progress` starts it.

This module knows no Jupyter package: a layer that draws elsewhere
registers its renderer with :func:`register_renderer` when it is imported
(``crowdcompute_jupyter`` registers ``"widget"``), or names it in the
``crowdcompute.renderers`` entry point group, loaded on first need.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from .rate import RateMeter

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "RENDERER_GROUP",
    "ProgressModel",
    "Renderer",
    "RichProgress",
    "choose_renderer",
    "in_jupyter_kernel",
    "log_waiting",
    "register_renderer",
    "show_progress",
]

log = logging.getLogger("crowdcompute.client")

#: The entry point group where packages name renderers: ``NAME = "module:factory"``, factory(job) -> Renderer.
RENDERER_GROUP = "crowdcompute.renderers"
#: What ``progress=`` accepts.
PROGRESS_CHOICES = (None, True, False, "rich", "widget")


@dataclass
class ProgressModel:
    """Counts of one job, and what follows from them.

    ``done`` and ``failed`` count items finished inside running tasks too (the
    workers report them as they go), so a slow map moves item by item. While
    the job runs, the rate and time left come from recent item completions
    (:class:`~crowdcompute.rate.RateMeter`); once it ended, the rate is the
    whole job's. Items that finished before the client attached to the job
    (``before``) count toward done but not toward the rate: they took no time here.
    """

    total: int
    done: int = 0
    failed: int = 0
    state: str = "running"
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    meter: RateMeter | None = None
    untrusted: int = 0  # untrusted volunteers whose results the job used
    waiting: str = ""  # what the job waits for beyond free slots ("preparing environment on 2 workers")
    connection: str = ""  # what the connection does when not simply open ("reconnecting to the foreman ...")
    before: int = 0  # items finished before the client attached to the job

    @classmethod
    def of(cls, job: Job) -> ProgressModel:
        before = getattr(job, "finished_before_attach", 0)
        model = cls(job.total, started=job.started, meter=RateMeter(started=job.started), before=before)
        model.update(job)
        return model

    def update(self, job: Job) -> None:
        running = job.state.value == "running"
        in_progress = job.in_progress if running else 0
        in_progress_failed = job.in_progress_failed if running else 0
        self.failed = min(job.failed + in_progress_failed, job.total)
        self.done = min(job.completed + in_progress - in_progress_failed, job.total - self.failed)
        self.state = job.state.value
        self.ended = job.finished
        if self.meter is not None:
            self.meter.update(self.followed)
        self.waiting = getattr(job, "waiting", "")
        self.connection = getattr(job, "connection", "")
        self.untrusted = getattr(job, "untrusted_workers", 0)

    def notes(self) -> list[str]:
        """What the user should know beyond the counts: a connection being redialed, untrusted
        workers, what the job waits for."""
        notes = [self.connection] if self.connection and self.state == "running" else []
        if self.untrusted:
            notes.append(f"{self.untrusted} untrusted workers")
        if self.waiting and self.state == "running":
            notes.append(self.waiting)
        return notes

    @property
    def followed(self) -> int:
        """Items finished while this client followed the job (those before an attach excluded)."""
        return max(0, self.done + self.failed - self.before)

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Items per second: recently while the job runs, over its whole life once it ended."""
        if self.meter is not None and self.ended is None:
            return self.meter.rate()
        elapsed = self.elapsed
        return self.followed / elapsed if elapsed > 0 else 0.0

    @property
    def time_left(self) -> float | None:
        """Seconds until the job ends at the current rate, or None if unknown."""
        remaining = self.total - self.done - self.failed
        if remaining <= 0:
            return 0.0
        if self.meter is not None and self.ended is None:
            return self.meter.time_left(remaining)
        rate = self.rate
        return remaining / rate if rate > 0 else None

    def summary(self) -> str:
        """One line: counts, time and rate."""
        failed = f", {self.failed} failed" if self.failed else ""
        notes = "".join(f", {note}" for note in self.notes())
        return (
            f"{self.done + self.failed}/{self.total} items{failed}{notes} in {self.elapsed:.2f} s "
            f"({self.rate:,.1f} items/s) - {self.state}"
        )


class Renderer(Protocol):
    def close(self) -> None: ...


class RichProgress:
    """A rich progress bar on the terminal, following a job until it ends."""

    def __init__(self, job: Job, console: Any = None, summary: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from .tables import plain_markup

        self.model = ProgressModel.of(job)
        self._job = job
        self._summary = summary
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        # The name and the notes may come from another client or the foreman: shown as text, never as markup.
        self._task = self._progress.add_task(plain_markup(job.name or "map"), total=job.total, failed="", rate="")
        self._progress.start()
        job.add_listener(self._update)
        self._update(job)

    def _update(self, job: Job) -> None:
        from .tables import plain_markup

        self.model.update(job)
        failed = f"[red]{self.model.failed} failed" if self.model.failed else ""
        notes = self.model.notes()
        if notes:
            failed += f"[yellow] {plain_markup('; '.join(notes))}"
        self._progress.update(
            self._task,
            completed=self.model.done + self.model.failed,
            failed=failed,
            rate=f"{self.model.rate:,.0f} items/s",
        )

    def close(self) -> None:
        self._progress.stop()
        report = self._job.stats.report() if self._summary and self._job.done else ""
        if report:  # only when it helps (see JobStats.report)
            self._progress.console.print(report, style="dim", markup=False, highlight=False)


def in_jupyter_kernel() -> bool:
    """True when running inside an IPython kernel (without importing IPython)."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


_renderers: dict[str, Callable[[Job], Renderer]] = {"rich": RichProgress}


def register_renderer(name: str, factory: Callable[[Job], Renderer]) -> None:
    """Make ``factory(job)`` the renderer called ``name`` (``"widget"``: the one shown in a Jupyter kernel)."""
    _renderers[name] = factory


def _renderer(name: str) -> Callable[[Job], Renderer] | None:
    """The renderer registered as ``name``, else the one an installed package names in RENDERER_GROUP."""
    if name not in _renderers:
        for point in entry_points(group=RENDERER_GROUP, name=name):
            try:
                _renderers[name] = point.load()
            except Exception:  # a broken plugin must not break the job: no progress then
                pass
            break
    return _renderers.get(name)


def choose_renderer(progress: object = None) -> str | None:
    """The name of the renderer ``progress`` asks for here, or None for none.

    ``None``: the widget in a Jupyter kernel, a rich bar on an interactive
    terminal, nothing otherwise. ``True``: the widget in a kernel, else the
    rich bar. ``"rich"``/``"widget"``: that one. ``False``: none. Raises
    ValueError for anything else.
    """
    if progress not in PROGRESS_CHOICES:
        raise ValueError(f"progress must be one of {PROGRESS_CHOICES}, not {progress!r}")
    if progress is False:
        return None
    if progress in ("rich", "widget"):
        return str(progress)
    if in_jupyter_kernel():
        return "widget"
    if progress is True or sys.stdout.isatty():
        return "rich"
    return None


def show_progress(job: Job, progress: object = None) -> Renderer | None:
    """Start the renderer :func:`choose_renderer` picks for ``progress``; None when it shows nothing.

    A widget asked for where none is registered or installed shows nothing. With nothing shown,
    what the job waits for (a label no connected worker has, say) is logged as a warning: a
    script must not wait in silence (:func:`log_waiting`).
    """
    name = choose_renderer(progress)
    if job.done:
        return None
    factory = _renderer(name) if name is not None else None
    if factory is None and progress is True:
        factory = RichProgress  # the best available
    if factory is None:
        log_waiting(job)
        return None
    return factory(job)


def log_waiting(job: Job) -> None:
    """Log a warning each time what ``job`` waits for beyond free slots changes to something new."""
    said = {""}

    def say(job: Job) -> None:
        if job.waiting not in said:
            said.add(job.waiting)
            log.warning("job %s: %s", job.id, job.waiting)

    job.add_listener(say)
