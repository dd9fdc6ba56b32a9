"""The progress widget in a real Jupyter kernel: it moves item by item inside slow chunks, turns red at
the first failure while the rest runs, and an interrupt keeps the finished results in ``-o NAME``."""

from __future__ import annotations

import re

from test_jupyter_kernel import (  # noqa: F401  (fixtures)
    CELL_TIMEOUT,
    SPIN,
    Cell,
    Kernel,
    _interrupt_while_spinning,
    connect,
    kernel,
    private_jupyter_dirs,
)


def bar_states(cell: Cell) -> list[dict]:
    """The states the cell's progress bar went through, cumulated (each update sends what changed)."""
    (bar,) = cell.progress_bars()
    states, state = [], {}
    for _, update in bar:
        state = {**state, **update}
        states.append(state)
    return states


def html_updates(cell: Cell) -> list[str]:
    """Every value the cell's HTML widgets were given, in order."""
    return [
        m["content"]["data"]["state"]["value"]
        for _, m in cell.of_type("comm_open", "comm_msg")
        if "value" in m["content"].get("data", {}).get("state", {})
        and isinstance(m["content"]["data"]["state"]["value"], str)
    ]


def test_the_bar_moves_item_by_item_inside_slow_chunks(cluster, kernel):
    connect(kernel, cluster)
    cell = kernel.run(
        "%%crowdmap range(12) --chunksize 6 -o slow\n"
        "def slow_item(x):\n    import time\n    time.sleep(0.3)\n    return x\n"
    )
    values = [state["value"] for state in bar_states(cell)]
    inside = sorted({v for v in values if v % 6})  # neither 0 nor a whole chunk: items of a running chunk
    assert len(inside) >= 3, f"the bar moved per chunk, not per item: {values}"
    assert values == sorted(values) and values[-1] == 12, values
    labels = [text for text in html_updates(cell) if "items/s" in text]
    rates = [float(m.group(1)) for m in (re.search(r"([\d.]+) items/s", t) for t in labels) if m]
    assert any(0 < r for r in rates[:-1]), f"no rate while it ran: {labels}"
    assert "%" in labels[-1] and "12/12" in labels[-1]
    assert "items on" not in cell.text and "transit" not in cell.text  # a short, well-chunked map: no stats line


def test_the_bar_turns_red_at_the_first_failure_while_the_rest_runs(cluster, kernel):
    connect(kernel, cluster)
    code = (
        "%%crowdmap range(10) --chunksize 5 -o checked\n"
        "def check(x):\n    import time\n    if x == 1:\n        raise ValueError(f'item {x} is bad')\n"
        "    time.sleep(0.4)\n    return x\n"
    )
    cell = kernel.execute(code)
    kernel.wait(lambda: cell.idle, CELL_TIMEOUT, "the failing map to end")
    assert cell.error is not None and cell.error["ename"] == "ValueError"
    states = bar_states(cell)
    red = [s for s in states if s.get("bar_style") == "danger"]
    assert red and red[0]["value"] < 10, f"the bar turned red only at the end: {states}"
    named = [t for t in html_updates(cell) if "first error: item 1: ValueError: item 1 is bad" in t]
    assert named, "the first error was not named under the bar"
    assert states[-1]["value"] == 10 and states[-1]["bar_style"] == "danger"


def test_an_interrupt_keeps_the_finished_results_in_the_output_variable(cluster, kernel):
    connect(kernel, cluster)
    code = (
        "%%crowdmap range(6) --chunksize 1 -o part\n"
        "def first_two_quick(x):\n    if x < 2:\n        return x * 10\n    return spin(x)\n"
    )
    kernel.run(SPIN)
    cell, _ = _interrupt_while_spinning(kernel, code)
    assert cell.error["ename"] == "JobCancelledError"
    assert "The job was cancelled after 2 of 6 items; their results are in `part`" in cell.text, cell.text
    shown = kernel.run("print(part[:2], sorted({type(x).__name__ for x in part[2:]}))")
    assert "[0, 10] ['JobCancelledError']" in shown.text, shown.text
    (bar,) = cell.progress_bars()
    assert [s["bar_style"] for _, s in bar if "bar_style" in s][-1] == "warning"  # orange: cancelled
