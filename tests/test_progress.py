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
    assert lines[0] == stats.summary() and lines[0].startswith("8/8 items in 8 tasks on 1 workers: 2.00 s")
    assert lines[1:] == [f"hint: {hint}" for hint in stats.hints()] and "larger chunksize" in lines[1]
