"""``python -m benchmarks``: every workload, CrowdCompute and its peers, in one run.

Each peer runs each workload ``--repeats`` times (3 by default) and the table
shows medians and the ratio CrowdCompute / peer. For rates (items/s, MB/s,
efficiency) a ratio above 1 means CrowdCompute is faster; for times (ms, s)
a ratio below 1 does. The foreman's peak RSS is sampled during each
CrowdCompute workload. Figures on a shared two-core machine are noisy: the
load average is printed before and after, and ``--json`` keeps every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from typing import Any

from . import workloads
from .peers import PEERS, Peer
from .rss import PeakRSS
from .workloads import WORKLOADS, Workload

__all__ = ["main"]

#: A workload whose single repeat takes longer than this (seconds) is not repeated.
REPEAT_BUDGET = 60.0
#: Distributions whose versions the report names.
VERSIONS = ["crowdcompute", "websockets", "cloudpickle", "distributed", "ipyparallel", "ray", "numpy"]


def run_peer(peer: Peer, chosen: list[Workload], repeats: int) -> dict[str, dict[str, Any]]:
    """Every chosen workload on ``peer``: {workload: {"runs", "median", "peak_rss", "error"}}."""
    results: dict[str, dict[str, Any]] = {}
    for workload in [w for w in chosen if w.fresh_peer]:
        results[workload.name] = _repeat(peer, workload, repeats)
    rest = [w for w in chosen if not w.fresh_peer]
    if not rest:
        return results
    try:
        peer.start()
        peer.call(workloads.add_one, 0)  # workers up and connected before anything is timed
    except Exception as exc:
        for workload in rest:
            results[workload.name] = {"runs": [], "median": None, "error": f"start failed: {exc!r}"}
        return results
    try:
        for workload in rest:
            results[workload.name] = _repeat(peer, workload, repeats)
    finally:
        peer.stop()
    return results


def _repeat(peer: Peer, workload: Workload, repeats: int) -> dict[str, Any]:
    runs: list[float] = []
    peaks: list[int] = []
    error = None
    for _ in range(repeats):
        started = time.monotonic()
        try:
            with PeakRSS(None if workload.fresh_peer else peer.foreman_pid()) as peak:
                runs.append(workload.measure(peer))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            print(f"  {peer.label}: {workload.name}: {error}", file=sys.stderr)
            break
        rss = ""
        if peak.bytes is not None:
            peaks.append(peak.bytes)
            rss = f" (foreman peak RSS {peak.bytes / 2**20:.0f} MiB)"
        print(f"  {peer.label}: {workload.name}: {runs[-1]:.4g} {workload.unit}{rss}", file=sys.stderr, flush=True)
        if time.monotonic() - started > REPEAT_BUDGET:
            break
    return {
        "runs": runs,
        "median": statistics.median(runs) if runs else None,
        "peak_rss": max(peaks) if peaks else None,
        "error": error,
    }


def format_figure(value: float | None, unit: str) -> str:
    if value is None:
        return "failed"
    if unit == "items/s":
        if value >= 1e6:
            return f"{value / 1e6:.2f} M/s"
        return f"{value / 1e3:.1f} k/s" if value >= 1e4 else f"{value:.0f} /s"
    if unit == "efficiency":
        return f"{value:.2f}"
    if unit == "MB/s":
        return f"{value:.0f} MB/s"
    return f"{value:.2f} {unit}"


def print_table(results: dict[str, dict], chosen: list[Workload], peers: list[Peer]) -> None:
    """Medians, ratios CrowdCompute / peer, and the foreman's peak RSS."""
    ran = [p for p in peers if p.name in results]
    base = ran[0] if ran and ran[0].name == "crowdcompute" else None
    headers = ["workload"] + [p.label for p in ran] + (["foreman peak RSS"] if base else [])
    rows = []
    for workload in chosen:
        row = [f"{workload.name} ({workload.unit}, {'higher' if workload.higher_is_better else 'lower'} is better)"]
        mine = results[base.name][workload.name]["median"] if base else None
        for peer in ran:
            figure = results[peer.name][workload.name]["median"]
            cell = format_figure(figure, workload.unit)
            if peer is not base and base and mine is not None and figure:
                cell += f" (x{mine / figure:.2f})"
            row.append(cell)
        if base:
            peak = results[base.name][workload.name].get("peak_rss")
            row.append(f"{peak / 2**20:.0f} MiB" if peak else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"  # noqa: E731
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    if base:
        print("(xN) = CrowdCompute / that peer; medians of the runs in --json")


def machine() -> dict[str, Any]:
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each workload (default 3)")
    parser.add_argument("--json", metavar="PATH", help="write every figure to PATH")
    parser.add_argument("--peers", help="comma-separated names: " + ",".join(p.name for p in PEERS))
    parser.add_argument("--workloads", help="comma-separated words; a workload runs if its name holds one")
    args = parser.parse_args(argv)
    peers = PEERS if not args.peers else [p for p in PEERS if p.name in args.peers.split(",")]
    chosen = WORKLOADS
    if args.workloads:
        words = [w.strip() for w in args.workloads.split(",")]
        chosen = [w for w in WORKLOADS if any(word in w.name for word in words)]
    # cloudpickle users (CrowdCompute, dask, Ray) ship the task functions by value, so
    # their workers need not import this repository; multiprocessing pickles by reference.
    import cloudpickle

    cloudpickle.register_pickle_by_value(workloads)
    before = machine()
    print(f"{before['cpus']} CPUs, load average {before['load_average']}, Python {before['python']}", flush=True)
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    started = time.monotonic()
    for peer in peers:
        reason = peer.available()
        if reason:
            print(f"skipping {peer.label}: {reason}", flush=True)
            skipped[peer.name] = reason
            continue
        print(f"{peer.label}...", flush=True)
        results[peer.name] = run_peer(peer, chosen, args.repeats)
    after = os.getloadavg()
    print(f"\n{time.monotonic() - started:.0f} s; load average before {before['load_average']}, after {after}\n")
    print_table(results, chosen, peers)
    if args.json:
        report = {
            "machine": before,
            "load_average_after": after,
            "repeats": args.repeats,
            "skipped": skipped,
            "results": results,
        }
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0
