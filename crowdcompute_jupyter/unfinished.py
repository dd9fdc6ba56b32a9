"""What a ``%%crowdmap`` or ``%crowdattach`` that could not finish leaves: the finished items' results.

An interrupt cancels the job; a connection lost for good leaves it on the
foreman, which goes on with it (a client that leaves does not cancel its
jobs) and, if it restarts, finds it again in its journal. Either way the
results that arrived are kept in ``-o NAME``, with the error in place of
each unfinished item, and the cell says so.
"""

from __future__ import annotations

from typing import Any

from crowdcompute.errors import ConnectionLostError, JobCancelledError
from crowdcompute.job import Job

__all__ = ["keep_partial_results"]


def keep_partial_results(
    user_ns: dict[str, Any], job: Job | None, output: str | None, error: JobCancelledError | ConnectionLostError
) -> JobCancelledError | ConnectionLostError:
    """Store the finished items' results in ``user_ns[output]`` (if given) and print what was kept.

    Returns the error for the cell to raise: for a lost connection, one
    that names the job and says how to collect it.
    """
    if job is None:
        return error
    cancelled = isinstance(error, JobCancelledError)
    if output is not None:
        user_ns[output] = job.partial_results()
        kept = f"their results are in `{output}`, with a {type(error).__name__} in place of each unfinished item" + (
            " and the errors of the failed ones" if job.failed else ""
        )
    else:
        what = "cancelled map" if cancelled else "map that lost its connection"
        kept = f"they are not kept: with -o NAME, a {what} keeps the finished items' results in NAME"
    failed = f" ({job.failed} failed)" if job.failed else ""
    ended = "The job was cancelled" if cancelled else "The connection to the foreman was lost"
    print(f"{ended} after {job.completed + job.failed} of {job.total} items{failed}; {kept}.")
    if cancelled:
        return error
    return ConnectionLostError(
        f"{error}. The foreman goes on with job {job.id} if it still runs (a foreman that restarted has its "
        f"jobs back only with --journal): once it answers, run %crowdconnect, then `%crowdattach {job.id} -o NAME` "
        "collects the job's results."
    )
