"""Which running slot may take the next task waiting at the agent: the one that will need it first.

A slot running a task may claim the task after it (``Slot.preload`` writes it
to the task process's pipe), so that it starts the moment the running one
ends. Claimed behind a long task, though, it waits there while another slot,
running a short one, runs out of work and idles until the foreman's next
lease: a round trip later (issue 12: at 50 ms one-way with automatic chunks,
a slot idled 50 ms after a 1-item task while its sibling held a 2-item task
behind a 3-item one).

So each running slot is given the time it is expected to need its next task
(:class:`Ends`): when it started its task, plus the items it holds (the running
task's and the claimed one's) times the job's pace on this worker (seconds
per item of its last task here; PRIOR_ITEM_SECONDS before one ended). A slot
may claim only while the tasks waiting, beyond those idle slots are about to
take, are enough for every running slot that will need one no later than it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

__all__ = ["PRIOR_ITEM_SECONDS", "Ends"]

#: Seconds an item is taken to last before a task of its job ended on this worker.
PRIOR_ITEM_SECONDS = 0.05


class Ends:
    """When each running slot is expected to need its next task (monotonic seconds)."""

    def __init__(self) -> None:
        self._ends: dict[int, float] = {}  # slot index -> when it will need its next task
        self._pace: dict[str, float] = {}  # job id -> seconds per item of its last task here

    def clear(self) -> None:
        self._ends.clear()
        self._pace.clear()

    def started(self, slot: int, job_id: str, items: int) -> None:
        """``slot`` starts a task of ``items`` items (a claimed one, or one taken from the queue)."""
        self._ends[slot] = time.monotonic() + self._seconds(job_id, items)

    def claimed(self, slot: int, job_id: str, items: int) -> None:
        """``slot``, running a task, claimed the next one: it needs a task that much later."""
        self._ends[slot] = self._ends.get(slot, time.monotonic()) + self._seconds(job_id, items)

    def stopped(self, slot: int) -> None:
        self._ends.pop(slot, None)

    def ended(self, job_id: str, items: int, seconds: float) -> None:
        """A task of ``items`` items of ``job_id`` took ``seconds`` here: the job's pace."""
        if items > 0 and seconds > 0:
            self._pace[job_id] = seconds / items

    def forget(self, job_id: str) -> None:
        self._pace.pop(job_id, None)

    def sooner(self, slot: int, running: Iterable[int]) -> int:
        """How many of the ``running`` slots (``slot`` among them) will need a task no later than ``slot``."""
        mine = self._ends.get(slot, float("inf"))
        return sum(1 for other in running if self._ends.get(other, float("inf")) <= mine)

    def first(self, slots: Iterable[int]) -> list[int]:
        """``slots``, the one that will need a task first, first."""
        return sorted(slots, key=lambda slot: self._ends.get(slot, float("inf")))

    def _seconds(self, job_id: str, items: int) -> float:
        return items * self._pace.get(job_id, PRIOR_ITEM_SECONDS)
