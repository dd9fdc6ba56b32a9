"""The journal: what a foreman killed at any moment finds again when it restarts."""

from __future__ import annotations

import sqlite3

import pytest

from crowdcompute.wire import messages as p
from foreman.journal import Journal
from foreman.scheduler import Scheduler
from foreman.state import Replay, Send


def apply(journal: Journal, actions) -> list:
    """Apply the scheduler's records to the journal, as the server does; return the rest."""
    rest = []
    for action in actions:
        if isinstance(action, (Send, Replay)):
            rest.append(action)
        else:
            journal.apply(action)
    journal.flush()  # the journal writes in its own thread: wait until this batch is on disk
    return rest


def start_job(scheduler: Scheduler, journal: Journal, tasks: int) -> None:
    scheduler.add_client("c1")
    apply(journal, scheduler.submit_job("c1", p.SubmitJob("j1", b"FUNC", tasks, tasks)))
    for n in range(tasks):
        apply(journal, scheduler.submit_task("c1", p.SubmitTask("j1", n, n, 1, b"IN%d" % n)))


def finish_one_and_die(scheduler: Scheduler, journal: Journal, slots: int) -> p.AssignTask:
    """A worker joins and finishes one task; then the foreman dies (all it committed is on disk;
    see the fault tests for a real SIGKILL). The task that finished."""
    actions = apply(journal, scheduler.add_worker("w1", "one", slots))
    done = [a.message for a in actions if isinstance(a.message, p.AssignTask)][0]
    apply(journal, scheduler.task_done("w1", p.TaskDone("j1", done.task_id, done.attempt, 0, b"OUT")))
    journal.close()
    return done


def restart(path) -> tuple[Journal, Scheduler, list]:
    """A new foreman on the journal at ``path``: (journal, scheduler, what restoring asked to send)."""
    journal = Journal(path)
    scheduler = Scheduler(journaled=True)
    jobs, ended = journal.load()
    assert ended == [] and [job.job_id for job in jobs] == ["j1"]
    return journal, scheduler, apply(journal, scheduler.restore(jobs, ended))


def test_a_restarted_foreman_resumes_unfinished_tasks_and_replays_outcomes(tmp_path):
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    first = Scheduler(journaled=True)
    start_job(first, journal, tasks=3)
    done = finish_one_and_die(first, journal, slots=1)
    journal, second, restored = restart(path)
    assert restored == []
    job = second.jobs["j1"]
    assert job.accepted and job.finished_tasks == 1 and job.completed_items == 1
    actions = apply(journal, second.add_worker("w2", "two", 4))
    reassigned = sorted(a.message.task_id for a in actions if isinstance(a.message, p.AssignTask))
    assert reassigned == sorted({0, 1, 2} - {done.task_id})
    frames = list(journal.outcome_frames("j1"))
    assert [p.decode(f).payload for f in frames] == [b"OUT"]
    assert apply(journal, second.attach_job("c9", "j1"))[-1] == Replay("c9", "j1")
    journal.close()


def test_an_outcome_frees_the_stored_input_and_a_purge_removes_everything(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    clock = [1000.0]
    scheduler = Scheduler(journaled=True, result_ttl=60, clock=lambda: clock[0])
    start_job(scheduler, journal, tasks=1)
    (assign,) = [
        a.message for a in apply(journal, scheduler.add_worker("w1", "one", 1)) if isinstance(a.message, p.AssignTask)
    ]
    apply(journal, scheduler.task_done("w1", p.TaskDone("j1", 0, assign.attempt, 0, b"OUT")))
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    assert db.execute("SELECT payload FROM tasks").fetchall() == [(None,)]
    assert db.execute("SELECT state FROM jobs").fetchall() == [("done",)]
    clock[0] += 61
    apply(journal, scheduler.expire())  # finished and uncollected: archived first
    apply(journal, scheduler.expire())
    for table in ("jobs", "tasks", "outcomes"):
        assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)
    db.close()
    journal.close()


def test_ended_jobs_come_back_as_summaries_that_can_be_replayed(tmp_path):
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    scheduler = Scheduler(journaled=True)
    start_job(scheduler, journal, tasks=1)
    (assign,) = [
        a.message for a in apply(journal, scheduler.add_worker("w1", "one", 1)) if isinstance(a.message, p.AssignTask)
    ]
    apply(journal, scheduler.task_done("w1", p.TaskDone("j1", 0, assign.attempt, 0, b"OUT")))
    journal.close()

    journal = Journal(path)
    restarted = Scheduler(journaled=True)
    restarted.restore(*journal.load())
    actions = restarted.attach_job("c2", "j1")
    assert actions[0] == Send("c2", p.JobAttached("j1", 1, 1, "done", "", finished_items=1))
    assert actions[1] == Replay("c2", "j1")
    journal.close()


@pytest.mark.parametrize("in_pieces", [False, True], ids=["joined", "in pieces"])
def test_big_payloads_live_in_files_beside_the_journal_and_go_with_their_job(tmp_path, in_pieces):
    from foreman.journal import BLOB_FILE_THRESHOLD

    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    clock = [1000.0]
    scheduler = Scheduler(journaled=True, result_ttl=60, clock=lambda: clock[0])
    big = bytes(range(256)) * (BLOB_FILE_THRESHOLD // 256 + 1)
    # The foreman keeps a payload in the fragments it arrived in; the journal writes them as they are.
    sent = p.Pieces([memoryview(big)[n : n + 100_000] for n in range(0, len(big), 100_000)]) if in_pieces else big
    scheduler.add_client("c1")
    apply(journal, scheduler.submit_job("c1", p.SubmitJob("../../evil", b"FUNC", 2, 2)))
    for n in range(2):
        apply(journal, scheduler.submit_task("c1", p.SubmitTask("../../evil", n, n, 1, sent)))
    assert sorted(f.suffix for f in journal.blobs.iterdir()) == [".in", ".in"]  # hashed names, never the job id
    assert all(f.parent == journal.blobs for f in journal.blobs.iterdir())
    (first, _) = [
        a.message for a in apply(journal, scheduler.add_worker("w1", "one", 1)) if isinstance(a.message, p.AssignTask)
    ]
    apply(journal, scheduler.task_done("w1", p.TaskDone("../../evil", first.task_id, first.attempt, 0, sent)))
    assert sorted(f.suffix for f in journal.blobs.iterdir()) == [".in", ".out"]  # the finished input is gone
    journal.close()

    journal = Journal(path)
    jobs, ended = journal.load()
    (job,) = jobs
    waiting = [t for t in job.tasks.values() if t.payload is not None]
    assert len(waiting) == 1 and bytes(waiting[0].payload) == big
    (frame,) = journal.outcome_frames("../../evil")
    assert bytes(p.decode(frame).payload) == big
    restarted = Scheduler(journaled=True, result_ttl=60, clock=lambda: clock[0])
    apply(journal, restarted.restore(jobs, ended))
    apply(journal, restarted.cancel_job("c1", "../../evil"))
    clock[0] += 61
    apply(journal, restarted.expire())
    assert list(journal.blobs.iterdir()) == []
    journal.close()


def test_what_a_job_needs_survives_a_restart_and_older_journals_gain_the_column(tmp_path):
    path = tmp_path / "journal.sqlite3"
    old = sqlite3.connect(path)  # a journal written before jobs had needs
    old.execute(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, function BLOB NOT NULL, total_tasks INTEGER NOT NULL,"
        " total_items INTEGER NOT NULL, task_timeout REAL, retries INTEGER NOT NULL, name TEXT NOT NULL,"
        " redundancy INTEGER NOT NULL DEFAULT 1, serializer TEXT NOT NULL DEFAULT 'cloudpickle', state TEXT NOT NULL,"
        " created_at REAL NOT NULL, finished_at REAL, completed INTEGER NOT NULL DEFAULT 0,"
        " failed INTEGER NOT NULL DEFAULT 0)"
    )
    old.commit()
    old.close()
    journal = Journal(path)
    first = Scheduler(journaled=True)
    first.add_client("c1")
    needs = {"resources": {"gpu": 1}, "labels": {"site": "lab1"}, "requirements": ["tinypkg==1.0"]}
    apply(journal, first.submit_job("c1", p.SubmitJob("j1", b"FUNC", 1, 1, **needs)))
    journal.close()

    journal = Journal(path)
    (job,), _ = journal.load()
    assert (job.resources, job.labels, job.requirements) == ({"gpu": 1.0}, {"site": "lab1"}, ["tinypkg==1.0"])


def test_tasks_cut_for_joining_workers_are_resumed_whole_after_a_restart(tmp_path):
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    first = Scheduler(journaled=True)
    first.add_client("c1")
    apply(journal, first.submit_job("c1", p.SubmitJob("j1", b"FUNC", 2, 40)))
    for n in range(2):  # two tasks of 20 one-item pieces: cut when workers join
        payload = b"".join(b"<%02d>" % i for i in range(20 * n, 20 * n + 20))
        apply(journal, first.submit_task("c1", p.SubmitTask("j1", n, 20 * n, 20, payload, [[1, 4]] * 20)))
    done = finish_one_and_die(first, journal, slots=2)
    assert len(first.jobs["j1"].tasks) > 2, "the tasks were not cut"
    journal, second, _ = restart(path)
    job = second.jobs["j1"]
    assert job.accepted and job.finished_tasks == 1 and job.total_tasks == len(job.tasks)
    assert sorted((t.first_index, t.count) for t in job.tasks.values()) == sorted(
        (t.first_index, t.count) for t in first.jobs["j1"].tasks.values()
    )
    actions = apply(journal, second.add_worker("w2", "two", 64))
    handed = [a.message for a in actions if isinstance(a.message, p.AssignTask)]
    covered = sorted(i for m in handed for i in range(m.first_index, m.first_index + m.count))
    assert covered == sorted(set(range(40)) - set(range(done.first_index, done.first_index + done.count)))
    for m in handed:
        assert bytes(m.payload) == b"".join(b"<%02d>" % i for i in range(m.first_index, m.first_index + m.count))
    journal.close()


def test_the_foreman_waits_for_room_while_the_disk_is_behind(tmp_path, monkeypatch):
    # Payload files queued for the journal's thread count against a backlog limit: past it the
    # foreman stops reading frames until they are written, so a slow disk cannot grow its memory.
    import asyncio
    import threading

    import foreman.journal as journal_module
    from foreman.journal import BLOB_FILE_THRESHOLD
    from foreman.state import SaveTask, Task

    monkeypatch.setattr(journal_module, "MAX_BACKLOG_BYTES", BLOB_FILE_THRESHOLD)
    journal = Journal(tmp_path / "journal.sqlite3")
    disk = threading.Event()
    journal._requests.put(("call", (lambda db: disk.wait(10), (), lambda value, error: None)))  # a stuck disk
    big = bytes(BLOB_FILE_THRESHOLD + 1)

    async def main():
        await asyncio.wait_for(journal.wait_for_room(), 5)  # nothing queued: room
        journal.apply(SaveTask("j1", Task(0, 0, 1, big)))
        waiting = asyncio.ensure_future(journal.wait_for_room())
        # The disk is stuck: it must still wait (a wrong answer returns at once).
        done, _ = await asyncio.wait([waiting], timeout=0.2)
        assert not done, "the foreman read on although the journal is behind"
        disk.set()
        await asyncio.wait_for(waiting, 5)

    asyncio.run(main())
    journal.close()


def test_the_journal_and_its_folder_are_this_users_only(tmp_path):
    """It holds jobs' inputs and results: created under a usual umask it was readable by every user."""
    import os
    import stat

    def mode(path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    old = os.umask(0o022)
    try:
        path = tmp_path / "home" / "journal.sqlite3"
        journal = Journal(path)
        start_job(Scheduler(journaled=True), journal, tasks=2)
        journal.close()
        written = [name for name in path.parent.iterdir() if name.name.startswith(path.name) and name.is_file()]
        assert path in written
        assert mode(path.parent) == 0o700
        assert {name.name: mode(name) for name in written} == {name.name: 0o600 for name in written}
        # A journal an older version left readable by all is made private when opened.
        os.chmod(path, 0o644)
        Journal(path).close()
        assert mode(path) == 0o600
    finally:
        os.umask(old)
