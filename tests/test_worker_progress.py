"""A task process reports items done within a task: a few times a second on slow items, never on
fast ones (no extra message), and a first failure at once (pure: a fake clock and a fake pipe)."""

from __future__ import annotations

from worker import child
from worker.child import PROGRESS_INTERVAL, _Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress_with(monkeypatch, first_index: int = 0) -> tuple[_Progress, list, FakeClock]:
    clock = FakeClock()
    monkeypatch.setattr(child.time, "monotonic", clock)
    sent: list = []

    class Pipe:
        def send(self, message) -> None:
            sent.append(message)

    return _Progress(Pipe(), first_index), sent, clock


def test_fast_items_send_nothing(monkeypatch):
    progress, sent, clock = progress_with(monkeypatch)
    for offset in range(10_000):
        clock.now += 1e-6
        progress.item(offset, {})
    assert sent == []


def test_slow_items_are_reported_at_most_every_interval(monkeypatch):
    progress, sent, clock = progress_with(monkeypatch)
    for offset in range(40):  # one item every 0.1 s for 4 s
        progress.item(offset, {})
        clock.now += 0.1
    done = [message[1] for message in sent]
    gaps = [b - a for a, b in zip(done, done[1:], strict=False)]  # items are 0.1 s apart
    assert len(sent) >= 10 and min(gaps) * 0.1 >= PROGRESS_INTERVAL, sent
    assert done == sorted(done) and all(message[2:] == (0, "", -1) for message in sent)


def test_a_first_failure_is_reported_at_once_with_its_error(monkeypatch):
    progress, sent, clock = progress_with(monkeypatch, first_index=100)
    errors: dict = {}
    progress.item(0, errors)
    progress.item(1, errors)
    errors[1] = {"type": "ValueError", "message": "bad input"}
    progress.item(2, errors)  # right after the failure, well within the interval
    assert sent == [("progress", 2, 1, "ValueError: bad input", 101)]
    errors[2] = {"type": "ValueError", "message": "again"}
    progress.item(3, errors)  # later failures wait for the interval
    assert len(sent) == 1
    clock.now += PROGRESS_INTERVAL
    progress.item(4, errors)
    assert sent[-1] == ("progress", 4, 2, "", -1)
