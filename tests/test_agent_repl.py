"""The REPL's agent side in real CPython 3.14 and 3.15 targets: the session's own names layered
over a module or a frame (none left behind after detach), one SyntaxError as Python shows it,
None not echoed, --max-repr and what was dropped, frames picked by function name, completion
from the target's real namespace, and the whole repr of one value for the inspector."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from explorer.attach import attach
from explorer.session import RequestFailed

TARGET = '''
import sys, threading, time

CONFIG = {"mode": "fast"}
LONG = "x" * 300 + "END"

class Settings:
    limit = 5
    def __init__(self):
        self.batch_size = 10
        self.name = "primary"
    @property
    def expensive(self):
        raise RuntimeError("a property ran")

settings = Settings()

def runtest(depth):
    item_value = 41
    if depth:
        return runtest(depth - 1)
    sys.stdout.write(f"native {threading.get_native_id()}\\n")
    while True:
        time.sleep(0.02)

threading.Thread(target=runtest, args=(3,), name="worker", daemon=True).start()
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.02)
'''


async def _attached(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    native = int(target.wait_for_line("native ").split()[1])
    session = await attach(target.pid, rate=0)
    return target, native, session


async def test_module_names_stay_the_sessions_and_none_are_left_after_detach(spawn):
    target, _native, session = await _attached(spawn)
    try:
        before = await session.eval("sorted(vars(sys.modules['__main__']))")
        assert (await session.eval("import json\nprobe = 123")).ok
        assert (await session.eval("def double(x):\n    return x * 2 + len(json.dumps(None)) - 4\n")).ok
        result = await session.eval("double(probe), json.dumps(CONFIG)")
        assert result.ok and result.value.repr == "(246, '{\"mode\": \"fast\"}')"
        assert {v.name for v in result.names} == {"json", "probe", "double"} and result.names_total == 3
        # A name the module has writes through: the target's own code sees it.
        assert (await session.eval("CONFIG = {'mode': 'slow'}")).ok
        seen = await session.eval("sys.modules['__main__'].CONFIG['mode'], 'probe' in sys.modules['__main__'].__dict__", module="__main__")
        assert seen.value.repr == "('slow', False)"
        after = await session.eval("sorted(vars(sys.modules['__main__']))")
        assert after.value.repr == before.value.repr
        # Code in the session sees both: its own names and the module's.
        seen = await session.eval("'probe' in globals(), 'CONFIG' in globals(), 'probe' in dir()")
        assert seen.value.repr == "(True, True, True)"
    finally:
        await session.detach()
    second = await attach(target.pid, rate=0)
    try:
        result = await second.eval("'probe' in globals(), 'double' in globals(), 'json' in globals()")
        assert result.value.repr == "(False, False, False)"
    finally:
        await second.detach()


async def test_a_function_the_repl_handed_to_the_target_keeps_nothing_of_the_agent(spawn):
    """A function defined in the REPL and kept by the target (here as an attribute of one of its
    objects) outlives the session with its ``__globals__``, the session's names: after detach
    they hold no agent code and no reference to the agent, and the function still works."""
    target, native, session = await _attached(spawn)
    try:
        assert (await session.eval("probe = 5\ndef helper():\n    return probe + settings.batch_size + len(CONFIG)\n")).ok
        assert (await session.eval("settings.callback = helper")).ok
        assert (await session.eval("inner = 2\ndef in_frame():\n    return inner * settings.limit\n", thread=native, frame_name="runtest")).ok
        handed = await session.eval("settings.in_frame = in_frame", thread=native, frame_name="runtest")
        assert handed.ok, handed.traceback
        kind = await session.eval("type(settings.callback.__globals__).__module__")
        assert kind.value.repr == "'_periscope_agent'"  # while attached: the session's layered names
    finally:
        await session.detach()
    second = await attach(target.pid, rate=0)
    try:
        result = await second.eval("settings.callback(), settings.in_frame()")
        assert result.ok, result.traceback
        assert result.value.repr == "(16, 10)"
        probe = (
            "import gc, types\n"
            "found = []\n"
            "for f in (settings.callback, settings.in_frame):\n"
            "    g = f.__globals__\n"
            "    cls = type(g)\n"
            "    found.append((cls.__module__, cls.__mro__[1:] == (dict, object), vars(g),\n"
            "        [type(v).__name__ for k, v in vars(cls).items() if callable(v)],\n"
            "        any(getattr(r, '__name__', None) == '_periscope_agent'\n"
            "            or getattr(type(r), '__module__', None) == '_periscope_agent'\n"
            "            or (type(r) is types.FunctionType and r.__module__ == '_periscope_agent')\n"
            "            for r in gc.get_referents(cls, g, *vars(cls).values()))))\n"
            "found"
        )
        found = await second.eval(probe)
        assert found.ok, found.traceback
        assert found.value.repr == (
            "[('__main__', True, {}, ['builtin_function_or_method'], False), "
            "('__main__', True, {}, ['builtin_function_or_method'], False)]"
        )
    finally:
        await second.detach()


async def test_frame_names_persist_for_later_lines_in_the_same_frame(spawn):
    _target, native, session = await _attached(spawn)
    try:
        assert (await session.eval("probe = 123", thread=native, frame_name="runtest")).ok
        assert (await session.eval("def double(x):\n    return x * 2 + probe - probe\n", thread=native, frame_name="runtest")).ok
        result = await session.eval("double(probe) + item_value", thread=native, frame_name="runtest")
        assert result.ok, result.traceback
        assert result.value.repr == "287"
        # The module's globals by their bare names, beside the frame's locals and the session's names.
        result = await session.eval("settings.limit + item_value + len(CONFIG) + probe", thread=native, frame_name="runtest")
        assert result.ok, result.traceback
        assert result.value.repr == "170"
        assert result.frame is not None and result.frame.function == "runtest" and result.frame.index == 0
        leaked = await session.eval("'probe' in vars(sys.modules['__main__']), 'probe' in sys._current_frames()", module="__main__")
        assert leaked.value.repr == "(False, False)"
        # The frame's own local still writes through.
        assert (await session.eval("item_value = 7", thread=native, frame_name="runtest")).ok
        result = await session.eval("item_value", thread=native, frame=0)
        assert result.value.repr == "7"
    finally:
        await session.detach()


async def test_a_frame_by_its_id_is_that_very_call_and_a_later_one_is_reported(spawn):
    """``frame_id`` (a frame's fid from the stream) runs in that call; once it returned, the eval
    fails without a name to fall back on, and with one runs in the later call and says so."""
    target = spawn(CALLS)
    target.wait_for_line("ready")
    native = int(target.wait_for_line("native ").split()[1])
    session = await attach(target.pid, rate=0)
    try:
        # Right as a call begins: the 4 s it lasts are ahead (on a loaded machine, a sample taken
        # late in a call left its frame gone by the time of the eval).
        wait_for_a_new_call(target)
        for _ in range(40):  # the line is printed just before the call: the sample may come first
            frame = await session.sample()
            thread = frame.thread(native)
            work = next((f for f in thread.frames if f.function == "work"), None)
            if work is not None:
                break
            await asyncio.sleep(0.02)
        assert work is not None, [f.function for f in thread.frames]
        assert work.frame_id is not None and all(f.frame_id is not None for f in thread.frames)
        result = await session.eval("call", thread=native, frame_id=work.frame_id)
        assert result.ok and result.frame.function == "work" and not result.frame.new_call
        first = int(result.value.repr)
        target.wait_for_line(f"call {first // 10 + 1}", timeout=30)
        await asyncio.sleep(0.5)  # the line comes just before the call: let it get into work()
        with pytest.raises(RequestFailed, match="returned"):
            await session.eval("call", thread=native, frame_id=work.frame_id)
        later = await session.eval("call", thread=native, frame_id=work.frame_id, frame_name="work")
        assert later.ok and later.frame.new_call and int(later.value.repr) > first
    finally:
        await session.detach()


CALLS = """
import sys, threading, time

def inner(call):
    time.sleep(2.0)

def work(call):
    time.sleep(2.0)   # work innermost (only in this first part of a call)
    inner(call)       # then a frame above it, until the call returns

def looper():
    sys.stdout.write(f"native {threading.get_native_id()}\\n")
    call = 0
    while True:
        call += 1
        sys.stdout.write(f"call {call}\\n")
        sys.stdout.flush()
        work(call * 10)

threading.Thread(target=looper, name="looper", daemon=True).start()
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.1)
"""
"""A thread that calls work() over and over, each call 4 s: work() innermost for 2 s, then inner() above it for 2 s."""


def wait_for_a_new_call(target: Any) -> int:
    """Wait until the CALLS target starts its next call of work(); its number."""
    current = 0
    while True:  # the calls printed so far (some may still be in the pipe)
        try:
            target.wait_for_line(f"call {current + 1}", timeout=0.3 if current else 30)
        except TimeoutError:
            break
        current += 1
    target.wait_for_line(f"call {current + 1}", timeout=30)
    return current + 1


async def test_frames_by_name_and_pinned_from_the_bottom(spawn):
    _target, native, session = await _attached(spawn)
    try:
        # runtest(3) -> runtest(2) -> runtest(1) -> runtest(0), which sleeps: the innermost by name.
        result = await session.eval("depth", thread=native, frame_name="runtest")
        assert result.value.repr == "0" and result.frame.index == 0 and result.frame.qualname == "runtest"
        # Counted from the outermost frame (Thread._bootstrap, _bootstrap_inner, run, runtest(3)).
        result = await session.eval("depth", thread=native, frame_name="runtest", frame_from_bottom=3)
        assert result.value.repr == "3" and result.frame.index == 3
        with pytest.raises(RequestFailed, match="returned"):
            await session.eval("1", thread=native, frame_name="not_this_one", frame_from_bottom=3)
        with pytest.raises(RequestFailed, match="no frame of thread"):
            await session.eval("1", thread=native, frame_name="no_such_function")
    finally:
        await session.detach()


async def test_a_syntax_error_is_shown_once_without_agent_frames(spawn):
    _target, _native, session = await _attached(spawn)
    try:
        result = await session.eval("x = = 1")
        assert result.status == "raised" and result.exception == "SyntaxError"
        assert result.traceback.count("SyntaxError") == 1
        assert "<periscope-agent>" not in result.traceback and "During handling" not in result.traceback
        result = await session.eval("try:\n    1/0\nexcept ZeroDivisionError:\n    int('x')\n")
        assert result.exception == "ValueError" and "ZeroDivisionError" in result.traceback
        assert "<periscope-agent>" not in result.traceback
    finally:
        await session.detach()


async def test_none_and_statements_echo_nothing(spawn):
    _target, _native, session = await _attached(spawn)
    try:
        for code in ("None", "print('hi')", "CONFIG.get('absent')", "x = 1"):
            result = await session.eval(code)
            assert result.ok and result.value is None, code
        assert (await session.eval("print('hi')")).output == "hi\n"
    finally:
        await session.detach()


async def test_max_repr_is_honoured_and_says_what_was_dropped(spawn):
    _target, _native, session = await _attached(spawn)
    try:
        whole = await session.eval("list(range(1000))", repr_chars=1 << 20)
        assert whole.value.repr == repr(list(range(1000))) and whole.value.dropped == 0
        cut = await session.eval("list(range(1000))", repr_chars=100)
        full = repr(list(range(1000)))
        assert cut.value.repr == full[:100] + "…"
        assert cut.value.dropped == len(full) - 100 and not cut.value.dropped_more
        text = await session.eval("LONG", repr_chars=1000)
        assert text.value.repr.endswith("END'")
    finally:
        await session.detach()


async def test_completion_reads_names_without_running_target_code(spawn):
    _target, native, session = await _attached(spawn)
    try:
        found = await session.complete("CON")
        assert "CONFIG" in found.matches and found.start == 0
        found = await session.complete("x = settings.")
        assert {"settings.batch_size", "settings.name", "settings.limit", "settings.expensive"} <= set(found.matches)
        assert found.start == 4
        found = await session.complete("sys.pa")
        assert "sys.path" in found.matches
        # Through a property: not called, so nothing to complete.
        assert (await session.complete("settings.expensive.")).matches == ()
        found = await session.complete("item_", thread=native, frame_name="runtest")
        assert found.matches == ("item_value",)
        await session.eval("probe_name = 1")
        assert (await session.complete("probe_")).matches == ("probe_name",)
        assert (await session.complete("pri")).matches[:1] == ("print",)
        found = await session.complete("x" * 3000 + " + CON")
        assert found.start == 3003 and "CONFIG" in found.matches
    finally:
        await session.detach()


async def test_the_inspector_gets_the_whole_repr(spawn):
    _target, _native, session = await _attached(spawn)
    try:
        frame = await session.sample()
        module = frame.module("__main__")
        assert module is not None
        by_name = {v.name: v.value for v in module.variables}
        assert by_name["CONFIG"].ref is not None
        value = await session.inspect_value(by_name["CONFIG"].ref)
        assert value.repr == "{'mode': 'fast'}"
        result = await session.eval("[LONG] * 3")
        whole = await session.inspect_value(result.value.ref)
        assert whole.repr == repr(["x" * 300 + "END"] * 3)
        part = await session.inspect_value(result.value.ref, repr_chars=50)
        assert part.repr.endswith("…") and part.dropped == len(whole.repr) - 50
    finally:
        await session.detach()


HOSTILE = '''
import sys, time

CALLS = []

class Key(str):
    pass

class EvilKey:
    def __hash__(self):
        return hash("evil_name")
    def __eq__(self, other):
        CALLS.append("key __eq__")
        return False

class Hostile:
    def __init__(self):
        self.visible_field = 1
    def __dir__(self):
        CALLS.append("__dir__")
        return ["from_dir"]
    def __getattr__(self, name):
        CALLS.append("__getattr__ " + name)
        return self
    def __getattribute__(self, name):
        CALLS.append("__getattribute__ " + name)
        return object.__getattribute__(self, name)
    @property
    def __class__(self):
        CALLS.append("__class__")
        return int
    @property
    def trap(self):
        CALLS.append("property")
        return 1
    def __repr__(self):
        CALLS.append("__repr__")
        time.sleep(60)
        return "never"

evil = Hostile()
globals()[EvilKey()] = "the evil key"
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.02)
'''


async def test_completion_and_the_inspector_run_none_of_a_hostile_objects_code(spawn):
    target = spawn(HOSTILE)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0, limits={"repr_budget": 0.05})
    try:
        found = await session.complete("evil.")
        assert "evil.visible_field" in found.matches and "evil.trap" in found.matches
        assert "evil.from_dir" not in found.matches
        assert (await session.complete("evil.trap.")).matches == ()
        assert (await session.complete("evil.visible_field.real.")).matches == ()
        assert "evil" in (await session.complete("evi")).matches
        calls = await session.eval("list(CALLS)")
        assert calls.value.repr == "[]"
        # The inspector asks for the repr as a watched call: it hangs, and is given up on.
        frame = await session.sample()
        ref = {v.name: v.value for v in frame.module("__main__").variables}["evil"].ref
        value = await session.inspect_value(ref)
        assert value.repr in ("<repr timed out>", "<values paused: target code does not return>") or "timed out" in value.repr
    finally:
        await session.detach()


MOVING = '''
import sys, threading, time

def outer():
    marker = "outer"
    while True:
        shallow()
        deep()

def shallow():
    marker = "shallow"
    time.sleep(0.003)

def deep():
    marker = "deep"
    deeper()

def deeper():
    marker = "deeper"
    time.sleep(0.003)

threading.Thread(target=outer, name="mover", daemon=True).start()
time.sleep(0.05)
sys.stdout.write(f"ready {[t.native_id for t in threading.enumerate() if t.name == 'mover'][0]}\\n")
while True:
    time.sleep(0.05)
'''


async def test_a_pinned_frame_is_found_while_the_stack_above_it_moves(spawn):
    target = spawn(MOVING)
    native = int(target.wait_for_line("ready").split()[1])
    session = await attach(target.pid, rate=0)
    try:
        for _ in range(10):
            # outer() is frame 3 from the bottom (Thread._bootstrap, _bootstrap_inner, run).
            pinned = await session.eval("marker", thread=native, frame_name="outer", frame_from_bottom=3)
            assert pinned.value.repr == "'outer'" and pinned.frame.qualname == "outer"
            by_name = await session.eval("marker", thread=native, frame_name="outer")
            assert by_name.value.repr == "'outer'" and by_name.frame.index in (0, 1, 2)
    finally:
        await session.detach()
