"""benchmarks.timeline: a map's time split from its items' own clocks (pure arithmetic, no processes)."""

from __future__ import annotations

from dataclasses import astuple

import pytest

from benchmarks.timeline import Breakdown, breakdown, medians


def test_a_maps_time_is_split_into_its_start_the_slowest_slots_run_and_its_end():
    called = 1000.0
    items = [  # (process, start, end) of 0.05 s sleeps on two slots; slot 2 starts later and ends last
        (1, 1000.100, 1000.1502),
        (1, 1000.1505, 1000.2006),
        (2, 1000.104, 1000.1543),
        (2, 1000.1553, 1000.2056),
    ]
    found = breakdown(called, 1000.3066, items, 0.05)
    assert astuple(found) == pytest.approx((100.0, 104.0, 0.6, 1.0, 205.6, 101.0), abs=1e-6)


def test_medians_take_each_figure_on_its_own():
    maps = [Breakdown(1, 2, 3, 4, 5, 6), Breakdown(3, 1, 9, 4, 5, 0), Breakdown(2, 9, 6, 4, 5, 7)]
    assert medians(maps) == Breakdown(2, 2, 6, 4, 5, 6)
