"""Message classes: the base class, the decorator that registers them, and how headers are
written, read and checked. No I/O.

A message is a frozen dataclass registered with :func:`message`: its
``bytes`` fields travel as raw payloads after the header (see
:mod:`crowdcompute.wire.framing`), every other field in the header, a JSON
object, type-checked on the way in by :func:`parse_header`. Anything that
does not fit raises one :class:`ProtocolError` whose text says what was wrong.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import json.scanner
import math
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10: the marker only matters to type checkers

    def dataclass_transform(**kwargs: Any) -> Callable[[_T], _T]:
        return lambda decorated: decorated


from ..errors import ProtocolError

__all__ = [
    "MESSAGES",
    "Message",
    "build_message",
    "decode_header",
    "encode_header",
    "message",
    "parse_header",
    "require",
]

_T = TypeVar("_T")
#: Every registered message class, by its type tag.
MESSAGES: dict[str, type[Message]] = {}
_EVALUATED: dict[tuple[str, str], Any] = {}  # (module, annotation text) -> the type it names
_NO_SIZES: list[int] = []  # (never changed)


@dataclass(frozen=True)
class Message:
    """Base of every message: subclasses are dataclasses with a ``TYPE`` tag."""

    TYPE: ClassVar[str]
    _checks: ClassVar[dict[str, Callable[[Any], bool]]]
    _payloads: ClassVar[tuple[str, ...]]
    _enums: ClassVar[dict[str, type[enum.Enum]]]
    _header: ClassVar[tuple[str, ...]]  # the fields that travel in the header, in order
    _defaults: ClassVar[dict[str, Any]]  # header fields with a default: left out of a header while they hold it

    def validate(self) -> None:
        """Check field values beyond their types; raise ProtocolError."""


M = TypeVar("M", bound=Message)


@dataclass_transform(frozen_default=True)
def message(cls: type[M]) -> type[M]:
    """Class decorator: make ``cls`` a frozen dataclass and register its TYPE."""
    cls = dataclass(frozen=True)(cls)
    hints = _field_types(cls)
    checks: dict[str, Callable[[Any], bool]] = {}
    payloads = []
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if hint is bytes:
            payloads.append(f.name)
            continue
        checks[f.name] = _type_check(hint)
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    cls._checks = checks
    cls._header = tuple(checks)
    cls._defaults = defaults
    if not hasattr(cls, "__post_init__"):
        cls.__init__ = _quick_init(cls)  # type: ignore[method-assign]
    cls._enums = {name: hint for name, hint in hints.items() if isinstance(hint, type) and issubclass(hint, enum.Enum)}
    cls._payloads = tuple(payloads)
    if cls.TYPE in MESSAGES:
        raise RuntimeError(f"message type {cls.TYPE!r} defined twice")
    MESSAGES[cls.TYPE] = cls
    return cls


def _quick_init(cls: type) -> Callable[..., None]:
    """An ``__init__`` for the frozen dataclass ``cls`` that stores its fields straight into the
    instance's ``__dict__``, with the dataclass's signature and defaults.

    The one dataclasses writes calls ``object.__setattr__`` once per field (the class's own
    ``__setattr__`` refuses, being frozen): for a TaskResult, three times the cost of this one,
    and the foreman makes four messages per task (issue 12). Instances stay frozen.
    """
    params = []
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    lines = ["    d = self.__dict__"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_FACTORY")
            lines.append(f"    if {f.name} is _FACTORY: {f.name} = _factory_{f.name}()")
        else:
            params.append(f.name)
        lines.append(f"    d[{f.name!r}] = {f.name}")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(lines), namespace)  # our own field names
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


_FACTORY = object()  # a field with a default factory that was not given


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> type, its annotation evaluated in the class's module (``typing.get_type_hints``
    for the fields alone, each annotation text evaluated once for every message: every process
    defines them all at import)."""
    namespace = vars(sys.modules[cls.__module__])
    types = {}
    for f in dataclasses.fields(cls):
        hint = f.type
        if isinstance(hint, str):
            key = (cls.__module__, hint)
            if key not in _EVALUATED:
                _EVALUATED[key] = eval(hint, namespace)  # our own annotations
            hint = _EVALUATED[key]
        types[f.name] = hint
    return types


def _type_check(hint: Any) -> Callable[[Any], bool]:
    """A predicate saying whether a decoded JSON value fits ``hint``.

    JSON values are of exactly these types (``type(v) is int`` leaves out True
    and False, which are bools): checking the type itself is the cheapest test,
    and every message's every field is checked.
    """
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = {member.value for member in hint}
        return lambda v: (type(v) is str or type(v) is int) and v in values
    if hint is bool:
        return lambda v: type(v) is bool
    if hint is int:
        return lambda v: type(v) is int
    if hint is float:
        return lambda v: type(v) is float or type(v) is int
    if hint is str:
        return lambda v: type(v) is str
    if hint is dict or typing.get_origin(hint) is dict:
        return lambda v: type(v) is dict
    if hint is list or typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        item_ok: Callable[[Any], bool] = (lambda v: True) if item is Any else _type_check(item)
        return lambda v: type(v) is list and all(item_ok(x) for x in v)
    args = typing.get_args(hint)
    if args and type(None) in args:  # X | None
        inner = [a for a in args if a is not type(None)]
        inner_ok = _type_check(inner[0])
        return lambda v: v is None or inner_ok(v)
    raise TypeError(f"unsupported field type {hint!r}")


def _wrong_field(kind: str, name: str, value: Any, enum_type: type[enum.Enum] | None) -> str:
    """The sentence for a header field whose value does not fit its type."""
    if enum_type is not None and isinstance(value, (str, int)) and not isinstance(value, bool):
        allowed = ", ".join(repr(member.value) for member in enum_type)
        return f"{kind}: field {name!r} has unknown value {value!r} (expected one of {allowed})"
    return f"{kind}: field {name!r} has the wrong type ({type(value).__name__})"


def _finite_number(text: str) -> float:
    """Parse a JSON number; NaN and infinities are not JSON and no field may hold one."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _header_encoder() -> Callable[[dict[str, Any]], str]:
    """One JSON encoder for every header, made once.

    ``json.dumps(..., separators=...)`` builds an encoder, and then its C
    encoder, on every call: a fifth of the foreman's CPU per task (issue 12).
    Headers are plain data made by ``encode_parts``, so the C encoder needs no
    check for cycles; where there is no C encoder, the pure one is used.
    """
    encoder = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    try:
        chunks = make(None, encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
        sample = {"type": "x", "n": [1, 2.5, None, True], "s": "é\n"}
        if "".join(chunks(sample, 0)) != encoder.encode(sample):
            return encoder.encode
    except TypeError:  # another signature in this Python
        return encoder.encode
    return lambda header: "".join(chunks(header, 0))


encode_header = _header_encoder()
# One decoder for every header: json.loads given options builds a new one on every call.
_decoder = json.JSONDecoder(parse_float=_finite_number, parse_constant=_finite_number)
_scan_json: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(_decoder)  # type: ignore[arg-type]


def decode_header(raw: bytes) -> Any:
    """A header's JSON value. Ours are UTF-8 objects with no blank around them: those go
    straight to the C scanner (``JSONDecoder.decode`` is Python around it, a tenth of the
    cost of decoding a small message); anything else to the full decoder, as before."""
    if raw[:1] != b"{" or raw[1:2] == b"\x00" or raw[-1:] != b"}":
        return _decoder.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    text = raw.decode("utf-8", "surrogatepass")
    try:
        value, end = _scan_json(text, 0)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    if end != len(text):
        return _decoder.decode(text)  # (raises the decoder's own error for what follows)
    return value


def require(condition: bool, sentence: str) -> None:
    """Raise ProtocolError with ``sentence`` unless ``condition``."""
    if not condition:
        raise ProtocolError(sentence)


def parse_header(header: dict[str, Any]) -> tuple[type[Message], str, list[int], dict[str, Any]]:
    """A message's header (a dict, consumed) checked: its class, type tag, payload sizes and
    header fields. Raises ProtocolError saying what was wrong."""
    kind = header.pop("type", None)
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    sizes = header.pop("sizes", _NO_SIZES)
    if type(sizes) is not list or len(sizes) != len(cls._payloads) or not all(type(n) is int and n >= 0 for n in sizes):
        raise ProtocolError(f"{kind}: 'sizes' must list {len(cls._payloads)} payload lengths")
    checks = cls._checks
    for name, value in header.items():  # what is left of the header are the fields
        check = checks.get(name)
        if check is None:
            raise ProtocolError(f"{kind}: unknown fields {sorted(set(header) - set(checks))}")
        if not check(value):
            raise ProtocolError(_wrong_field(kind, name, value, cls._enums.get(name)))
    for name, enum_type in cls._enums.items():
        if name in header:
            header[name] = enum_type(header[name])
    return cls, kind, sizes, header


def build_message(cls: type[Message], kind: str, fields: dict[str, Any]) -> Message:
    """The message of class ``cls`` with these fields, validated; raises ProtocolError naming
    the fields that are missing, or what ``validate`` found wrong."""
    try:
        msg = cls(**fields)
    except TypeError as exc:
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in fields and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        raise ProtocolError(f"{kind}: missing fields {missing}") from exc
    msg.validate()
    return msg
