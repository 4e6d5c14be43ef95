"""The out-of-process stack reader against real CPython 3.14 targets.

Each target reports its own stacks (``sys._current_frames()`` with ``traceback.extract_stack``
and ``co_qualname``, per interpreter) to a JSON file once every thread is parked; the reader's
stacks must equal that report: every thread, every frame, every line, including the frames below
interpreter entry frames.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from explorer.errors import ProcessGone
from explorer.remote import RemoteProcess
from explorer.stacks import MAX_DEPTH, StackReader, ThreadStack, _frame_struct, read_stacks
from tests import targets
from tests.targets import Target

Spawn = Callable[..., Target]

# Runs in the target (and inside subinterpreters): wait until the expected number of other
# threads are parked (three equal snapshots in a row), then write their stacks as the
# interpreter itself sees them, innermost first.
REPORTER = r'''
import json, sys, threading, time, traceback

_PARKED = threading.Event()


def park():
    _PARKED.wait()


def _stacks(exclude):
    names = {t.ident: (t.native_id, t.name) for t in threading.enumerate()}
    result = {}
    for ident, frame in sys._current_frames().items():
        if ident in exclude:
            continue
        summaries = traceback.extract_stack(frame)[::-1]
        qualnames = []
        f = frame
        while f is not None:
            qualnames.append(f.f_code.co_qualname)
            f = f.f_back
        native_id, name = names.get(ident, (None, None))
        result[str(ident)] = {
            "native_id": native_id,
            "name": name,
            "frames": [[s.filename, q, s.name, s.lineno] for s, q in zip(summaries, qualnames)],
        }
    return result


def _report(path, expect, label):
    me = threading.get_ident()
    history = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stacks = _stacks({me})
        history = (history + [stacks])[-3:]
        if len(stacks) == expect and len(history) == 3 and history[0] == history[1] == history[2]:
            break
        time.sleep(0.03)
    else:
        print("reporter gave up", label, len(stacks), flush=True)
        return
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"reporter": me, "threads": stacks}, handle)
    import os
    os.replace(path + ".tmp", path)
    print("ready", label, flush=True)


def start_reporter(path, expect, label="main"):
    threading.Thread(target=_report, args=(path, expect, label), name="reporter").start()
'''


def _start(spawn: Spawn, tmp_path: Path, body: str, expect: int, **kwargs) -> tuple[Target, Path]:
    """Start a target whose ``body`` parks ``expect`` threads (main included) and reports them."""
    report = tmp_path / "stacks.json"
    source = REPORTER + f"\nstart_reporter({str(report)!r}, {expect})\n" + body
    target = spawn(source, **kwargs)
    target.wait_for_line("ready main", timeout=60)
    return target, report


def _expected(report: Path) -> tuple[int, dict[int, dict]]:
    data = json.loads(report.read_text(encoding="utf-8"))
    return data["reporter"], {int(ident): info for ident, info in data["threads"].items()}


def _frames(stack: ThreadStack) -> list[list]:
    return [[f.filename, f.function, f.lineno] for f in stack.frames]


def _read_settled(pid: int, interpreter_id: int, exclude: set[int], want: set[int]) -> dict[int, ThreadStack]:
    """Read until the threads of one interpreter (minus ``exclude``) are exactly ``want`` and clean."""
    deadline = time.monotonic() + 20
    with RemoteProcess.open(pid) as process:
        reader = StackReader(process)
        while True:
            stacks = {
                s.thread_id: s
                for s in reader.read()
                if s.interpreter_id == interpreter_id and s.thread_id not in exclude
            }
            if set(stacks) == want and not any(s.torn for s in stacks.values()) or time.monotonic() > deadline:
                return stacks
            time.sleep(0.02)


def _assert_same(report: Path, pid: int, interpreter_id: int = 0, exclude: set[int] = frozenset()) -> dict[int, ThreadStack]:
    reporter, expected = _expected(report)
    stacks = _read_settled(pid, interpreter_id, {reporter, *exclude}, set(expected) - set(exclude))
    assert set(stacks) == set(expected) - set(exclude)
    for ident, stack in stacks.items():
        want = expected[ident]
        assert not stack.torn and not stack.truncated
        assert _frames(stack) == [[filename, qualname, lineno] for filename, qualname, _, lineno in want["frames"]], ident
        for frame, (_, _, name, _) in zip(stack.frames, want["frames"]):
            assert frame.function.rsplit(".", 1)[-1] == name  # traceback's co_name ends the qualname
        if interpreter_id == 0:
            assert stack.native_id == want["native_id"]
    return stacks


def test_stacks_equal_what_the_target_reports(spawn: Spawn, tmp_path: Path) -> None:
    body = '''
import contextvars, threading

class Worker:
    def deep(self, n):
        if n == 0:
            park()
        else:
            self.deep(n - 1)

def key_function(item):
    park()
    return item

def in_sorted():
    return sorted([3, 1, 2], key=key_function)

def generator():
    yield from inner_generator()

def inner_generator():
    def nested():
        park()
    nested()
    yield 1

def in_generator():
    return list(generator())

def in_context():
    contextvars.copy_context().run(Worker().deep, 3)

class Parker:
    def __init__(self, n):
        if n == 49:
            park()

def in_init():
    for n in range(50):  # warm the call site up: 3.14 then calls __init__ through a shim frame
        Parker(n)

names = ["plain-worker", "sorted", "a-thread-with-a-long-name", "ctx", "init"]
for name, target in zip(names, [lambda: Worker().deep(5), in_sorted, in_generator, in_context, in_init]):
    threading.Thread(target=target, name=name).start()

def main():
    Worker().deep(2)

main()
'''
    target, report = _start(spawn, tmp_path, body, expect=6)
    stacks = _assert_same(report, target.pid)
    by_name = {stack.name: stack for stack in stacks.values()}
    main = next(stack for stack in stacks.values() if stack.is_main)
    # names from the target's threading module: whole, and the main thread's too (not /proc comm)
    assert main.name == "MainThread" and main.native_id == target.pid
    assert set(by_name) == {"MainThread", "plain-worker", "sorted", "a-thread-with-a-long-name", "ctx", "init"}
    # the __init__ shim frame (code named "__init__" in file "__init__") is hidden, as in CPython
    init_frames = [f.function for f in by_name["init"].frames]
    assert init_frames[init_frames.index("park") + 1 : init_frames.index("park") + 3] == ["Parker.__init__", "in_init"]
    # sorted(key=...) called back into Python from C: the frames below it are still there
    sorted_frames = [f.function for f in by_name["sorted"].frames]
    assert "key_function" in sorted_frames and "in_sorted" in sorted_frames
    assert sorted_frames[-1] == "Thread._bootstrap"
    key_frame = next(f for f in by_name["sorted"].frames if f.function == "key_function")
    assert key_frame.is_entry
    ctx_frames = [f.function for f in by_name["ctx"].frames]
    assert ctx_frames.count("Worker.deep") == 4 and "in_context" in ctx_frames
    gen_frames = [f.function for f in by_name["a-thread-with-a-long-name"].frames]
    assert gen_frames[gen_frames.index("inner_generator.<locals>.nested") :][:4] == [
        "inner_generator.<locals>.nested",
        "inner_generator",
        "generator",
        "in_generator",
    ]
    # the main thread comes first in a full read
    version, everything = read_stacks(target.pid)
    assert version.startswith(targets.version_prefix())
    assert everything[0].is_main and everything[0].interpreter_id == 0


def test_recursion_500_deep(spawn: Spawn, tmp_path: Path) -> None:
    body = '''
import sys, threading
sys.setrecursionlimit(5000)

def recurse(n):
    if n == 0:
        park()
    return recurse(n - 1)

threading.Thread(target=recurse, args=(500,), name="deep").start()
recurse(20)
'''
    target, report = _start(spawn, tmp_path, body, expect=2)
    stacks = _assert_same(report, target.pid)
    deep = next(stack for stack in stacks.values() if stack.name == "deep")
    assert [f.function for f in deep.frames].count("recurse") == 501


def test_deeper_than_the_bound_is_truncated_not_torn(spawn: Spawn, tmp_path: Path) -> None:
    body = f'''
import sys
sys.setrecursionlimit({MAX_DEPTH * 2 + 100})

def recurse(n):
    if n == 0:
        park()
    return recurse(n - 1)

recurse({MAX_DEPTH + 50})
'''
    target, _ = _start(spawn, tmp_path, body, expect=1)
    _, stacks = read_stacks(target.pid)
    main = stacks[0]
    assert main.truncated and not main.torn
    assert len(main.frames) == MAX_DEPTH
    assert [f.function for f in main.frames[:3]] == ["Condition.wait", "Event.wait", "park"]
    assert all(f.function == "recurse" for f in main.frames[3:])


def test_fifty_threads(spawn: Spawn, tmp_path: Path) -> None:
    body = '''
import threading

def level(n, depth):
    if depth == 0:
        park()
    else:
        level(n, depth - 1)

for i in range(49):
    threading.Thread(target=level, args=(i, i % 7), name=f"worker-{i}").start()
park()
'''
    target, report = _start(spawn, tmp_path, body, expect=50)
    stacks = _assert_same(report, target.pid)
    assert len(stacks) == 50
    names = sorted(stack.name for stack in stacks.values() if not stack.is_main)
    assert names == sorted(f"worker-{i}" for i in range(49))


def test_non_ascii_file_and_function_names(spawn: Spawn, tmp_path: Path) -> None:
    body = '''
import threading

class Ünïcödé:
    def méthode(self):
        park()

def αβγ():
    Ünïcödé().méthode()

def 函数():
    αβγ()

threading.Thread(target=函数, name="ünï").start()
αβγ()
'''
    target, report = _start(spawn, tmp_path, body, expect=2, script_name="tëst_αβγ_🐍.py")
    stacks = _assert_same(report, target.pid)
    functions = {f.function for stack in stacks.values() for f in stack.frames}
    assert {"Ünïcödé.méthode", "αβγ", "函数"} <= functions
    files = {f.filename for stack in stacks.values() for f in stack.frames}
    assert str(target.script) in files and "🐍" in str(target.script)


def test_subinterpreter_threads_are_read_and_marked(spawn: Spawn, tmp_path: Path) -> None:
    sub_report = tmp_path / "sub.json"
    sub_code = REPORTER + f'''
start_reporter({str(sub_report)!r}, 2, "sub")

def sub_inner():
    park()

def sub_outer():
    sub_inner()

threading.Thread(target=sub_outer, name="sub-worker").start()
sub_outer()
'''
    body = f'''
import threading
from concurrent import interpreters

interp = interpreters.create()
threading.Thread(target=interp.exec, args=({sub_code!r},), name="runner").start()
park()
'''
    target, report = _start(spawn, tmp_path, body, expect=2)
    target.wait_for_line("ready sub", timeout=60)
    main_stacks = _assert_same(report, target.pid, interpreter_id=0)
    sub_stacks = _assert_same(sub_report, target.pid, interpreter_id=1)
    runner = next(stack for stack in main_stacks.values() if stack.name == "runner")
    assert runner.frames[0].function == "Interpreter.exec"
    assert all(stack.in_subinterpreter for stack in sub_stacks.values())
    # the subinterpreter's main thread is the runner's OS thread, with its own thread state
    assert runner.thread_id in sub_stacks
    assert sub_stacks[runner.thread_id].native_id == runner.native_id
    # the main interpreter's main thread first, subinterpreters after the main interpreter
    _, stacks = read_stacks(target.pid)
    assert stacks[0].is_main
    ids = [stack.interpreter_id for stack in stacks]
    assert ids == sorted(ids, key=lambda i: i != 0) and 1 in ids


BUSY = '''
import threading

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def spin():
    while True:
        fib(18)

for i in range(4):
    threading.Thread(target=spin, name=f"busy-{i}", daemon=True).start()
print("ready", flush=True)
spin()
'''
BUSY_FUNCTIONS = {"fib", "spin", "<module>", "Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap"}
_BUSY_LINES = BUSY.split("\n")  # the script starts with an empty line 1, like BUSY
FIB_LINE = _BUSY_LINES.index("    return n if n < 2 else fib(n - 1) + fib(n - 2)") + 1
SPIN_CALL_LINE = _BUSY_LINES.index("        fib(18)") + 1
MAIN_CALL_LINE = _BUSY_LINES.index("spin()") + 1


def _check_busy_stack(stack: ThreadStack) -> None:
    """A clean stack of the busy target has exactly the shape its source allows, with the right lines."""
    names = [frame.function for frame in stack.frames]
    depth = names.index("spin")
    assert names[:depth] == ["fib"] * depth and depth <= 19, names
    assert all(frame.lineno == FIB_LINE for frame in stack.frames[1:depth])
    if depth:  # threads waiting for the GIL stop at a call's RESUME, which has the def line
        assert stack.frames[0].lineno in (FIB_LINE - 1, FIB_LINE)
    spin_lines = {SPIN_CALL_LINE} if depth else {SPIN_CALL_LINE - 1, SPIN_CALL_LINE}
    assert stack.frames[depth].lineno in spin_lines
    if stack.is_main:
        assert names[depth + 1 :] == ["<module>"] and stack.frames[-1].lineno == MAIN_CALL_LINE
    else:
        assert names[depth + 1 :] == ["Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap"]


def test_busy_target_read_500_times_without_exception(spawn: Spawn) -> None:
    target = spawn(BUSY)
    target.wait_for_line("ready")
    clean = torn = 0
    gil_holders: set[str | None] = set()
    with RemoteProcess.open(target.pid) as process:
        reader = StackReader(process)
        deadline = time.monotonic() + 20
        while not all("spin" in {f.function for f in s.frames} for s in reader.read()):
            assert time.monotonic() < deadline, "the target's threads never reached spin()"
        reader.samples = 0
        for _ in range(500):
            stacks = reader.read()
            assert len(stacks) == 5 and stacks[0].is_main
            for stack in stacks:
                functions = {frame.function for frame in stack.frames}
                assert functions <= BUSY_FUNCTIONS, functions
                torn += stack.torn
                clean += not stack.torn
                if stack.holds_gil:
                    gil_holders.add(stack.name)
                if not stack.torn:
                    _check_busy_stack(stack)
    assert clean > 100 * torn  # torn threads are rare: retried races, never errors
    assert gil_holders  # some thread was seen holding the GIL
    assert reader.samples == 500


def test_code_cache_follows_code_object_generation(spawn: Spawn, tmp_path: Path) -> None:
    """Functions created, parked in, then freed: the reader never shows a stale name."""
    source = REPORTER + '''
import gc, sys, threading
release = threading.Event()

for round_number in range(6):
    namespace = {"park_here": lambda: release.wait()}
    exec(f"def generated_{round_number}():\\n    park_here()\\n", namespace)
    worker = threading.Thread(target=namespace[f"generated_{round_number}"], name="gen-worker")
    worker.start()
    print(f"parked {round_number}", flush=True)
    sys.stdin.readline()
    release.set()
    worker.join()
    release.clear()
    del namespace, worker
    gc.collect()
print("done", flush=True)
'''
    target = spawn(source, stdin=subprocess.PIPE)
    assert target.proc.stdin is not None
    target.wait_for_line("parked 0")
    with RemoteProcess.open(target.pid) as process:
        reader = StackReader(process)
        for round_number in range(6):
            target.wait_for_line(f"parked {round_number}")
            deadline = time.monotonic() + 10
            while True:
                stacks = [s for s in reader.read() if s.name == "gen-worker"]
                functions = [f.function for s in stacks for f in s.frames]
                if f"generated_{round_number}" in functions or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert f"generated_{round_number}" in functions
            assert not any(name.startswith("generated_") and name != f"generated_{round_number}" for name in functions)
            target.proc.stdin.write(b"\n")
            target.proc.stdin.flush()
        target.wait_for_line("done")
        assert reader.cache_resets >= 1


def test_thread_metadata(spawn: Spawn, tmp_path: Path) -> None:
    body = '''
import threading
t = threading.Thread(target=park, name="exactly15chars!")
t.start()
t2 = threading.Thread(target=park, name="much-longer-than-fifteen-bytes")
t2.start()
print("idents", threading.main_thread().ident, t.ident, t2.ident, flush=True)
park()
'''
    target, report = _start(spawn, tmp_path, body, expect=3)
    line = target.wait_for_line("idents")
    main_ident, first, second = (int(x) for x in line.split()[1:])
    stacks = {s.thread_id: s for s in read_stacks(target.pid)[1]}
    assert stacks[main_ident].is_main and stacks[main_ident].name == "MainThread"
    assert stacks[first].name == "exactly15chars!"
    # the whole name, from the target's threading module (the OS name stops at 15 bytes)
    assert stacks[second].name == "much-longer-than-fifteen-bytes"
    assert not stacks[first].is_main and not stacks[first].holds_gil
    assert all(s.interpreter_id == 0 for s in stacks.values())


@pytest.mark.parametrize("how", ["os._exit", "return", "SIGKILL"])
def test_target_exiting_mid_read_gives_process_gone(spawn: Spawn, how: str) -> None:
    ending = {
        "os._exit": "import os, time\ntime.sleep(0.3)\nos._exit(0)\n",
        "return": "import time\ntime.sleep(0.3)\n",
        "SIGKILL": "import time\ntime.sleep(60)\n",
    }[how]
    source = BUSY.replace("spin()\n", "") + ending
    target = spawn(source)
    target.wait_for_line("ready")
    process = RemoteProcess.open(target.pid)
    reader = StackReader(process)
    if how == "SIGKILL":
        threading.Timer(0.3, target.proc.send_signal, args=(signal.SIGKILL,)).start()
    reads = 0
    deadline = time.monotonic() + 30
    try:
        with pytest.raises(ProcessGone):
            while time.monotonic() < deadline:
                reader.read()
                reads += 1
    finally:
        process.close()
    assert reads > 0


CHURN = '''
import threading

def work(n):
    if n:
        return work(n - 1)
    return sum(range(100_000))

def spawner():
    while True:
        threads = [threading.Thread(target=work, args=(20,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

for _ in range(2):
    threading.Thread(target=spawner, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
'''
def test_threads_starting_and_exiting_all_the_time(spawn: Spawn) -> None:
    """Thread states freed while the reader follows the list or a stack: dropped or retried, never an error."""
    target = spawn(CHURN)
    target.wait_for_line("ready")
    with RemoteProcess.open(target.pid) as process:
        reader = StackReader(process)
        seen_work = False
        reads = 0
        deadline = time.monotonic() + 20
        while reads < 300 or not seen_work and time.monotonic() < deadline:  # workers live ~1 ms each
            reads += 1
            stacks = reader.read()
            assert stacks[0].is_main
            for stack in stacks:
                # a thread state not bound to an OS thread (being created or torn down) is left out
                assert stack.native_id != 0 or stack.frames, stack
                if stack.torn or not stack.frames:
                    continue  # a thread state being created or freed
                # a clean stack is a whole chain from a real root, in the script and threading only
                assert stack.frames[-1].function in ("<module>", "Thread._bootstrap"), stack.frames
                # threading itself keeps new threads in a WeakSet (_weakrefset.py) while creating them
                allowed = {"target.py", "threading.py", "_weakrefset.py"}
                assert {Path(frame.filename).name for frame in stack.frames} <= allowed, stack.frames
                names = [frame.function for frame in stack.frames]
                if "work" in names:
                    seen_work = True
                    depth = names.index("Thread.run")
                    assert names[:depth] == ["work"] * depth
    assert seen_work


@given(st.permutations(["executable", "previous", "instr_ptr", "owner"]), st.lists(st.integers(0, 24), min_size=4, max_size=4))
def test_frame_struct_unpacks_fields_at_any_offsets(order: list[str], gaps: list[int]) -> None:
    codes = {"executable": "Q", "previous": "Q", "instr_ptr": "Q", "owner": "B"}
    fields, position, values = {}, 0, {}
    for name, gap in zip(order, gaps):
        offset = position + gap
        fields[name] = (offset, codes[name])
        position = offset + struct.calcsize(codes[name])
        values[name] = (offset * 7919 + 1) % (256 if codes[name] == "B" else 1 << 64)
    buffer = bytearray(position + 5)
    for name, (offset, code) in fields.items():
        struct.pack_into("<" + code, buffer, offset, values[name])
    frame, index = _frame_struct(fields)
    unpacked = frame.unpack_from(bytes(buffer))
    assert {name: unpacked[index[name]] for name in fields} == values
    assert frame.size == position


def test_coroutine_frames_of_a_running_task(spawn: Spawn, tmp_path: Path) -> None:
    """A task that blocks inside nested coroutines: coroutine frames live outside the data stack."""
    body = '''
import asyncio

async def inner():
    await asyncio.sleep(0)
    park()

async def outer():
    await inner()

async def idle():
    await asyncio.sleep(3600)

async def main():
    asyncio.create_task(idle())
    await asyncio.gather(outer())

asyncio.run(main())
'''
    target, report = _start(spawn, tmp_path, body, expect=1)
    stacks = _assert_same(report, target.pid)
    (main,) = stacks.values()
    names = [frame.function for frame in main.frames]
    assert names[names.index("park") + 1 : names.index("park") + 3] == ["inner", "outer"]
    assert names[-1] == "<module>"


ASYNC_BUSY = '''
import asyncio

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

async def worker():
    while True:
        fib(12)
        await asyncio.sleep(0)

async def main():
    print("ready", flush=True)
    await asyncio.gather(*(worker() for _ in range(4)))

asyncio.run(main())
'''


def test_busy_event_loop_switching_coroutines(spawn: Spawn) -> None:
    """Coroutines take turns every few microseconds: clean stacks are whole, torn ones rare."""
    target = spawn(ASYNC_BUSY)
    target.wait_for_line("ready")
    clean = torn = 0
    with RemoteProcess.open(target.pid) as process:
        reader = StackReader(process)
        for _ in range(300):
            (main,) = reader.read()
            if main.torn:
                torn += 1
                continue
            clean += 1
            names = [frame.function for frame in main.frames]
            assert names[-1] == "<module>" and "BaseEventLoop.run_forever" in names, names
            if "worker" in names:
                depth = names.index("worker")
                # computing, or in its await asyncio.sleep(0) (a short but real state)
                assert names[:depth] == ["fib"] * depth or names[:depth] in (["sleep"], ["__sleep0", "sleep"]), names
                assert names[depth + 1] == "Handle._run"
    assert clean > 5 * torn
