"""The magics through a real IPython shell, against a real foreman and real workers."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from helpers import arun
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

from crowdcompute import ConnectionLostError, CrowdComputeClient, SerializationError, TaskError
from crowdcompute.local import LocalCluster


@pytest.fixture
def shell(crowd_home, tmp_path, monkeypatch):
    """A fresh IPython shell with ``%load_ext crowdcompute``; disconnected afterwards.

    Tests ask for ``cluster`` before ``shell`` so that the shell disconnects
    before the foreman stops: outside a kernel no event loop runs between
    cells, so the client could not answer the foreman's closing handshake.
    """
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.enabled = False  # no history database, no saving thread
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "crowdcompute")
    yield shell
    with capture_output():
        shell.run_line_magic("crowddisconnect", "")
    InteractiveShell.clear_instance()


def magics(shell):
    return shell.magics_manager.registry["CrowdComputeMagics"]


def run(shell, code: str):
    """Run a cell as a user would; return (result, everything it printed)."""
    with capture_output() as captured:
        result = shell.run_cell(code)
    shown = [output.data.get("text/plain", "") for output in captured.outputs]
    return result, captured.stdout + captured.stderr + "\n".join(shown)


def connect(cluster, shell) -> str:
    result, text = run(shell, f"%crowdconnect {cluster.url} --token {cluster.token}")
    assert result.success, text
    return text


def test_importing_crowdcompute_loads_no_jupyter_package():
    code = (
        "import asyncio, crowdcompute, crowdcompute_jupyter.magics\n"
        "assert not hasattr(asyncio, '_nest_patched'), 'nest_asyncio2 was applied at import'\n"
        "print('ok')\n"
    )
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, crowdcompute; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('IPython', 'ipywidgets', 'ipykernel', 'nest_asyncio', 'nest_asyncio2')))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]", f"importing crowdcompute imported {loaded.stdout.strip()}"
    lazy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert lazy.returncode == 0 and lazy.stdout.strip() == "ok", lazy.stderr


def test_crowdmap_maps_the_cells_function_with_a_widget(cluster, shell):
    shown = connect(cluster, shell)
    assert f"Connected to {cluster.url}" in shown and "1 worker, 2 slots" in shown
    assert "jobs: none" in shown and "┃ job" not in shown  # no empty table

    result, text = run(
        shell,
        "%%crowdmap range(100, 140) -o r\ndef f(x):\n    if x % 10 == 0:\n        print('tens', x)\n    return x * 2\n",
    )
    assert result.success, text
    assert result.result is None and shell.user_ns["r"] == [x * 2 for x in range(100, 140)]
    widget = magics(shell).last_progress
    assert (widget.bar.value, widget.bar.max, widget.bar.bar_style, widget.state) == (40, 40, "success", "done")
    assert "40/40" in widget.label.value and "items/s" in widget.label.value
    assert sorted(re.findall(r"\[(\d+)\] tens (\d+)", text)) == [
        ("0", "100"),
        ("10", "110"),
        ("20", "120"),
        ("30", "130"),
    ], text

    # No -o: the cell's value. The last top-level def is mapped unless -f names another.
    cell = "def helper(x):\n    return x + 1\n\ndef twice(x):\n    return helper(x) * 2\n"
    result, text = run(shell, "%%crowdmap [1, 2, 3]\n" + cell)
    assert result.result == [4, 6, 8], text
    result, text = run(
        shell, '%%crowdmap ["a b", "c"] -f helper --chunksize 1 --timeout 30\ndef helper(x):\n    return x + "!"\n'
    )
    assert result.result == ["a b!", "c!"], text

    # Top-level await uses the connection the magic made.
    result, text = run(shell, "import crowdcompute\nawait crowdcompute.map(lambda x: -x, range(3), progress=False)")
    assert result.result == [0, -1, -2], text

    with capture_output() as captured:
        shell.run_line_magic("crowdstatus", "")
    (shown,) = captured.outputs
    assert "w1" in shown.data["text/plain"] and "2 slots" in shown.data["text/plain"], shown.data["text/plain"]
    assert "<table" in shown.data["text/html"] and '<td style="text-align: left">w1</td>' in shown.data["text/html"]
    result, text = run(shell, "%crowddisconnect")
    assert "disconnected" in text
    result, text = run(shell, "%crowdstatus")
    assert isinstance(result.error_in_exec, Exception) and "not connected" in text


def test_a_failing_item_turns_the_widget_red_and_keeps_the_others(cluster, shell):
    connect(cluster, shell)
    result, text = run(shell, "%%crowdmap [1, 0, 2, 0] --chunksize 1 -o q\ndef inverse(x):\n    return 1 / x\n")
    error = result.error_in_exec
    assert isinstance(error, TaskError) and isinstance(error, ZeroDivisionError)
    assert error.index == 1
    assert "2 of 4 items failed; item 1 is shown below" in text
    assert "item 1 (0)" in text and "Remote traceback" in text and "in inverse" in text
    assert "crowdcompute_jupyter" not in text, f"our internals leaked into the traceback:\n{text}"
    widget = magics(shell).last_progress
    assert (widget.bar.value, widget.bar.max, widget.bar.bar_style, widget.state) == (4, 4, "danger", "failed")
    assert "2 failed" in widget.label.value
    job = magics(shell).last_job
    assert (job.completed, job.failed, sorted(job.errors)) == (2, 2, [1, 3])
    q = shell.user_ns["q"]
    assert q[0] == 1.0 and q[2] == 0.5 and isinstance(q[1], ZeroDivisionError)


def test_crowdcompute_runs_the_cell_on_a_worker_with_only_what_it_reads(cluster, shell):
    connect(cluster, shell)
    shell.user_ns.update(data=[1, 2, 3], lock=threading.Lock())  # lock does not pickle: it must not be sent
    cell = "import os\nprint('running in', os.getpid())\ntotal = sum(data)\ntotal * 2\n"
    result, text = run(shell, "%%crowdcompute\n" + cell)
    assert result.result == 12, text
    pid = int(re.search(r"running in (\d+)", text).group(1))
    assert pid != os.getpid()
    assert "total" not in shell.user_ns  # what the cell assigns stays on the worker

    result, text = run(shell, "%%crowdcompute -o answer\nlen(data)")
    assert result.success and result.result is None and shell.user_ns["answer"] == 3, text

    result, text = run(shell, "%%crowdcompute\nwith lock:\n    pass\n")
    assert isinstance(result.error_in_exec, SerializationError)
    assert "the variable 'lock'" in text and "Traceback" not in text, text

    result, text = run(shell, "%%crowdcompute\nx = 1\ny = x / 0\n")
    error = result.error_in_exec
    assert isinstance(error, ZeroDivisionError) and error.index is None
    assert "y = x / 0" in text and "Remote traceback" in text, text


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("%%crowdmap range(3)\ndef f(x):\n    return x\n", "not connected: run %crowdconnect first"),
        ("%%crowdmap range(3)\nx = 1\n", "the cell defines no function"),
        (
            "%%crowdmap undefined_name + 1\ndef f(x):\n    return x\n",
            "cannot evaluate ITERABLE `undefined_name + 1`: NameError",
        ),
        ("%%crowdmap 42\ndef f(x):\n    return x\n", "ITERABLE `42` gives no items to map over: TypeError"),
        ("%%crowdmap range(3) -f nope\ndef f(x):\n    return x\n", "no function named 'nope'"),
        ("%%crowdmap\ndef f(x):\n    return x\n", "%%crowdmap needs an ITERABLE"),
        ("%%crowdmap range(3) --chunk 2\ndef f(x):\n    return x\n", "unrecognized arguments: --chunk"),
        ("%%crowdmap range(3) --chunksize many\ndef f(x):\n    return x\n", "invalid int value: 'many'"),
        ("%%crowdmap range(3) -o 1x\ndef f(x):\n    return x\n", "-o needs a Python variable name"),
        ("%%crowdmap range(3) --chunksize 0\ndef f(x):\n    return x\n", "chunksize must be at least 1, not 0"),
        ("%%crowdmap range(3) --timeout -1\ndef f(x):\n    return x\n", "timeout must be a positive number"),
        ("%crowdstatus", "not connected"),
        ("%crowdconnect --workers 0", "--workers must be at least 1"),
        ("%crowdconnect ws://127.0.0.1:9 --workers 2", "--workers applies to an embedded cluster only"),
        ("%%crowdcompute\nprint(1)\n", "not connected"),
        ("%%crowdcompute\nimport asyncio\nawait asyncio.sleep(0)\n5\n", "does not run top-level await (line 2)"),
    ],
)
def test_bad_input_says_what_to_do_in_one_line(shell, code, message):
    result, text = run(shell, code)
    assert not result.success
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("UsageError: ") and message in lines[0], text


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shown_error(shell, code: str) -> tuple[BaseException | None, str]:
    """Run a failing cell; its error and the text IPython showed for it (without colours)."""
    result, text = run(shell, code)
    assert not result.success, text
    return result.error_before_exec or result.error_in_exec, ANSI.sub("", text)


@pytest.mark.parametrize(
    ("magic", "body"),
    [
        ("%%crowdmap range(3)", "def f(x)\n    return x\n"),
        ("%%crowdmap range(3)", "def f(x):\n    return x\n1 +\n"),
        ("%%crowdcompute", "1 +\n"),
        ("%%crowdcompute -o y", "x = 1\n  y = 2\n"),
    ],
)
def test_a_syntax_error_in_a_cell_body_shows_as_in_a_plain_cell(shell, magic, body):
    error, text = shown_error(shell, f"{magic}\n{body}")
    plain_error, plain_text = shown_error(shell, body)
    assert type(error) is type(plain_error) and isinstance(error, SyntaxError), text
    assert text == plain_text, f"a plain cell shows:\n{plain_text}\nthe magic's cell shows:\n{text}"
    assert "crowdcompute" not in text and "<unknown>" not in text, text


def test_a_cell_body_that_raises_shows_only_its_own_frames(shell):
    body = "def f(x):\n    return x\nraise RuntimeError('cell itself fails')\n"
    error, text = shown_error(shell, "%%crowdmap range(3)\n" + body)
    _, plain_text = shown_error(shell, body)
    assert isinstance(error, RuntimeError) and "cell itself fails" in text
    assert text == plain_text, f"a plain cell shows:\n{plain_text}\nthe magic's cell shows:\n{text}"


def test_magics_explain_themselves(shell):
    for name, words in [
        ("crowdmap", ["ITERABLE", "-o NAME", "-f FUNC", "--chunksize N", "--timeout S"]),
        ("crowdconnect", ["--token", "--workers", "url"]),
        ("crowdcompute", ["-o NAME", "worker"]),
    ]:
        magic = shell.find_cell_magic(name) or shell.find_line_magic(name)
        assert all(word in magic.__doc__ for word in words), magic.__doc__
    assert shell.find_line_magic("crowdstatus").__doc__ and shell.find_line_magic("crowddisconnect").__doc__


def test_a_cancelled_error_from_elsewhere_keeps_its_traceback(shell):
    result, text = run(shell, "import asyncio\ndef stop():\n    raise asyncio.CancelledError('mine')\nstop()")
    assert isinstance(result.error_in_exec, BaseException)
    assert "Traceback (most recent call last)" in text and "mine" in text and "CrowdCompute cancelled" not in text, text


def test_the_embedded_cluster_starts_whatever_its_token(crowd_home):
    # Generated tokens are URL-safe base64: one in 32 starts with "-", which the
    # foreman's and workers' option parsers once took for an option.
    async def start_and_stop() -> None:
        cluster = LocalCluster(1, token="-starts-with-a-dash")
        try:
            await cluster.start(timeout=30)
        finally:
            cluster.stop()

    arun(start_and_stop(), timeout=40)


def test_crowdattach_collects_a_job_submitted_elsewhere_and_a_short_map_prints_no_stats(cluster, shell):
    connect(cluster, shell)
    result, text = run(shell, "%%crowdmap range(6) -o r\ndef f(x):\n    return x + 1\n")
    assert result.success and shell.user_ns["r"] == [1, 2, 3, 4, 5, 6], text
    assert "items of 6" not in text and "hint" not in text, text  # nothing worth saying about 6 quick items

    async def submit_elsewhere() -> str:
        async with CrowdComputeClient(cluster.url, token=cluster.token) as other:
            job = await other.submit(lambda x: x * 7, range(5))
            # Ended on the foreman before anyone attaches (not collected: the foreman keeps the results).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while not any(j["id"] == job.id and j["state"] == "done" for j in (await other.status())["jobs"]):
                assert loop.time() < deadline, "the job did not end within 20 s"
                await asyncio.sleep(0.05)
            return job.id  # this process leaves; the job goes on

    job_id = arun(submit_elsewhere())
    result, text = run(shell, f"%crowdattach {job_id} -o seven")
    assert result.success, text
    assert shell.user_ns["seven"] == [0, 7, 14, 21, 28]
    widget = magics(shell).last_progress
    assert (widget.bar.value, widget.bar.max, widget.state) == (5, 5, "done")
    # Its items finished before the attach: no rate (they took no time here), and it says so.
    assert "items/s" not in widget.label.value and "done before attach" in widget.label.value, widget.label.value
    result, text = run(shell, "%crowdattach no-such-job")
    assert isinstance(result.error_in_exec, Exception) and "cannot attach to job no-such-job" in text


def test_crowdmap_requirements_and_crowdstatus_explains_a_waiting_job(
    foreman, start_worker, shell, tmp_path, monkeypatch
):
    from wheels import tinypkg_wheels

    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    wheels = tinypkg_wheels(tmp_path / "wheels")
    start_worker(
        foreman.url, "--procs", "1", "--name", "w1", "--labels", "site=lab1", "--find-links", str(wheels), "--no-index"
    )
    connect(foreman, shell)
    cell = "def which(x):\n    import tinypkg\n    return tinypkg.version()\n"
    result, text = run(shell, '%%crowdmap range(3) --requirements "tinypkg==1.1"\n' + cell)
    assert result.result == ["1.1"] * 3, text

    result, text = run(
        shell, "import crowdcompute\njob = await crowdcompute.submit(abs, range(2), resources={'gpu': 1})"
    )
    assert result.success, text
    job = shell.user_ns["job"]
    deadline = time.monotonic() + 10
    while "gpu=1" not in job.waiting and time.monotonic() < deadline:
        run(shell, "await __import__('asyncio').sleep(0.05)")
    with capture_output() as captured:
        shell.run_line_magic("crowdstatus", "")
    (shown,) = captured.outputs
    assert "waiting: no connected worker has gpu=1" in shown.data["text/plain"], shown.data["text/plain"]
    assert "site=lab1" in shown.data["text/plain"] and "site=lab1" in shown.data["text/html"]
    run(shell, "job.cancel()")


def test_a_lost_connection_keeps_the_finished_results_and_crowdattach_follows_the_job_later(
    start_foreman, start_worker, shell, tmp_path
):
    journal = str(tmp_path / "journal.db")
    foreman = start_foreman("--journal", journal)
    start_worker(foreman.url, "--procs", "2", "--name", "w1")
    result, text = run(
        shell,
        f"import crowdcompute\nawait crowdcompute.connect({foreman.url!r}, token={foreman.token!r}, reconnect_timeout=1)",
    )
    assert result.success, text

    def kill_the_foreman_after_two_items() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = magics(shell).last_job
            if job is not None and job.completed >= 2:
                break
            time.sleep(0.02)
        foreman.proc.popen.kill()

    killer = threading.Thread(target=kill_the_foreman_after_two_items, daemon=True)
    killer.start()
    cell = "def slow_after_two(x):\n    import time\n    if x >= 2:\n        time.sleep(3)\n    return x * 10\n"
    result, text = run(shell, "%%crowdmap range(6) --chunksize 1 -o part\n" + cell)
    killer.join(timeout=30)
    job_id = magics(shell).last_job.id
    error = result.error_in_exec
    assert isinstance(error, ConnectionLostError), text
    assert "The connection to the foreman was lost after 2 of 6 items; their results are in `part`" in text, text
    assert f"`%crowdattach {job_id} -o NAME`" in text and "Traceback" not in text, text
    part = shell.user_ns["part"]
    assert part[:2] == [0, 10] and all(isinstance(x, ConnectionLostError) for x in part[2:]), part

    # What the message promises: the foreman, back with its journal, still has the job.
    again = start_foreman("--journal", journal, port=foreman.port)
    connect(again, shell)
    result, text = run(shell, f"%crowdattach {job_id} -o full")
    assert result.success, text
    assert shell.user_ns["full"] == [x * 10 for x in range(6)]
