"""explorer.attach and explorer.session against real CPython 3.14 and 3.15 targets: progress states, thread choice, the
errors a user can meet, a target that exits, and a target that already uses msgpack."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import msgpack
import pytest

from explorer.errors import ProcessGone, RemoteDebuggingDisabled
from explorer.attach import AttachState, attach
from explorer.session import SessionClosed

BUSY = '''
import sys, threading, time
def spin():
    n = 0
    while True:
        n += 1
t = threading.Thread(target=spin, name="spinner", daemon=True)
t.start()
sys.stdout.write(f"spinner {t.native_id}\\n")
while True:
    time.sleep(0.02)
'''

# The main thread sleeps long enough that attach reports waiting (after 0.25 s without a pickup)
# before the sleep ends, wherever in the sleep the request arrives.
SLEEPY_MAIN = '''
import sys, time
sys.stdout.write("ready\\n")
while True:
    time.sleep(2.5)
'''


async def test_progress_states_and_the_thread_running_python(spawn):
    target = spawn(BUSY)
    spinner = int(target.wait_for_line("spinner ").split()[1])
    steps = []
    session = await attach(target.pid, rate=0, progress=steps.append)
    try:
        states = [step.state for step in steps]
        assert states[0] is AttachState.INJECTED and states[-2:] == [AttachState.STARTING, AttachState.CONNECTED]
        assert session.injected_via in (spinner, target.pid)
        assert steps[-1].native_id == session.injected_via
        assert all(b.elapsed >= a.elapsed for a, b in zip(steps, steps[1:]))
        frame = await session.sample()
        assert frame.thread(spinner).frames[0].function == "spin"
    finally:
        await session.detach()


def _wait_until_asleep(pid: int, timeout: float = 20.0) -> None:
    """Wait until the main thread sits in time.sleep (the kernel's nanosleep), not just before it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/wchan") as handle:
            if "nanosleep" in handle.read():
                return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} never went to sleep")


async def test_waiting_for_a_sleeping_main_thread_shows_the_stacks(spawn):
    target = spawn(SLEEPY_MAIN)
    target.wait_for_line("ready")
    _wait_until_asleep(target.pid)  # on a loaded machine, "ready" can come well before the sleep
    steps = []
    session = await attach(target.pid, thread="main", rate=0, progress=steps.append)
    try:
        waiting = [step for step in steps if step.state is AttachState.WAITING]
        assert waiting, [step.state for step in steps]
        stacks = waiting[0].stacks
        assert stacks and stacks[0].is_main and stacks[0].frames[0].function == "<module>"
        assert session.injected_via == target.pid
    finally:
        await session.detach()


async def test_remote_debugging_disabled(spawn):
    target = spawn(SLEEPY_MAIN, env={"PYTHON_DISABLE_REMOTE_DEBUG": "1"})
    target.wait_for_line("ready")
    with pytest.raises(RemoteDebuggingDisabled) as raised:
        await attach(target.pid, timeout=3)
    assert "PYTHON_DISABLE_REMOTE_DEBUG" in str(raised.value)


async def test_a_process_that_is_gone(spawn):
    target = spawn(SLEEPY_MAIN)
    target.wait_for_line("ready")
    pid = target.pid
    target.stop()
    with pytest.raises(ProcessGone):
        await attach(pid, timeout=3)


async def test_the_target_exiting_ends_the_session(spawn):
    target = spawn(SLEEPY_MAIN, stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=20)
    await session.next_frame(timeout=10)
    target.proc.kill()
    target.proc.wait()
    with pytest.raises(SessionClosed):
        while True:
            await session.next_frame(timeout=10)
    assert session.closed
    with pytest.raises(SessionClosed):
        await session.sample()
    await session.detach(timeout=2)


async def test_a_target_that_already_imported_msgpack(spawn, tmp_path):
    package = Path(msgpack.__file__).parent
    (tmp_path / "msgpack").symlink_to(package)
    source = '''
import sys, time
import msgpack
VALUE = {"tuple": (1, 2), "text": "caf\\u00e9"}
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.02)
'''
    target = spawn(source, env={"PYTHONPATH": str(tmp_path), "MSGPACK_PUREPYTHON": "1"})
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        assert session.hello.codec == "builtin"  # never the target's own msgpack module
        value = (await session.sample()).module("__main__").get("VALUE")
        assert value.repr == "{'tuple': (1, 2), 'text': 'café'}"
        # A lone surrogate, which msgpack refuses to encode: the agent's own codec escapes it.
        result = await session.eval("{chr(0xdc80) + 'x': 1}")
        children = await session.expand(result.value.ref)
        assert children.children[0].name == "\\udc80x"
    finally:
        await session.detach()
