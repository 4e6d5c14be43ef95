"""The agent's own msgpack codec (payloads/agent/codec.py) against msgpack-python, and periscope's
bounded decoder (explorer/wire.py) against well-formed and malformed streams."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from explorer import wire
from explorer.errors import ProtocolError
from explorer.model import Frame, Hello, Output, Response, Value
from payloads import agent

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
plain = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=20) | st.dictionaries(st.text(), children, max_size=20),
    max_leaves=60,
)


@given(plain)
@settings(max_examples=400)
def test_encoder_is_byte_identical_to_msgpack(obj):
    assert agent.encode(obj) == msgpack.packb(obj, use_bin_type=True)


@given(plain)
@settings(max_examples=400)
def test_decoder_reads_what_msgpack_writes(obj):
    assert agent.decode(msgpack.packb(obj, use_bin_type=True)) == obj


@given(st.floats(width=32, allow_nan=False))
def test_decoder_reads_float32(value):
    decoded = agent.decode(msgpack.packb(value, use_single_float=True))
    assert decoded == value or (math.isinf(value) and math.isinf(decoded))


@given(st.lists(plain, min_size=1, max_size=5), st.integers(min_value=1, max_value=17))
def test_stream_decoder_reassembles_any_split(messages, chunk):
    data = b"".join(msgpack.packb(m, use_bin_type=True) for m in messages)
    decoder = agent.StreamDecoder()
    received = []
    for start in range(0, len(data), chunk):
        decoder.feed(data[start : start + chunk])
        received.extend(decoder)
    assert received == messages
    assert not decoder.buffer


def test_tuples_encode_as_arrays_and_lone_surrogates_are_escaped():
    assert agent.encode((1, 2)) == msgpack.packb([1, 2])
    assert msgpack.unpackb(agent.encode("a\ud800b")) == "a\\ud800b"


@pytest.mark.parametrize("bad", [2**64, -(2**63) - 1, object(), {1.5j}, set()])
def test_encoder_refuses_what_it_does_not_know(bad):
    with pytest.raises(agent.EncodeError):
        agent.encode(bad)


def test_encoder_refuses_runaway_nesting():
    nested: list = []
    for _ in range(100):
        nested = [nested]
    with pytest.raises(agent.EncodeError):
        agent.encode(nested)


@pytest.mark.parametrize(
    "data",
    [b"\xc1", b"\xd4\x01\x02", b"\xa3\xff\xfe\xfd", b"\x91", b"\xcb\x00", b"\x81\x90\x01", b"\x01\x02"],
)
def test_decoder_rejects_garbage(data):
    with pytest.raises(agent.DecodeError):
        agent.decode(data)


def test_stream_decoder_bounds_one_message():
    decoder = agent.StreamDecoder(max_message=100)
    decoder.feed(b"\xdb\x00\x01\x00\x00" + b"x" * 200)  # a 64 KiB string, still incomplete
    with pytest.raises(agent.DecodeError):
        list(decoder)


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_agent_decoder_never_fails_other_than_cleanly(data):
    try:
        agent.decode(data)
    except agent.DecodeError:
        pass


# -- explorer.wire ------------------------------------------------------------------------------

HELLO = {
    "t": "hello", "protocol": 2, "pid": 42, "python": "3.14.10 (main)", "version": [3, 14, 10],
    "implementation": "cpython", "capabilities": ["frame", "eval"], "codec": "builtin",
    "agent_native_id": 43, "rate": 2.0, "modules": ["__main__"], "limits": {"repr_chars": 200},
}
FRAME = {
    "t": "frame", "seq": 3, "time": 1.5, "cpu": 0.25, "build_ms": 1.0, "truncated": False,
    "errors": 1, "error_log": ["repr: TimeoutError"],
    "threads": [{
        "ident": 7, "native_id": 42, "name": "MainThread", "daemon": False, "main": True, "agent": False, "depth": 1,
        "stack": [{"file": "t.py", "line": 3, "func": "f", "qualname": "C.f", "nlocals": 1,
                   "locals": [["x", {"type": "int", "repr": "1"}]]}],
    }],
    "modules": [{"name": "__main__", "vars": [["d", {"type": "dict", "repr": "{}", "ref": 9, "len": 0}]], "total": 1, "missing": False}],
}


def _decode_all(*messages: object) -> list:
    decoder = wire.Decoder()
    decoder.feed(b"".join(msgpack.packb(m, use_bin_type=True) for m in messages))
    return list(decoder)


def test_wire_decodes_hello_and_frame_into_the_model():
    hello, frame = _decode_all(HELLO, FRAME)
    assert isinstance(hello, Hello) and hello.version == (3, 14, 10) and hello.capabilities == ("frame", "eval")
    assert isinstance(frame, Frame)
    thread = frame.threads[0]
    assert thread.is_main and thread.native_id == 42
    assert thread.frames[0].local("x") == Value("int", "1")
    assert frame.module("__main__").get("d") == Value("dict", "{}", ref=9, length=0)
    assert frame.error_log == ("repr: TimeoutError",)


def test_wire_decodes_the_agents_own_encoding():
    decoder = wire.Decoder()
    decoder.feed(agent.encode(FRAME) + agent.encode({"t": "output", "id": 1, "stream": "stdout", "data": "hi"}))
    frame, output = list(decoder)
    assert frame.seq == 3 and output == Output(1, "stdout", "hi")


def test_wire_response_carries_its_result():
    (response,) = _decode_all({"t": "resp", "id": 5, "ok": False, "error": "unknown ref 3"})
    assert response == Response(5, False, None, "unknown ref 3")


@pytest.mark.parametrize(
    "message",
    [
        {"t": "frame"},
        {**FRAME, "seq": "3"},
        {**FRAME, "threads": [{"ident": 1, "stack": [{"file": "x"}]}]},
        {**FRAME, "modules": [{"name": "m", "vars": [["x"]]}]},
        {**FRAME, "modules": [{"name": "m", "vars": [["x", {"type": "int"}]]}]},
        {**HELLO, "protocol": 1},
        {"t": "resp", "id": "1", "ok": True},
        {"t": "output", "id": 1, "stream": "stdin", "data": ""},
        {"t": "launch-missiles"},
        [1, 2, 3],
        {"t": "frame", **{k: v for k, v in FRAME.items() if k != "t"}, "time": True},
    ],
)
def test_wire_rejects_malformed_messages(message):
    with pytest.raises(ProtocolError):
        _decode_all(message)


def test_wire_rejects_ext_types_and_invalid_utf8():
    for data in (msgpack.packb(msgpack.ExtType(1, b"abc")), b"\xa2\xff\xfe"):
        decoder = wire.Decoder()
        decoder.feed(data)
        with pytest.raises(ProtocolError):
            list(decoder)


def test_wire_bounds_message_size():
    decoder = wire.Decoder(max_message=1000)
    with pytest.raises(ProtocolError):
        decoder.feed(b"\xdb\x00\x10\x00\x00" + b"x" * 2000)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_wire_garbage_only_ever_raises_protocol_error(data):
    decoder = wire.Decoder()
    decoder.feed(data)
    try:
        list(decoder)
    except ProtocolError:
        pass


@given(plain)
@settings(max_examples=300)
def test_wire_arbitrary_plain_data_only_ever_raises_protocol_error(obj):
    try:
        _decode_all(obj)
    except ProtocolError:
        pass


def test_kept_string_encodings_stay_exact_past_the_bound() -> None:
    """The agent keeps the encodings of short strings (codec._SHORT, emptied when full): every
    string, seen once or again, before and after the bound empties it, encodes as msgpack does."""
    from payloads.agent import codec

    strings = [f"name-{i}" for i in range(codec._SHORT_MOST + 500)] + ["é" * 40, "x" * 120, "y" * 121, "z" * 70000, ""]
    for _ in range(2):
        for text in strings:
            assert agent.encode({text: [text]}) == msgpack.packb({text: [text]}, use_bin_type=True)
    assert len(codec._SHORT) <= codec._SHORT_MOST
