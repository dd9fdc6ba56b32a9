"""The outcome format every codec shares: ``(values, errors)``.

A worker runs a chunk of items and reports its outcomes as a list with one
value per item (None where the item failed) and a dict from the failed items'
offsets to their errors, each a dict with the remote exception's type name,
module, message and traceback text (and a pickle of it when it pickles). A
flat list of values is the cheapest thing to pickle when every item succeeds.
cloudpickle jobs pickle the pair; portable jobs write it as JSON. The foreman
never calls anything here.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import cloudpickle

from ..errors import CrowdComputeError, SerializationError, UntrustedPayloadError
from ..tracebacks import format_user_traceback
from ..wire.blobs import parse_reference
from ..wire.framing import Pieces
from . import buffers

__all__ = [
    "ITEM_REPR_LIMIT",
    "PICKLE_PROTOCOL",
    "decode_outcomes",
    "describe_exception",
    "dumps_outcomes",
    "loads_portable_outcomes",
    "short_repr",
]

PICKLE_PROTOCOL = 5
#: Longest repr of a failing input that an error message shows.
ITEM_REPR_LIMIT = 80

Outcomes = tuple[list[Any], dict[int, Any]]


def short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= ITEM_REPR_LIMIT else text[: ITEM_REPR_LIMIT - 3] + "..."


def describe_exception(exc: BaseException, pickled: bool = True) -> dict:
    """The remote exception as plain data, plus a pickle of it when it pickles (and ``pickled``)."""
    try:
        data = cloudpickle.dumps(exc, protocol=PICKLE_PROTOCOL) if pickled else None
    except Exception:
        data = None
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": format_user_traceback(exc),
        "exception": data,
    }


def dumps_outcomes(values: list, errors: dict[int, Any]) -> bytes | Pieces:
    """Pickle ``(values, errors)``: plain pickle when it can (fast), cloudpickle when it must;
    a value that pickles with neither becomes its item's error. Big buffers travel out of
    band (:mod:`.buffers`)."""
    try:
        return buffers.dumps((values, errors), pickle.Pickler)
    except Exception:
        pass
    try:
        return buffers.dumps((values, errors), cloudpickle.Pickler)
    except Exception:
        pass
    for offset, value in enumerate(values):
        if offset in errors:
            continue
        try:
            cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
        except Exception as exc:
            error = SerializationError(f"the result ({type(value).__name__})", f"{type(exc).__name__}: {exc}")
            values[offset] = None
            errors[offset] = describe_exception(error)
    return buffers.dumps((values, errors), cloudpickle.Pickler)


def loads_portable_outcomes(payload: bytes) -> tuple[list[Any], dict[int, Any]]:
    """A portable task's ``(values, errors)``: JSON ``{"values": [...], "errors": {"offset": {...}}}``."""
    outcomes = json.loads(bytes(payload))
    return outcomes["values"], {int(offset): error for offset, error in outcomes["errors"].items()}


#: What a result may hold when workers are not trusted: plain data and numpy arrays.
_PLAIN = {
    ("builtins", name)
    for name in (
        "list",
        "dict",
        "tuple",
        "set",
        "frozenset",
        "int",
        "float",
        "complex",
        "str",
        "bytes",
        "bytearray",
        "bool",
        "slice",
        "range",
    )
} | {
    (module, name)
    for module in (
        "numpy",
        "numpy.core.multiarray",
        "numpy._core.multiarray",
        "numpy.core.numeric",
        "numpy._core.numeric",
    )
    for name in ("ndarray", "dtype", "_reconstruct", "_frombuffer", "scalar")
}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: anything that would import or call other code is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        what = f"{module}.{name}"
        if module.startswith("cloudpickle"):  # how cloudpickle rebuilds a class or function sent by value
            what = "a class or function defined in __main__ or a notebook"
        raise UntrustedPayloadError(
            f"a worker's result refers to {what}, which is not plain data; with trust_workers=False "
            "results may hold only builtin containers and scalars and numpy arrays (return those, or pass "
            "trust_workers=True to the job if you trust the workers that ran it)"
        )


def decode_outcomes(
    payload: bytes, count: int, trusted: bool = True, portable: bool = False
) -> tuple[list[Any], dict[int, Any]]:
    """A task's ``(values, errors)`` for ``count`` items; never raises.

    A payload that cannot be decoded (or, untrusted, holds more than plain
    data, or has the wrong shape) becomes an UntrustedPayloadError for each item.
    """
    try:
        if parse_reference(payload) is not None:  # the link could not read it (see crowdcompute.link)
            raise UntrustedPayloadError(
                "the result's payload file in the foreman's folder could not be read here (it is gone, "
                "or this process does not share the foreman's files)"
            )
        if portable:  # JSON: plain data whoever sent it
            outcomes = loads_portable_outcomes(payload)
        else:
            outcomes = buffers.loads(payload, pickle.Unpickler if trusted else _PlainUnpickler)
        if not (
            isinstance(outcomes, tuple)
            and len(outcomes) == 2
            and isinstance(outcomes[0], list)
            and len(outcomes[0]) == count
            and isinstance(outcomes[1], dict)
            and all(isinstance(k, int) and 0 <= k < count for k in outcomes[1])
        ):
            raise UntrustedPayloadError(f"a worker sent a result that is not {count} outcomes")
    except CrowdComputeError as exc:
        reason = str(exc)
    except Exception as exc:  # e.g. a class this process cannot import
        reason = f"cannot decode a worker's result here: {type(exc).__name__}: {exc}"
    else:
        return outcomes
    return [None] * count, {offset: UntrustedPayloadError(reason) for offset in range(count)}
