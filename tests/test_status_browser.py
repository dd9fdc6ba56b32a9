"""A person's view of the status page, in Debian's Chromium driven by Playwright.

On the foreman's own port: the token once, then the page shows the workers
and a job whose bar moves while a map runs. Through the Jupyter server
extension: Jupyter's login first, then the same page. Screenshots are saved
in the test's folder. Skipped only when Chromium is not installed (as the
JupyterLab browser test, whose launch setup this reuses).
"""

from __future__ import annotations

import re

import pytest
from jupyter_servers import jupyter_server  # noqa: F401  (fixture)
from playwright.sync_api import expect, sync_playwright
from test_jupyter_browser import CHROMIUM, CHROMIUM_FLAGS

from crowdcompute import Executor

#: Milliseconds for the page to show what the foreman reports (it polls every second).
PAGE_TIMEOUT_MS = 15_000
#: Milliseconds for the job to finish and the chart to draw it.
RUN_TIMEOUT_MS = 30_000
ITEMS = 48

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)

BAR = "#jobs tr[data-job-id] [role=progressbar]"
BAR_BETWEEN = """([selector, low, total]) => {
    const bar = document.querySelector(selector);
    const done = bar ? Number(bar.getAttribute("aria-valuenow")) : -1;
    return done > low && done < total ? done : false;
}"""


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_foreman_page_shows_the_workers_and_a_moving_job(browser, cluster, start_worker, tmp_path):
    start_worker(cluster.url, "--procs", "1", "--name", "w2")
    home = f"http://127.0.0.1:{cluster.port}/"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    try:
        response = page.goto(home, timeout=PAGE_TIMEOUT_MS)
        assert response.status == 401
        expect(page.get_by_text("?token=TOKEN")).to_be_visible()

        page.goto(f"{home}?token={cluster.token}", timeout=PAGE_TIMEOUT_MS)
        assert page.url == home  # the token left the address bar; a cookie took over
        expect(page.locator("#connection")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
        expect(page.locator("#workers tr[data-worker]")).to_have_count(2, timeout=PAGE_TIMEOUT_MS)
        expect(page.locator('tr[data-worker="w1"] .slot')).to_have_count(2)
        expect(page.locator('tr[data-worker="w2"] .slot')).to_have_count(1)
        expect(page.locator("#no-jobs")).to_be_visible()

        def slow(x):
            import time

            time.sleep(0.25)
            return -x

        with Executor(cluster.url, token=cluster.token) as executor:
            results = executor.map(slow, range(ITEMS), chunksize=1)  # about 4 s on 3 slots
            first = page.wait_for_function(BAR_BETWEEN, arg=[BAR, 0, ITEMS], timeout=RUN_TIMEOUT_MS).json_value()
            later = page.wait_for_function(BAR_BETWEEN, arg=[BAR, first, ITEMS], timeout=RUN_TIMEOUT_MS).json_value()
            assert 0 < first < later < ITEMS  # the bar moves
            expect(page.locator("#jobs tr[data-job-id]")).to_have_attribute("data-state", "running")
            expect(page.locator("#jobs tr[data-job-id] td").first).to_contain_text("slow")
            expect(page.locator("#workers .chip").first).to_contain_text("slow #")  # what each worker runs
            page.screenshot(path=str(tmp_path / "status-running.png"), full_page=True)
            assert list(results) == [-x for x in range(ITEMS)]

        expect(page.locator("#jobs tr[data-job-id]")).to_have_attribute("data-state", "done", timeout=PAGE_TIMEOUT_MS)
        expect(page.locator(BAR)).to_have_attribute("aria-valuenow", str(ITEMS))
        expect(page.locator("#jobs td.count")).to_have_text(f"{ITEMS}/{ITEMS}")
        filled = page.locator(f"{BAR} .done").evaluate(
            "done => done.getBoundingClientRect().width / done.parentElement.getBoundingClientRect().width"
        )
        assert filled > 0.99  # drawn, not only labelled (the page's CSP allows no style attributes)
        # The chart samples every 2 s: it draws the job's throughput.
        page.wait_for_function(
            "() => Number(document.getElementById('chart').dataset.maxRate) > 0", timeout=RUN_TIMEOUT_MS
        )
        expect(page.locator("#chart polyline")).to_have_count(1)
        page.screenshot(path=str(tmp_path / "status-done.png"), full_page=True)
        # The first request had no token: its 401 is the only error the console may show.
        assert [e for e in console_errors if "401" not in e] == []
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)  # what the person saw
        raise


def test_jupyter_serves_the_page_after_its_login(browser, jupyter_server, tmp_path):
    server = jupyter_server("--CrowdCompute.local_workers=2")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(f"{server.url}/crowdcompute/", timeout=PAGE_TIMEOUT_MS)
        expect(page).to_have_url(re.compile(r"/login\?next=%2Fcrowdcompute%2F"))
        page.screenshot(path=str(tmp_path / "jupyter-login.png"))

        page.fill("#password_input", server.token)
        page.click("#login_submit")
        expect(page).to_have_url(f"{server.url}/crowdcompute/", timeout=PAGE_TIMEOUT_MS)
        expect(page.locator("#connection")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
        expect(page.locator("#workers tr[data-worker]")).to_have_count(2, timeout=PAGE_TIMEOUT_MS)
        expect(page.locator('tr[data-worker="local-1"]')).to_be_visible()
        expect(page.locator('tr[data-worker="local-2"]')).to_be_visible()
        assert server.token not in page.content()
        page.screenshot(path=str(tmp_path / "jupyter-status.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise
