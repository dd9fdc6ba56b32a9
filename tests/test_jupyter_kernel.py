"""The magics in a real Jupyter kernel (ipykernel, driven with jupyter_client), against real workers."""

from __future__ import annotations

import queue
import re
import time
from dataclasses import dataclass, field

import psutil
import pytest
from jupyter_client.manager import start_new_kernel

#: Seconds a kernel gets to start.
KERNEL_TIMEOUT = 40.0
#: Seconds a cell gets to run (less than the test's timeout, so the failure says which cell hung).
CELL_TIMEOUT = 40.0
#: Seconds the workers get to stop an interrupted job's tasks (issue 3 asks for 2).
STOP_TIMEOUT = 2.0


@dataclass
class Cell:
    """What one execute request produced: its iopub messages, with the time each arrived."""

    msg_id: str
    messages: list[tuple[float, dict]] = field(default_factory=list)
    idle: bool = False

    def of_type(self, *types: str) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.messages if m["msg_type"] in types]

    @property
    def text(self) -> str:
        return "".join(m["content"]["text"] for _, m in self.of_type("stream"))

    @property
    def error(self) -> dict | None:
        errors = self.of_type("error")
        return errors[0][1]["content"] if errors else None

    @property
    def result(self) -> str | None:
        results = self.of_type("execute_result")
        return results[0][1]["content"]["data"]["text/plain"] if results else None

    def progress_bars(self) -> list[list[tuple[float, dict]]]:
        """For each IntProgress widget the cell made: its state updates in order, with times."""
        bars: dict[str, list[tuple[float, dict]]] = {}
        for t, m in self.of_type("comm_open", "comm_msg"):
            state = m["content"].get("data", {}).get("state", {})
            comm_id = m["content"]["comm_id"]
            if m["msg_type"] == "comm_open" and state.get("_model_name") == "IntProgressModel":
                bars[comm_id] = [(t, state)]
            elif comm_id in bars and state:
                bars[comm_id].append((t, state))
        return list(bars.values())


class Kernel:
    """A kernel and a client of it; iopub messages are sorted by the cell that caused them."""

    def __init__(self, manager, client) -> None:
        self.manager = manager
        self.client = client
        self.cells: dict[str, Cell] = {}

    def execute(self, code: str) -> Cell:
        """Send an execute request (without waiting for it)."""
        cell = Cell(self.client.execute(code))
        self.cells[cell.msg_id] = cell
        return cell

    def wait(self, condition, timeout: float, what: str) -> None:
        """Read iopub messages until ``condition()``; fail saying ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            try:
                msg = self.client.get_iopub_msg(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            cell = self.cells.get(msg["parent_header"].get("msg_id"))
            if cell is None:
                continue
            cell.messages.append((time.monotonic(), msg))
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                cell.idle = True

    def reply(self, cell: Cell, timeout: float = CELL_TIMEOUT) -> dict:
        """The content of the execute reply to ``cell`` (replies to other cells are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.client.get_shell_msg(timeout=min(deadline - time.monotonic(), 0.5))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == cell.msg_id:
                return msg["content"]
        pytest.fail(f"timed out after {timeout} s waiting for the reply to {cell.msg_id}")

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> Cell:
        """Execute ``code`` and wait until the kernel is done with it; fail on an error."""
        cell = self.execute(code)
        self.wait(lambda: cell.idle, timeout, f"the cell {code[:40]!r} to finish")
        assert cell.error is None, "\n".join(cell.error["traceback"])
        return cell


@pytest.fixture(autouse=True)
def private_jupyter_dirs(tmp_path, monkeypatch):
    """Kernels keep their history and connection files in the test's folder, not in the user's."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))


@pytest.fixture
def kernel(crowd_home):
    """A python3 kernel whose environment has this test's $CROWDCOMPUTE_HOME; shut down after."""
    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=KERNEL_TIMEOUT)
    yield Kernel(manager, client)
    client.stop_channels()
    manager.shutdown_kernel(now=False)


def connect(kernel: Kernel, cluster) -> None:
    kernel.run(f"%load_ext crowdcompute\n%crowdconnect {cluster.url} --token={cluster.token}")


def test_a_cell_queued_behind_crowdmap_runs_and_the_widget_moves(cluster, kernel):
    connect(kernel, cluster)
    first = kernel.execute(
        "%%crowdmap range(8) --chunksize 1 -o slow\n"
        "def nap(x):\n    import time\n    time.sleep(0.25)\n    print('napped', x)\n    return x\n"
    )
    second = kernel.execute("after = len(slow)\nprint('second cell ran after', after, 'results')")
    kernel.wait(lambda: first.idle and second.idle, CELL_TIMEOUT, "both queued cells to finish")
    assert first.error is None and second.error is None, (first.error, second.error)
    assert "second cell ran after 8 results" in second.text

    assert sorted(re.findall(r"\[(\d)\] napped (\d)", first.text)) == [(str(i), str(i)) for i in range(8)], first.text
    (bar,) = first.progress_bars()
    values = [state["value"] for _, state in bar if "value" in state]
    assert values[-1] == 8 and any(0 < v < 8 for v in values), f"the bar did not move while the job ran: {values}"
    assert [s["bar_style"] for _, s in bar if "bar_style" in s][-1] == "success"
    first_print = first.of_type("stream")[0][0]
    bar_full = next(t for t, state in bar if state.get("value") == 8)
    assert first_print < bar_full, "remote output arrived only at the end"

    # Top-level await: same connection; its widget and its tasks' output land in its own cell.
    awaited = kernel.run(
        "import crowdcompute\nawait crowdcompute.map(lambda x: print('awaited', x) or x + 1, range(4), chunksize=1)"
    )
    assert awaited.result == "[1, 2, 3, 4]"
    assert sorted(re.findall(r"\[(\d)\] awaited", awaited.text)) == ["0", "1", "2", "3"], awaited.text
    (bar,) = awaited.progress_bars()
    assert [s["value"] for _, s in bar if "value" in s][-1] == 4


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


SPIN = (
    "def spin(x):\n    import os, time\n    print('spinning in', os.getpid(), flush=True)\n"
    "    end = time.monotonic() + 120\n    while time.monotonic() < end:\n        pass\n    return x\n"
)


def _interrupt_while_spinning(kernel: Kernel, code: str) -> tuple[Cell, float]:
    """Run ``code`` (which spins on both slots), interrupt the kernel; the cell and how long the tasks took to stop."""
    cell = kernel.execute(code)
    kernel.wait(lambda: len(re.findall(r"spinning in (\d+)", cell.text)) == 2, 30, "both tasks to start spinning")
    pids = [int(pid) for pid in re.findall(r"spinning in (\d+)", cell.text)]
    assert not any(_stopped(pid) for pid in pids)
    started = time.monotonic()
    kernel.manager.interrupt_kernel()
    deadline = started + 10
    while not all(_stopped(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    stopped_after = time.monotonic() - started
    kernel.wait(lambda: cell.idle, 30, "the interrupted cell to end")
    return cell, stopped_after


def test_interrupt_cancels_the_job_and_the_kernel_stays_usable(cluster, kernel):
    connect(kernel, cluster)
    cell, stopped_after = _interrupt_while_spinning(kernel, "%%crowdmap range(2) --chunksize 1\n" + SPIN)
    assert stopped_after <= STOP_TIMEOUT, f"the workers still ran the tasks {stopped_after:.2f} s after the interrupt"
    assert cell.error["ename"] == "JobCancelledError"
    assert len(cell.error["traceback"]) == 1, "\n".join(cell.error["traceback"])

    after = kernel.run("%%crowdmap range(3)\ndef inc(x):\n    return x + 1\n")
    assert after.result == "[1, 2, 3]"

    # An awaited map is cancelled the same way.
    kernel.run(SPIN)
    cell, stopped_after = _interrupt_while_spinning(
        kernel, "import crowdcompute\nawait crowdcompute.map(spin, range(2), chunksize=1)"
    )
    assert stopped_after <= STOP_TIMEOUT, f"the workers still ran the tasks {stopped_after:.2f} s after the interrupt"
    # As CONTRACT says: JobCancelledError, in the cell and in the execute reply.
    assert cell.error["ename"] == "JobCancelledError" and cell.error["evalue"].endswith("was cancelled")
    assert len(cell.error["traceback"]) == 1, "\n".join(cell.error["traceback"])
    assert kernel.reply(cell)["ename"] == "JobCancelledError"
    assert kernel.run("await crowdcompute.map(abs, [-1, -2])").result == "[1, 2]"
