"""The dashboard one click away in JupyterLab: the prebuilt labextension (source in ``labextension/``,
built into ``jupyter-data/labextensions/crowdcompute-jupyter/``) adds a Launcher card, a command palette
entry and a Help menu entry that open ``BASE_URL/crowdcompute/`` in a new tab.

The browser test runs JupyterLab in Debian's Chromium (Playwright) and is skipped only when Chromium
is not installed, as the other browser tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from jupyter_servers import JUPYTER_DATA, extension_enabled  # noqa: F401  (fixture)
from playwright.sync_api import expect
from test_jupyter_browser import CHROMIUM, PAGE_TIMEOUT_MS, chromium, lab  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
BUILT = JUPYTER_DATA / "labextensions" / "crowdcompute-jupyter"
#: Seconds ``jupyter labextension list`` may take.
LIST_TIMEOUT = 60


def test_the_built_labextension_is_committed_and_installed_by_the_wheel():
    built = json.loads((BUILT / "package.json").read_text())
    source = json.loads((REPO / "labextension" / "package.json").read_text())
    assert built["name"] == source["name"] == "crowdcompute-jupyter"
    assert built["version"] == source["version"] and built["dependencies"] == source["dependencies"], (
        "jupyter-data/ is stale: rebuild it with `cd labextension && npm install && npm run build`"
    )
    entry = BUILT / built["jupyterlab"]["_build"]["load"]
    assert entry.is_file(), f"{entry} is missing: rebuild (see README, Development)"
    assert json.loads((BUILT / "install.json").read_text())["packageName"] == "crowdcompute"
    # pyproject's data-files put every built file under share/jupyter/labextensions/crowdcompute-jupyter/.
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    covered = set()
    for target, patterns in data_files.items():
        for pattern in patterns:
            for path in REPO.glob(pattern):
                covered.add((target, str(path.relative_to(REPO))))
    shipped = {
        (
            str(Path("share/jupyter/labextensions/crowdcompute-jupyter") / path.parent.relative_to(BUILT)).rstrip("/."),
            str(path.relative_to(REPO)),
        )
        for path in BUILT.rglob("*")
        if path.is_file()
    }
    assert shipped <= covered, f"not installed by the wheel: {sorted(shipped - covered)}"


def test_jupyterlab_lists_the_labextension_enabled(extension_enabled):
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"],
        capture_output=True,
        text=True,
        timeout=LIST_TIMEOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
    assert re.search(r"crowdcompute-jupyter v\S+ enabled OK \(python, crowdcompute\)", output), output


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_launcher_card_opens_the_dashboard_of_the_running_foreman(extension_enabled, cluster, lab, tmp_path):
    url, token, _ = lab
    with chromium(tmp_path) as context:
        page = context.new_page()
        page.goto(f"{url}/lab?token={token}", timeout=PAGE_TIMEOUT_MS)
        other = page.locator(".jp-Launcher-section", has=page.locator("h2", has_text=re.compile(r"^Other$")))
        card = other.locator(".jp-LauncherCard", has_text=re.compile("^Crowd\u00adCompute$"))  # soft hyphen
        expect(card, "no CrowdCompute card under Other in the Launcher").to_be_visible(timeout=PAGE_TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "launcher.png"))
        with context.expect_page(timeout=PAGE_TIMEOUT_MS) as opened:
            card.click()
        dashboard = opened.value
        # One foreman of this user runs: /crowdcompute/ opens its page, which shows its worker.
        expect(dashboard, "the card did not open the foreman's page").to_have_url(
            f"{url}/crowdcompute/foreman/{cluster.port}/", timeout=PAGE_TIMEOUT_MS
        )
        expect(dashboard.locator("#connection")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
        expect(dashboard.locator('tr[data-worker="w1"]')).to_be_visible(timeout=PAGE_TIMEOUT_MS)
        assert cluster.token not in dashboard.content()
        dashboard.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # The same command, in the Help menu and in the command palette.
        page.bring_to_front()
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Help$")).click()
        entry = page.locator("li.lm-Menu-item[data-command='crowdcompute:open-dashboard']")
        expect(entry, "no entry in the Help menu").to_have_text(re.compile("Open CrowdCompute dashboard"))
        page.keyboard.press("Escape")
        page.keyboard.press("Control+Shift+c")
        page.locator(".lm-CommandPalette-input").fill("CrowdCompute")
        item = page.locator(".lm-CommandPalette-item[data-command='crowdcompute:open-dashboard']")
        expect(item, "no entry in the command palette").to_contain_text("Open CrowdCompute dashboard")
