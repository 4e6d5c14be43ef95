"""The agent's frame stream from real CPython 3.14 and 3.15 targets: locals, module variables, threads,
lazy expansion, watched modules, rate, and the frame size bound."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest

from explorer.attach import attach
from explorer.session import RequestFailed

VIEW = '''
def tname(value):
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"

def view(namespace):
    return {k: [tname(v), repr(v)] for k, v in namespace.items() if not (k.startswith("__") and k.endswith("__"))}
'''

TARGET = VIEW + '''
import json, sys, threading, time

COUNT = 3
NAME = "periscope"
ITEMS = [1, 2.5, "three", None, True, (1,), {"k": [1, {2}]}, frozenset(), set(), b"x", 10**30]
NESTED = {"a": (1, 2), "b": {3, 4}, 5: [[[[1]]]]}

class Point:
    __slots__ = ("x", "y")
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __repr__(self):
        return f"Point({self.x}, {self.y})"

class Bag:
    def __init__(self):
        self.colour = "red"
        self.size = 3

ORIGIN = Point(0, 0)
BAG = Bag()
BIG = list(range(250))

def sleeper(n):
    local_list = [n, n * 2]
    text = "hello"
    point = Point(n, -n)
    print("locals " + json.dumps(view(locals())), flush=True)
    print("native " + str(threading.get_native_id()), flush=True)
    while True:
        time.sleep(0.05)

threading.Thread(target=sleeper, args=(7,), name="sleeper", daemon=True).start()
time.sleep(0.05)
print("globals " + json.dumps(view(globals())), flush=True)
print("ready", flush=True)
while True:
    time.sleep(0.02)
'''


def _payload(target, prefix: str):
    return json.loads(target.wait_for_line(prefix + " ")[len(prefix) + 1 :])


async def test_locals_and_module_variables_equal_the_targets_own_view(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    own_locals = _payload(target, "locals")
    own_globals = _payload(target, "globals")
    native = int(target.wait_for_line("native ").split()[1])
    session = await attach(target.pid, rate=0)
    try:
        bounded = await session.sample()
        await session.configure(items=1000, depth=10, repr_chars=10_000)
        frame = await session.sample()
    finally:
        await session.detach()
    # Within the default limits, a preview is either exactly repr() or marked as cut.
    for variable in bounded.module("__main__").variables:
        if not variable.value.truncated:
            assert variable.value.repr == own_globals[variable.name][1]
    assert {v.name for v in bounded.module("__main__").variables if v.value.truncated} == {"BIG", "ITEMS", "NESTED"}
    sleeper = frame.thread(native)
    assert sleeper is not None and sleeper.name == "sleeper" and sleeper.daemon is True
    top = sleeper.frames[0]
    assert top.function == "sleeper" and top.filename.endswith("target.py")
    assert {v.name: [v.value.type_name, v.value.repr] for v in top.locals} == own_locals
    module = frame.module("__main__")
    assert {v.name: [v.value.type_name, v.value.repr] for v in module.variables} == own_globals
    assert module.total == len(own_globals)
    assert not any(v.value.truncated for v in module.variables)


async def test_threads_main_first_and_the_agent_left_out(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        frame = await session.sample()
    finally:
        await session.detach()
    main = frame.threads[0]
    assert main.is_main and main.name == "MainThread" and main.native_id == target.pid and main.daemon is False
    assert main.frames[0].function == "<module>" and main.depth == len(main.frames)
    names = [t.name for t in frame.threads]
    assert names == ["MainThread", "sleeper"]
    assert session.hello.agent_native_id not in {t.native_id for t in frame.threads}
    assert frame.agent_cpu > 0 and frame.errors == 0


async def test_expand_items_attributes_slots_and_pages(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        module = (await session.sample()).module("__main__")
        nested = await session.expand(module.get("NESTED").ref)
        assert nested.kind == "items" and nested.total == 3
        assert [(c.name, c.value.repr) for c in nested.children] == [("a", "(1, 2)"), ("b", "{3, 4}"), ("5", "[[[[...]]]]")]
        assert nested.children[2].value.truncated
        deeper = await session.expand(nested.children[2].value.ref)
        assert deeper.children[0].value.repr == "[[[1]]]"

        bag = await session.expand(module.get("BAG").ref)
        assert bag.kind == "attrs" and {c.name: c.value.repr for c in bag.children} == {"colour": "'red'", "size": "3"}
        origin = await session.expand(module.get("ORIGIN").ref)
        assert {c.name: c.value.repr for c in origin.children} == {"x": "0", "y": "0"}

        big = module.get("BIG")
        assert big.truncated and big.length == 250 and big.repr.startswith("[0, 1, 2")
        page = await session.expand(big.ref, offset=200, limit=30)
        assert page.total == 250 and page.offset == 200
        assert [c.name for c in page.children][:2] == ["[200]", "[201]"] and len(page.children) == 30

        as_attrs = await session.expand(module.get("json").ref, kind="attrs", limit=1000)
        assert "dumps" in {c.name for c in as_attrs.children}
        with pytest.raises(RequestFailed):
            await session.expand(10**9)
    finally:
        await session.detach()


async def test_rate_watched_modules_and_the_stream(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=20)
    try:
        first = await session.next_frame(timeout=10)
        second = await session.next_frame(timeout=10)
        assert second.seq > first.seq
        await session.set_modules(["__main__", "json", "no_such_module"])
        while True:
            frame = await session.next_frame(timeout=10)
            if len(frame.modules) == 3:
                break
        assert frame.module("json").get("dumps").type_name == "function"
        assert frame.module("no_such_module").missing
        await session.set_rate(0)
        # Every frame sent before the agent took set_rate came before its answer.
        with pytest.raises(asyncio.TimeoutError):
            await session.next_frame(timeout=0.6, after=session.latest.seq)
        await session.set_rate(5)
        assert (await session.next_frame(timeout=10)).seq > frame.seq
    finally:
        await session.detach()


BIG_TARGET = '''
import threading, time
g = globals()
for i in range(10_000):
    g[f"var_{i}"] = {"index": i, "text": "x" * 50}
stop = threading.Event()
def deep(n, payload):
    local_a = list(range(20))
    local_b = "y" * 300
    if n:
        return deep(n - 1, payload)
    stop.wait()
for i in range(100):
    threading.Thread(target=deep, args=(15, i), daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.02)
'''


async def test_ten_thousand_variables_and_a_hundred_threads_stay_within_the_size_bound(spawn):
    target = spawn(BIG_TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        raw = await session.request("sample")
        size = len(msgpack.packb(raw, use_bin_type=True))
        limit = session.hello.limits["frame_bytes"]
        assert size <= limit * 1.05
        frame = await session.sample()
        assert len(frame.threads) == 101
        module = frame.module("__main__")
        assert module.total >= 10_000 and len(module.variables) == session.hello.limits["module_vars"]

        await session.configure(frame_bytes=600_000)
        raw = await session.request("sample")
        assert len(msgpack.packb(raw, use_bin_type=True)) <= 600_000 * 1.05
        assert raw["truncated"] is True
        assert len(raw["threads"]) == 101  # whole stacks stay; locals go first
        assert all(len(t["stack"]) == t["depth"] >= 17 for t in raw["threads"][1:])
        assert any(f["locals"] is None for t in raw["threads"] for f in t["stack"])

        await session.configure(frame_bytes=40_000)
        raw = await session.request("sample")
        assert len(msgpack.packb(raw, use_bin_type=True)) <= 40_000 * 1.05
        assert len(raw["threads"]) == 101  # every thread stays, with at least its innermost frame
        assert all(1 <= len(t["stack"]) < t["depth"] for t in raw["threads"][1:])
    finally:
        await session.detach()
