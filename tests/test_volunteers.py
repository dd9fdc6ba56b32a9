"""Volunteers: a credential per worker, trust and reputation that follow it, granted slots, quorum waits."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import subprocess
import sys

import pytest
from helpers import arun, fake_worker, wait_until
from http_client import http_request
from scheduler_events import make, submit

from crowdcompute import CrowdComputeClient, QuorumError, UntrustedPayloadError
from crowdcompute.dialing import dial
from crowdcompute.wire import messages as p
from crowdcompute.wire.addresses import parse_address
from crowdcompute.wire.runtime import runtime_fields
from foreman.credentials import CredentialRefused, Registry
from foreman.state import Note, SaveVolunteer, Send

#: Seconds a command-line admin action may take.
CLI_TIMEOUT = 30


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``crowdcompute ARGS`` to the end; its output as text."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "crowdcompute", *args], capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env
    )


def invite(foreman, name: str, *options: str) -> str:
    """Invite ``name`` on the command line; its credential, from the join command on the last line."""
    done = cli("invite", name, foreman.url, "--token", foreman.token, *options)
    assert done.returncode == 0, done.stderr
    join = done.stdout.strip().splitlines()[-1]
    assert not re.search(r"\b1 slots\b", done.stdout), done.stdout  # "up to 1 slot"
    assert re.fullmatch(rf"crowdcompute worker {re.escape(foreman.url)} --token ccv1_\S+", join), done.stdout
    return join.split()[-1]


async def named_workers(cc) -> dict[str, dict]:
    return {w["name"]: w for w in (await cc.status())["workers"]}


# --- credentials, pure ---------------------------------------------------------------


def test_the_registry_keeps_a_digest_and_refuses_revoked_and_expired_credentials():
    registry = Registry()
    credential, volunteer = registry.invite("alice", 100.0, expires_in=60)
    assert credential not in repr(volunteer) and volunteer.digest != credential
    assert registry.authenticate(credential, 120.0) is volunteer and volunteer.joined_at == 120.0
    with pytest.raises(CredentialRefused, match="expired"):
        registry.authenticate(credential, 161.0)
    registry.invite("bob", 0.0)
    with pytest.raises(ValueError, match="already has a valid credential"):
        registry.invite("bob", 1.0)
    registry.revoke("bob", 2.0)
    assert registry.invite("bob", 3.0)[1].name == "bob"  # a revoked name may be invited again
    with pytest.raises(ValueError, match="not a volunteer name"):
        registry.invite("no spaces", 0.0)
    with pytest.raises(KeyError, match="no volunteer named 'carol'"):
        registry.revoke("carol", 0.0)
    with pytest.raises(CredentialRefused, match="wrong or missing worker token") as refused:
        registry.authenticate("ccv1_guess", 0.0)
    assert refused.value.name is None  # an unknown token names nobody in the foreman's log


def test_a_worker_claiming_100000_slots_is_granted_the_cap():
    s = make(max_slots_per_worker=4)
    s.add_client("c1")
    notes = [a for a in s.add_worker("w1", "greedy", 100_000) if isinstance(a, Note)]
    assert s.workers["w1"].slots == 4 and "claims 100000 slots; it is granted 4" in notes[0].text
    leases = [
        a for a in submit(s, "c1", "j1", tasks=100) if getattr(getattr(a, "message", None), "TYPE", "") == "assign_task"
    ]
    assert len(leases) == 4 + 2  # its slots plus a prefetch of half as many (its round trip not measured yet)
    _, volunteer = s.volunteers.invite("v", 0.0, slots=2)
    s.add_worker("w2", "volunteer", 100_000, volunteer=volunteer)
    assert s.workers["w2"].slots == 2  # the invite's --slots grants fewer


# --- end to end ----------------------------------------------------------------------


def test_a_worker_granted_fewer_slots_than_it_has_keeps_no_idle_task_processes(foreman, start_worker):
    """An invite for 1 slot, a laptop of 2: the second task process idled for nothing (memory a
    volunteer lends for no work)."""
    import psutil

    credential = invite(foreman, "bob", "--slots", "1")
    bob = start_worker(foreman.url, "--token", credential, "--name", "bob-laptop", "--procs", "2")
    agent = psutil.Process(bob.popen.pid)

    def task_processes() -> int:  # the forkserver's children: the agent's grandchildren
        return sum(1 for child in agent.children(recursive=True) if child.ppid() != agent.pid)

    async def main():
        await wait_until(lambda: task_processes() == 1, 20, "the worker kept both task processes")
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            assert await cc.map(abs, [-1, -2, -3], chunksize=1) == [1, 2, 3]
        assert task_processes() == 1

    arun(main(), timeout=40)


def test_invite_join_revoke_mid_job(foreman, start_worker):
    start_worker(foreman.url, "--procs", "1", "--name", "own")
    credential = invite(foreman, "alice", "--slots", "1")
    alice = start_worker(foreman.url, "--token", credential, "--name", "alice-laptop", "--procs", "1")

    def slow_square(x):
        import time

        time.sleep(0.15)  # 60 tasks: about 4.5 s on two workers, time to revoke one mid-job
        return x * x

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            workers = await named_workers(cc)
            assert (workers["alice-laptop"]["identity"], workers["alice-laptop"]["trusted"]) == ("alice", False)
            assert (workers["own"]["identity"], workers["own"]["trusted"]) == (None, True)
            job = await cc.submit(slow_square, range(60), chunksize=1)

            async def alice_worked():
                return (await named_workers(cc)).get("alice-laptop", {}).get("tasks_done", 0) >= 1

            await wait_until(alice_worked, 20, "the volunteer never finished a task")
            revoked = await asyncio.to_thread(cli, "revoke", "alice", foreman.url, "--token", foreman.token)
            assert "revoked volunteer alice: closed 1 connection\n" in revoked.stdout, revoked.stderr
            assert not job.done, "the job ended before the revocation: make its tasks longer"
            assert await job == [x * x for x in range(60)]  # its tasks ran elsewhere
            assert job.stats.untrusted_workers == 1
            assert "Results from 1\u00a0untrusted worker." in job.stats.summary()
            (record,) = await cc.volunteers()
            assert record["identity"] == "alice" and record["revoked"] and record["tasks_done"] >= 1
            assert record["joined_at"] is not None
            listed = await asyncio.to_thread(cli, "workers", foreman.url, "--token", foreman.token)
            assert re.search(r"alice .* revoked", listed.stdout), listed.stdout

    arun(main(), timeout=50)
    assert alice.popen.wait(20) != 0, "a revoked worker must stop retrying and exit non-zero"
    alice.close()
    output = "\n".join(alice.lines)
    assert "AuthenticationError" in output and "revoked" in output, output
    foreman.proc.wait_for_line("credential of volunteer alice was revoked")
    again = start_worker(foreman.url, "--token", credential, "--name", "alice-again", wait=False)
    assert again.popen.wait(20) != 0, "a revoked credential must not rejoin"
    again.close()
    assert "AuthenticationError" in "\n".join(again.lines)
    assert credential not in "\n".join(foreman.proc.lines), "the foreman logged a credential"


def test_a_rogue_volunteer_stays_quarantined_under_a_new_name_and_after_a_restart(
    start_foreman, start_worker, tmp_path
):
    journal = str(tmp_path / "journal.sqlite3")
    foreman = start_foreman("--journal", journal, "--token", "admin-token")
    for n in range(2):
        start_worker(foreman.url, "--procs", "1", "--name", f"honest{n}", "--token", "admin-token")
    lies = lambda task: pickle.dumps(([-1] * task.count, {}), protocol=5)  # well-formed, wrong

    async def rogue_joins(url: str, credential: str, name: str, stop: asyncio.Event) -> asyncio.Task:
        rogue = asyncio.create_task(fake_worker(url, credential, lies, stop, name=name))
        async with CrowdComputeClient(url, token="admin-token") as cc:

            async def joined():
                return name in await named_workers(cc)

            await wait_until(joined, 20, f"{name} never joined")
            return rogue, (await named_workers(cc))[name]

    async def first_life():
        async with CrowdComputeClient(foreman.url, token="admin-token") as cc:
            credential, _ = await cc.invite("mallory")
            stop = asyncio.Event()
            rogue, _ = await rogue_joins(foreman.url, credential, "rogue1", stop)
            squares = await cc.map(lambda x: x * x, range(12), chunksize=1, redundancy=3)
            assert squares == [x * x for x in range(12)]
            shown = (await named_workers(cc))["rogue1"]
            assert shown["quarantined"] and shown["identity"] == "mallory", shown
            stop.set()
            await rogue
            stop = asyncio.Event()
            rogue, shown = await rogue_joins(foreman.url, credential, "rogue2", stop)
            assert shown["quarantined"] and shown["disagreed"] >= 3, shown  # a new name is no clean record
            stop.set()
            await rogue
            return credential

    credential = arun(first_life(), timeout=50)
    assert foreman.proc.stop() == 0
    restarted = start_foreman("--journal", journal, "--token", "admin-token")

    async def second_life():
        stop = asyncio.Event()
        rogue, shown = await rogue_joins(restarted.url, credential, "rogue3", stop)
        stop.set()
        await rogue
        assert shown["quarantined"] and shown["identity"] == "mallory", shown

    arun(second_life(), timeout=30)
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("journal.sqlite3*") if path.is_file())
    assert credential.encode() not in stored, "the journal holds a credential, not only its digest"


def test_a_crafted_pickle_from_a_volunteer_cannot_run_code_in_the_client(foreman, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (exec, (f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')",))

    crafted = lambda task: pickle.dumps(([Exploit()] * task.count, {}), protocol=5)

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            credential, _ = await cc.invite("eve")
            stop = asyncio.Event()
            rogue = asyncio.create_task(fake_worker(foreman.url, credential, crafted, stop, name="eve"))
            try:
                job = await cc.submit(abs, [1, 2])
                with pytest.raises(UntrustedPayloadError, match="not plain data"):
                    await job
                assert not marker.exists(), "a volunteer's result ran code in the client"
                assert job.stats.untrusted_workers == 1
                status, _, body = http_request(
                    f"http://127.0.0.1:{foreman.port}/api/status", {"Authorization": f"Bearer {foreman.token}"}
                )
                assert status == 200
                shown = json.loads(body)
                assert {w["identity"]: w["quarantined"] for w in shown["workers"]} == {"eve": False}
                assert [j["untrusted_workers"] for j in shown["jobs"] if j["id"] == job.id] == [1]
                # The check can fail: opting in unpickles the same bytes, and the code runs.
                assert await cc.map(abs, [1], trust_workers=True) == [None]
                assert marker.exists()
            finally:
                stop.set()
                await rogue

    arun(main(), timeout=40)


def test_granted_slots_end_to_end(start_foreman):
    foreman = start_foreman("--max-slots-per-worker", "4")

    async def main():
        hello = p.Hello("worker", foreman.token, p.PROTOCOL_VERSION, name="greedy", slots=100_000, **runtime_fields())
        ws, welcome = await dial(parse_address(foreman.url), hello)
        assert "the foreman grants it 4 of its 100000 slots" in welcome.notice  # the worker prints it
        try:
            async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
                job = await cc.submit(abs, range(100), chunksize=1)

                def leased() -> list:
                    status, _, body = http_request(
                        f"http://127.0.0.1:{foreman.port}/api/status", {"Authorization": f"Bearer {foreman.token}"}
                    )
                    return json.loads(body)["workers"]

                await wait_until(lambda: len(leased()[0]["tasks"]) >= 6, 20, "the greedy worker got too few tasks")
                await cc.status()  # after every task of the job: the foreman handled them all, in order
                (greedy,) = leased()
                # 4 slots and a prefetch: 2 before its round trip is measured, 4 (one a slot) after.
                assert greedy["slots"] == 4 and len(greedy["tasks"]) in (6, 8), greedy
                job.cancel()
        finally:
            await ws.close()

    arun(main(), timeout=40)


def test_a_task_waiting_for_a_distinct_worker_says_so_and_times_out(foreman, start_worker):
    start_worker(foreman.url, "--procs", "2", "--name", "alone")

    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            job = await cc.submit(abs, [-1, -2], chunksize=1, redundancy=2, quorum_timeout=8)  # time to read the wait
            await wait_until(lambda: "needs 1 more distinct worker" in job.waiting, 20, "no waiting notice")
            assert re.fullmatch(r"task \d needs 1 more distinct worker( \(and 1 more tasks\))?", job.waiting)
            assert job.waiting in job.stats.summary()
            shown = await asyncio.to_thread(cli, "status", foreman.url, "--token", foreman.token)
            assert "needs 1 more distinct worker" in shown.stdout, shown.stdout
            with pytest.raises(QuorumError, match=r"no 2 agreeing outcomes within quorum_timeout=8 s"):
                await job
            with pytest.raises(ValueError, match="quorum must be 1 to redundancy"):
                await cc.map(abs, [1], redundancy=2, quorum=3)

    arun(main(), timeout=40)


def test_volunteer_records_are_journaled_without_the_credential():
    s = make()
    s.add_client("c1")
    actions = s.invite_volunteer("c1", p.InviteVolunteer("alice", slots=2))
    (saved,) = [a for a in actions if isinstance(a, SaveVolunteer)]
    (reply,) = [a.message for a in actions if isinstance(getattr(a, "message", None), p.VolunteersReply)]
    credential = reply.answer["credential"]
    assert credential.startswith("ccv1_") and credential not in repr(saved)
    assert all(credential not in a.text for a in actions if isinstance(a, Note))
    refused = s.invite_volunteer("c1", p.InviteVolunteer("alice"))
    assert "already has a valid credential" in refused[0].message.answer["error"]


def test_invite_options_are_checked_before_anything_is_sent():
    from crowdcompute.volunteers import parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "30m", "12h", "7d", "2w")] == [
        90,
        90,
        1800,
        43200,
        604800,
        1209600,
    ]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    refused = cli("invite", "alice", "ws://127.0.0.1:1", "--expires", "soon")
    assert refused.returncode == 2 and "--expires: 'soon' is not a duration" in refused.stderr
    # Refused here, not by the foreman (none listens at port 1): a name it would refuse, --slots below 1.
    refused = cli("invite", "", "ws://127.0.0.1:1")
    assert refused.returncode == 2 and "error: an empty name is not a volunteer name: use 1 to 64" in refused.stderr
    refused = cli("invite", "bad name", "ws://127.0.0.1:1")
    assert refused.returncode == 2 and "error: 'bad name' is not a volunteer name" in refused.stderr
    refused = cli("invite", "alice", "ws://127.0.0.1:1", "--slots", "0")
    assert refused.returncode == 2, refused
    assert "error: --slots must be at least 1, not 0 (leave it out for the foreman's maximum)" in refused.stderr


def test_only_results_from_trusted_workers_are_unpickled_unless_the_job_opts_in():
    from collections import OrderedDict

    from crowdcompute.job_state import JobMachine

    payload = pickle.dumps(([OrderedDict(a=1)], {}), protocol=5)  # not plain data: it imports collections

    def outcome(job_trust, from_trusted: bool):
        machine = JobMachine("j", [0], trusted=job_trust)
        machine.handle(p.TaskResult("j", 0, 0, 1, 0, payload, worker="w", trusted=from_trusted))
        return machine.errors.get(0) or machine.results[0]

    assert outcome(None, True) == OrderedDict(a=1)  # the default: trusted workers' results unpickle
    assert isinstance(outcome(None, False), UntrustedPayloadError)  # ... untrusted ones are plain data only
    assert outcome(True, False) == OrderedDict(a=1)  # trust_workers=True opts in
    assert isinstance(outcome(False, True), UntrustedPayloadError)  # trust_workers=False: nobody is trusted


def test_quorum_k_of_k_needs_every_run_and_a_task_short_of_workers_says_so():
    from scheduler_events import Clock

    clock = Clock()
    s = make(clock=clock)
    s.add_client("c1")
    for name in ("a", "b", "c"):
        s.add_worker(name, name, 1)
    actions = s.submit_job("c1", p.SubmitJob("j1", b"f", 1, 1, redundancy=3, quorum=3, quorum_timeout=5))
    actions += s.submit_task("c1", p.SubmitTask("j1", 0, 0, 1, b"in"))
    runs = {a.to: a.message.attempt for a in actions if isinstance(getattr(a, "message", None), p.AssignTask)}
    assert sorted(runs) == ["a", "b", "c"]
    s.task_done("a", p.TaskDone("j1", 0, runs["a"], 0, b"same"))
    after_two = s.task_done("b", p.TaskDone("j1", 0, runs["b"], 0, b"same"))
    assert not [a for a in after_two if isinstance(getattr(a, "message", None), p.TaskResult)]  # 2 of 3 is not 3
    s.task_done("c", p.TaskDone("j1", 0, runs["c"], 0, b"other"))  # no quorum: a fresh round, but no fresh worker
    waiting = [a.message for a in s.tick() if isinstance(getattr(a, "message", None), p.JobWaiting)]
    assert waiting == [p.JobWaiting("j1", "task 0 needs 3 more distinct workers")]
    assert s.status()["jobs"][0]["waiting"] == "task 0 needs 3 more distinct workers"
    clock.now += 5
    (failed,) = [a.message for a in s.tick() if isinstance(a, Send) and isinstance(a.message, p.TaskFailed)]
    assert failed.error == "disagreement" and "no 3 agreeing outcomes within quorum_timeout=5 s" in failed.reason
