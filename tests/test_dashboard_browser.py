"""A person finds the dashboard: in JupyterLab (Debian's Chromium, Playwright), ``%crowdconnect``
links to the status page of the notebook's own embedded cluster, served by the Jupyter server
extension, and the page shows the notebook's running job.

Skipped only when Chromium is not installed (as the other browser tests).
"""

from __future__ import annotations

import json

import nbformat
import pytest
from jupyter_servers import extension_enabled  # noqa: F401  (fixture)
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import expect
from test_jupyter_browser import CHROMIUM, PAGE_TIMEOUT_MS, RUN_TIMEOUT_MS, chromium, lab, run_all  # noqa: F401

from crowdcompute.wire.addresses import live_connection_files

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)

#: Items of the job and seconds each: long enough to see it running on one worker.
ITEMS, SECONDS = 80, 0.25  # 20 s: still running once the page is open, even on a busy machine


def test_crowdconnect_links_to_the_notebooks_cluster_and_its_running_job(extension_enabled, lab, tmp_path):
    url, token, root = lab
    notebook = new_notebook(
        cells=[
            new_code_cell("%load_ext crowdcompute\n%crowdconnect --workers 1"),
            new_code_cell(
                f"%%crowdmap range({ITEMS}) -o r\n"
                f"def slow_square(x):\n    import time\n    time.sleep({SECONDS})\n    return x * x"
            ),
        ]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, root / "dashboard.ipynb")

    with chromium(tmp_path) as context:
        page = context.new_page()
        run_all(page, f"{url}/lab/tree/dashboard.ipynb?token={token}")

        link = page.locator("a[href*='/crowdcompute/foreman/']")
        expect(link).to_be_visible(timeout=RUN_TIMEOUT_MS)
        (foreman,) = [f for f in live_connection_files() if f.get("embedded")]  # the kernel's own
        assert link.get_attribute("href") == f"/crowdcompute/foreman/{foreman['port']}/"
        with context.expect_page(timeout=PAGE_TIMEOUT_MS) as opened:
            link.click()
        dashboard = opened.value
        expect(dashboard.locator("#connection")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
        job = dashboard.locator("#jobs tr[data-job-id]")
        expect(job).to_have_count(1, timeout=PAGE_TIMEOUT_MS)
        expect(job.locator("td").first).to_contain_text("slow_square")
        expect(job).to_have_attribute("data-state", "running", timeout=PAGE_TIMEOUT_MS)
        expect(dashboard.locator('tr[data-worker="local-1"]')).to_be_visible()
        assert token not in dashboard.content() and foreman["token"] not in dashboard.content()
        dashboard.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        # The list of this user's foremen links to the same page.
        listing = context.new_page()
        listing.goto(f"{url}/crowdcompute/foremen/", timeout=PAGE_TIMEOUT_MS)
        expect(listing.locator(f"a[href='../foreman/{foreman['port']}/']")).to_be_visible()
        assert json.dumps(foreman["token"])[1:-1] not in listing.content()
