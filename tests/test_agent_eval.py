"""Eval inside real CPython 3.14 and 3.15 targets: expressions, statements, frame locals that write
through, print capture next to the target's own printing, tracebacks, interrupts, and a target
whose main thread is blocked in input()."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from explorer.errors import InjectionTimeout
from explorer.attach import attach

TARGET = '''
import sys, threading, time

FLAG = "initial"

def sleeper():
    local_value = 1
    sys.stdout.write(f"native {threading.get_native_id()}\\n")
    while True:
        time.sleep(0.05)
        if local_value != 1:
            sys.stdout.write(f"local_value is now {local_value!r}\\n")
            return

def ticker():
    n = 0
    while True:
        n += 1
        sys.stdout.write(f"tick {n}\\n")
        time.sleep(0.01)

def fail():
    raise ValueError("bad value")

threading.Thread(target=sleeper, name="sleeper", daemon=True).start()
sys.stdout.write("ready\\n")
last = FLAG
while True:
    time.sleep(0.02)
    if FLAG != last:
        last = FLAG
        sys.stdout.write(f"FLAG is now {FLAG!r}\\n")
'''


async def test_expressions_and_statements(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        result = await session.eval("FLAG * 2")
        assert result.ok and result.mode == "eval" and result.value.repr == "'initialinitial'"
        result = await session.eval("FLAG = 'changed by periscope'\nlen(FLAG)")
        assert result.ok and result.mode == "exec" and result.value.repr == "20"
        target.wait_for_line("FLAG is now 'changed by periscope'")  # the target's own code sees it
        result = await session.eval("import json\nx = 1")
        assert result.ok and result.value is None
        result = await session.eval("__name__", module="json")
        assert result.value.repr == "'json'"
        result = await session.eval("list(range(5))")
        assert result.value.ref is not None
        children = await session.expand(result.value.ref)
        assert [c.value.repr for c in children.children] == ["0", "1", "2", "3", "4"]
    finally:
        await session.detach()


async def test_assignment_to_a_sleeping_functions_local_is_seen_when_it_wakes(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    native = int(target.wait_for_line("native ").split()[1])
    session = await attach(target.pid, rate=0)
    try:
        result = await session.eval("local_value", thread=native, frame=0)
        assert result.ok and result.value.repr == "1"
        result = await session.eval("local_value = 'set from outside'", thread=native, frame=0)
        assert result.ok, result.traceback
        target.wait_for_line("local_value is now 'set from outside'")
    finally:
        await session.detach()


async def test_print_output_comes_back_and_the_targets_own_prints_stay_put(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        await session.eval("threading.Thread(target=ticker, daemon=True).start()")
        target.wait_for_line("tick 3")
        seen = []
        result = await session.eval(
            "for i in range(40):\n    print('captured', i)\n    time.sleep(0.002)\n"
            "print('to stderr', file=sys.stderr)\n'done'",
            on_output=seen.append,
        )
        assert result.ok and result.value.repr == "'done'"
        expected = "".join(f"captured {i}\n" for i in range(40)) + "to stderr\n"
        assert result.output == expected
        assert "".join(o.text for o in seen) == expected
        assert {o.stream for o in seen} == {"stdout", "stderr"}
        last_tick = int(target.wait_for_line("tick 60").split()[1])
        assert last_tick == 60
    finally:
        await session.detach()
    assert not any("captured" in line for line in target.lines)


async def test_exceptions_come_back_as_tracebacks(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        result = await session.eval("fail()")
        assert result.status == "raised" and result.exception == "ValueError"
        assert "ValueError: bad value" in result.traceback
        assert 'File "<periscope>", line 1' in result.traceback and "in fail" in result.traceback
        assert "<periscope-agent>" not in result.traceback
        result = await session.eval("def broken(:")
        assert result.status == "raised" and result.exception == "SyntaxError"
        result = await session.eval("x = 1\nundefined_name")
        assert result.exception == "NameError" and "undefined_name" in result.traceback
    finally:
        await session.detach()


async def test_interrupting_an_endless_loop_while_the_stream_goes_on(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=10)
    try:
        handle = session.start_eval("while True:\n    pass")
        # Frames keep coming while the eval spins, and the eval thread is in them.
        while True:
            frame = await session.next_frame(timeout=10)
            evals = [t for t in frame.threads if t.is_agent]
            if evals:
                break
        assert evals[0].frames[0].filename == "<periscope>"
        assert await handle.interrupt()
        result = await asyncio.wait_for(handle.result(), 10)
        assert result.status == "interrupted" and result.exception == "KeyboardInterrupt"
        assert not await handle.interrupt()
        assert (await session.eval("FLAG = 'after the interrupt'")).ok
        target.wait_for_line("FLAG is now 'after the interrupt'")
    finally:
        await session.detach()
    assert target.proc.poll() is None


INPUT_TARGET = '''
import threading, time
def worker():
    while True:
        time.sleep(0.05)
threading.Thread(target=worker, name="worker", daemon=True).start()
print("ready", flush=True)
line = input()
print("main got " + line, flush=True)
while True:
    time.sleep(0.05)
'''


async def test_a_target_whose_main_thread_is_blocked_in_input(spawn):
    target = spawn(INPUT_TARGET, stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    with pytest.raises(InjectionTimeout):
        await attach(target.pid, thread="main", timeout=1.0)
    session = await attach(target.pid, thread="any", timeout=10)
    try:
        frame = await session.sample()
        main = frame.main_thread
        assert main is not None and main.frames[0].function == "<module>"
        assert session.injected_via != target.pid
        result = await session.eval("threading.enumerate()[0].name")
        assert result.value.repr == "'MainThread'"
    finally:
        await session.detach()
    target.proc.stdin.write(b"hello\n")
    target.proc.stdin.flush()
    target.wait_for_line("main got hello")
    target.proc.terminate()
    stderr = target.proc.communicate(timeout=10)[1].decode()
    # The request written to the blocked main thread was withdrawn: nothing ran there later.
    assert "Error executing debugger script" not in stderr and "Can't open debugger script" not in stderr
