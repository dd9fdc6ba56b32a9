"""A magic's cell body fails as a plain cell would: its errors show without CrowdCompute's frames.

A ``%%crowdmap`` or ``%%crowdcompute`` cell is run by IPython as one line,
``get_ipython().run_cell_magic(...)``, so an error in its body would show the
frames of that line, of IPython's magic machinery and of our magic before
the user's own. Here:

- :func:`compile_here` and :func:`check_for_worker` compile the body under
  the cell's own name (``Cell In[n]``). :func:`check_cell_bodies`, an input
  transformer, calls them before the cell runs, so that a SyntaxError in a
  body is what IPython shows for a plain cell's: the line and a caret, no
  traceback, and the cell fails before it runs (``error_before_exec``). A
  SyntaxError raised from a running magic would show every frame: IPython
  renders those with the traceback of where they were raised, whatever the
  exception says.
- :func:`run_here` runs the body in the notebook's namespace; an error it
  raises renders (``_render_traceback_``) with the body's frames only.
- A top-level ``await crowdcompute.map(...)`` that the kernel interrupts
  ends in a CancelledError through the SDK, which cancelled the job;
  :func:`install_error_display` shows it as the JobCancelledError of that
  job, in one line, as an interrupted ``%%crowdmap`` does.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable
from types import CodeType, TracebackType
from typing import Any

from IPython.core.error import UsageError

from crowdcompute.errors import JobCancelledError
from crowdcompute.job import Job

__all__ = ["check_cell_bodies", "check_for_worker", "compile_here", "install_error_display", "run_here"]


def compile_here(shell: Any, body: str) -> tuple[str, CodeType]:
    """The body as Python (IPython syntax transformed, as in a plain cell), and compiled under the cell's name.

    Raises SyntaxError, shown as a plain cell's.
    """
    source = shell.transform_cell(body)
    filename = shell.compile.cache(source, shell.execution_count, raw_code=body)
    try:
        return source, shell.compile(source, filename, "exec")
    except SyntaxError as exc:
        raise exc.with_traceback(None) from None


def check_for_worker(body: str, filename: str) -> None:
    """Check that a ``%%crowdcompute`` body compiles as the worker will compile it: plain Python.

    Raises SyntaxError (shown as a plain cell's), or UsageError for a
    top-level ``await``, which a worker does not run.
    """
    try:
        compile(body, filename, "exec", dont_inherit=True)
        return
    except SyntaxError as exc:
        error = exc
    try:
        compile(body, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError:
        raise error.with_traceback(None) from None
    raise UsageError(
        f"%%crowdcompute does not run top-level await (line {error.lineno}): the cell runs on a worker as plain "
        "Python. Put the awaits in an async function and run it there: `async def main(): ...` then "
        "`asyncio.run(main())` as the cell's last line."
    )


def run_here(shell: Any, code: CodeType) -> None:
    """Run compiled body code in the notebook's namespace, as a plain cell would.

    An exception it raises keeps its real traceback (for ``%debug``), but
    shows only the body's frames, as a plain cell's would.
    """
    try:
        exec(code, shell.user_global_ns, shell.user_ns)
    except Exception as exc:
        _render_from_the_cell(shell, exc)
        raise


def _render_from_the_cell(shell: Any, exc: Exception) -> None:
    """Make IPython render ``exc`` from the cell's first frame on (the one after this module's)."""
    if hasattr(exc, "_render_traceback_") or exc.__traceback__ is None:
        return  # it renders itself (a CrowdComputeError, say)
    cell_frames = exc.__traceback__.tb_next

    def render() -> list[str]:
        return shell.InteractiveTB.structured_traceback(type(exc), exc, cell_frames, tb_offset=0)

    try:
        exc._render_traceback_ = render  # type: ignore[attr-defined]  # IPython asks the instance
    except AttributeError:
        pass  # an exception type that refuses attributes keeps the long traceback


#: The magics whose bodies :func:`check_cell_bodies` checks, and how.
_CHECKED_MAGICS = ("%%crowdmap", "%%crowdcompute")


def check_cell_bodies(shell: Any) -> Callable[[list[str]], list[str]]:
    """An input transformer (``shell.input_transformers_cleanup``) that checks our magics' bodies.

    It leaves the lines as they are; for a ``%%crowdmap`` or ``%%crowdcompute``
    cell whose body does not compile it raises SyntaxError (or UsageError),
    which IPython shows as it shows a plain cell's and the cell does not run.
    """

    def check(lines: list[str]) -> list[str]:
        words = lines[0].split(maxsplit=1) if lines else []
        if words and words[0] in _CHECKED_MAGICS:
            body = "".join(lines[1:])
            if words[0] == "%%crowdmap":
                compile_here(shell, body)
            else:
                check_for_worker(body, shell.compile.cache(body, shell.execution_count, raw_code=body))
        return lines

    # Not while a terminal asks whether the input is complete: a body being typed does not compile yet.
    check.has_side_effects = True  # type: ignore[attr-defined]
    return check


def _job_in(tb: TracebackType | None) -> Job | None:
    """The innermost Job that a frame of ``tb`` holds (``self`` of Job.result, ``job`` of client.map)."""
    found = None
    while tb is not None:
        found = next((value for value in tb.tb_frame.f_locals.values() if isinstance(value, Job)), found)
        tb = tb.tb_next
    return found


def _passes_through_crowdcompute(tb: TracebackType | None) -> bool:
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("crowdcompute"):
            return True
        tb = tb.tb_next
    return False


def install_error_display(shell: Any) -> None:
    """Check our magics' bodies before they run; show an interrupted await's CancelledError as JobCancelledError.

    The CancelledError handler is the shell's custom exception handler,
    installed unless the shell already has custom handlers (which are left
    alone); CancelledErrors that did not come through a CrowdCompute job
    keep their usual traceback.
    """
    if not any(
        getattr(t, "__qualname__", "").startswith("check_cell_bodies") for t in shell.input_transformers_cleanup
    ):
        shell.input_transformers_cleanup.append(check_cell_bodies(shell))
    if shell.custom_exceptions:
        return

    def show(
        self: Any, etype: type, value: BaseException, tb: TracebackType | None, tb_offset: int | None = None
    ) -> None:
        # The handler displays the error itself (IPython ignores what it returns);
        # _showtraceback is the display hook that ipykernel turns into an error message.
        job = _job_in(tb) if _passes_through_crowdcompute(tb) else None
        if job is not None:
            # The SDK cancelled the job: say so as %%crowdmap does. The coroutine itself must
            # still end in CancelledError (asyncio's contract), so only what is shown changes,
            # and what the cell's result records (ipykernel's execute_reply reads it).
            error = JobCancelledError(job.id)
            result = getattr(self.displayhook, "exec_result", None)
            if result is not None:
                result.error_in_exec = error
            self._showtraceback(JobCancelledError, error, error._render_traceback_())
        else:
            self.showtraceback((etype, value, tb), tb_offset=tb_offset)

    shell.set_custom_exc((asyncio.CancelledError,), show)
