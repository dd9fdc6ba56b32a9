"""Throughput of tiny items: CrowdCompute against ``multiprocessing.Pool(2).map``, in one run.

    python benchmarks/throughput.py [--items 100000] [--repeats 3]

Maps ``x + 1`` over 100,000 items with two worker processes (the embedded
cluster of ``CrowdComputeClient(workers=2)``) and with ``Pool(2).map``, both
with their automatic chunking, three times each; prints the median rates and
their ratio. Starting the cluster and the pool is not timed: a warm-up call
waits until both workers answer. The full comparison with every peer is
``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time

WORKERS = 2


def add_one(x: int) -> int:
    return x + 1


async def crowdcompute_rates(items: int, repeats: int) -> list[float]:
    from crowdcompute import CrowdComputeClient

    data = list(range(items))
    expected = [x + 1 for x in data]
    rates = []
    async with CrowdComputeClient(workers=WORKERS) as client:
        await client.map(lambda x: x + 1, range(WORKERS * 4), progress=False)  # both workers connected
        for _ in range(repeats):
            start = time.perf_counter()
            results = await client.map(lambda x: x + 1, data, progress=False)
            rates.append(items / (time.perf_counter() - start))
            if results != expected:
                raise RuntimeError("CrowdCompute returned wrong results")
    return rates


def multiprocessing_rates(items: int, repeats: int) -> list[float]:
    data = list(range(items))
    expected = [x + 1 for x in data]
    rates = []
    with multiprocessing.Pool(WORKERS) as pool:
        pool.map(add_one, range(WORKERS * 4))
        for _ in range(repeats):
            start = time.perf_counter()
            results = pool.map(add_one, data)
            rates.append(items / (time.perf_counter() - start))
            if results != expected:
                raise RuntimeError("multiprocessing returned wrong results")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}; {args.items} items x {args.repeats} runs")
    crowd = asyncio.run(crowdcompute_rates(args.items, args.repeats))
    pool = multiprocessing_rates(args.items, args.repeats)
    crowd_rate, pool_rate = statistics.median(crowd), statistics.median(pool)
    print(f"CrowdCompute (2 workers):     {crowd_rate:12,.0f} items/s  runs: {', '.join(f'{r:,.0f}' for r in crowd)}")
    print(f"multiprocessing.Pool(2).map:  {pool_rate:12,.0f} items/s  runs: {', '.join(f'{r:,.0f}' for r in pool)}")
    print(f"ratio CrowdCompute / multiprocessing: {crowd_rate / pool_rate:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
