"""The one renderer policy, the renderer registry, and the stats line (no foreman needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crowdcompute import progress
from crowdcompute.job import Job
from crowdcompute.progress import choose_renderer, register_renderer, show_progress
from crowdcompute.stats import JobStats, TaskTiming


def test_progress_none_outside_a_kernel_and_off_a_terminal_shows_nothing():
    assert not sys.stdout.isatty()  # pytest captures it
    assert choose_renderer(None) is None
    assert choose_renderer(True) == "rich" and choose_renderer("rich") == "rich"
    assert choose_renderer("widget") == "widget" and choose_renderer(False) is None
    with pytest.raises(ValueError, match="progress must be one of .* not 'auto'"):
        choose_renderer("auto")


def test_a_registered_renderer_follows_the_job_and_a_done_job_shows_none(monkeypatch):
    monkeypatch.setattr(progress, "_renderers", dict(progress._renderers))  # leave the registry as it was
    made = []

    class Recorder:
        def __init__(self, job: Job) -> None:
            made.append(job)

        def close(self) -> None:
            pass

    register_renderer("widget", Recorder)
    job = Job("j1", ["a"])
    assert isinstance(show_progress(job, "widget"), Recorder) and made == [job]
    assert show_progress(job, False) is None
    assert show_progress(Job("j2", []), "widget") is None  # an empty job is over before it starts


def test_a_renderer_named_by_an_installed_packages_entry_point_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "_renderers", dict(progress._renderers))
    (tmp_path / "plotter.py").write_text("class Bar:\n    def __init__(self, job):\n        self.job = job\n")
    info = tmp_path / "plotter-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plotter\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{progress.RENDERER_GROUP}]\nplot = plotter:Bar\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    job = Job("j1", ["a"])
    shown = progress._renderer("plot")(job)
    assert type(shown).__module__ == "plotter" and shown.job is job
    assert progress._renderer("nothing-installed") is None
    sys.modules.pop("plotter", None)


def test_the_sdk_imports_no_jupyter_package_and_the_jupyter_layer_registers_its_widget():
    code = (
        "import sys, crowdcompute.client, crowdcompute.progress as p\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('crowdcompute_jupyter', 'IPython', 'ipywidgets')]\n"
        "import crowdcompute_jupyter\n"
        "assert p._renderers['widget'] is crowdcompute_jupyter._widget\n"
        "assert 'ipywidgets' not in sys.modules  # the widget loads on first use\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_the_stats_report_is_the_summary_then_one_line_per_hint():
    tiny = [TaskTiming(n, 1, "w1", 0.0001, 0.01, 1, 0.05, 100.0 + n) for n in range(8)]
    stats = JobStats.measure(8, 8, 100.0, 102.0, 2, 0.001, 0.001, tiny)
    lines = stats.report().splitlines()
    summary = stats.summary().splitlines()
    assert lines[: len(summary)] == summary and lines[0] == "8\u00a0items of 8 in 2.00\u00a0s (4.0 items/s)."
    assert lines[len(summary) :] == [f"hint: {hint}" for hint in stats.hints()] and "larger chunksize" in lines[-1]


def test_the_report_says_nothing_for_short_well_chunked_or_empty_jobs():
    """A few seconds of well-sized tasks: nothing to say; the quickstart's maps print no stats."""
    tasks = [TaskTiming(n, 10, f"w{n % 2}", 0.5, 0.001, 1, 0.52, 100.0 + n / 2) for n in range(8)]
    assert JobStats.measure(80, 80, 100.0, 102.2, 2, 0.001, 0.001, tasks).report() == ""
    four_tiny = [TaskTiming(n, 1, "w1", 0.0001, 0.01, 1, 0.05, 100.0 + n / 100) for n in range(4)]
    assert JobStats.measure(4, 4, 100.0, 100.1, 2, 0.001, 0.001, four_tiny).report() == ""  # no hint on 4 items
    empty = JobStats.measure(0, 0, 100.0, 100.0, 2, 0.0, 0.0, [])
    assert empty.summary() == "" and empty.report() == ""


def test_a_long_job_says_where_its_time_went_in_plain_words_per_worker():
    tasks = [
        TaskTiming(n, 5, ("local-10", "local-2")[n % 2], 3.0, 0.002, 1, 3.2, 100.0 + 3 * n, waited=0.15)
        for n in range(20)
    ]
    report = JobStats.measure(100, 100, 100.0, 160.0, 2, 0.01, 0.01, tasks).report()
    lines = report.splitlines()
    assert lines[0] == "100\u00a0items of 100 in 1\u00a0min\u00a00\u00a0s (1.7 items/s)."
    assert lines[1] == "20\u00a0tasks on 2\u00a0workers, busy 50% of the time:"
    assert lines[2:4] == ["  local-2: 50\u00a0items, busy 30.0\u00a0s", "  local-10: 50\u00a0items, busy 30.0\u00a0s"]
    assert "48\u00a0ms on the network" in lines[4]  # 3.2 - 3.0 running - 0.002 on the foreman - 0.15 on the worker
    assert "150\u00a0ms queued on the worker" in lines[5]
    assert all(len(line) <= 80 for line in lines) and "transit" not in report and "slots" not in report
