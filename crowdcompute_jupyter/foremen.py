"""The page that lists this user's foremen: ``/crowdcompute/foremen/`` of the Jupyter server extension.

Plain HTML with no script, built from the foremen's connection files (never
showing their tokens).
"""

from __future__ import annotations

import html
import time

__all__ = ["foremen_page"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse}td,th{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd}"
    ".problem{color:#555;max-width:50em}"
)


def _age(started: object) -> str:
    if not isinstance(started, (int, float)):
        return ""
    seconds = max(0.0, time.time() - started)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def foremen_page(foremen: list[dict], configured: str | None, problem: str, prefix: str) -> str:
    """HTML listing ``foremen`` (connection files with their ``port``); links are relative to ``prefix``.

    ``configured`` is the URL of the foreman ``/crowdcompute/`` shows, if any;
    ``problem`` says why there is none.
    """
    rows = []
    for found in foremen:
        port = int(found["port"])
        url = html.escape(str(found.get("url", f"ws://127.0.0.1:{port}")))
        if found.get("embedded"):
            kind = f"embedded, owned by process {int(found.get('parent', 0))}"
        else:
            kind = "started on its own"
        link = f'<a href="{prefix}foreman/{port}/">status page</a>'
        rows.append(
            f"<tr><td><code>{url}</code></td><td>{kind}</td><td>{_age(found.get('started'))}</td><td>{link}</td></tr>"
        )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>CrowdCompute foremen</title>",
        f"<style>{_STYLE}</style></head><body><h1>CrowdCompute foremen</h1>",
    ]
    if configured:
        parts.append(
            f'<p>This server\'s foreman: <code>{html.escape(configured)}</code> — <a href="{prefix}">status page</a></p>'
        )
    if rows:
        parts.append("<p>Your foremen on this machine (a notebook's <code>%crowdconnect</code> starts one):</p>")
        parts.append("<table><thead><tr><th>address</th><th>kind</th><th>started</th><th></th></tr></thead>")
        parts.append("<tbody>" + "".join(rows) + "</tbody></table>")
    else:
        parts.append(
            "<p>No foreman of yours runs on this machine. Run <code>%load_ext crowdcompute</code> and "
            "<code>%crowdconnect</code> in a notebook to start one; its output links here.</p>"
        )
    if problem and not configured:
        parts.append(f'<p class="problem">{html.escape(problem)}</p>')
    parts.append("</body></html>")
    return "".join(parts)
