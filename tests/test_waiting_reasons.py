"""Pure tests: a job no connected worker can take says why, naming the real obstacle. No sockets, no processes."""

from __future__ import annotations

from scheduler_events import function, make, sent

from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import Serializer
from foreman.assignment import waiting_reason


def crowd(*workers: dict):
    """A scheduler with client "c1" and workers w1, w2... made with these add_worker keywords."""
    s = make()
    s.add_client("c1")
    for n, options in enumerate(workers, 1):
        s.add_worker(f"w{n}", f"worker-{n}", 1, **options)
    return s


def submit_needing(s, **needs) -> str:
    """Submit job j1 with these needs; the notice its client heard."""
    msg = p.SubmitJob("j1", function("j1"), 1, 1, ack=False, **needs)
    notices = [m.reason for _, m in sent(s.submit_job("c1", msg)) if isinstance(m, p.JobWaiting)]
    return notices[-1] if notices else ""


def test_workers_with_the_labels_but_no_install_are_named_as_the_obstacle():
    s = crowd({"labels": {"noinst": "1"}, "installs": False})
    told = submit_needing(s, labels={"noinst": "1"}, requirements=["six"])
    assert told == "waiting: the connected workers with noinst=1 install no packages (they run with --no-install)"
    assert submit_needing(crowd({"installs": False}), requirements=["six"]) == (
        "waiting: the connected workers install no packages (they run with --no-install)"
    )


def test_labels_and_resources_no_worker_has_are_named():
    s = crowd({"labels": {"site": "lab2"}}, {"resources": {"gpu": 1.0}, "installs": False})
    assert submit_needing(s, labels={"site": "lab1"}, requirements=["six"]) == (
        "waiting: no connected worker has site=lab1"
    )
    s = crowd({"resources": {"gpu": 1.0}})
    assert submit_needing(s, resources={"gpu": 2.0}) == "waiting: no connected worker has gpu=2"


def test_portable_only_and_unbuildable_workers_with_the_labels_say_so():
    s = crowd({"resources": {"gpu": 1.0}, "portable_only": True})
    assert submit_needing(s, resources={"gpu": 1.0}) == (
        "waiting: every connected worker with gpu=1 runs portable jobs only (submit with serializer='portable')"
    )
    s = crowd({"labels": {"site": "lab1"}}, {"labels": {"site": "lab1"}})
    submit_needing(s, labels={"site": "lab1"}, requirements=["six"], serializer=Serializer.PORTABLE)
    job = s.jobs["j1"]
    job.unbuildable.update({"w1": "no six", "w2": "no six"})
    assert waiting_reason(s.workers, job) == "waiting: no connected worker with site=lab1 could build its environment"


def test_workers_kept_away_by_different_obstacles_are_counted():
    lab = {"site": "lab1"}
    s = crowd(
        {"labels": lab, "installs": False},
        {"labels": lab, "portable_only": True},
        {"labels": lab, "installs": False},
        {"labels": {"site": "lab2"}},
    )
    assert submit_needing(s, labels=lab, requirements=["six"]) == (
        "waiting: no connected worker with site=lab1 can take it: 2 with --no-install, 1 for portable jobs only"
    )
    s.add_worker("w9", "able", 1, labels=lab)
    assert waiting_reason(s.workers, s.jobs["j1"]) == ""
