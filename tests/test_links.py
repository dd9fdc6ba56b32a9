"""Links that fail as real networks do: silent peers dropped on time, lost workers not blamed on tasks.

Real foreman and worker processes on loopback; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import time

from helpers import arun, wait_until

from crowdcompute import CrowdComputeClient

#: --heartbeat-timeout the drop test gives the foreman, in seconds.
HEARTBEAT_TIMEOUT = 2.0
#: How late after --heartbeat-timeout a silent worker may still hold its tasks (the README's promise).
DROP_GRACE = 1.0


def test_silent_worker_is_dropped_within_the_heartbeat_timeout(start_foreman, start_worker):
    foreman = start_foreman("--heartbeat-timeout", str(HEARTBEAT_TIMEOUT))
    silent = start_worker(foreman.url, "--procs", "1", "--name", "silent")

    async def names(cc):
        return [w["name"] for w in (await cc.status())["workers"]]

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            await wait_until(lambda: _has(cc, "silent"), 10, "the worker never showed in the status")
            os.kill(silent.popen.pid, signal.SIGSTOP)  # alive, connected, silent: as a frozen host
            stopped = time.monotonic()
            try:
                await wait_until(
                    lambda: _lacks(cc, "silent"),
                    HEARTBEAT_TIMEOUT + 10,
                    "the foreman kept a silent worker far past its heartbeat timeout",
                )
                took = time.monotonic() - stopped
            finally:
                os.kill(silent.popen.pid, signal.SIGCONT)
            assert took <= HEARTBEAT_TIMEOUT + DROP_GRACE, (
                f"a silent worker was dropped after {took:.2f} s; the bound is --heartbeat-timeout "
                f"{HEARTBEAT_TIMEOUT:g} s + {DROP_GRACE:g} s"
            )
            # Awake again, it rejoins by itself.
            silent.wait_for_line("connected to", timeout=15)
            assert "silent" in await names(cc)

    arun(main(), timeout=45)


async def _has(cc, name: str) -> bool:
    return name in [w["name"] for w in (await cc.status())["workers"]]


async def _lacks(cc, name: str) -> bool:
    return not await _has(cc, name)
