"""Hostile targets: containers mutated while the agent reads them, a target without stdout, one
that replaced threading or socket, one whose audit hook refuses remote scripts, and one whose
main thread sits in C holding the GIL. periscope reports what it cannot do, keeps working where
it can, and leaves the target as it found it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from explorer.errors import InjectionTimeout
from explorer.attach import AttachState, attach
from explorer.handshake import AgentRefused
from explorer.stacks import read_stacks
from tests.agent_helpers import COUNTER, start_watched
from tests.test_inject import request_state

CHURN = '''
import sys, threading, time
SIZE = 300_000  # iterating this many takes longer than a GIL switch interval
SHARED_SET = set(range(SIZE))
SHARED_LIST = list(range(SIZE))
SHARED_DICT = dict.fromkeys(range(SIZE))
module = globals()
for n in range(SIZE):
    module["v%d" % n] = n

def churn():
    """Grow and shrink the module's globals and three containers, never back to the same size for long."""
    n = 0
    while True:
        n += 1
        k = n % 2000
        if k < 1000:
            module["tmp_%d" % k] = n
            SHARED_SET.add(-k - 1)
            SHARED_LIST.append(k)
            SHARED_DICT[-k - 1] = n
        else:
            module.pop("tmp_%d" % (k - 1000), None)
            SHARED_SET.discard(-(k - 1000) - 1)
            SHARED_LIST.pop()
            SHARED_DICT.pop(-(k - 1000) - 1, None)

threading.Thread(target=churn, daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.02)
'''


async def test_containers_and_globals_mutated_while_the_agent_reads_them(spawn):
    target = spawn(CHURN)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        refs = {name: (await session.eval(name)).value.ref for name in ("SHARED_SET", "SHARED_LIST", "SHARED_DICT")}
        for _ in range(8):
            frame = await session.sample()
            assert frame.errors == 0, frame.error_log
            assert frame.module("__main__").total > 300_000
            for name, ref in refs.items():
                children = await session.expand(ref, offset=290_000, limit=10)
                assert children.total > 290_000 and len(children.children) == 10, name
    finally:
        await session.detach()


NO_STDOUT = '''
import sys, threading, time
problems = []

def talk():
    """The target's own prints, which go nowhere without a stdout, and must not start failing."""
    global STREAMS
    while True:
        STREAMS = (sys.stdout, sys.stderr)
        try:
            print("from the target")
            print("to the target's stderr", file=sys.stderr)
        except BaseException as error:
            problems.append(repr(error))
        time.sleep(0.005)

print("ready", flush=True)
sys.stdout = None
sys.stderr = None
threading.Thread(target=talk, daemon=True).start()
while True:
    time.sleep(0.02)
'''


async def test_a_target_without_stdout_or_stderr(spawn):
    target = spawn(NO_STDOUT)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        result = await session.eval("print('captured'); 6 * 7")
        assert result.output == "captured\n" and result.value.repr == "42"
        later = await session.eval("import time; time.sleep(0.3); problems")
        assert later.value.repr == "[]"
    finally:
        await session.detach()
    session = await attach(target.pid, rate=0)  # no eval: the streams are the target's own
    try:
        module = (await session.sample()).module("__main__")
        assert (module.get("STREAMS").repr, module.get("problems").repr) == ("(None, None)", "[]")
    finally:
        await session.detach()


REPLACED_THREADING = '''
import sys, threading, time
import json

class Refusing(threading.Thread):
    def start(self):
        raise RuntimeError("this process starts no threads through threading")

class Idle(threading.Thread):
    def start(self):
        pass  # starts nothing, and never says so

threading.Thread = Refusing if sys.argv[1] == "refusing" else Idle
threading.current_thread = threading.currentThread = lambda: 1 / 0
threading._active = None
print("ready", flush=True)
while True:
    time.sleep(0.02)
'''


@pytest.mark.parametrize("start", ["refusing", "idle"])
async def test_a_target_that_replaced_threading(spawn, tmp_path, start):
    target = spawn(REPLACED_THREADING, args=[start])
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        frame = await session.sample()
        assert frame.main_thread is not None
        result = await asyncio.wait_for(session.eval("print('still here'); 1 + 1"), 30)
        assert result.ok and result.value.repr == "2" and result.output == "still here\n"
    finally:
        await asyncio.wait_for(session.detach(), 30)


REPLACED_SOCKET = '''
import socket, sys, time

class NoSockets:
    def __init__(self, *args, **kwargs):
        raise OSError("this process opens no sockets")

socket.socket = socket.create_connection = NoSockets
sys.modules["socket"] = None
print("ready", flush=True)
while True:
    time.sleep(0.02)
'''


async def test_a_target_that_replaced_the_socket_module(spawn):
    target = spawn(REPLACED_SOCKET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        assert (await session.eval("repr(sys.modules['socket'])")).value.repr == "'None'"
    finally:
        await session.detach()


async def test_a_target_that_replaced_the_socket_type_itself(spawn, tmp_path):
    """The agent builds its own _socket (and _thread, time) from the interpreter's C module, so a
    target that replaced ``_socket.socket`` still gets a working agent, and nothing is left behind."""
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    async with await attach(watched.pid, rate=0) as session:
        await session.eval("import _socket; _socket.socket = type('NoSockets', (), {'__init__': lambda self, *a: 1 / 0})")
    watched.wait_until_back_to(quiet)
    async with await attach(watched.pid, rate=0, timeout=30) as session:
        # The first session's `import _socket` was that session's name: import it again.
        result = await session.eval("import _socket\n_socket.socket.__name__")
        assert result.ok and result.value.repr == "'NoSockets'"
    watched.wait_until_back_to(quiet)
    watched.wait_for_counter_beyond(watched.state()["counter"])


AUDITED = '''
import sys, time
def refuse_remote_scripts(event, args):
    if event == "cpython.remote_debugger_script":
        raise RuntimeError("remote scripts are not allowed here")
sys.addaudithook(refuse_remote_scripts)
print("ready", flush=True)
while True:
    time.sleep(0.001)
'''


async def test_an_audit_hook_that_refuses_the_agent_is_reported(spawn):
    """The thread takes the request, the hook stops the script: periscope says so instead of
    waiting for a socket that will never come (the timeout here is far longer than that)."""
    target = spawn(AUDITED)
    target.wait_for_line("ready")
    with pytest.raises(AgentRefused) as raised:
        await attach(target.pid, rate=0, timeout=120)
    message = str(raised.value)
    assert "audit hook" in message and message.count("\n") == 0
    assert target.proc.poll() is None


BLOCKED_IN_C = COUNTER + '''
import ctypes
print("blocking", flush=True)
ctypes.PyDLL(None).sleep(30)  # in C for 30 s, holding the GIL: no thread runs Python meanwhile
print("unblocked", flush=True)
'''


async def test_a_main_thread_in_c_holding_the_gil_for_30_s(spawn):
    """No thread can run the agent, so attaching times out with the fix, the request is taken
    back, and periscope keeps showing the stacks, read from outside, all the while."""
    target = spawn(BLOCKED_IN_C)
    target.wait_for_line("blocking")
    steps = []
    with pytest.raises(InjectionTimeout) as raised:
        await attach(target.pid, rate=0, timeout=2, progress=steps.append)
    assert raised.value.no_thread_ran and raised.value.fix  # what happened, and what to do
    waiting = [step for step in steps if step.state is AttachState.WAITING and step.stacks]
    assert waiting and waiting[-1].stacks[0].is_main
    assert waiting[-1].stacks[0].frames[0].function == "<module>"
    assert request_state(target.pid)[0] == 0  # withdrawn: nothing runs when the call returns
    stacks = read_stacks(target.pid)[1]
    assert [stack.frames[0].function for stack in stacks if stack.frames][:2] == ["<module>", "count"]
    done = subprocess.run([sys.executable, "-m", "explorer", "stack", str(target.pid)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "<module>" in done.stdout
    assert target.proc.poll() is None and not any(line == "unblocked" for line in target.lines)
