"""What a client sends for one job: the function and its chunks, encoded within the foreman's limits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .codecs.modules import WithModules, read_modules, warn_local_modules
from .codecs.outcomes import short_repr
from .codecs.pickled import Apply, dumps_chunks, dumps_function, dumps_items, dumps_pieced_chunks
from .codecs.portable import dumps_portable_function, dumps_portable_items
from .errors import SerializationError
from .options import JobOptions, chunk_size
from .sizes import RAISE_FRAME_LIMIT, format_mib
from .wire import messages as p
from .wire.constants import Serializer

__all__ = ["FRAME_HEADER_ROOM", "PIECE_SLOTS", "TASK_BYTES_TARGET", "Submission", "encode_job"]

#: Automatic chunks are made of pieces sized for this many slots, so that the foreman can
#: cut a queued chunk down to the slots it has when it hands the chunk out (workers join
#: after a client connected). A job has at most about CHUNKS_PER_SLOT * PIECE_SLOTS pieces.
PIECE_SLOTS = 256
#: Input bytes per task when ``chunksize`` is automatic: a chunk of big items is split further,
#: so that the foreman's window (Welcome.max_queued_bytes) holds several tasks.
TASK_BYTES_TARGET = 4 * 1024 * 1024
#: Bytes of a frame kept for its header when sizing payloads against the foreman's limit.
FRAME_HEADER_ROOM = 64 * 1024


@dataclass
class Submission:
    """A job ready to send: its SubmitJob, its tasks, and what the client keeps to follow it."""

    job: p.SubmitJob
    tasks: list[p.SubmitTask]
    items: list | tuple | range
    portable: bool
    serialize_seconds: float

    @property
    def job_id(self) -> str:
        return self.job.job_id


def encode_job(
    func: Callable,
    iterable: Iterable[Any],
    options: JobOptions,
    *,
    serializer: str,
    requirements: list[str],
    slots: int,
    max_frame_size: int | None,
    call: bool = False,
    ack: bool = True,
) -> Submission:
    """Serialize ``func`` and the items in chunks sized for ``slots``; raise SerializationError naming what failed.

    ``ack``: the foreman answers JobAccepted once the job is journaled.
    """
    if serializer not in p.SERIALIZERS:
        raise ValueError(f"serializer must be one of {p.SERIALIZERS}, not {serializer!r}")
    portable = serializer == Serializer.PORTABLE
    if portable and options.modules:
        raise ValueError("modules= needs the cloudpickle serializer: portable jobs send only their function's source")
    resources, labels = options.needs()
    limit = (max_frame_size or 2**31) - FRAME_HEADER_ROOM
    started = time.perf_counter()
    if portable:
        function = dumps_portable_function(func, call=call)
    else:
        bundle = read_modules(options.modules) if options.modules else None
        warn_local_modules(func, bundle.names if bundle else ())
        wrapped = Apply(func) if call else func
        function = dumps_function(WithModules(bundle, wrapped) if bundle else wrapped)
    if len(function) > limit:
        raise SerializationError(
            getattr(func, "__name__", "the function"),
            f"it serializes to {format_mib(len(function))} with what it refers to, over the foreman's limit of "
            f"{format_mib(limit)}; load big data inside the function instead of capturing it, or {RAISE_FRAME_LIMIT}",
        )
    items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
    size = options.chunksize or (1 if options.timeout is not None else chunk_size(len(items), slots))
    target = None if options.chunksize else TASK_BYTES_TARGET
    try:
        if options.chunksize or portable or size == 1:
            dump = dumps_portable_items if portable else None
            chunks: list[tuple[int, int, bytes, list[list[int]] | None]] = [
                (*chunk, None) for chunk in dumps_chunks(items, size, limit, dump, target)
            ]
        else:  # automatic: in pieces the foreman may cut between as workers join
            chunks = dumps_pieced_chunks(items, size, chunk_size(len(items), PIECE_SLOTS), limit, target)
    except SerializationError as exc:
        if call and not portable:  # item 0 is run()'s ((args), {kwargs}): name the argument instead
            raise _name_argument(items[0], exc) from exc.__cause__
        raise
    job_id = uuid.uuid4().hex
    submit = p.SubmitJob(
        job_id,
        function,
        len(chunks),
        len(items),
        options.timeout,
        options.retries or 0,
        getattr(func, "__name__", "") or "",
        options.redundancy,
        Serializer(serializer),
        ack=ack,
        resources=resources,
        labels=labels,
        requirements=requirements,
        quorum=options.quorum or 0,
        quorum_timeout=options.quorum_timeout,
    )
    tasks = [
        p.SubmitTask(job_id, n, start, count, payload, pieces)
        for n, (start, count, payload, pieces) in enumerate(chunks)
    ]
    return Submission(submit, tasks, items, portable, time.perf_counter() - started)


def _name_argument(call: Any, error: SerializationError) -> SerializationError:
    """``error`` about run()'s arguments, naming the argument that cannot be serialized, or else
    the largest one (it made them too big), instead of the ``((args), {kwargs})`` pair."""
    args, kwargs = call
    named = [(f"argument {n + 1}", value) for n, value in enumerate(args)]
    named += [(f"argument {name}=", value) for name, value in kwargs.items()]
    largest, weight = "the arguments", -1
    for what, value in named:
        what = f"{what} ({short_repr(value)})"
        try:
            size = len(dumps_items([value]))
        except SerializationError as exc:
            return SerializationError(what, exc.reason)
        if size > weight:
            largest, weight = what, size
    return SerializationError(largest, error.reason)
