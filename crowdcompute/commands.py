"""``crowdcompute local`` and ``crowdcompute status``."""

from __future__ import annotations

import asyncio
import os
import re
import sys

from rich.table import Table

from .client import CrowdComputeClient
from .errors import CrowdComputeError
from .local import LocalCluster
from .processes import install_stop_handlers
from .sizes import format_amount
from .tables import Column, console, counted, table_of
from .wire.constants import ADDRESS_VARIABLE, DEFAULT_URL, FOREMAN_READY

__all__ = ["job_state", "run_local", "show_status", "sorted_workers", "status_tables", "worker_offers"]

#: How often ``crowdcompute local`` checks that its foreman is still alive, in seconds.
LOCAL_WATCH_INTERVAL = 0.5


def run_local(workers: int, port: int) -> int:
    """Run a foreman and ``workers`` workers until Ctrl-C or SIGTERM; exit 0."""
    if workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    cluster = LocalCluster(workers, port=port, token=None, log_level="warning", show_workers=True)

    async def serve() -> int:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        try:
            address = await cluster.start()
        except CrowdComputeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{FOREMAN_READY}{address.url}", flush=True)
        print(f"connect with: await crowdcompute.connect({address.url!r}); Ctrl-C stops", flush=True)
        while not stop.is_set():
            if cluster.foreman is None or cluster.foreman.poll() is not None:
                print("error: the foreman exited", file=sys.stderr)
                return 1
            try:
                await asyncio.wait_for(stop.wait(), LOCAL_WATCH_INTERVAL)
            except asyncio.TimeoutError:
                pass
        return 0

    try:
        return asyncio.run(serve())
    finally:
        cluster.stop()


async def show_status(url: str | None, token: str | None, cafile: str | None) -> int:
    """Print the foreman's workers and jobs as tables; exit 1 if it cannot be reached."""
    url = url or os.environ.get(ADDRESS_VARIABLE) or DEFAULT_URL
    # No token: the client chooses one as connect() does (crowdcompute.tokens), $CROWDCOMPUTE_TOKEN included.
    try:
        async with CrowdComputeClient(url, token=token, cafile=cafile) as client:
            status = await client.status()
    except CrowdComputeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = console()
    for table in status_tables(status, url):
        out.print(table)
    return 0


def worker_offers(worker: dict) -> str:
    """A worker's resources and labels in one cell: ``gpu=1, memory=64GB; site=lab1``."""
    resources = ", ".join(f"{k}={format_amount(v)}" for k, v in (worker.get("resources") or {}).items())
    labels = ", ".join(f"{k}={v}" for k, v in (worker.get("labels") or {}).items())
    return "; ".join(part for part in (resources, labels) if part)


def job_state(job: dict) -> str:
    """The job's state as the progress widget says it: a finished job with a failed item "failed"."""
    state = str(job.get("state", ""))
    return "failed" if state == "done" and job.get("failed") else state


def sorted_workers(workers: list[dict]) -> list[dict]:
    """Workers by name, numbers in names compared as numbers (local-2 before local-10)."""

    def key(worker: dict) -> list:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(worker.get("name", "")))]

    return sorted(workers, key=key)


def status_tables(status: dict, url: str) -> list[Table]:
    """The status as rich tables: workers, then jobs; names and notes from the network as plain text."""
    workers = sorted_workers(status.get("workers", []))
    slots = sum(w["slots"] for w in workers)
    busy = sum(w["busy"] for w in workers)
    rows = []
    for w in workers:
        state = "quarantined" if w.get("quarantined") else "draining" if w.get("draining") else "ok"
        if w.get("agreed") or w.get("disagreed"):
            state += f" (agreed {w.get('agreed', 0)}, disagreed {w.get('disagreed', 0)})"
        if not w.get("trusted", True):
            state += ", untrusted"
        identity = w.get("identity") or "(worker token)"
        rows.append([w["name"], identity, w["slots"], w["busy"], w.get("tasks_done", 0), state, worker_offers(w)])
    columns = [Column("worker", whole=True), Column("identity", whole=True)]
    columns += [Column(c, numeric=True, whole=True) for c in ("slots", "busy", "tasks done")]
    columns += [Column("state"), Column("resources; labels")]
    table = table_of(f"foreman {url}: {counted(len(workers), 'worker')}, {busy}/{slots} slots busy", columns, rows)
    rows = []
    for job in status.get("jobs", []):
        done = job["completed"] + job["failed"]
        percent = f" ({100 * done / job['total']:.0f}%)" if job["total"] else ""
        notes = [counted(job["untrusted_workers"], "untrusted worker")] if job.get("untrusted_workers") else []
        if job.get("waiting"):
            notes.append(job["waiting"])
        progress = f"{done}/{job['total']}{percent}"
        rows.append([job["id"][:12], job.get("name", ""), progress, job["failed"], job_state(job), "; ".join(notes)])
    columns = [Column("job", whole=True), Column("name"), Column("progress", numeric=True, whole=True)]
    columns += [Column("failed", numeric=True, whole=True), Column("state"), Column("notes")]
    jobs = table_of(counted(len(status.get("jobs", [])), "job"), columns, rows)
    return [table, jobs]
