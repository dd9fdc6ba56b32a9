"""``crowdcompute demo``: count the primes below a million on an embedded cluster."""

from __future__ import annotations

import time

from .client import CrowdComputeClient
from .progress import ProgressModel, RichProgress

__all__ = ["count_primes", "run_demo"]

#: Numbers each demo item checks.
SPAN = 5000


def count_primes(block: int) -> int:
    """How many primes lie in [block * SPAN, (block + 1) * SPAN), by trial division."""
    count = 0
    for n in range(max(2, block * SPAN), (block + 1) * SPAN):
        if n % 2 == 0:
            count += n == 2
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


async def run_demo(workers: int | None, items: int) -> int:
    """Map count_primes over ``items`` blocks with a progress bar; print a summary."""
    started = time.monotonic()
    async with CrowdComputeClient(workers=workers) as client:
        ready = time.monotonic() - started
        job = await client.submit(count_primes, range(items))
        bar = RichProgress(job, summary=False)
        try:
            counts = await job
        finally:
            bar.close()
        model = ProgressModel.of(job)
        slots = client.cluster.slots if client.cluster else client.slots
    print(
        f"demo: {model.total} items on {slots} workers in {model.elapsed:.2f} s "
        f"({model.rate:,.1f} items/s; cluster ready in {ready:.2f} s)"
    )
    print(f"found {sum(counts):,} primes below {items * SPAN:,}")
    report = job.stats.report()
    if report:
        print(report)
    return 0
