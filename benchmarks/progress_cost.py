"""What per-item progress costs a task process: the execution loop over 100,000 tiny items.

    python -m benchmarks.progress_cost

Runs ``worker.execution.run_items(x + 1, 100k items)`` in this process three
ways: with no per-item callback, with the callback as it was before per-item
progress (output routing only), and with the task process's callback as it
is now (output routing plus the progress check, which looks at the clock
every few items). Prints the fastest of 25 runs of each, three times.
"""

from __future__ import annotations

import time

from worker import child
from worker.execution import run_items

ITEMS = 100_000
RUNS = 25


class _Pipe:
    def send(self, message) -> None:
        pass


def _fastest(make_callback) -> float:
    items = list(range(ITEMS))
    times = []
    for _ in range(RUNS):
        on_item = make_callback()
        started = time.perf_counter()
        run_items(lambda x: x + 1, items, on_item)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    out, err = child._Output(_Pipe(), "stdout"), child._Output(_Pipe(), "stderr")

    def before():
        def on_item(offset, errors, first_index=0):
            if out._buffer or err._buffer:
                out.flush()
                err.flush()
            out.index = err.index = first_index + offset

        return on_item

    def now():
        progress = child._Progress(_Pipe(), 0)

        def on_item(offset, errors, first_index=0, progress=progress):
            if out._buffer or err._buffer:
                out.flush()
                err.flush()
            out.index = err.index = first_index + offset
            if offset >= progress.check_at or (errors and not progress.failed):
                progress.item(offset, errors)

        return on_item

    for _ in range(3):
        print(
            f"{ITEMS:,} items: no callback {_fastest(lambda: None) * 1000:.1f} ms | "
            f"output routing only {_fastest(before) * 1000:.1f} ms | "
            f"with per-item progress {_fastest(now) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
