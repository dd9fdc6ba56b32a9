"""Pure tests of the wire protocol: no sockets, no processes.

The foreman trusts nothing it reads, so ``decode`` must turn every malformed
frame into one ProtocolError whose sentence says what was wrong, and never
into another exception that would kill a handler. Round trips cover every
registered message type, so a new type is tested the day it is added.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowdcompute.errors import CrowdComputeError, ProtocolError
from crowdcompute.wire import messages as p
from crowdcompute.wire.constants import ErrorKind

#: Every byte value, so a payload that base64 or text decoding would mangle shows.
RAW = bytes(range(256)) * 3

#: Hand-written messages with every field set away from its default.
SAMPLES: dict[str, p.Message] = {
    m.TYPE: m
    for m in [
        p.Hello("worker", "tök€n", p.PROTOCOL_VERSION, name="w-1", slots=4, python="3.11.7"),
        p.Welcome(p.PROTOCOL_VERSION, "c7", workers=2, slots=8),
        p.Refused("auth", "the foreman refused this client token"),
        p.SubmitJob("job-1", RAW, total_tasks=3, total_items=25, task_timeout=2.5, retries=2, name="square"),
        p.SubmitTask("job-1", 2, 20, 5, RAW[::-1]),
        p.CancelJob("job-1"),
        p.StatusRequest(),
        p.JobAccepted("job-1"),
        p.TaskResult("job-1", 2, 20, 5, 1, RAW),
        p.TaskFailed("job-1", 2, 20, 5, "crashed", "killed by SIGKILL", attempts=3),
        p.TaskOutput("job-1", 2, 21, "stderr", "hello\nwörld\n"),
        p.StatusReply.of({"workers": [{"name": "w", "slots": 2, "busy": 1}], "jobs": []}),
        p.RequestError("job-1", "no such job for this client"),
        p.AssignTask("job-1", 2, 1, 20, 5, RAW, function=RAW[::-1], serializer="portable", requirements=["numpy"]),
        p.AssignTask("job-1", 2, 4, 20, 5, RAW, task_timeout=0.5),
        p.ReleaseJob("job-1"),
        p.AckResults("job-1", [0, 2, 3]),
        p.AttachJob("job-1", resume=True),
        p.TaskDone("job-1", 2, 4, 0, RAW),
        p.TaskCrashed("job-1", 2, 4, "timeout", "ran past 0.5 s"),
    ]
}

#: A value of each header field type, for message types without a hand sample.
_AUTO_VALUES = {str: "x-1", int: 3, float: 1.5, dict: {"k": [1]}, bool: True, bytes: b"\x00\xffraw"}


def sample(cls: type[p.Message]) -> p.Message:
    """The hand sample of ``cls``, else one built from its field types."""
    if cls.TYPE in SAMPLES:
        return SAMPLES[cls.TYPE]
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        base = typing.get_origin(base) or base
        if isinstance(base, type) and issubclass(base, enum.Enum):
            values[f.name] = next(iter(base))
        else:
            values[f.name] = _AUTO_VALUES[base] if base in _AUTO_VALUES else []
    return cls(**values)


def frame(header: dict | bytes, *payloads: bytes) -> bytes:
    """A frame built by hand: length prefix, header (dict or raw bytes), payloads."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("!I", len(head)) + head + b"".join(payloads)


def split(data: bytes) -> tuple[dict, bytes]:
    """The header of a frame as a dict, and the bytes after it."""
    (size,) = struct.unpack_from("!I", data)
    return json.loads(data[4 : 4 + size]), data[4 + size :]


def assert_refused(data, *words: str) -> ProtocolError:
    """decode(data) raises ProtocolError whose text contains each of ``words``."""
    with pytest.raises(ProtocolError) as info:
        p.decode(data)
    text = str(info.value)
    for word in words:
        assert word in text, f"{text!r} does not mention {word!r}"
    return info.value


# --- round trips -----------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(p._MESSAGES))
def test_every_message_type_round_trips(kind):
    msg = sample(p._MESSAGES[kind])
    msg.validate()
    decoded = p.decode(p.encode(msg))
    assert type(decoded) is type(msg)
    assert decoded == msg


@pytest.mark.parametrize("kind", sorted(p._MESSAGES))
def test_decode_accepts_bytearray_and_memoryview(kind):
    data = p.encode(sample(p._MESSAGES[kind]))
    assert p.decode(bytearray(data)) == p.decode(memoryview(data)) == p.decode(data)


def test_defaults_may_be_left_out_of_the_header():
    assert p.decode(frame({"type": "welcome", "protocol_version": 1, "session_id": "c1"})) == p.Welcome(1, "c1")


def test_none_is_a_valid_optional_float():
    msg = p.AssignTask("j", 0, 1, 0, 1, b"x", task_timeout=None)
    assert p.decode(p.encode(msg)).task_timeout is None


def test_int_is_accepted_where_a_float_is_expected():
    msg = p.decode(
        frame(
            {
                "type": "assign_task",
                "job_id": "j",
                "task_id": 0,
                "attempt": 1,
                "first_index": 0,
                "count": 1,
                "task_timeout": 3,
                "sizes": [1, 0],
            },
            b"x",
        )
    )
    assert msg.task_timeout == 3


# --- payloads travel raw -----------------------------------------------------


def test_payloads_follow_the_header_as_raw_bytes():
    data = p.encode(p.TaskDone("job-1", 2, 4, 0, RAW, seconds=1.5))
    header, rest = split(data)
    assert rest == RAW  # byte for byte, after the header: no base64, no escaping
    assert header == {  # fields that hold their default (waited, setup) are left out
        "type": "task_done",
        "job_id": "job-1",
        "task_id": 2,
        "attempt": 4,
        "failed": 0,
        "seconds": 1.5,
        "sizes": [len(RAW)],
    }
    assert len(data) == 4 + len(json.dumps(header, separators=(",", ":"))) + len(RAW)


def test_several_payloads_keep_their_order_and_sizes():
    function, payload = b"F" * 7, b"P" * 3
    data = p.encode(p.SubmitJob("j", function, 1, 1))
    header, rest = split(data)
    assert header["sizes"] == [7] and rest == function
    data = p.encode(p.AssignTask("j", 0, 1, 0, 1, payload, function=function))
    header, rest = split(data)
    assert header["sizes"] == [3, 7] and rest == payload + function
    assert p.decode(data).function == function
    header, rest = split(p.encode(p.AssignTask("j", 0, 1, 0, 1, payload)))
    assert header["sizes"] == [3, 0] and rest == payload  # no function: the worker holds it


def test_empty_and_large_payloads_round_trip():
    for payload in (b"", bytes(3 * 1024 * 1024)):
        msg = p.TaskResult("j", 0, 0, 1, 0, payload)
        data = p.encode(msg)
        assert len(data) < len(payload) + 300  # a header of a few fields: nothing grows with the payload but its bytes
        assert p.decode(data) == msg


def test_message_without_payloads_has_no_sizes():
    header, rest = split(p.encode(p.CancelJob("j")))
    assert header == {"type": "cancel_job", "job_id": "j"} and rest == b""


# --- each way a frame can be wrong ---------------------------------------------


def test_text_frame_is_refused():
    assert_refused(p.encode(p.CancelJob("j")).decode("latin-1"), "text frame")


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00"])
def test_frame_too_short_for_a_length(data):
    assert_refused(data, f"{len(data)} bytes", "too short")


def test_truncated_header():
    data = p.encode(p.CancelJob("job-1"))
    assert_refused(data[:-3], "truncated")


def test_header_length_past_the_limit():
    data = struct.pack("!I", p.MAX_HEADER_SIZE + 1) + b"{}"
    assert_refused(data, str(p.MAX_HEADER_SIZE + 1), "exceeds")


@pytest.mark.parametrize("head", [b"{not json", b"\xff\xfe\xfd", b"", b'{"type": "cancel_job"'])
def test_header_not_json(head):
    assert_refused(frame(head), "not valid JSON")


def test_header_nested_too_deep_is_not_json_either():
    # json.loads raises RecursionError here, not ValueError: it must still be a ProtocolError.
    assert_refused(frame(b"[" * 50_000), "header")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_not_json(number):
    # Python's json reads these; a task_timeout of Infinity once reached a worker and hung its slot.
    head = (
        '{"type":"assign_task","job_id":"j","task_id":0,"attempt":1,"first_index":0,"count":1,'
        f'"task_timeout":{number},"sizes":[1]}}'
    ).encode()
    assert_refused(frame(head, b"x"), "not valid JSON", "not a finite number")


@pytest.mark.parametrize("head", [[], "cancel_job", 7, None, True])
def test_header_not_an_object(head):
    assert_refused(frame(json.dumps(head).encode()), "JSON object")


@pytest.mark.parametrize("kind", ["launch_missiles", None, 3, ["hello"], ""])
def test_unknown_or_missing_type(kind):
    header = {"job_id": "j"} if kind is None else {"type": kind, "job_id": "j"}
    assert_refused(frame(header), "unknown message type", repr(kind))


@pytest.mark.parametrize(
    "field, value, type_name",
    [
        ("task_id", "2", "str"),
        ("task_id", 2.0, "float"),
        ("task_id", True, "bool"),  # bool is an int in Python, not on the wire
        ("attempt", False, "bool"),
        ("job_id", 17, "int"),
        ("failed", None, "NoneType"),
        ("job_id", ["j"], "list"),
    ],
)
def test_wrong_field_types(field, value, type_name):
    header = {"type": "task_done", "job_id": "j", "task_id": 2, "attempt": 1, "failed": 0, "sizes": [1]}
    header[field] = value
    assert_refused(frame(header, b"x"), "task_done", repr(field), "wrong type", type_name)


def test_bool_is_not_a_float_and_a_dict_is_not_a_string():
    header = {
        "type": "assign_task",
        "job_id": "j",
        "task_id": 0,
        "attempt": 1,
        "first_index": 0,
        "count": 1,
        "task_timeout": True,
        "sizes": [1, 0],
    }
    assert_refused(frame(header, b"x"), "'task_timeout'", "bool")
    assert_refused(frame({"type": "cancel_job", "job_id": {"all": "good"}}), "'job_id'", "dict")
    assert_refused(
        frame({"type": "hello", "role": "client", "token": "t", "protocol_version": "1"}), "'protocol_version'", "str"
    )


def test_missing_fields_are_named():
    err = assert_refused(frame({"type": "task_failed", "job_id": "j", "task_id": 1}), "task_failed", "missing")
    for name in ("first_index", "count", "error", "reason"):
        assert name in str(err)
    assert "attempts" not in str(err)  # it has a default


def test_unknown_fields_are_named():
    assert_refused(
        frame({"type": "cancel_job", "job_id": "j", "force": True, "zzz": 1}),
        "cancel_job",
        "unknown fields",
        "'force'",
        "'zzz'",
    )


def test_payload_field_in_the_header_is_unknown():
    header = {"type": "submit_job", "job_id": "j", "function": "aGVsbG8=", "total_tasks": 1, "total_items": 1}
    header["sizes"] = [0]
    assert_refused(frame(header), "unknown fields", "'function'")


@pytest.mark.parametrize(
    "sizes",
    [None, "5", [], [1, 2], [-1], [True], [1.0]],
    ids=["missing", "string", "empty", "too-many", "negative", "bool", "float"],
)
def test_sizes_malformed(sizes):
    header = {"type": "task_done", "job_id": "j", "task_id": 2, "attempt": 1, "failed": 0}
    if sizes is not None:
        header["sizes"] = sizes
    assert_refused(frame(header, b"x"), "task_done", "'sizes'", "1 payload")


def test_sizes_on_a_message_without_payloads():
    assert_refused(frame({"type": "cancel_job", "job_id": "j", "sizes": [0]}), "cancel_job", "'sizes'", "0 payload")


@pytest.mark.parametrize("following", [3, 5], ids=["short", "long"])
def test_sizes_disagree_with_the_bytes_that_follow(following):
    header = {"type": "task_done", "job_id": "j", "task_id": 2, "attempt": 1, "failed": 0, "sizes": [4]}
    assert_refused(frame(header, b"x" * following), "task_done", "4 bytes", f"{following} follow")


def test_bytes_after_a_message_without_payloads():
    assert_refused(frame({"type": "cancel_job", "job_id": "j"}, b"junk"), "0 bytes", "4 follow")


@pytest.mark.parametrize(
    "msg_header, words",
    [
        ({"type": "hello", "role": "admin", "token": "t", "protocol_version": 1}, ["role", "'admin'"]),
        ({"type": "hello", "role": "worker", "token": "t", "protocol_version": 1, "slots": -2}, ["slots"]),
        ({"type": "submit_job", "job_id": "", "total_tasks": 1, "total_items": 1, "sizes": [0]}, ["job_id"]),
        ({"type": "submit_job", "job_id": "j", "total_tasks": -1, "total_items": 1, "sizes": [0]}, ["total_tasks"]),
        (
            {"type": "submit_job", "job_id": "j", "total_tasks": 1, "total_items": 1, "retries": -1, "sizes": [0]},
            ["retries"],
        ),
        (
            {"type": "submit_job", "job_id": "j", "total_tasks": 1, "total_items": 1, "task_timeout": 0, "sizes": [0]},
            ["task_timeout"],
        ),
        (
            {"type": "submit_task", "job_id": "j", "task_id": 0, "first_index": 0, "count": 0, "sizes": [0]},
            ["at least one item"],
        ),
        (
            {"type": "submit_task", "job_id": "j", "task_id": -1, "first_index": 0, "count": 1, "sizes": [0]},
            ["task_id"],
        ),
        (
            {"type": "task_crashed", "job_id": "j", "task_id": 0, "attempt": 1, "error": "oops", "reason": ""},
            ["'oops'"],
        ),
    ],
)
def test_values_out_of_range(msg_header, words):
    assert_refused(frame(msg_header), *words)


def test_protocol_error_is_a_crowdcompute_error():
    assert issubclass(ProtocolError, CrowdComputeError)


# --- property: decode returns a Message or raises ProtocolError, nothing else ------------------


def decode_or_refuse(data) -> None:
    """The property: a Message that re-encodes to an equal Message, or a ProtocolError."""
    try:
        msg = p.decode(data)
    except ProtocolError as exc:
        assert str(exc), "a ProtocolError must say what was wrong"
        return
    assert isinstance(msg, p.Message)
    assert p.decode(p.encode(msg)) == msg


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_FRAMES = st.sampled_from(sorted(p._MESSAGES)).map(lambda kind: p.encode(sample(p._MESSAGES[kind])))


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    decode_or_refuse(data)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_behind_a_plausible_length(data):
    decode_or_refuse(struct.pack("!I", len(data)) + data)


@FUZZ
@given(VALID_FRAMES, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_valid_frames_with_bytes_changed(data, changes):
    mutated = bytearray(data)
    for position, value in changes:
        mutated[position % len(mutated)] = value
    decode_or_refuse(bytes(mutated))


@FUZZ
@given(VALID_FRAMES, st.integers(0, 10_000), st.binary(max_size=8), st.booleans())
def test_valid_frames_cut_or_grown(data, position, extra, cut):
    position %= len(data) + 1
    decode_or_refuse(data[:position] if cut else data[:position] + extra + data[position:])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def plausible_headers(draw) -> bytes:
    """Frames whose header names a real type and mostly real fields, with any JSON values."""
    cls = p._MESSAGES[draw(st.sampled_from(sorted(p._MESSAGES)))]
    names = [f.name for f in dataclasses.fields(cls)] + ["sizes", "extra"]
    header = {"type": cls.TYPE}
    valid = dataclasses.asdict(sample(cls))
    for name in names:
        choice = draw(st.sampled_from(["keep", "keep", "drop", "any"]))
        if choice == "any":
            header[name] = draw(JSON_VALUES)
        elif choice == "keep" and name in valid and name not in cls._payloads:
            header[name] = valid[name]
    if "sizes" not in header and draw(st.booleans()):
        header["sizes"] = [len(valid[n]) for n in cls._payloads]
    tail = b"".join(valid[n] for n in cls._payloads) if draw(st.booleans()) else draw(st.binary(max_size=8))
    return frame(json.dumps(header).encode(), tail)


@FUZZ
@given(plausible_headers())
def test_plausible_headers_with_any_values(data):
    decode_or_refuse(data)


def test_an_unknown_error_kind_is_refused_naming_the_field():
    header = {
        "type": "task_failed",
        "job_id": "j",
        "task_id": 0,
        "first_index": 0,
        "count": 1,
        "error": "exploded",
        "reason": "r",
    }
    with pytest.raises(ProtocolError) as caught:
        p.decode(frame(header))
    assert "'error'" in str(caught.value) and "'exploded'" in str(caught.value) and "'timeout'" in str(caught.value)


def test_an_enum_field_decodes_to_its_member():
    msg = p.decode(p.encode(p.TaskFailed("j", 0, 0, 1, ErrorKind.TIMEOUT, "slow")))
    assert msg.error is ErrorKind.TIMEOUT


def test_a_small_frame_goes_as_one_buffer_and_a_big_one_as_fragments_that_decode_the_same():
    from crowdcompute.wire.constants import FRAGMENT_SIZE

    small = p.SubmitTask("job-1", 3, 30, 10, b"x" * 1000)
    sent = p.outgoing(p.encode_parts(small), FRAGMENT_SIZE)
    assert isinstance(sent, bytes) and p.decode(sent) == small  # one websocket message: one write
    alone = p.encode_parts(p.CancelJob("job-1"))
    assert p.outgoing(alone, FRAGMENT_SIZE) is alone[0]  # a header alone is not copied
    payload = b"y" * (p.SMALL_MESSAGE + FRAGMENT_SIZE)
    big = p.TaskDone("job-1", 2, 1, 0, payload)
    pieces = p.outgoing(p.encode_parts(big), FRAGMENT_SIZE)
    assert isinstance(pieces, list) and max(len(piece) for piece in pieces) <= FRAGMENT_SIZE
    assert p.decode_parts(pieces) == big


# --- batches: several messages in one frame ----------------------------------------------------

#: Message types that may travel in a batch (the handshake's never do).
BATCHABLE = sorted(kind for kind in p._MESSAGES if kind not in ("hello", "welcome", "refused"))


def test_a_batch_holds_messages_of_any_kind_in_order_with_their_payloads():
    messages = tuple(sample(p._MESSAGES[kind]) for kind in BATCHABLE)
    data = p.encode(p.Batch(messages))
    decoded = p.decode(data)
    assert isinstance(decoded, p.Batch) and decoded == p.Batch(messages)
    assert p.unbatch(decoded) == messages and p.unbatch(messages[0]) == (messages[0],)
    header, rest = split(data)  # each message's header as it would be alone; payloads follow in order
    assert [h["type"] for h in header["messages"]] == [m.TYPE for m in messages]
    assert rest == b"".join(bytes(getattr(m, name)) for m in messages for name in m._payloads)


def test_frames_joined_into_a_batch_read_as_the_batch_and_batches_never_nest():
    one, two, three = p.CancelJob("j"), p.SubmitTask("j", 0, 0, 1, RAW), p.TaskDone("j", 0, 1, 0, b"")
    joined = p.join_frames([p.encode_parts(one), p.encode_parts(p.Batch((two, three)))])
    assert p.decode(b"".join(joined)) == p.Batch((one, two, three))
    assert p.join_frames([p.encode_parts(one)]) == p.encode_parts(one)  # one frame stays as it is


@pytest.mark.parametrize(
    "header, payload, words",
    [
        ({"type": "batch"}, b"", ["batch", "'messages'"]),
        ({"type": "batch", "messages": []}, b"", ["one or more"]),
        ({"type": "batch", "messages": {"type": "cancel_job"}}, b"", ["'messages'"]),
        ({"type": "batch", "messages": [7]}, b"", ["message 1 is not a JSON object"]),
        ({"type": "batch", "messages": [{"type": "cancel_job", "job_id": "j"}], "more": 1}, b"", ["unknown fields"]),
        (
            {"type": "batch", "messages": [{"type": "hello", "role": "client", "token": "t", "protocol_version": 4}]},
            b"",
            ["'hello'", "never travels in a batch"],
        ),
        ({"type": "batch", "messages": [{"type": "batch", "messages": []}]}, b"", ["never travels in a batch"]),
        ({"type": "batch", "messages": [{"type": "nope"}]}, b"", ["unknown message type 'nope'", "message 1"]),
        (
            {"type": "batch", "messages": [{"type": "cancel_job", "job_id": "j"}, {"type": "cancel_job", "job_id": 5}]},
            b"",
            ["'job_id' has the wrong type", "message 2 of a batch"],
        ),
        ({"type": "batch", "messages": [{"type": "cancel_job"}]}, b"", ["missing fields ['job_id']", "message 1"]),
        (
            {
                "type": "batch",
                "messages": [
                    {"type": "submit_task", "job_id": "j", "task_id": 0, "first_index": 0, "count": 0, "sizes": [1]}
                ],
            },
            b"x",
            ["at least one item", "message 1 of a batch"],
        ),
        (
            {
                "type": "batch",
                "messages": [
                    {"type": "task_done", "job_id": "j", "task_id": 0, "attempt": 1, "failed": 0, "sizes": [3]}
                ],
            },
            b"xxxxx",
            ["should take 3 bytes but 5 follow"],
        ),
        (
            {"type": "batch", "messages": [{"type": "cancel_job", "job_id": "j", "sizes": [1]}]},
            b"x",
            ["cancel_job: 'sizes' must list 0 payload lengths", "message 1"],
        ),
    ],
)
def test_a_malformed_batch_is_refused_saying_what_and_which_message(header, payload, words):
    assert_refused(frame(header, payload), *words)


@FUZZ
@given(
    st.lists(st.sampled_from(BATCHABLE), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_batches_with_bytes_changed(kinds, changes):
    mutated = bytearray(p.encode(p.Batch(tuple(sample(p._MESSAGES[kind]) for kind in kinds))))
    for position, value in changes:
        mutated[position % len(mutated)] = value
    decode_or_refuse(bytes(mutated))
