"""What ``%crowdconnect`` and ``%crowdstatus`` show: the foreman, its workers and jobs.

:class:`StatusView` renders as HTML tables in a notebook and as text tables
(the ones ``crowdcompute status`` prints) in a terminal.
"""

from __future__ import annotations

import html
import io
from typing import Any

__all__ = ["StatusView"]

#: Width of the text rendering, in characters.
TEXT_WIDTH = 100


#: A job state's colour, as the progress widget draws it (ipywidgets' bootstrap colours).
STATE_COLOURS = {"running": "#00bcd4", "done": "#4caf50", "failed": "#f44336", "cancelled": "#ff9800"}


class _State(str):
    """A job state, drawn in its colour."""

    def html(self) -> str:
        colour = STATE_COLOURS.get(self, "inherit")
        return f'<span style="color: {colour}; font-weight: 600">{html.escape(self)}</span>'


def _cell(value: Any) -> str:
    return value.html() if isinstance(value, _State) else html.escape(str(value))


def _align(value: Any) -> str:
    """Numbers to the right, words to the left (JupyterLab right-aligns every cell of a table)."""
    return "" if isinstance(value, int) else ' style="text-align: left"'


def _table(caption: str, headers: list[str], rows: list[list[Any]]) -> str:
    aligns = [_align(value) for value in rows[0]] if rows else [""] * len(headers)
    head = "".join(f"<th{align}>{html.escape(h)}</th>" for h, align in zip(headers, aligns, strict=True))
    body = "".join("<tr>" + "".join(f"<td{_align(cell)}>{_cell(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}"><i>none</i></td></tr>'
    return (
        f'<table style="margin: 0.3em 0"><caption style="text-align: left"><b>{html.escape(caption)}</b></caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class StatusView:
    """A foreman's status (the dict ``client.status()`` returns) at ``url``."""

    def __init__(self, url: str, status: dict, heading: str = "", link: str | None = None) -> None:
        """``link``: the foreman's status page, shown under the summary."""
        self.url = url
        self.status = status
        self.heading = heading
        self.link = link

    @property
    def workers(self) -> list[dict]:
        from crowdcompute.commands import sorted_workers

        return sorted_workers(self.status.get("workers", []))

    @property
    def jobs(self) -> list[dict]:
        return list(self.status.get("jobs", []))

    @property
    def slots(self) -> int:
        return sum(w.get("slots", 0) for w in self.workers)

    def summary(self) -> str:
        """One line: the foreman, its workers, slots and running jobs."""
        running = sum(1 for j in self.jobs if j.get("state") == "running")
        busy = sum(w.get("busy", 0) for w in self.workers)
        return (
            f"foreman {self.url}: {_count(len(self.workers), 'worker')}, {_count(self.slots, 'slot')} "
            f"({busy} busy), {_count(running, 'running job')}"
        )

    def _repr_html_(self) -> str:
        from crowdcompute.commands import job_state, worker_offers

        workers = [
            [w["name"], w.get("slots", 0), w.get("busy", 0), w.get("tasks_done", 0), worker_offers(w)]
            for w in self.workers
        ]
        jobs = []
        for job in self.jobs:
            done = job.get("completed", 0) + job.get("failed", 0)
            total = job.get("total", 0)
            percent = f" ({100 * done / total:.0f}%)" if total else ""
            jobs.append(
                [
                    job["id"][:12],
                    job.get("name", ""),
                    f"{done}/{total}{percent}",
                    job.get("failed", 0),
                    _State(job_state(job)),
                ]
            )
        heading = f"<p>{html.escape(self.heading)}</p>" if self.heading else ""
        link = ""
        if self.link:
            href = html.escape(self.link, quote=True)
            link = f'<p>Status page: <a href="{href}" target="_blank" rel="noopener">{html.escape(self.link)}</a></p>'
        return (
            f"<div>{heading}<p><b>{html.escape(self.summary())}</b></p>{link}"
            + _table("workers", ["worker", "slots", "busy", "tasks done", "resources; labels"], workers)
            + _table("jobs", ["job", "name", "progress", "failed", "state"], jobs)
            + "</div>"
        )

    def text(self) -> str:
        """The status as text tables."""
        from rich.console import Console

        from crowdcompute.commands import status_tables

        buffer = io.StringIO()
        # force_jupyter=False: in a kernel rich would otherwise display() the tables itself.
        console = Console(file=buffer, width=TEXT_WIDTH, color_system=None, force_terminal=False, force_jupyter=False)
        if self.heading:
            console.print(self.heading, markup=False)
        console.print(self.summary(), markup=False)
        if self.link:
            console.print(f"status page: {self.link}", markup=False, overflow="ignore", crop=False)
        for table, what in zip(status_tables(self.status, self.url), ("workers", "jobs"), strict=True):
            if not table.row_count:  # a line, not a table of headers over nothing
                console.print(f"{what}: none")
                continue
            table.title = None  # the summary line says it, without wrapping to the table's width
            console.print(table)
        return buffer.getvalue().rstrip("\n")

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())
