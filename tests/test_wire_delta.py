"""Protocol v2's deltas (PROTOCOL.md, *Deltas and the view*) under hypothesis: the agent's own
``Baseline`` turns any sequence of target states into delta frames, encoded by the agent's own
encoder; periscope's ``wire.Decoder`` puts them together. Whatever changes, whichever frames get
lost on the way and however late a resync takes effect, every frame periscope ends up with is the
model that the full frame of that state decodes to, and a thread that did not change is the very
object of the frame before."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer import wire
from explorer.errors import ProtocolError
from explorer.model import Frame, OutOfStep
from payloads import agent

IDENTS = st.sampled_from([1, 2, 3, 140000000001, 140000000002, 7])
TEXT = st.text(max_size=6)
# The agent makes every preview with its keys in this order (Previews.preview), as it makes every
# stack entry with its keys in one order: equal ones encode alike, which its delta relies on.
PREVIEW = st.fixed_dictionaries({"type": st.sampled_from(["int", "str", "list"]), "repr": TEXT}, optional={"ref": st.integers(1, 5), "cut": st.just(True)}).map(
    lambda preview: {key: preview[key] for key in ("type", "repr", "ref", "cut") if key in preview}
)
FIDS = st.sampled_from([11, 12, 13])
LOCALS = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), PREVIEW).map(list), max_size=3)


@st.composite
def stack_frame(draw: st.DrawFn, brief: bool) -> dict[str, Any]:
    entry = {
        "file": draw(st.sampled_from(["a.py", "b.py"])),
        "line": draw(st.one_of(st.none(), st.integers(1, 4))),
        "func": draw(st.sampled_from(["f", "g"])),
        "qualname": draw(st.sampled_from(["f", "C.g"])),
        "locals": None if brief else draw(st.one_of(st.none(), LOCALS)),
        "nlocals": 0 if brief else draw(st.integers(0, 3)),
    }
    if not brief:
        # The frame's identity (its id in the target): few, so that frames share them, as a
        # frame that moved to another thread's entry or another depth would.
        entry["fid"] = draw(FIDS)
    return entry


@st.composite
def thread(draw: st.DrawFn, ident: int) -> dict[str, Any]:
    brief = draw(st.booleans())
    stack = draw(st.lists(stack_frame(brief), max_size=1 if brief else 3))
    return {
        "ident": ident,
        "native_id": draw(st.one_of(st.none(), st.integers(1, 3))),
        "name": draw(st.one_of(st.none(), st.sampled_from(["MainThread", "w"]))),
        "daemon": draw(st.one_of(st.none(), st.booleans())),
        "main": draw(st.booleans()),
        "agent": False,
        "stack": stack,
        "depth": len(stack) + draw(st.integers(0, 2)),
        "stack_omitted": False,
        "brief": brief,
    }


@st.composite
def state(draw: st.DrawFn) -> dict[str, Any]:
    """One full frame of a target (as ``Agent._build_frame`` returns it)."""
    idents = draw(st.lists(IDENTS, unique=True, max_size=5))
    names = draw(st.lists(st.sampled_from(["__main__", "json", "m"]), unique=True, max_size=3))
    return {
        "t": "frame",
        "seq": 0,
        "time": 1.5,
        "cpu": 0.0,
        "threads": [draw(thread(ident)) for ident in idents],
        "modules": [
            {"name": name, "vars": draw(LOCALS), "total": draw(st.integers(0, 3)), "missing": draw(st.booleans())} for name in names
        ],
        "truncated": draw(st.booleans()),
        "build_ms": 0.5,
        "errors": 0,
        "error_log": [],
        "paused": None,
    }


def _full_model(frame: dict[str, Any], seq: int) -> Frame:
    """What periscope makes of this state sent whole."""
    return wire.decode_frame(msgpack.unpackb(msgpack.packb({**frame, "seq": seq, "base": None}), raw=False))


@st.composite
def changed(draw: st.DrawFn, frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` after one small change (most steps of a live target change one thing or nothing)."""
    frame = copy.deepcopy(frame)
    threads = frame["threads"]
    kind = draw(st.sampled_from(["nothing", "field", "line", "local", "add", "remove", "reorder", "module", "new"]))
    if kind == "new":
        return draw(state())
    if kind in ("field", "line", "local", "remove") and not threads:
        kind = "add"
    if kind == "field":
        entry = draw(st.sampled_from(threads))
        key = draw(st.sampled_from(["name", "daemon", "main", "depth", "native_id"]))
        entry[key] = draw({"name": st.one_of(st.none(), TEXT), "daemon": st.booleans(), "main": st.booleans(), "depth": st.integers(0, 9), "native_id": st.integers(1, 9)}[key])
    elif kind == "line":
        entry = draw(st.sampled_from(threads))
        if entry["stack"]:
            draw(st.sampled_from(entry["stack"]))["line"] = draw(st.integers(5, 9))
    elif kind == "local":
        entry = draw(st.sampled_from(threads))
        if entry["stack"] and not entry["brief"]:
            draw(st.sampled_from(entry["stack"]))["locals"] = draw(LOCALS)
        else:
            entry["brief"] = not entry["brief"]
            if not entry["brief"]:
                entry["stack"] = draw(st.lists(stack_frame(False), max_size=3))
    elif kind == "add":
        free = sorted({1, 2, 3, 7, 140000000001, 140000000002} - {t["ident"] for t in threads})
        if free:
            threads.insert(draw(st.integers(0, len(threads))), draw(thread(draw(st.sampled_from(free)))))
    elif kind == "remove":
        threads.pop(draw(st.integers(0, len(threads) - 1)))
    elif kind == "reorder":
        threads.reverse()
    elif kind == "module":
        if frame["modules"] and draw(st.booleans()):
            draw(st.sampled_from(frame["modules"]))["vars"] = draw(LOCALS)
        else:
            frame["modules"] = draw(state())["modules"]
    return frame


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[dict[str, Any], bool, int]]:
    """States of a target one change apart, and what happens to each one's frame on the way:
    delivered, or lost (periscope then asks for a resync, which the agent takes ``lag`` frames later)."""
    frame = draw(state())
    result = []
    for _ in range(draw(st.integers(1, 14))):
        result.append((frame, draw(st.booleans() if draw(st.integers(0, 4)) == 0 else st.just(False)), draw(st.integers(0, 2))))
        frame = draw(changed(frame))
    return result


STEPS = steps()


@given(STEPS)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_any_changes_drops_and_resyncs_give_the_model_of_full_frames(steps: list[tuple[dict[str, Any], bool, int]]) -> None:
    baseline = agent.Baseline()
    decoder = wire.Decoder()
    resync_in: int | None = None  # frames until the agent takes periscope's resync request
    previous: Frame | None = None
    delivered = 0
    for seq, (frame, lost, lag) in enumerate(steps, start=1):
        expected = _full_model(frame, seq)
        if resync_in is not None:
            if resync_in == 0:
                baseline.reset()
                resync_in = None
            else:
                resync_in -= 1
        delta = baseline.delta({**copy.deepcopy(frame), "seq": seq}, seq)
        data = agent.encode(delta)
        for entry in frame["threads"]:
            if not entry["brief"]:  # made of the last frame's pieces, yet the bytes of the entry itself
                assert baseline.threads[entry["ident"]][1] == agent.encode(entry)
        if lost:
            previous = None
            continue
        decoder.feed(data)
        (message,) = list(decoder)
        if isinstance(message, OutOfStep):
            assert delta["base"] is not None
            if resync_in is None:
                resync_in = lag
            previous = None
            continue
        assert message == expected
        delivered += 1
        if previous is not None:
            before = {t.thread_id: t for t in previous.threads}
            for new in message.threads:
                old = before.get(new.thread_id)
                if old is not None and old == new:
                    assert old is new  # unchanged: the same object, so the screen can tell by `is`
        previous = message
    assert delivered or any(lost for _, lost, _ in steps)


@given(st.lists(state(), min_size=2, max_size=6))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_a_delta_of_an_unchanged_state_carries_no_thread_and_no_module(states: list[dict[str, Any]]) -> None:
    baseline = agent.Baseline()
    for seq, frame in enumerate(states, start=1):
        baseline.delta(copy.deepcopy(frame), seq)
        again = baseline.delta(copy.deepcopy(frame), seq + 100)
        assert again["base"] == seq
        assert again["threads"] == [] and again["modules"] == []
        assert "order" not in again and "module_order" not in again
        baseline.seq = seq  # carry on from the state as it was first sent


@pytest.mark.parametrize(
    "change",
    [
        {"order": [1, 99]},  # names a thread never sent
        {"threads": [{"ident": 5, "stack": []}]},  # a new thread without an order
        {"order": [1, 1]},
        {"order": ["1"]},
        {"module_order": ["nope"]},
    ],
)
def test_malformed_deltas_are_protocol_errors(change: dict[str, Any]) -> None:
    first = {"t": "frame", "seq": 1, "base": None, "time": 1.0, "threads": [{"ident": 1, "stack": []}], "modules": []}
    assembler = wire.FrameAssembler()
    assert assembler.apply(first) is not None
    with pytest.raises(ProtocolError):
        assembler.apply({"t": "frame", "seq": 2, "base": 1, "time": 1.0, "threads": [], "modules": [], **change})
