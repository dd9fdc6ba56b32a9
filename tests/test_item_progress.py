"""Items finished inside running tasks, on the client (pure: JobMachine and ProgressModel, a fake clock)."""

from __future__ import annotations

from test_job_state import Clock, machine, result

from crowdcompute.errors import JobCancelledError
from crowdcompute.job import Job
from crowdcompute.job_state import Cancel, Changed
from crowdcompute.progress import ProgressModel
from crowdcompute.rate import RateMeter
from crowdcompute.wire import messages as p


def progress(task_id: int, done: int, failed: int = 0, error: str = "", error_index: int = -1) -> p.TaskProgress:
    return p.TaskProgress("j1", task_id, done, failed, error, error_index)


def test_reports_count_items_until_their_task_arrives():
    m = machine(items=range(8))
    assert m.handle(progress(0, 2)) == [Changed()]
    assert m.handle(progress(1, 1)) == [Changed()]
    assert (m.in_progress, m.completed) == (3, 0)
    assert m.handle(progress(0, 1)) == []  # an older report, overtaken: ignored
    m.handle(result(0, 0, [0, 1, 2, 3]))
    assert (m.in_progress, m.completed) == (1, 4)
    assert m.handle(progress(0, 3)) == []  # a report that crossed its outcome: ignored
    assert m.in_progress == 1


def test_a_failure_reported_early_is_named_at_once():
    m = machine(items=range(8))
    m.handle(progress(0, 2, failed=1, error="ValueError: bad 1", error_index=1))
    assert (m.in_progress, m.in_progress_failed, m.early_error) == (2, 1, (1, "ValueError: bad 1"))


def test_a_cancelled_job_keeps_its_finished_results_and_marks_the_others():
    m = machine(items=range(4))
    m.handle(result(0, 0, [10, 11]))
    m.handle(progress(1, 1))
    m.handle(Cancel())
    partial = m.partial_outcomes()
    assert partial[:2] == [10, 11]
    assert all(isinstance(x, JobCancelledError) and x.job_id == "j1" for x in partial[2:])


def test_the_model_moves_per_item_and_its_rate_comes_from_the_items():
    clock = Clock()
    job = Job("j1", list(range(10)))
    model = ProgressModel(job.total, started=clock.now, meter=RateMeter(started=clock.now, clock=clock))
    for n in range(1, 5):  # one item a second, inside one task
        clock.now += 1.0
        job.handle(progress(0, n, failed=1 if n > 2 else 0))
        model.update(job)
    assert (model.done, model.failed) == (3, 1)  # inside a task that has not ended
    assert model.rate == 1.0 and model.time_left == 6.0
