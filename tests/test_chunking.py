"""Automatic chunks follow the crowd there is when work is handed out: pieces, and a real crowd that grows."""

from __future__ import annotations

import pickle
from collections import Counter

from helpers import arun

from crowdcompute import CrowdComputeClient
from crowdcompute.codecs.pickled import dumps_pieced_chunks, loads_items


def test_pieced_chunks_read_back_whole_and_cut_anywhere_between_pieces():
    items = [{"n": n, "s": "x" * n} for n in range(103)]
    chunks = dumps_pieced_chunks(items, size=26, piece=4, limit=10**6)
    assert [c[1] for c in chunks] == [24, 24, 24, 24, 7]  # whole pieces of 4, at most 26 items
    for first, count, payload, pieces in chunks:
        assert loads_items(payload) == items[first : first + count]
        assert pieces is None or sum(size for _, size in pieces) == len(payload)
        cut = pieces[0][1] if pieces else 0
        if pieces:  # any piece boundary is a valid cut
            assert loads_items(payload[:cut]) + loads_items(payload[cut:]) == items[first : first + count]
    assert loads_items(pickle.dumps([1, 2])) == [1, 2]  # one pickle (explicit chunksize) reads as before


def test_oversized_pieces_respect_the_frame_limit():
    items = [b"y" * 300 for _ in range(10)]
    chunks = dumps_pieced_chunks(items, size=10, piece=5, limit=1000)
    assert all(len(payload) <= 1000 for _, _, payload, _ in chunks)
    assert [x for _, _, payload, _ in chunks for x in loads_items(payload)] == items


def _slow_double(x):
    import time

    time.sleep(0.01)
    return 2 * x


#: Workers that join after the client mapped.
LATE_WORKERS = 4


def test_workers_that_join_after_the_map_share_it(foreman, start_worker):
    async def main():
        async with CrowdComputeClient(foreman.url, token=foreman.token) as cc:
            assert cc.slots == 0
            job = await cc.submit(_slow_double, range(400))  # chunked for no slot: 4 tasks of 100
            for n in range(LATE_WORKERS):
                start_worker(foreman.url, "--procs", "1", "--name", f"late{n}", wait=False)
            assert await job == [2 * x for x in range(400)]
            per_worker = Counter()
            for timing in job.timings:
                per_worker[timing.worker] += timing.count
            assert len(job.timings) > 4, "the client's 4 chunks were never cut for the workers that joined"
            # How many workers joined in time depends on how fast processes start here.
            assert len(per_worker) >= 2, f"one worker ran the whole map: {dict(per_worker)}"

    arun(main(), timeout=50)


def test_a_task_cut_by_the_foreman_is_finished_only_when_all_its_parts_are():
    from crowdcompute.feed import Feed
    from crowdcompute.wire import messages as p

    sent: list = []
    tasks = [p.SubmitTask("j", n, 10 * n, 10, b"x" * 10) for n in range(3)]
    feed = Feed(p.SubmitJob("j", b"f", 3, 30), tasks, sent.append, max_queued_tasks=2, max_queued_bytes=10**6)
    feed.start()
    assert [m.task_id for m in sent if isinstance(m, p.SubmitTask)] == [0, 1]
    feed.finished(0, 0, 4)  # task 0's first part (the foreman cut it: its other part has id 3)
    feed.finished(0, 0, 4)  # replayed after a reconnect: counted once
    assert feed.sent == 2, "a part of a task must not make room for the next task"
    feed.finished(3, 4, 6)
    assert feed.sent == 3 and not feed.complete
    sent.clear()
    feed.resend()  # after a reconnect: only the tasks with items still missing
    assert [m.task_id for m in sent if isinstance(m, p.SubmitTask)] == [1, 2]
    feed.finished(1, 10, 10)
    feed.finished(2, 20, 10)
    assert feed.complete


def test_a_job_goes_out_with_a_task_per_slot_and_its_other_tasks_a_turn_later():
    """The foreman reads a whole frame before it leases from it: the first frame holds a task for
    each slot of the crowd (at most FIRST_TASKS), so that every slot starts after a short read."""
    import asyncio

    from crowdcompute.feed import FIRST_TASKS, Feed
    from crowdcompute.wire import messages as p

    async def first_frame(slots: int, tasks: int = 100) -> tuple[int, int]:
        sent: list = []
        submit = p.SubmitJob("j", b"f", tasks, tasks)
        made = [p.SubmitTask("j", n, n, 1, b"x") for n in range(tasks)]
        feed = Feed(submit, made, sent.append, max_queued_tasks=10**4, max_queued_bytes=10**6, slots=slots)
        feed.start()
        now = len(sent)
        await asyncio.sleep(0)  # the next turn of the loop
        return now, len(sent)

    assert asyncio.run(first_frame(3)) == (1 + 3, 1 + 100)
    assert asyncio.run(first_frame(0)) == (1 + 1, 1 + 100)  # no slots yet: the job, and one task
    assert asyncio.run(first_frame(10_000, 200)) == (1 + FIRST_TASKS, 1 + 200)
