"""What a wake-up costs on this machine (issue 12): the same few microseconds of work, hot and
right after a sleep, alone and in a real task process.

    python -m benchmarks.wakeups [--runs 60]

Prints, for sleeps of 0, 1, 5, 20 and 50 ms between runs: the time of a
small fixed piece of Python (pickle a tuple and back, fill a dict); then,
in a task process of our own (``worker.child``), the gap between two items
of one task and the turnaround between two tasks (the first ends, its
outcome is written, the preloaded second starts), with items that do not
sleep and items that sleep 50 ms. On a virtual machine whose CPUs idle
between wake-ups, the second column is many times the first: a map of
50 ms tasks pays it on every message of every process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import time

from crowdcompute.codecs.pickled import dumps_function, dumps_items
from worker.child import main as serve
from worker.pipes import pickled, send_together

__all__ = ["main"]

SLEEPS = (0.0, 0.001, 0.005, 0.02, 0.05)


def _work() -> None:
    data = pickle.loads(pickle.dumps(([(1, 2.0, 3.0)], {}), 5))
    table = {n: data for n in range(50)}
    assert table


def _timed(seconds: float) -> tuple[int, float, float]:
    import os
    import time

    start = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), start, time.monotonic()


def _python_piece(seconds: float, runs: int) -> float:
    """Median microseconds of ``_work`` run ``seconds`` after the last run ended."""
    found = []
    for _ in range(runs):
        time.sleep(seconds)
        started = time.perf_counter()
        _work()
        found.append((time.perf_counter() - started) * 1e6)
    return statistics.median(found)


def _task_process(seconds: float, runs: int) -> tuple[float, float]:
    """Median microseconds (between two items of one task, between two tasks) in a task process."""
    context = multiprocessing.get_context("forkserver")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve, args=(theirs, {}))
    process.start()
    function = dumps_function(_timed)
    try:
        chunk = bytes(dumps_items([seconds] * runs))  # one task of `runs` items
        send_together(ours, [pickled(("run", "j", 0, runs, function, "cloudpickle", len(chunk), None)), chunk])
        items = _outcome(ours)
        single = bytes(dumps_items([seconds]))

        def task(index: int) -> list[bytes]:
            return [pickled(("run", "j", index, 1, None, "cloudpickle", len(single), None)), single]

        send_together(ours, task(runs))
        send_together(ours, task(runs + 1))  # preloaded: written while the one before runs
        tasks = []
        for index in range(runs):
            tasks += _outcome(ours)
            if index + 2 < runs:
                send_together(ours, task(runs + index + 2))
    finally:
        ours.close()
        process.join(10)
    return _median_gap(items), _median_gap(tasks)


def _outcome(conn) -> list:
    """The values of the next task's outcome (progress and output skipped)."""
    while True:
        header = conn.recv()
        if header[0] == "done":
            parts = [conn.recv_bytes() for _ in range(header[3])]
            values, errors = pickle.loads(b"".join(parts))
            assert not errors, errors
            return values


def _median_gap(spans: list) -> float:
    return statistics.median((later[1] - earlier[2]) * 1e6 for earlier, later in zip(spans, spans[1:], strict=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="runs per figure (median)")
    args = parser.parse_args(argv)
    print("| sleep before | Python piece | task process, between items | task process, between tasks |")
    print("|---|---|---|---|")
    for seconds in SLEEPS:
        piece = _python_piece(seconds, args.runs)
        if seconds in (0.0, 0.05):
            items, tasks = _task_process(seconds, args.runs)
            process = f"{items:.0f} us | {tasks:.0f} us"
        else:
            process = "- | -"
        print(f"| {seconds * 1000:g} ms | {piece:.1f} us | {process} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
