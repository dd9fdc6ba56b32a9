"""A person's view: JupyterLab in Debian's Chromium (driven by Playwright) runs a %%crowdmap cell.

JupyterLab serves on 127.0.0.1 with a fixed token; Chromium opens a notebook,
waits for the kernel, runs all cells from the Run menu, and the progress
widget must appear and reach 100%. A screenshot is saved in the test's folder.
Skipped only when Chromium itself is not installed (``apt-get install chromium``);
Playwright never downloads a browser here.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from conftest import Proc
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Milliseconds for the page to load and the kernel to become idle.
PAGE_TIMEOUT_MS = 30_000
#: Milliseconds for the cells to run and the bar to fill.
RUN_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)


@contextmanager
def chromium(tmp_path: Path) -> Iterator[BrowserContext]:
    """Debian's Chromium through Playwright, a 1280x800 window; on failure, a screenshot of each page in ``tmp_path``."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            yield context
        except Exception:
            for number, page in enumerate(context.pages):  # what the person saw
                page.screenshot(path=str(tmp_path / f"failure-{number}.png"), full_page=True)
            raise
        finally:
            browser.close()


def run_all(page: Page, notebook_url: str) -> None:
    """Open the notebook at ``notebook_url``, wait for its kernel, and run all its cells from the Run menu."""
    page.goto(notebook_url, timeout=PAGE_TIMEOUT_MS)
    # The status bar names the kernel once it runs; running cells before that does nothing.
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()


@pytest.fixture
def lab(crowd_home, tmp_path, monkeypatch):
    """JupyterLab on 127.0.0.1, a free port, a token of its own; its URL and token. Stopped after."""
    for name, folder in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
    ]:
        monkeypatch.setenv(name, str(tmp_path / folder))
    # Lab settings: start the notebook's kernel without asking, and fetch no news.
    settings = tmp_path / "lab-settings"
    for plugin, values in [
        ("notebook-extension/tracker", {"autoStartDefaultKernel": True}),
        ("apputils-extension/notification", {"fetchNews": "false"}),
    ]:
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(settings))
    root = tmp_path / "lab"
    root.mkdir()
    token = secrets.token_hex(16)
    popen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    server = Proc(popen)
    try:
        line = server.wait_for_line("http://127.0.0.1:", timeout=40)
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        yield url, token, root
    finally:
        server.stop(timeout=15)  # SIGTERM: the server shuts its kernels down, and they their clusters


def test_progress_widget_fills_up_in_a_real_browser(lab, tmp_path):
    url, token, root = lab
    notebook = new_notebook(
        cells=[
            new_code_cell("%load_ext crowdcompute\n%crowdconnect --workers 2"),
            new_code_cell(
                "%%crowdmap range(40) -o squares\ndef square(x):\n    import time\n    time.sleep(0.05)\n    return x * x"
            ),
            new_code_cell("print('sum of squares', sum(squares))"),
        ]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, root / "browser.ipynb")

    with chromium(tmp_path) as context:
        page = context.new_page()
        run_all(page, f"{url}/lab/tree/browser.ipynb?token={token}")

        bar = page.locator(".widget-hprogress .progress-bar")
        expect(bar).to_be_visible(timeout=RUN_TIMEOUT_MS)
        expect(bar).to_have_class(re.compile("progress-bar-success"), timeout=RUN_TIMEOUT_MS)
        expect(bar).to_have_attribute("style", re.compile(r"width: 100%"))
        expect(page.locator(".widget-html-content", has_text="40/40")).to_be_visible()
        expect(page.get_by_text("sum of squares 20540")).to_be_visible(timeout=RUN_TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "crowdmap.png"), full_page=True)
