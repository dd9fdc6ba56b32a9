"""The IPython magics: ``%crowdconnect``, ``%%crowdmap``, ``%%crowdcompute``, ``%crowdattach``,
``%crowdstatus``, ``%crowddisconnect``.

Each magic is synchronous: it builds a coroutine on the async SDK and runs
it with :func:`crowdcompute_jupyter.runner.run_sync`, inside the kernel's
running loop. Bad input (no function in the cell, an ITERABLE that does not
evaluate, an unknown ``-f`` name, no connection yet) raises UsageError, which
IPython shows as one line. Errors of the SDK show as one line too (their
``_render_traceback_``), a remote error as the remote traceback.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, kwds, magic_arguments, parse_argstring

import crowdcompute
from crowdcompute.api import default_client
from crowdcompute.client import CrowdComputeClient
from crowdcompute.codecs.pickled import PICKLE_PROTOCOL, Apply
from crowdcompute.errors import (
    ConnectionLostError,
    CrowdComputeError,
    JobCancelledError,
    SerializationError,
    TaskError,
)
from crowdcompute.job import Job
from crowdcompute.options import JobOptions
from crowdcompute.wire.constants import ADDRESS_VARIABLE

from .arguments import split_expression
from .cell import CellRun, function_names, names_read
from .cell_errors import check_for_worker, compile_here, run_here
from .runner import run_sync
from .status import StatusView
from .unfinished import keep_partial_results
from .watcher import make_progress, watch_job
from .widget import ProgressWidget

__all__ = ["CrowdComputeMagics"]

#: Seconds %crowdconnect waits for the workers of an embedded cluster to register.
WORKERS_READY_TIMEOUT = 15.0
#: How often it looks, in seconds.
WORKERS_READY_INTERVAL = 0.1

_CROWDMAP_USAGE = '%%crowdmap ITERABLE [-o NAME] [-f FUNC] [--chunksize N] [--timeout S] [--requirements "PKG ..."]'
_VALUE_OPTIONS = {"-o", "--output", "-f", "--function", "--chunksize", "--timeout", "--requirements"}


def _output_name(name: str | None) -> str | None:
    if name is not None and not name.isidentifier():
        raise UsageError(f"-o needs a Python variable name, not {name!r}")
    return name


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@magics_class
class CrowdComputeMagics(Magics):
    """The CrowdCompute magics of one IPython shell.

    ``last_job`` is the Job of the latest ``%%crowdmap`` or ``%%crowdcompute``
    (its results stay available after a failure); ``last_progress`` is the
    progress renderer of the latest ``%%crowdmap``.
    """

    shell: InteractiveShell  # always set: load_ipython_extension registers the magics with the shell

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)
        self.last_job: Job | None = None
        self.last_progress: ProgressWidget | Any = None

    # --- connection ------------------------------------------------------------

    @line_magic
    @magic_arguments()
    @argument(
        "url",
        nargs="?",
        help="foreman address, ws://HOST:PORT or wss://HOST:PORT; none: "
        "$CROWDCOMPUTE_ADDRESS if set, else an embedded foreman and workers on this machine",
    )
    @argument("--token", metavar="T", help="the foreman's client token (a loopback foreman's is found by itself)")
    @argument("--workers", metavar="N", type=int, help="worker processes of the embedded cluster (default: CPU count)")
    def crowdconnect(self, line: str) -> None:
        """Connect to a foreman and show its workers and slots."""
        # "--token -x...": a token may start with "-", which argparse would take for an option.
        args = parse_argstring(self.crowdconnect, re.sub(r"--token\s+(\S+)", r"--token=\1", line))
        if args.workers is not None and args.workers < 1:
            raise UsageError(f"--workers must be at least 1, not {args.workers}")

        if args.workers is not None and args.url:
            raise UsageError(
                f"--workers applies to an embedded cluster only; {args.url} is a foreman with workers of its "
                "own. Leave out the address for a cluster of this notebook's own."
            )

        async def connect() -> StatusView:
            client = await crowdcompute.connect(args.url, token=args.token, workers=args.workers)
            if client.cluster is not None:
                await _wait_for_workers(client, client.cluster.workers)
            status = await client.status()
            if client.cluster:
                count = client.cluster.workers
                kind = f"embedded cluster, {count} worker{'' if count == 1 else 's'}"
            else:
                kind = "remote foreman"
            heading = f"Connected to {client.url} ({kind})."
            if args.workers is not None and client.cluster is None:
                heading += (
                    f" --workers {args.workers} does not apply: {ADDRESS_VARIABLE} names a shared foreman "
                    "(the Jupyter server's cluster, say), whose workers serve every notebook. For a cluster "
                    f"of this notebook's own, run `del os.environ['{ADDRESS_VARIABLE}']` first."
                )
            return StatusView(client.url, status, heading=heading, link=client.dashboard_link)

        self._display(run_sync(connect()))

    @line_magic
    def crowdstatus(self, line: str) -> None:
        """Show the foreman's address, workers, slots and jobs.

        Usage: %crowdstatus
        """
        if line.strip():
            raise UsageError("%crowdstatus takes no arguments")
        client = self._client()
        self._display(StatusView(client.url, run_sync(client.status()), link=client.dashboard_link))

    @line_magic
    def crowddisconnect(self, line: str) -> None:
        """Disconnect from the foreman (an embedded cluster stops); does nothing when not connected.

        Usage: %crowddisconnect
        """
        if line.strip():
            raise UsageError("%crowddisconnect takes no arguments")
        run_sync(crowdcompute.disconnect())
        print("disconnected")

    # --- work --------------------------------------------------------------------

    @cell_magic
    @magic_arguments()
    @kwds(usage=_CROWDMAP_USAGE)
    @argument(
        "iterable",
        nargs="*",
        metavar="ITERABLE",
        help="a Python expression, evaluated in the notebook; it may contain spaces",
    )
    @argument(
        "-o",
        "--output",
        metavar="NAME",
        help="store the list of results in NAME (after a failure: with the errors in place)",
    )
    @argument("-f", "--function", metavar="FUNC", help="the function to map (default: the cell's last top-level def)")
    @argument("--chunksize", metavar="N", type=int, help="items per task (default: automatic)")
    @argument("--timeout", metavar="S", type=float, help="seconds a task may run before it is stopped")
    @argument(
        "--requirements",
        metavar='"PKG ..."',
        help='packages the workers install for this job, separated by spaces: --requirements "numpy>=2 scipy"',
    )
    def crowdmap(self, line: str, cell: str) -> Any:
        """Map the function the cell defines over ITERABLE on the workers, with a live progress bar.

        The cell runs here first (it defines the function); then its last
        top-level ``def``, or FUNC, is called on every item of ITERABLE on
        the workers. Text the function prints appears below, each line marked
        with its item's index. The results come back as a list in input
        order: the cell's value, or stored in NAME. Interrupting the kernel
        cancels the job.
        """
        args = self._parse_crowdmap(line)
        output = _output_name(args.output)
        expression = " ".join(args.iterable)
        source, code = compile_here(self.shell, cell)
        defined = function_names(source)
        name = args.function or (defined[-1] if defined else None)
        if name is None:
            raise UsageError(
                "the cell defines no function: write `def f(x): ...` in the cell, or name one with -f FUNC"
            )
        run_here(self.shell, code)
        func = self.shell.user_ns.get(name)
        if not callable(func):
            known = ", ".join(defined) or "none"
            raise UsageError(f"-f {name}: no function named {name!r} (functions the cell defines: {known})")
        items = self._evaluate(expression)
        client = self._client()
        self.last_job = self.last_progress = None

        async def map_items() -> list[Any]:
            requirements = None
            if args.requirements is not None:  # the quotes are still around it: shlex takes them off
                requirements = " ".join(shlex.split(args.requirements)).split()
            job = await client.submit(
                func, items, chunksize=args.chunksize, timeout=args.timeout, requirements=requirements
            )
            self.last_job = job
            self.last_progress = make_progress(job)
            return await watch_job(client, job, progress=self.last_progress)

        try:
            results = run_sync(map_items())
        except (JobCancelledError, ConnectionLostError) as exc:
            raise keep_partial_results(self.shell.user_ns, self.last_job, output, exc) from None
        job = self.last_job
        if job is not None:
            _print_stats(job)
        if output is not None:
            self.shell.user_ns[output] = results
        if job is not None and job.failed:
            first = min(job.errors)
            kept = (
                f"the results, with errors in place, are in `{output}`"
                if output
                else "use -o NAME to keep the other results"
            )
            print(f"{job.failed} of {job.total} items failed; item {first} is shown below; {kept}.")
            raise job.errors[first]
        return None if output is not None else results

    @line_magic
    @magic_arguments()
    @argument("job_id", metavar="JOB_ID", help="the id of a job submitted earlier (job.id)")
    @argument("-o", "--output", metavar="NAME", help="store the list of results in NAME")
    def crowdattach(self, line: str) -> Any:
        """Follow a job submitted earlier (before a kernel restart, say) and collect its results.

        Shows a live progress bar while the job runs; the results come back as
        a list in input order: the value of the line, or stored in NAME.
        """
        args = parse_argstring(self.crowdattach, line)
        output = _output_name(args.output)
        client = self._client()
        self.last_job = self.last_progress = None

        async def follow() -> list[Any]:
            try:
                job = await client.attach(args.job_id)
            except CrowdComputeError as exc:
                raise UsageError(f"cannot attach to job {args.job_id}: {exc}") from None
            self.last_job = job
            self.last_progress = make_progress(job)
            return await watch_job(client, job, progress=self.last_progress)

        try:
            results = run_sync(follow())
        except (JobCancelledError, ConnectionLostError) as exc:
            raise keep_partial_results(self.shell.user_ns, self.last_job, output, exc) from None
        job = self.last_job
        if output is not None:
            self.shell.user_ns[output] = results
        if job is not None and job.failed:
            first = min(job.errors)
            print(f"{job.failed} of {job.total} items failed; item {first} is shown below.")
            raise job.errors[first]
        return None if output is not None else results

    @cell_magic
    @magic_arguments()
    @argument("-o", "--output", metavar="NAME", help="store the value of the cell's last expression in NAME")
    def crowdcompute(self, line: str, cell: str) -> Any:
        """Run the cell once on a worker; its prints appear here, its last expression's value is returned.

        Only the notebook variables the cell reads are sent with it; what the
        cell assigns stays on the worker (return it, or store it with -o).
        """
        args = parse_argstring(self.crowdcompute, line)
        output = _output_name(args.output)
        # The cell's name here ("Cell In[n]" in tracebacks), and its source for our linecache.
        filename = self.shell.compile.cache(cell, self.shell.execution_count, raw_code=cell)
        check_for_worker(cell, filename)
        inputs = {name: self.shell.user_ns[name] for name in sorted(names_read(cell)) if name in self.shell.user_ns}
        client = self._client()
        self.last_job = None

        async def compute() -> Any:
            job = await client.submit(
                Apply(CellRun(f"%%crowdcompute In[{self.shell.execution_count}]")),
                [((cell, inputs, filename), {})],
                chunksize=1,
                timeout=client.task_timeout,
            )
            self.last_job = job
            (outcome,) = await watch_job(client, job, progress=None)
            return outcome

        try:
            outcome = run_sync(compute())
        except SerializationError as exc:
            raise _name_unpicklable(inputs, exc) from None
        if self.last_job is not None and self.last_job.failed and isinstance(outcome, TaskError):
            outcome.index = outcome.item_repr = None  # one cell, not an item of a list
            raise outcome
        if output is not None:
            self.shell.user_ns[output] = outcome
            return None
        return outcome

    # --- helpers -------------------------------------------------------------------

    def _parse_crowdmap(self, line: str) -> Any:
        expression, options = split_expression(line, _VALUE_OPTIONS)
        if not expression:
            raise UsageError(f"%%crowdmap needs an ITERABLE to map over: {_CROWDMAP_USAGE}")
        parser = self.crowdmap.parser
        parser.allow_abbrev = False  # "--chunk 2" is an unknown option, not --chunksize missing its value
        args = parser.parse_args([*options, "--", expression])
        try:  # the SDK's own rules and words, before the cell runs or anything is sent
            JobOptions(chunksize=args.chunksize, timeout=args.timeout).check()
        except ValueError as exc:
            raise UsageError(f"%%crowdmap: {exc}") from None
        return args

    def _evaluate(self, expression: str) -> Any:
        try:
            value = eval(compile(expression, "<ITERABLE>", "eval"), self.shell.user_global_ns, self.shell.user_ns)
        except Exception as exc:
            raise UsageError(f"cannot evaluate ITERABLE `{expression}`: {_describe_error(exc)}") from None
        if isinstance(value, (list, tuple, range)):
            return value
        try:
            return list(value)
        except Exception as exc:
            raise UsageError(f"ITERABLE `{expression}` gives no items to map over: {_describe_error(exc)}") from None

    def _client(self) -> CrowdComputeClient:
        try:
            return default_client()
        except CrowdComputeError:
            raise UsageError("not connected: run %crowdconnect first (no address: an embedded cluster)") from None

    def _display(self, view: StatusView) -> None:
        from IPython.display import display

        display(view)


def _print_stats(job: Job) -> None:
    """Where the job's time went, when that helps: a long job, or badly sized chunks (with a hint)."""
    report = job.stats.report()
    if report:
        print(report)


async def _wait_for_workers(client: CrowdComputeClient, expected: int) -> None:
    """Wait until ``expected`` workers have registered, or WORKERS_READY_TIMEOUT has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WORKERS_READY_TIMEOUT
    while loop.time() < deadline:
        status = await client.status()
        if len(status.get("workers", [])) >= expected:
            return
        await asyncio.sleep(WORKERS_READY_INTERVAL)


def _name_unpicklable(inputs: dict[str, Any], error: SerializationError) -> SerializationError:
    """The error naming the notebook variable that does not pickle, when one does not."""
    import cloudpickle

    for name, value in inputs.items():
        try:
            cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
        except Exception as exc:
            return SerializationError(f"the variable {name!r} ({type(value).__name__})", _describe_error(exc))
    return error
