"""Items per second and time left, from item completions, steady enough to read.

A job reports items as they finish: one by one on slow maps (from the
workers' progress reports), a chunk at a time on fast ones. The rate is the
items finished over the last ``window`` seconds (all of the job's life while
it is younger than that), a chunk's items spread over the time since the
report before it. Between two reports the rate holds, and the time left
counts down, for as long as reports usually take to come; after that the
rate falls, since the clock runs and nothing finishes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["RATE_WINDOW", "RateMeter"]

#: Seconds of history the rate is measured over.
RATE_WINDOW = 10.0


class RateMeter:
    """Rate and time left of a count that grows, as of the clock's now."""

    def __init__(
        self, started: float | None = None, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.window = window
        self.started = clock() if started is None else started
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])  # (time, count), oldest first
        self.count = 0
        self._reports = 0  # updates so far (the samples are pruned; this is not)

    def update(self, count: int, now: float | None = None) -> None:
        """The count (items finished so far) is now ``count``."""
        if count == self.count:
            return
        now = self.clock() if now is None else now
        self.count = count
        self._reports += 1
        self._samples.append((now, count))
        # Keep one sample older than the window: the rate starts from it.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def _end(self, now: float) -> float:
        """Where the measured stretch ends: the last report, unless it is overdue (then later)."""
        last = self._samples[-1][0]
        return max(last, now - self._typical_gap())

    def _typical_gap(self) -> float:
        """Mean seconds between two reports so far."""
        last = self._samples[-1][0]
        return (last - self.started) / self._reports if self._reports else 0.0

    def rate(self, now: float | None = None) -> float:
        """Items per second over the last ``window`` seconds (0.0 before the first item)."""
        now = self.clock() if now is None else now
        if self.count == 0:
            return 0.0
        end = self._end(now)
        since = max(self.started, end - self.window)
        span = end - since
        return (self.count - self._count_at(since)) / span if span > 0 else 0.0

    def time_left(self, remaining: int, now: float | None = None) -> float | None:
        """Seconds until ``remaining`` more items are done at the current rate; None when unknown.

        Counts down between reports (until one is overdue), rather than waiting for the next.
        """
        if remaining <= 0:
            return 0.0
        now = self.clock() if now is None else now
        rate = self.rate(now)
        if rate <= 0:
            return None
        since_report = now - self._samples[-1][0]
        return max(0.0, remaining / rate - min(since_report, self._typical_gap()))

    def _count_at(self, moment: float) -> float:
        """The count at ``moment``, spread evenly between the samples around it."""
        previous_time, previous_count = self._samples[0]
        if moment <= previous_time:
            return previous_count
        for sample_time, sample_count in self._samples:
            if sample_time >= moment:
                share = (moment - previous_time) / (sample_time - previous_time) if sample_time > previous_time else 1
                return previous_count + share * (sample_count - previous_count)
            previous_time, previous_count = sample_time, sample_count
        return previous_count
