"""Rate and time left from item completions (pure: a fake clock)."""

from __future__ import annotations

import pytest

from crowdcompute.rate import RateMeter


def test_items_one_by_one_give_their_rate_and_a_time_left_that_counts_down():
    meter = RateMeter(started=0.0, window=10.0)
    assert meter.rate(now=1.0) == 0.0 and meter.time_left(100, now=1.0) is None
    for n in range(1, 41):  # 2 items/s for 20 s
        meter.update(n, now=n / 2)
    assert meter.rate(now=20.0) == pytest.approx(2.0)
    left = [meter.time_left(60, now=t) for t in (20.0, 20.2, 20.4)]
    assert left[0] == pytest.approx(30.0) and left[0] > left[1] > left[2]


def test_chunks_do_not_make_a_sawtooth():
    """25 items every 12.5 s (2 items/s in chunks): between chunks the rate holds, and stays near 2."""
    meter = RateMeter(started=0.0, window=10.0)
    rates, lefts = [], []
    for chunk in range(1, 4):
        meter.update(25 * chunk, now=12.5 * chunk)
        for t in (0.5, 4.0, 8.0, 12.0):
            now = 12.5 * chunk + t
            rates.append(meter.rate(now=now))
            lefts.append(meter.time_left(100 - 25 * chunk, now=now))
    assert all(r == pytest.approx(2.0) for r in rates), rates
    for chunk in range(3):  # between two chunks the time left goes down, never up
        stretch = lefts[4 * chunk : 4 * chunk + 4]
        assert stretch == sorted(stretch, reverse=True), lefts


def test_the_rate_falls_when_reports_stop():
    meter = RateMeter(started=0.0, window=10.0)
    for n in range(1, 21):
        meter.update(n, now=float(n))  # 1 item/s
    assert meter.rate(now=20.5) == pytest.approx(1.0)
    assert meter.rate(now=26.0) < 0.6 and meter.rate(now=40.0) == 0.0
    assert meter.time_left(10, now=40.0) is None
