"""Hostile frames: periscope's side of the agent stream fed type-confused, cut, corrupted and
object-bomb msgpack (hypothesis), and a real target that writes such bytes into its agent's
connection. Every case ends in a typed error and a cleanly closed session; nothing from the
stream ever runs, and decoding one message never takes memory out of proportion."""

from __future__ import annotations

import copy
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from explorer import wire
from explorer.errors import ProtocolError
from explorer.model import Response
from explorer.attach import attach
from explorer.session import SessionClosed
from tests.agent_helpers import start_watched
from tests.test_wire_codec import FRAME, HELLO, plain

# -- nothing from the stream runs ---------------------------------------------------------------

_watching: list[str] | None = None
RUNS_CODE = ("exec", "compile", "import", "open", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
             "subprocess.Popen", "ctypes.dlopen", "marshal.loads", "pickle.find_class", "socket.connect")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching is not None and event.startswith(RUNS_CODE):
        _watching.append(event)


sys.addaudithook(_audit)  # permanent in this process, but it only records inside _nothing_runs()


@contextmanager
def _nothing_runs() -> Iterator[None]:
    """Fail if, inside the block, this process executes, compiles, imports or opens anything."""
    global _watching
    _watching = events = []
    try:
        yield
    finally:
        _watching = None
    assert events == [], f"decoding the stream ran something: {events}"


# -- valid messages of every kind, to confuse ---------------------------------------------------

PREVIEW = {"type": "dict", "repr": "{}", "ref": 9, "len": 0, "cut": False, "fail": False}
CHILDREN = {"ref": 9, "kind": "items", "kinds": ["items", "attrs"], "offset": 0, "total": 1, "children": [["a", PREVIEW]]}
EVAL_RESULT = {"status": "ok", "mode": "eval", "value": PREVIEW, "traceback": None, "exception": None, "elapsed": 0.1}
LIMITS = {"limits": {"repr_chars": 200, "repr_budget": 0.1}}
MESSAGES: dict[str, dict[str, Any]] = {
    "hello": HELLO,
    "frame": FRAME,
    "sample": {"t": "resp", "id": 1, "ok": True, "result": FRAME},
    "expand": {"t": "resp", "id": 2, "ok": True, "result": CHILDREN},
    "eval": {"t": "resp", "id": 3, "ok": True, "result": EVAL_RESULT},
    "configure": {"t": "resp", "id": 4, "ok": True, "result": LIMITS},
    "refused": {"t": "resp", "id": 5, "ok": False, "error": "unknown ref 3"},
    "output": {"t": "output", "id": 3, "stream": "stdout", "data": "hi\n"},
    "error": {"t": "error", "message": "malformed request", "fatal": False},
    "bye": {"t": "bye", "reason": "detached"},
}
RESULT_DECODERS = {
    "sample": wire.decode_frame,
    "expand": wire.decode_children,
    "eval": wire.decode_eval_result,
    "configure": wire.decode_limits,
}


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a message: map values (by key) and array items (by index)."""
    yield path
    if type(node) is dict:
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif type(node) is list:
        for index, value in enumerate(node):
            yield from _paths(value, (*path, index))


@st.composite
def confused(draw: st.DrawFn) -> tuple[str, Any]:
    """A valid message of some kind with one place (a field, an item, or the whole) replaced by anything."""
    kind = draw(st.sampled_from(sorted(MESSAGES)))
    message = copy.deepcopy(MESSAGES[kind])
    path = draw(st.sampled_from(list(_paths(message))))
    replacement = draw(plain | st.sampled_from([None, True, -1, 2**63, 1.5, "", "frame", [], {}, b"\xff"]))
    if not path:
        return kind, replacement
    parent = message
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = replacement
    return kind, message


def _decode_as_the_session_does(kind: str, data: bytes, chunk: int = 1 << 20) -> None:
    """Feed ``data`` in chunks, decode every message, and a request's result as its request would."""
    decoder = wire.Decoder()
    for start in range(0, len(data), chunk):
        decoder.feed(data[start : start + chunk])
        for message in decoder:
            if isinstance(message, Response) and message.ok and kind in RESULT_DECODERS:
                RESULT_DECODERS[kind](message.result)


@given(confused())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_type_confused_messages_raise_a_protocol_error_and_run_nothing(case: tuple[str, Any]) -> None:
    kind, message = case
    data = msgpack.packb(message, use_bin_type=True)
    with _nothing_runs():
        try:
            _decode_as_the_session_does(kind, data)
        except ProtocolError as error:
            assert str(error).count("\n") == 0


@given(
    st.sampled_from(sorted(MESSAGES)),
    st.data(),
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_cut_and_corrupted_streams_raise_a_protocol_error_or_wait_for_more(kind: str, data: st.DataObject) -> None:
    """A valid stream of two messages, cut short and with bytes overwritten, fed in random chunks."""
    raw = bytearray(msgpack.packb(MESSAGES[kind], use_bin_type=True) * 2)
    for _ in range(data.draw(st.integers(0, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    chunk = data.draw(st.integers(1, 64))
    with _nothing_runs():
        try:
            _decode_as_the_session_does(kind, bytes(raw), chunk)
        except ProtocolError:
            pass


# -- memory ---------------------------------------------------------------------------------------

BOMB_ITEMS = {
    "empty arrays": b"\x90",
    "empty maps": b"\x80",
    "short strings": b"\xa2ab",
    "16-bit ints": b"\xcd\x12\x34",
}


@pytest.mark.parametrize("item", BOMB_ITEMS.values(), ids=BOMB_ITEMS.keys())
def test_a_message_of_tiny_objects_stops_at_the_object_bound(item: bytes) -> None:
    """A message whose every byte would become an object: 1,000,000 of them in 1000 arrays,
    against a bound of 50,000. Decoding stops at the bound, and the memory it took stays within
    the bound's worth of objects and the message's bytes."""
    bound = 50_000
    inner = b"\xdc" + (1000).to_bytes(2, "big") + item * 1000
    message = b"\xdc" + (1000).to_bytes(2, "big") + inner * 1000
    decoder = wire.Decoder(max_objects=bound)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="objects"):
            for start in range(0, len(message), 1 << 16):
                decoder.feed(message[start : start + 1 << 16])
                list(decoder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < bound * 128 + 3 * len(message), peak


def test_the_object_bound_counts_a_message_fed_in_small_pieces() -> None:
    """The bound holds across feeds: the unpacker keeps what it built of an unfinished message."""
    item = b"\x90" * 1000
    message = b"\xdc" + (100).to_bytes(2, "big") + (b"\xdc" + (1000).to_bytes(2, "big") + item) * 100
    decoder = wire.Decoder(max_objects=20_000)
    with pytest.raises(ProtocolError, match="objects"):
        for start in range(0, len(message), 500):
            decoder.feed(message[start : start + 500])
            list(decoder)


def test_the_object_bound_is_per_message() -> None:
    """Many messages that are each within the bound all decode."""
    message = msgpack.packb({"t": "bye", "reason": "x" * 10})
    decoder = wire.Decoder(max_objects=10)
    decoder.feed(message * 1000)
    assert len(list(decoder)) == 1000


# -- a real target that writes into its agent's connection ----------------------------------------

TAMPER = '''
import _thread, sys, time
def _tamper(conn=sys.modules["_periscope_agent"].agent.conn):
    time.sleep(0.05)  # after this eval's result is out: no eval is left running to interrupt
    conn.sendall({payload})
    {then}
_thread.start_new_thread(_tamper, ())
'''
HOSTILE_STREAMS = {  # what the target sends (Python source), what it does next, what periscope says
    "a byte msgpack does not use": (repr(wire.encode({"t": "output", "id": 1, "stream": "stdout", "data": ""})[:-1] + b"\xc1"), "", ProtocolError),
    "an ext type": (repr(msgpack.packb(msgpack.ExtType(5, b"\x00" * 8))), "", ProtocolError),
    "a frame with a str seq": (repr(msgpack.packb({**FRAME, "seq": "1"})), "", ProtocolError),
    "a second hello": (repr(msgpack.packb(HELLO)), "", ProtocolError),
    "three million objects": ('b"\\xdd" + (3000).to_bytes(4, "big") + (b"\\xdc\\x03\\xe8" + b"\\x01" * 1000) * 3000', "", ProtocolError),
    "half a message, then the end": (repr(msgpack.packb(FRAME)[:40]), "conn.shutdown(1)", SessionClosed),
}


@pytest.mark.parametrize(("payload", "then", "error"), HOSTILE_STREAMS.values(), ids=HOSTILE_STREAMS.keys())
async def test_a_target_that_writes_into_its_agents_stream(spawn, tmp_path, payload: str, then: str, error: type) -> None:
    """The session ends with a typed error that reaches whoever waits on it, the agent removes
    itself when periscope hangs up, and periscope can attach to the same target again."""
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    session = await attach(watched.pid, rate=0)
    try:
        assert (await session.eval(TAMPER.format(payload=payload, then=then))).ok
        with pytest.raises(error) as raised:
            await session.next_frame(timeout=30)  # waiting on the stream when the bytes come
        assert str(raised.value).count("\n") == 0
        assert session.closed and isinstance(session.error, error)
        with pytest.raises(error):
            await session.sample()
    finally:
        await session.detach(timeout=5)
    watched.wait_until_back_to(quiet)
    again = await attach(watched.pid, rate=0)
    try:
        assert (await again.eval("counter > 0")).value.repr == "True"
    finally:
        await again.detach()
    watched.wait_until_back_to(quiet)
