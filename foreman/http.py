"""The foreman's HTTP side: a live status page, a JSON status and a health check.

They share the websocket port through websockets' ``process_request`` hook:
a request that asks for a websocket upgrade goes on to the handshake, any
other is answered here.

    GET /healthz       "ok", no token needed (for load balancers and probes)
    GET /              the status page (static HTML, CSS and JS from foreman/static/)
    GET /api/status    the scheduler's status as JSON, plus each worker's tasks and
                       the throughput history the page draws

Everything but ``/healthz`` needs the client token: ``?token=TOKEN`` once
(answered with a redirect that sets an HttpOnly, SameSite=Strict cookie and
drops the token from the address bar), ``Authorization: Bearer TOKEN``, or
that cookie. The cookie holds a value derived from the token, not the token,
so it only opens the status page.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import hmac
import json
import re
import time
from collections import deque
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from crowdcompute.wire.constants import AUTH_FAILURE_DELAY

from .scheduler import Scheduler
from .state import Worker

__all__ = ["HISTORY_SAMPLES", "SAMPLE_INTERVAL", "STATUS_WORKERS_SHOWN", "StatusPages", "Throughput", "cookie_name"]

#: Workers the status page and /api/status list at most, the first by name (their counts cover all).
STATUS_WORKERS_SHOWN = 500
#: Worker names whose sort keys are kept between two requests (more than a crowd of 10,000 has).
NAMES_KEPT = 32 * 1024
#: Seconds between two throughput samples.
SAMPLE_INTERVAL = 2.0
#: Samples kept: ten minutes of history at SAMPLE_INTERVAL.
HISTORY_SAMPLES = 300
#: Files under foreman/static/ the page may load, with their content types.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
}
#: The page loads its own files only; nothing from elsewhere, no inline script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)


def cookie_name(port: int) -> str:
    """The status page's cookie for the foreman on ``port`` (cookies ignore ports, so the name has it)."""
    return f"crowdcompute-status-{port}"


class Throughput:
    """Items finished over time, as a bounded ring of ``(time, items so far)`` samples.

    The scheduler's status lists running jobs and a few ended ones; a job may
    leave that list. Each sample adds what every listed job finished since it
    was last seen, so the running total never goes back.
    """

    def __init__(self, max_samples: int = HISTORY_SAMPLES) -> None:
        self.samples: deque[tuple[float, int]] = deque(maxlen=max_samples)
        self.total = 0
        self._seen: dict[str, int] = {}  # job id -> items finished at the last sample

    def record(self, now: float, jobs: list[dict]) -> None:
        """Add a sample at ``now`` from the status's ``jobs`` list."""
        first = not self.samples
        seen: dict[str, int] = {}
        for job in jobs:
            done = int(job.get("completed", 0)) + int(job.get("failed", 0)) + int(job.get("in_progress", 0))
            # At the first sample, what jobs had done before is history we did not watch.
            before = self._seen.get(job["id"], done if first else 0)
            self.total += max(0, done - before)
            seen[job["id"]] = done
        self._seen = seen  # jobs gone from the list are forgotten: memory stays bounded
        self.samples.append((round(now, 3), self.total))


class StatusPages:
    """Answers the foreman's HTTP requests from the scheduler's state."""

    def __init__(
        self, scheduler: Scheduler, token: str, *, secure: bool = False, sample_interval: float = SAMPLE_INTERVAL
    ) -> None:
        self.scheduler = scheduler
        self.token = token
        self.secure = secure
        self.sample_interval = sample_interval
        self.throughput = Throughput()
        self._session = hmac.new(token.encode(), b"crowdcompute status page", hashlib.sha256).hexdigest()
        self._sampler: asyncio.Task | None = None

    def start(self) -> None:
        """Start sampling the throughput (call from the running loop)."""
        self._sample()
        self._sampler = asyncio.create_task(self._sample_regularly())

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None

    async def _sample_regularly(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval)
            self._sample()

    def _sample(self) -> None:
        self.throughput.record(time.time(), self._jobs())

    # --- requests ------------------------------------------------------------

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """None lets a websocket handshake go on; any other request gets its answer here."""
        if "websocket" in request.headers.get("Upgrade", "").lower():
            return None
        url = urlsplit(request.path)
        path = url.path
        if request.method not in ("GET", None):
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET is served here\n", [("Allow", "GET")])
        if path == "/healthz":
            return _text(HTTPStatus.OK, "ok\n")
        port = connection.local_address[1] if connection.local_address else 0
        given = parse_qs(url.query).get("token")
        if given:
            if not self._token_matches(given[0]):
                await asyncio.sleep(AUTH_FAILURE_DELAY)
                return _text(HTTPStatus.FORBIDDEN, "403 Forbidden: wrong token. " + _how_to_authenticate(port))
            # Drop the token from the address bar and the history; the cookie takes over.
            cookie = f"{cookie_name(port)}={self._session}; Path=/; HttpOnly; SameSite=Strict"
            if self.secure:
                cookie += "; Secure"
            return _text(HTTPStatus.SEE_OTHER, "authenticated\n", [("Location", path), ("Set-Cookie", cookie)])
        allowed = self._authorized(request, port)
        if allowed is None:
            return _text(
                HTTPStatus.UNAUTHORIZED,
                "401 Unauthorized: " + _how_to_authenticate(port),
                [("WWW-Authenticate", 'Bearer realm="crowdcompute"')],
            )
        if not allowed:
            await asyncio.sleep(AUTH_FAILURE_DELAY)
            return _text(HTTPStatus.FORBIDDEN, "403 Forbidden: wrong token. " + _how_to_authenticate(port))
        return self._route(path)

    def _route(self, path: str) -> Response:
        if path in ("/", "/index.html"):
            return _static("index.html")
        if path == "/api/status":
            body = json.dumps(self.status(), separators=(",", ":")).encode()
            return _response(HTTPStatus.OK, body, "application/json")
        if path.startswith("/static/") and path[len("/static/") :] in STATIC_FILES:
            return _static(path[len("/static/") :])
        return _text(HTTPStatus.NOT_FOUND, f"404 Not Found: {path[:200]}\n")

    def _token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _authorized(self, request: Request, port: int) -> bool | None:
        """True for the token or our cookie; False for a wrong one; None when none was given."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value:
            return self._token_matches(value.strip())
        wanted = cookie_name(port)
        for header in request.headers.get_all("Cookie"):
            for part in header.split(";"):
                name, _, value = part.strip().partition("=")
                if name == wanted:
                    return hmac.compare_digest(value.encode(), self._session.encode())
        return None

    def status(self, sampled: bool = True) -> dict:
        """The scheduler's status plus each worker's leased tasks, items done in running tasks,
        the time and (``sampled``) the throughput.

        At most STATUS_WORKERS_SHOWN workers are listed, the first by name; ``workers_total``,
        ``busy`` and ``slots`` count every one (a crowd of 10,000 would make a 4 MB reply
        every second, and a page no one can read).
        """
        scheduler = self.scheduler
        crowd = scheduler.workers.values()
        # Each worker's own record, so that its tasks never land on another's line; sorted by name.
        shown = heapq.nsmallest(STATUS_WORKERS_SHOWN, crowd, key=lambda worker: _natural_key(worker.name))
        status: dict[str, Any] = {
            "workers": [self._worker(worker) for worker in shown],
            "jobs": self._jobs(),
            "clients": len(scheduler.clients),
            "workers_total": len(scheduler.workers),
            "busy": sum(min(len(worker.running), worker.slots) for worker in crowd),
            "slots": scheduler.total_slots,
            "time": time.time(),
        }
        if sampled:
            status["throughput"] = {"interval": self.sample_interval, "samples": list(self.throughput.samples)}
        return status

    def _jobs(self) -> list[dict[str, Any]]:
        """The scheduler's jobs, with the items finished inside their running tasks (their
        workers' progress reports), so that bars and rates move per item."""
        jobs = self.scheduler.job_summaries()
        in_progress: dict[str, int] = {}
        for job_id, task_id in {lease for worker in self.scheduler.workers.values() for lease in worker.running}:
            job = self.scheduler.jobs.get(job_id)
            task = job.tasks.get(task_id) if job else None
            if task is not None and task.progress:
                in_progress[job_id] = in_progress.get(job_id, 0) + task.progress
        for summary in jobs:
            running = summary.get("state") == "running"
            summary["in_progress"] = in_progress.get(summary["id"], 0) if running else 0
        return jobs

    def _worker(self, worker: Worker) -> dict[str, Any]:
        """A worker as the status shows it, plus the tasks it holds: the oldest leases fill its
        slots, the others wait in its prefetch queue (``queued``)."""
        leased = []
        for job_id, task_id in worker.running:
            job = self.scheduler.jobs.get(job_id)
            task = job.tasks.get(task_id) if job else None
            leased.append((task.assigned_at if task else 0.0, job_id, task_id, job, task))
        leased.sort(key=lambda lease: lease[:3])
        tasks = [
            {
                "job": job_id,
                "name": job.name if job else "",
                "task": task_id,
                "items": task.count if task else 0,
                "queued": n >= worker.slots,
            }
            for n, (_, job_id, task_id, job, task) in enumerate(leased)
        ]
        return {**worker.summary(), "tasks": tasks}


@functools.lru_cache(maxsize=NAMES_KEPT)
def _natural_key(name: str) -> tuple:
    """Sort key that puts local-2 before local-10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _how_to_authenticate(port: int) -> str:
    return (
        f"open this page once with ?token=TOKEN added to its address (for example "
        f"http://127.0.0.1:{port}/?token=TOKEN), where TOKEN is the foreman's client token: "
        f'the --token it was started with, or the "token" in its connection file '
        f"$CROWDCOMPUTE_HOME/foreman-{port}.json (default folder ~/.crowdcompute). "
        "Programs may send 'Authorization: Bearer TOKEN' instead.\n"
    )


def _static(name: str) -> Response:
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return _response(HTTPStatus.OK, body, STATIC_FILES[name])


def _text(status: HTTPStatus, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8", headers)


def _response(
    status: HTTPStatus, body: bytes, content_type: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(
        status.value,
        status.phrase,
        Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
                ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                ("Connection", "close"),
                *(headers or []),
            ]
        ),
        body,
    )
