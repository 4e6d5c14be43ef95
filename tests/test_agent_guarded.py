"""The agent never runs the target's code unguarded: hostile keys, exceptions, Thread
subclasses, ``__dict__`` properties, custom ``f_locals`` mappings and a fake ``msgpack`` log
every call of their hooks, and only watched calls in the agent's worker may appear there; a
GC callback, finalisers and slow or GIL-holding ``__repr__``s never see an exception of the
agent, whatever the watchdog does."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from explorer.attach import attach

HOOKS = '''
import sys, threading, time, types

LOG = []
OWN = set()  # native ids of the target's own threads: their own calls are not logged

def log(what):
    tid = threading.get_native_id()
    if tid not in OWN:
        LOG.append(what)
        sys.stdout.write("hook %s %d\\n" % (what, tid))

class Hostile(Exception):
    @property
    def args(self):
        log("args")
        time.sleep(30)
        return ("never",)

class Key:
    def __hash__(self):
        return 7
    def __eq__(self, other):
        return self is other
    def __str__(self):
        log("key-str")
        raise Hostile()
    def __repr__(self):
        log("key-repr")
        raise Hostile()

ARMED = []

class Worker(threading.Thread):
    def __getattribute__(self, name):
        if ARMED and threading.get_native_id() not in OWN:
            log("thread-getattribute")
            time.sleep(3)
        return super().__getattribute__(name)

class DictProperty:
    def __init__(self):
        object.__setattr__(self, "visible", 1)
    @property
    def __dict__(self):
        log("dict-property")
        time.sleep(30)
        return {}

class Locals(dict):
    def items(self):
        log("locals-items")
        time.sleep(3)
        return super().items()
    def keys(self):
        log("locals-keys")
        return super().keys()
    def __len__(self):
        log("locals-len")
        return super().__len__()

fake = types.ModuleType("msgpack")
def packb(*args, **kwargs):
    log("msgpack-packb")
    raise RuntimeError("not msgpack")
fake.packb = packb
sys.modules["msgpack"] = fake

globals()[Key()] = "a value under a hostile key"
PROPERTY = DictProperty()
OWN.add(threading.get_native_id())

def run():
    OWN.add(threading.get_native_id())
    while True:
        time.sleep(0.01)

def in_exec():
    OWN.add(threading.get_native_id())
    exec("while True:\\n    sleep(0.01)\\n", {"sleep": time.sleep}, Locals(here=1))

WORKER = Worker(target=run, name="worker", daemon=True)
WORKER.start()
threading.Thread(target=in_exec, name="in-exec", daemon=True).start()
time.sleep(0.2)
ARMED.append(True)
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
'''

# The target's own code that the agent may run, as watched calls in its worker: reprs (the key's,
# and Thread.__repr__, which goes through the subclass's __getattribute__) and a custom locals
# mapping's items() and len(). Never: an exception's args, str() of a key, a __dict__ property,
# the mapping's keys(), the fake msgpack.
ALLOWED_IN_WORKER = {"key-repr", "thread-getattribute", "locals-items", "locals-len"}


def _tasks(pid: int) -> set[str]:
    return set(os.listdir(f"/proc/{pid}/task"))


def _stacks(pid: int) -> str:
    """What periscope stack says (read from outside), for a failure message."""
    import subprocess
    import sys

    text = subprocess.run([sys.executable, "-m", "explorer", "stack", str(pid)], capture_output=True, text=True, timeout=60).stdout
    open("/tmp/stack10.txt", "w").write(text)
    return text


def _hooks(target) -> list[tuple[str, int]]:
    try:
        target.wait_for_line("\0never", timeout=0.5)
    except TimeoutError:
        pass
    return [(line.split()[1], int(line.split()[2])) for line in target.lines if line.startswith("hook ")]


async def test_hooks_of_hostile_objects_run_only_as_watched_calls(spawn):
    target = spawn(HOOKS)
    target.wait_for_line("ready")
    before = _tasks(target.pid)
    agent_ids = set()
    for rate in (0, 10):
        session = await attach(target.pid, rate=rate)
        agent_ids.add(session.hello.agent_native_id)
        try:
            frames = [await session.sample(timeout=60)] if rate == 0 else [await session.next_frame(timeout=60) for _ in range(8)]
            frame = frames[-1]
            main = frame.module("__main__")
            names = [v.name for v in main.variables]
            hostile = [v for v in main.variables if v.name.startswith("<")]
            assert hostile and hostile[0].value.repr == "'a value under a hostile key'", names
            assert hostile[0].name.startswith("<repr failed: ") or hostile[0].name.startswith("<repr timed out"), hostile[0].name
            worker = next(t for t in frame.threads if t.name == "worker")
            assert worker.frames, "the Thread subclass's stack is read"
            in_exec = next(t for t in frame.threads if t.name == "in-exec")
            assert in_exec.frames
            # Expanding the hostile objects: attributes come from C-level reads only (a class whose
            # __dict__ is a property hides its instance dict from them: nothing is shown).
            prop = main.get("PROPERTY")
            attrs = await session.expand(prop.ref, kind="attrs")
            assert attrs.children == () or [c.name for c in attrs.children] == ["visible"], attrs
            thread_ref = main.get("WORKER").ref
            children = await session.expand(thread_ref, kind="attrs")
            assert "_name" in [c.name for c in children.children]
        finally:
            await asyncio.wait_for(session.detach(), 30)
    hooks = _hooks(target)
    assert not [h for h in hooks if h[0] not in ALLOWED_IN_WORKER], hooks
    assert not [h for h in hooks if h[1] in agent_ids], ("target code ran in the agent's main thread", hooks)
    # A type whose code hung is not called again in that session: one blocking items() per session.
    assert sum(1 for h in hooks if h[0] == "locals-items") <= 2, hooks
    # No thread of the agent stays behind (the one stuck in the 3 s items() ends when it returns).
    deadline = time.monotonic() + 20
    while _tasks(target.pid) != before:
        assert time.monotonic() < deadline, (before, _tasks(target.pid), _stacks(target.pid))
        await asyncio.sleep(0.1)
    assert target.proc.poll() is None


CALLBACKS = '''
import gc, sys, threading, time

def record(unraisable):
    sys.stdout.write("unraisable %s %r\\n" % (type(unraisable.exc_value).__name__, unraisable.err_msg))

sys.unraisablehook = record

def gc_callback(phase, info):
    total = 0
    for i in range(100):
        total += i

gc.callbacks.append(gc_callback)

class Finalised:
    def __init__(self):
        self.me = self  # a cycle: the collector frees it, in whichever thread allocates
    def __del__(self):
        total = 0
        for i in range(100):
            total += i

class Slow:
    """Over the repr budget: the watchdog gives up on it while collections run in its thread."""
    def __repr__(self):
        started = time.thread_time()
        while time.thread_time() - started < 0.3:
            Finalised()
        return "Slow()"

class Fast:
    """About 9 ms of CPU: well within the budget, however long it waits for the GIL."""
    def __repr__(self):
        started = time.thread_time()
        while time.thread_time() - started < 0.009:
            Finalised()
        return "Fast()"

def hog():
    while True:
        sum(range(1_000_000))  # long C calls that keep the GIL

threading.Thread(target=hog, name="hog", daemon=True).start()
SLOW = Slow()
FAST = Fast()
BOTH = {"slow": SLOW, "fast": FAST}
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
'''


@pytest.mark.parametrize("sessions", [20, pytest.param(50, marks=pytest.mark.soak)])
async def test_gc_callbacks_and_finalisers_never_see_the_agent_and_fast_reprs_never_time_out(spawn, sessions):
    target = spawn(CALLBACKS)
    target.wait_for_line("ready")
    before = _tasks(target.pid)
    fast_previews = []
    for turn in range(sessions):
        session = await attach(target.pid, rate=10 if turn % 2 else 0, timeout=60)
        try:
            if turn % 2:
                frames = [await session.next_frame(timeout=60) for _ in range(3)]
            else:
                frames = [await session.sample(timeout=60)]
                both = frames[0].module("__main__").get("BOTH")
                children = await session.expand(both.ref, kind="items")
                fast_previews += [c.value for c in children.children if c.name == "fast"]
            fast_previews += [f.module("__main__").get("FAST") for f in frames]
        finally:
            await asyncio.wait_for(session.detach(), 30)
    assert len(fast_previews) >= sessions * 3 // 2
    assert all(p.repr == "Fast()" and not p.failed for p in fast_previews), [p.repr for p in fast_previews if p.repr != "Fast()"]
    deadline = time.monotonic() + 20
    while _tasks(target.pid) != before:
        assert time.monotonic() < deadline, (before, _tasks(target.pid), _stacks(target.pid))
        await asyncio.sleep(0.1)
    _hooks(target)  # collect what the target printed
    assert not [line for line in target.lines if line.startswith("unraisable")], target.lines
    assert target.proc.poll() is None


STUCK = '''
import sys, threading, time

def make(n):
    class Stuck:
        def __repr__(self):
            time.sleep(6)  # in C: the watchdog cannot end it, only leave it
            return "stuck"
    Stuck.__name__ = Stuck.__qualname__ = "Stuck%d" % n
    return Stuck()

STUCK = [make(n) for n in range(6)]
PLAIN = 12345

class Fine:
    def __repr__(self):
        return "Fine()"

FINE = Fine()
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
'''


async def test_values_pause_while_target_code_does_not_return_and_stacks_go_on(spawn):
    target = spawn(STUCK)
    target.wait_for_line("ready")
    before = _tasks(target.pid)
    session = await attach(target.pid, rate=2)
    try:
        paused = None
        for _ in range(120):
            frame = await session.next_frame(timeout=60)
            if frame.paused is not None:
                paused = frame
                break
        assert paused is not None and paused.paused == "values paused: target code does not return"
        main = paused.main_thread
        assert main is not None and main.frames, "stacks keep coming"
        fine = paused.module("__main__").get("FINE")
        assert fine.failed and "values paused" in fine.repr
        assert paused.module("__main__").get("PLAIN").repr == "12345"  # the agent's own formatting goes on
        # Abandoned workers are bounded: at most 4 of them, plus the agent's two threads.
        assert len(_tasks(target.pid) - before) <= 6
        # Once the sleeps return, values come back.
        for _ in range(120):
            frame = await session.next_frame(timeout=60)
            if frame.paused is None:
                break
        assert frame.paused is None and frame.module("__main__").get("FINE").repr == "Fine()"
    finally:
        await asyncio.wait_for(session.detach(), 30)
    deadline = time.monotonic() + 20
    while _tasks(target.pid) != before:
        assert time.monotonic() < deadline, (before, _tasks(target.pid), _stacks(target.pid))
        await asyncio.sleep(0.1)
