"""The status page agrees with the notebook's widget (Chromium, Playwright): one rate, the widget's
states and colours (a failure turns the bar red at once, cancelled is orange), a chart labelled with
the window it draws, workers sorted by name, and a 1-slot worker running one task at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from playwright.sync_api import expect
from test_jupyter_browser import CHROMIUM
from test_status_browser import PAGE_TIMEOUT_MS, RUN_TIMEOUT_MS, browser  # noqa: F401

from crowdcompute import CrowdComputeClient

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)

ORANGE = "rgb(201, 138, 4)"  # --warn, as the widget's "warning" bar
RED = "rgb(214, 69, 69)"  # --bad


def fail_first(x):
    import time

    if x == 0:
        raise ValueError("the first item fails")
    time.sleep(0.4)
    return x


def in_thread(coroutine_function) -> threading.Thread:
    """Run ``coroutine_function()`` in a thread of its own with its own loop."""
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(coroutine_function())
        except BaseException as exc:  # re-raised by the test when it joins
            errors.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.errors = errors
    thread.start()
    return thread


def joined(thread: threading.Thread) -> None:
    thread.join(30)
    assert not thread.is_alive(), "the client's thread did not end"
    if thread.errors:
        raise thread.errors[0]


def test_the_page_says_what_the_widget_says(browser, cluster, start_worker, tmp_path):
    start_worker(cluster.url, "--procs", "1", "--name", "w10")
    start_worker(cluster.url, "--procs", "1", "--name", "w2")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"http://127.0.0.1:{cluster.port}/?token={cluster.token}", timeout=PAGE_TIMEOUT_MS)
        expect(page.locator("#workers tr[data-worker]")).to_have_count(3, timeout=PAGE_TIMEOUT_MS)
        names = page.locator("#workers tr[data-worker]").evaluate_all("rows => rows.map(r => r.dataset.worker)")
        assert names == ["w1", "w2", "w10"]
        # The chart's label names the window its axis draws.
        axis = page.locator("#chart text.axis-label").evaluate_all("nodes => nodes.map(n => n.textContent)")
        window = next(label for label in axis if label.startswith("-") and label != "-0")
        expect(page.locator("#chart-window")).to_have_text(f"items finished per second, last {window[1:]}")

        async def failing_job():
            async with CrowdComputeClient(cluster.url, token=cluster.token) as client:
                job = await client.submit(fail_first, range(24), chunksize=1)
                with contextlib.suppress(ValueError):  # item 0's error, re-raised
                    await job

        thread = in_thread(failing_job)
        row = page.locator("#jobs tr[data-job-id]")
        expect(row).to_have_attribute("data-state", "running", timeout=RUN_TIMEOUT_MS)
        # Red as soon as an item failed, while the rest runs.
        expect(row.locator(".bar")).to_have_class("bar failed", timeout=PAGE_TIMEOUT_MS)
        assert row.get_attribute("data-state") == "running"
        # One rate: the header's is the running job's.
        page.wait_for_function(
            "() => { const r = document.querySelector('#jobs tr[data-job-id] td:nth-child(6)').textContent;"
            " return r !== '–' && r !== '0' && r === document.getElementById('stat-rate').textContent; }",
            timeout=PAGE_TIMEOUT_MS,
        )
        # A 1-slot worker shows one current task; what it holds ahead is "queued".
        for _ in range(3):
            running = page.locator('tr[data-worker="w2"] .chip:not(.queued)').count()
            assert running <= 1, f"a 1-slot worker shows {running} current tasks"
            page.wait_for_timeout(300)
        joined(thread)
        expect(row).to_have_attribute("data-state", "failed", timeout=PAGE_TIMEOUT_MS)
        expect(row.locator(".badge")).to_have_text("failed")
        expect(row.locator(".badge")).to_have_css("color", RED)
        expect(page.locator("#stat-rate")).to_have_text("0", timeout=PAGE_TIMEOUT_MS)

        async def cancelled_job():
            async with CrowdComputeClient(cluster.url, token=cluster.token) as client:
                job = await client.submit(fail_first, range(1, 40), chunksize=1)
                while job.completed < 2:
                    await asyncio.sleep(0.05)
                job.cancel()

        joined(in_thread(cancelled_job))
        cancelled = page.locator("#jobs tr[data-state=cancelled]")
        expect(cancelled).to_have_count(1, timeout=PAGE_TIMEOUT_MS)
        expect(cancelled.locator(".badge")).to_have_css("color", ORANGE)
        expect(cancelled.locator(".bar .done")).to_have_css("background-color", ORANGE)
        page.screenshot(path=str(tmp_path / "states.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise
