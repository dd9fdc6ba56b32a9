"""The worker's execution loop: call the job's function on each item of a task.

Runs inside a task process. Outcomes are reported in the shared
``(values, errors)`` format of :mod:`crowdcompute.codecs.outcomes`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from crowdcompute.codecs.outcomes import describe_exception, dumps_outcomes
from crowdcompute.wire.framing import Pieces

__all__ = ["USER_ERRORS", "OnItem", "module_hint", "run_items", "run_portable"]


#: Called before each item with its offset and the errors so far (offset -> error dict).
OnItem = Callable[[int, dict], None]


#: What the function raised is its item's error: any exception, and ``sys.exit()`` or
#: ``raise KeyboardInterrupt`` too (the function raised; its process did not crash). Not
#: worker.limits.LimitBroken, which ends the task process. (A real SIGINT never reaches the
#: function: task processes ignore it, see worker.child.main.)
USER_ERRORS = (Exception, SystemExit, KeyboardInterrupt)


def run_items(func: Callable, items: Iterable, on_item: OnItem | None = None) -> tuple[bytes | Pieces, int]:
    """Call ``func`` on each item; return (pickled ``(values, errors)``, number that raised)."""
    values: list[Any] = []
    errors: dict[int, dict] = {}
    append = values.append
    pid = os.getpid()
    for offset, item in enumerate(items):
        if on_item is not None:
            on_item(offset, errors)
        try:
            append(func(item))
        except USER_ERRORS as exc:  # the user's error travels back
            if os.getpid() != pid:  # a copy the function forked ends here (sys.exit() in it, say)
                raise
            exc.__traceback__ = exc.__traceback__.tb_next if exc.__traceback__ else None
            hint = module_hint(exc)
            if hint and hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(hint.lstrip("; "))
            append(None)
            errors[offset] = describe_exception(exc)
    return dumps_outcomes(values, errors), len(errors)


def module_hint(exc: BaseException) -> str:
    """What to do about a module this worker lacks ("" for other errors)."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        return (
            f"; if {top} is your own module, pass modules=[{top}] to send it with the job, "
            f"or requirements=[...] if it is a package"
        )
    return ""


def run_portable(
    func: Callable, payload: bytes | bytearray | memoryview, count: int, on_item: OnItem | None = None
) -> tuple[bytes, int]:
    """Call ``func`` on each JSON item; return (JSON outcomes, number that failed)."""
    values: list[Any] = []
    errors: dict[int, dict] = {}
    try:
        items = json.loads(bytes(payload))
    except ValueError as exc:
        error = describe_exception(ValueError(f"the task's input is not JSON: {exc}"), pickled=False)
        items, errors = [], {offset: error for offset in range(count)}
        values = [None] * count
    pid = os.getpid()
    for offset, item in enumerate(items):
        if on_item is not None:
            on_item(offset, errors)
        try:
            value = func(item)
            json.dumps(value)  # a result that is not JSON fails here, as this item's error
            values.append(value)
        except USER_ERRORS as exc:
            if os.getpid() != pid:  # a copy the function forked ends here
                raise
            values.append(None)
            errors[offset] = describe_exception(exc, pickled=False)  # JSON: no pickle
    return json.dumps({"values": values, "errors": errors}).encode(), len(errors)
