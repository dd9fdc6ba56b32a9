"""The foreman's HTTP side on its websocket port: /healthz, the token rules, /api/status, the page's files.

A real foreman (and real workers where jobs run) answers plain HTTP requests
made with urllib; websocket clients keep working on the same port.
"""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from helpers import arun, wait_until
from http_client import http_request

from crowdcompute import CrowdComputeClient
from foreman.http import Throughput, cookie_name


def fetch(url: str, headers: dict | None = None, context: ssl.SSLContext | None = None) -> tuple[int, dict, bytes]:
    """GET ``url`` without following redirects: (status, headers, body), errors included."""
    return http_request(url, headers, context=context)


def http_url(foreman, path: str) -> str:
    return f"http://127.0.0.1:{foreman.port}{path}"


def api_status(foreman) -> dict:
    status, _, body = fetch(http_url(foreman, "/api/status"), {"Authorization": f"Bearer {foreman.token}"})
    assert status == 200, body
    return json.loads(body)


def test_healthz_is_open_and_everything_else_needs_the_token(foreman):
    status, _, body = fetch(http_url(foreman, "/healthz"))
    assert (status, body) == (200, b"ok\n")

    for path in ("/", "/api/status", "/static/status.js"):
        status, headers, body = fetch(http_url(foreman, path))
        assert status == 401, path
        assert "?token=" in body.decode() and f"foreman-{foreman.port}.json" in body.decode()
        assert headers["WWW-Authenticate"].startswith("Bearer")

    status, _, body = fetch(http_url(foreman, "/?token=not-the-token"))
    assert status == 403 and b"wrong token" in body
    status, _, _ = fetch(http_url(foreman, "/api/status"), {"Authorization": "Bearer not-the-token"})
    assert status == 403
    status, _, _ = fetch(http_url(foreman, "/"), {"Cookie": f"{cookie_name(foreman.port)}=forged"})
    assert status == 403


def test_the_token_once_then_a_cookie(foreman):
    status, headers, _ = fetch(http_url(foreman, f"/?token={foreman.token}"))
    assert status == 303
    assert headers["Location"] == "/"  # the token leaves the address bar
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{cookie_name(foreman.port)}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    value = cookie.split(";")[0]
    assert foreman.token not in value  # the cookie opens the page, it is not the client token

    status, headers, body = fetch(http_url(foreman, "/"), {"Cookie": value})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="static/status.js"' in body and b"https://" not in body  # no CDN
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name, kind in [("status.js", "text/javascript"), ("status.css", "text/css")]:
        status, headers, body = fetch(http_url(foreman, f"/static/{name}"), {"Cookie": value})
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    status, headers, body = fetch(http_url(foreman, "/api/status"), {"Cookie": value})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["workers"] == []
    status, _, _ = fetch(http_url(foreman, "/static/../http.py"), {"Cookie": value})
    assert status == 404


def test_api_status_shows_workers_their_tasks_jobs_and_throughput(cluster, start_worker):
    start_worker(cluster.url, "--procs", "1", "--name", "w2")

    def slow(x):
        import time

        time.sleep(0.2)
        return x

    async def body():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as client:
            job = await client.submit(slow, range(12), chunksize=1)
            status = {}

            async def tasks_shown():
                nonlocal status
                status = await asyncio.to_thread(api_status, cluster)
                return any(w["tasks"] for w in status["workers"])

            await wait_until(tasks_shown, 10, "no worker showed a task while the job ran")
            workers = {w["name"]: w for w in status["workers"]}
            assert {name: w["slots"] for name, w in workers.items()} == {"w1": 2, "w2": 1}
            task = next(t for w in status["workers"] for t in w["tasks"])
            assert (task["job"], task["name"], task["items"]) == (job.id, "slow", 1)
            (shown,) = [j for j in status["jobs"] if j["id"] == job.id]
            assert shown["state"] == "running" and shown["total"] == 12
            assert status["slots"] == 3
            assert await job == list(range(12))
            # A sample every 2 s: the history catches up with the finished items.
            await wait_until(
                lambda: asyncio.to_thread(lambda: api_status(cluster)["throughput"]["samples"][-1][1] == 12),
                10,
                "the throughput history never counted the job's 12 items",
            )

    arun(body())
    status = api_status(cluster)
    (job,) = status["jobs"]
    assert {k: job[k] for k in ("total", "completed", "failed", "state")} == {
        "total": 12,
        "completed": 12,
        "failed": 0,
        "state": "done",
    }
    samples = status["throughput"]["samples"]
    assert [n for _, n in samples] == sorted(n for _, n in samples)  # never goes back
    assert status["throughput"]["interval"] == 2.0


def test_items_finished_inside_a_running_task_show_at_once(cluster):
    """One task of 10 slow items: the workers' progress reports move the job before its task ends."""

    def slow(x):
        import time

        time.sleep(0.2)
        return x

    async def body():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as client:
            job = await client.submit(slow, range(10), chunksize=10)
            seen = []

            async def moving():
                (shown,) = [j for j in (await asyncio.to_thread(api_status, cluster))["jobs"] if j["id"] == job.id]
                seen.append((shown["completed"], shown["in_progress"]))
                return shown["completed"] == 0 and 2 <= shown["in_progress"] < 10

            await wait_until(moving, 10, "the job showed no items done inside its one running task")
            assert await job == list(range(10))
            assert [p for _, p in seen] == sorted(p for _, p in seen), seen  # it never goes back
        (shown,) = api_status(cluster)["jobs"]
        assert (shown["completed"], shown["in_progress"]) == (10, 0)

    arun(body())


def test_https_page_with_tls_sets_a_secure_cookie(start_foreman, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    foreman = start_foreman("--token", "tls-page-token", "--certfile", str(certfile), "--keyfile", str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    base = f"https://127.0.0.1:{foreman.port}"
    assert fetch(f"{base}/healthz", context=context)[:1] == (200,)
    status, headers, _ = fetch(f"{base}/?token=tls-page-token", context=context)
    assert status == 303 and "; Secure" in headers["Set-Cookie"]


# --- the throughput history, without a foreman ----------------------------------


def job(job_id: str, completed: int, failed: int = 0) -> dict:
    return {"id": job_id, "completed": completed, "failed": failed}


def test_throughput_counts_each_item_once_and_forgets_gone_jobs():
    history = Throughput(max_samples=3)
    history.record(0.0, [job("old", 50)])  # done before we watched: not counted
    history.record(2.0, [job("old", 60), job("new", 5, failed=1)])
    history.record(4.0, [job("new", 10, failed=1)])  # "old" left the status list
    history.record(6.0, [job("new", 10, failed=1), job("newer", 3)])
    assert list(history.samples) == [(2.0, 16), (4.0, 21), (6.0, 24)]  # bounded: the first sample fell off
    assert history.total == 24
