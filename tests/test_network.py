"""A crowd over a real (namespaced) network: a foreman host, worker hosts and a client host on a bridge.

wss with a test CA, partitions, churn (agents SIGKILLed, whole hosts powered off) and flaky
links, with real processes (see tests/netns.py). Needs root; skipped elsewhere, saying why.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from dataclasses import dataclass, field

import pytest
from helpers import wait_until
from netns import Host, Network, Relay, unavailable

from crowdcompute import CrowdComputeClient

trustme = pytest.importorskip("trustme")
pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

TOKEN = "namespaced-token"
#: --heartbeat-timeout of the foreman in these tests, in seconds.
HEARTBEAT_TIMEOUT = 1.5
#: Seconds the partition test allows for a cut-off host's tasks to finish elsewhere: the
#: drop (heartbeat timeout + 1 s) and the rest of the job on one slot, with room to spare.
PARTITION_BOUND = HEARTBEAT_TIMEOUT + 1 + 12 * 0.2 + 5
#: Limit for a test's client code, in seconds.
CLIENT_TIMEOUT = 40.0


@dataclass
class Crowd:
    network: Network
    foreman: Host
    client: Host
    hosts: list[Host]
    url: str
    cafile: str
    workers: dict[str, object] = field(default_factory=dict)  # worker name -> Proc

    def start_worker(self, host: Host, name: str, url: str | None = None, wait: bool = True):
        proc = self.network.start(
            host, "-m", "crowdcompute", "worker", url or self.url, "--token", TOKEN,
            "--cafile", self.cafile, "--procs", "1", "--name", name,
        )  # fmt: skip
        self.workers[name] = proc
        if wait:
            proc.wait_for_line("connected to")
        return proc

    def client_session(self) -> CrowdComputeClient:
        return CrowdComputeClient(self.url, token=TOKEN, cafile=self.cafile)

    def run(self, main) -> object:
        return self.network.run_in(self.client, main, CLIENT_TIMEOUT)


@pytest.fixture
def network(crowd_home, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # the hosts' addresses are private: never through a proxy
    net = Network()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def crowd(network, tmp_path) -> Crowd:
    """A wss foreman (certificate from a test CA) on its host, a client host and two worker hosts."""
    foreman = network.add_host("foreman")
    client = network.add_host("client")
    hosts = [network.add_host(f"h{n}") for n in (1, 2)]
    ca = trustme.CA()
    cert = ca.issue_cert(foreman.address)
    certfile, cafile = tmp_path / "cert.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    ca.cert_pem.write_to_path(cafile)
    proc = network.start(
        foreman, "-m", "crowdcompute", "foreman", "--host", foreman.address, "--port", "0", "--token", TOKEN,
        "--certfile", str(certfile), "--keyfile", str(certfile), "--journal", "none",
        "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
    )  # fmt: skip
    url = proc.wait_for_line("foreman listening on ").rsplit(" ", 1)[1]
    assert url.startswith(f"wss://{foreman.address}:")
    crowd = Crowd(network, foreman, client, hosts, url, str(cafile))
    crowd.workers["foreman"] = proc
    return crowd


def _pause(seconds):
    import time

    time.sleep(seconds)
    return seconds


async def _names(cc) -> list[str]:
    return [w["name"] for w in (await cc.status())["workers"]]


def test_reach_over_wss(crowd):
    for host in crowd.hosts:
        crowd.start_worker(host, f"{host.name}-w")

    async def main():
        async with crowd.client_session() as cc:
            job = await cc.submit(_pause, [0.05] * 16, chunksize=1)
            assert await job == [0.05] * 16
            assert {t.worker for t in job.timings} == {"h1-w", "h2-w"}, "both hosts should have worked"
            assert await cc.run(lambda: os.uname().nodename) is not None

    crowd.run(main)


def test_partition_of_one_host(crowd):
    h1, h2 = crowd.hosts
    crowd.start_worker(h1, "h1-w")
    crowd.start_worker(h2, "h2-w")

    async def main():
        async with crowd.client_session() as cc:
            job = await cc.submit(_pause, [0.2] * 12, chunksize=1)
            await wait_until(lambda: any(t.worker == "h1-w" for t in job.timings), 20, "h1 never worked")
            crowd.network.cut(h1)
            try:  # h1's tasks must finish elsewhere while it is still cut off
                assert await asyncio.wait_for(job, PARTITION_BOUND) == [0.2] * 12
            finally:
                crowd.network.mend(h1)
            assert "h1-w" not in await _names(cc), "a partitioned worker was still listed"
            await wait_until(lambda: _has(cc, "h1-w"), 25, "h1 did not rejoin after its link came back")
            assert await cc.map(abs, [-1, -2]) == [1, 2]

    crowd.run(main)


async def _has(cc, name: str) -> bool:
    return name in await _names(cc)


#: What the churn test does while its job runs, one event every 0.2-0.5 s: SIGKILL a worker
#: agent (a new one starts on its host), or power a whole host off (its link drops, every
#: process in it is SIGKILLed; it stays off until the job is done).
CHURN = ("agent", "host", "agent", "agent", "agent")


def test_churn_loses_and_duplicates_nothing(crowd):
    hosts = [*crowd.hosts, crowd.network.add_host("h3")]
    names = {host.name: f"{host.name}-w" for host in hosts}
    for host in hosts:
        crowd.start_worker(host, names[host.name])
    items = list(range(60))
    rng = random.Random(12)
    alive = list(hosts)

    async def main():
        async with crowd.client_session() as cc:
            job = await cc.submit(_slow_square, items, chunksize=1)
            for generation, event in enumerate(CHURN, 1):
                await wait_until(lambda: job.completed > 0 or job.done, 20, "no result came back")
                await asyncio.sleep(rng.uniform(0.2, 0.5))  # churn's pace, not a wait for a condition
                if job.done:
                    break
                victim = rng.choice(alive)
                if event == "host":
                    crowd.network.kill_host(victim)
                    alive.remove(victim)
                    continue
                os.kill(crowd.workers[names[victim.name]].popen.pid, signal.SIGKILL)
                names[victim.name] = f"{victim.name}-w{generation}"
                crowd.start_worker(victim, names[victim.name], wait=False)
            assert await job == [x * x for x in items]
            assert (job.completed, job.failed) == (len(items), 0)
            (summary,) = [j for j in (await cc.status())["jobs"] if j["id"] == job.id]
            assert summary["completed"] == len(items), f"the foreman accepted duplicates: {summary}"
            assert len(alive) == len(hosts) - 1, "a whole host should have been powered off"
            (dead,) = [host for host in hosts if host not in alive]
            await wait_until(lambda: _lacks(cc, names[dead.name]), 20, "the powered-off host was never dropped")
            # A replacement host joins the crowd and works.
            spare = crowd.network.add_host("h4")
            crowd.start_worker(spare, "h4-w", wait=False)
            await wait_until(lambda: _has(cc, "h4-w"), 25, "the replacement host did not join")
            again = await cc.submit(_slow_square, list(range(6)), chunksize=1)
            assert await again == [x * x for x in range(6)]
            assert "h4-w" in {t.worker for t in again.timings}, "the replacement host got no task"

    crowd.run(main)


async def _lacks(cc, name: str) -> bool:
    return name not in await _names(cc)


def _slow_square(x):
    import time

    time.sleep(0.1)
    return x * x


#: Times the flaky-link test cuts the worker's connection while it holds the long task.
CUTS = 4


def test_a_long_task_survives_its_links_being_cut_repeatedly(crowd):
    h1 = crowd.hosts[0]
    relay = Relay(crowd.network, crowd.foreman, (crowd.foreman.address, int(crowd.url.rsplit(":", 1)[1])), 0.005)
    foreman_log = crowd.workers["foreman"]
    crowd.start_worker(h1, "flaky", url=f"wss://{crowd.foreman.address}:{relay.port}")

    async def main():
        async with crowd.client_session() as cc:
            job = await cc.submit(_pause, [3.0], chunksize=1)
            for cut in range(CUTS):

                async def holds_task(cut=cut) -> bool:
                    if job.done:
                        raise AssertionError(f"the job ended while its link was being cut: {job.failed} failed")
                    joined = sum("worker flaky connected" in line for line in foreman_log.lines)
                    status = (await cc.status())["workers"]
                    return joined > cut and any(w["name"] == "flaky" and w["busy"] for w in status)

                await wait_until(holds_task, 20, f"the worker did not take the task back after {cut} cuts")
                relay.cut()
            assert await job == [3.0], "the task was blamed for its worker's lost link"
            assert job.timings[0].attempts == CUTS + 1

    crowd.run(main)
