"""Names from the network (a volunteer's --name, labels, job names) reach the operator as plain text."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from rich.console import Console

from crowdcompute.commands import status_tables
from crowdcompute.job import Job
from crowdcompute.progress import RichProgress
from crowdcompute.volunteers import workers_table
from foreman.handshake import MAX_NAME_LENGTH, clean_name

#: Seconds a command-line status may take.
CLI_TIMEOUT = 30
HOSTILE = ["x[/]", "[blink red]EVIL[/]", "\x1b[2J\x1b[Hown2"]


def render(*renderables, width: int = 200, styled: bool = True) -> str:
    """What a terminal of ``width`` columns shows; ``styled``: its escape sequences included."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=styled, color_system="standard" if styled else None)
    for renderable in renderables:
        console.print(renderable)
    return buffer.getvalue()


def status_of(names: list[str]) -> dict:
    workers = [{"name": n, "slots": 1, "busy": 0, "labels": {n: n}, "identity": n} for n in names]
    jobs = [
        {"id": f"j{i}", "name": n, "total": 1, "completed": 0, "failed": 0, "state": "running", "waiting": n}
        for i, n in enumerate(names)
    ]
    return {"workers": workers, "jobs": jobs}


def test_the_foreman_keeps_printable_names_of_a_bounded_length():
    assert clean_name("alice-laptop") == "alice-laptop"
    assert clean_name("x[/]") == "x[/]"  # markup is the renderer's business
    assert clean_name("\x1b[2J\x1b[Hown2") == "?[2J?[Hown2"
    assert clean_name("a\u202eb\nc\t") == "a?b?c"  # a bidi override, a line break; trailing blanks go
    assert clean_name("n" * 3000) == "n" * MAX_NAME_LENGTH


def test_tables_show_names_from_the_network_as_text_never_as_markup_or_escapes():
    volunteers = [
        {
            "identity": n,
            "trusted": False,
            "connected": [n],
            "tasks_done": 0,
            "agreed": 0,
            "disagreed": 0,
            "missed_deadlines": 0,
            "state": "active",
        }
        for n in HOSTILE
    ]
    shown = render(*status_tables(status_of(HOSTILE), "ws://127.0.0.1:9000"), workers_table(volunteers, "ws://h:1"))
    assert "x[/]" in shown and "[blink red]EVIL[/]" in shown  # no MarkupError, the brackets shown
    assert "\x1b[5m" not in shown, "a name rendered as blinking markup"
    assert "\x1b[2J" not in shown and "?[2J?[Hown2" in shown


def test_a_job_name_and_its_notes_show_as_text_in_the_progress_bar():
    job = Job("j1", ["a"], name="[/]mine")
    buffer = io.StringIO()
    bar = RichProgress(job, Console(file=buffer, width=120, force_terminal=True), summary=False)
    bar.close()
    assert "[/]mine" in buffer.getvalue()


def test_an_80_column_terminal_shows_whole_worker_and_volunteer_names():
    name = "maria-garcia-laptop"
    volunteer = {
        "identity": name,
        "trusted": True,
        "joined_at": 1.7e9,
        "connected": [name + "-1"],
        "tasks_done": 123456,
        "agreed": 0,
        "disagreed": 0,
        "missed_deadlines": 0,
        "state": "active",
    }
    shown = render(workers_table([volunteer], "ws://127.0.0.1:9000"), width=80, styled=False)
    assert f" {name} " in shown and " volunteer " in shown and " 123456 " in shown, shown
    status = {"workers": [{"name": name + "-1", "slots": 4, "busy": 2, "labels": {"site": "lab1"}}], "jobs": []}
    shown = render(*status_tables(status, "ws://127.0.0.1:9000"), width=80, styled=False)
    assert f" {name}-1 " in shown and " worker " in shown, shown


def test_hostile_worker_names_end_to_end(foreman, start_worker):
    """The foreman cleans the names at the handshake, says so to the worker, and status prints them."""
    workers = [start_worker(foreman.url, "--procs", "1", "--name", name) for name in [*HOSTILE, "n" * 3000]]
    told = workers[2].wait_for_line("the foreman knows it as")
    assert "?[2J?[Hown2" in told and f"up to {MAX_NAME_LENGTH} printable characters" in told
    env = {**os.environ, "COLUMNS": "200"}
    status = subprocess.run(
        [sys.executable, "-m", "crowdcompute", "status", foreman.url, "--token", foreman.token],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
    )
    assert status.returncode == 0, status.stderr
    for name in ("x[/]", "[blink red]EVIL[/]", "?[2J?[Hown2", "n" * MAX_NAME_LENGTH + " "):
        assert name in status.stdout, status.stdout
    assert "n" * (MAX_NAME_LENGTH + 1) not in status.stdout
    foreman.proc.wait_for_line("gave the name '\\x1b[2J\\x1b[Hown2'")
    assert not any("\x1b" in line for line in foreman.proc.lines), "an escape sequence reached the foreman's log"
