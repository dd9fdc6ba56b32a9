"""Where a map's time goes, read from its items' own clocks (benchmarks.latency).

Each item records its process and when it started and ended (``stamp``);
with the time the client called ``map`` and the time it had every result,
that splits a map into its start (the first item, and the last slot's
first), the slowest slot's run (its sleeps' late wake-ups and the gaps
between its items) and its end (the last result's way back to the client).
Every process here runs on one machine, so one clock serves them all.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from dataclasses import astuple, dataclass

__all__ = ["Breakdown", "breakdown", "medians", "stamp"]


def stamp(seconds: float) -> tuple[int, float, float]:
    """Sleep ``seconds``: (this process, when the sleep began, when it ended), as time.time()."""
    import os
    import time

    began = time.time()
    time.sleep(seconds)
    return os.getpid(), began, time.time()


@dataclass(frozen=True)
class Breakdown:
    """One map, in milliseconds after the client called it."""

    first: float  # the first item started
    last_first: float  # the slot that started last started
    late: float  # the slowest slot (the one that ended last): its sleeps' overshoot, summed
    gaps: float  # the slowest slot: time between the end of one of its items and the start of the next, summed
    last_end: float  # the last item ended
    back: float  # from the last item's end to every result in the client


def breakdown(called: float, finished: float, items: list[tuple[int, float, float]], seconds: float) -> Breakdown:
    """``items`` as ``stamp`` returned them for a map of ``seconds`` sleeps called at ``called``
    and whose results were all in at ``finished`` (time.time())."""
    slots: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for pid, began, ended in items:
        slots[pid].append((began, ended))
    runs = [sorted(run) for run in slots.values()]
    slowest = max(runs, key=lambda run: run[-1][1])
    late = sum(ended - began - seconds for began, ended in slowest)
    gaps = sum(nxt[0] - prev[1] for prev, nxt in itertools.pairwise(slowest))
    last_end = slowest[-1][1]
    return Breakdown(
        *(
            1000 * value
            for value in (
                min(run[0][0] for run in runs) - called,
                max(run[0][0] for run in runs) - called,
                late,
                gaps,
                last_end - called,
                finished - last_end,
            )
        )
    )


def medians(found: list[Breakdown]) -> Breakdown:
    """Each figure's median over several maps."""
    return Breakdown(*(statistics.median(values) for values in zip(*map(astuple, found), strict=True)))
