"""Peak resident memory of a process while a workload runs, sampled in a thread.

The foreman is a separate process, so ``resource.getrusage`` of this one
says nothing about it; psutil samples its RSS every few milliseconds. A
short peak between two samples can be missed: the figure is a lower bound.
"""

from __future__ import annotations

import threading

__all__ = ["PeakRSS"]

#: Seconds between two samples.
SAMPLE_INTERVAL = 0.005


class PeakRSS:
    """``with PeakRSS(pid) as peak: ...`` then ``peak.bytes`` (None without a pid or psutil)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        if self.pid is None:
            return self
        try:
            import psutil

            self._process = psutil.Process(self.pid)
            self.bytes = self._process.memory_info().rss
        except Exception:  # psutil missing or the process gone: no figure
            return self
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            try:
                self.bytes = max(self.bytes or 0, self._process.memory_info().rss)
            except Exception:
                return

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
