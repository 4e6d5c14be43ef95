"""The agent's life in a real target: it leaves nothing behind after detach, after periscope is
killed, or when nobody connects; a second agent is refused; a wrong token is turned away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import msgpack
import pytest

from explorer import attach as attach_module
from explorer import handshake as handshake_module
from explorer.attach import attach
from explorer.handshake import AgentBusy
from tests.agent_helpers import connect_when_listening

TARGET = '''
import json, os, sys, time

ORIGINAL = (sys.stdout, sys.stderr)

def state():
    sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return {
        "agent": "_periscope_agent" in sys.modules,
        "threads": len(sys._current_frames()),
        "tasks": len(os.listdir("/proc/self/task")),
        "streams": (sys.stdout, sys.stderr) == ORIGINAL,
        "sockets": sockets,
        "switch": sys.getswitchinterval(),
    }

last = None
while True:
    now = state()
    if now != last:
        last = now
        ORIGINAL[0].write("state " + json.dumps(now, sort_keys=True) + "\\n")
    time.sleep(0.02)
'''

BASELINE = {"agent": False, "threads": 1, "tasks": 1, "streams": True, "sockets": 0, "switch": 0.005}


def _state_line(state: dict) -> str:
    return "state " + json.dumps(state, sort_keys=True)


_consumed: dict[int, int] = {}


def _wait_for_state(target, wanted, timeout=15.0):
    """Wait until the target reports, after the state last waited for, a state for which ``wanted(state)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in target.lines if line.startswith("state ")]
        start = _consumed.get(target.pid, 0)
        for index in range(start, len(lines)):
            state = json.loads(lines[index][6:])
            if wanted(state):
                _consumed[target.pid] = index + 1
                return state
        _consumed[target.pid] = len(lines)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"target never reached the state; last lines: {lines[-3:]}")
        try:
            target.wait_for_line("state \x00", timeout=min(0.2, remaining))  # reads more lines
        except TimeoutError:
            pass


def _settles_at(target, wanted: dict, quiet: float = 0.5, timeout: float = 15.0) -> None:
    """Wait until the target's latest reported state is ``wanted`` and a quiet spell of its 20 ms
    sampling has shown nothing else: for an agent whose whole life may fall between two samples."""
    deadline = time.monotonic() + timeout
    settle_until = time.monotonic() + quiet
    while True:
        try:
            target.wait_for_line("state \x00", timeout=0.05)  # reads more lines
        except TimeoutError:
            pass
        lines = [line for line in target.lines if line.startswith("state ")]
        latest = json.loads(lines[-1][6:]) if lines else None
        now = time.monotonic()
        if latest == wanted and now >= settle_until:
            _consumed[target.pid] = len(lines)
            return
        if now > deadline:
            raise AssertionError(f"target never settled at the state; last lines: {lines[-3:]}")


async def test_detach_leaves_no_thread_socket_file_module_or_redirection(spawn):
    target = spawn(TARGET)
    target.wait_for_line(_state_line(BASELINE))
    _wait_for_state(target, lambda s: s == BASELINE)
    session = await attach(target.pid, rate=5)
    host_dir = session._script_dir.host_path
    try:
        result = await session.eval("print('redirected')")
        assert result.output == "redirected\n"
        # The short start-up switch interval, and the eval's, are given back once the eval is done.
        attached = _wait_for_state(target, lambda s: s["agent"] and not s["streams"] and s["switch"] == 0.005)
        assert attached["sockets"] == 1  # the connection only: the listening socket is gone
        assert sorted(os.listdir(host_dir)) == []  # the script deleted itself, the socket name is unlinked
        await session.next_frame(timeout=10)
    finally:
        await session.detach()
    assert session.closed and session.error is None
    _wait_for_state(target, lambda s: s == BASELINE)
    assert not os.path.exists(host_dir)


async def test_killed_periscope_makes_the_agent_remove_itself(spawn):
    target = spawn(TARGET)
    target.wait_for_line(_state_line(BASELINE))
    _wait_for_state(target, lambda s: s == BASELINE)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "explorer", "watch", str(target.pid), "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        first = json.loads(watcher.stdout.readline())
        assert first["pid"] == target.pid
        _wait_for_state(target, lambda s: s["agent"])
        watcher.send_signal(signal.SIGKILL)
        watcher.wait(timeout=10)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        watcher.stdout.close()
        watcher.stderr.close()
    _wait_for_state(target, lambda s: s == BASELINE, timeout=5)


async def test_a_second_attach_is_refused_and_the_first_session_goes_on(spawn):
    target = spawn(TARGET)
    target.wait_for_line(_state_line(BASELINE))
    _wait_for_state(target, lambda s: s == BASELINE)
    first = await attach(target.pid, rate=0)
    try:
        with pytest.raises(AgentBusy):
            await attach(target.pid, rate=0, timeout=5)
        frame = await first.sample()
        assert frame.main_thread is not None
        assert (await first.eval("1 + 1")).value.repr == "2"
    finally:
        await first.detach()
    _wait_for_state(target, lambda s: s == BASELINE)


async def test_a_wrong_token_is_turned_away_and_the_right_one_still_works(spawn):
    target = spawn(TARGET)
    target.wait_for_line(_state_line(BASELINE))
    _wait_for_state(target, lambda s: s == BASELINE)
    staged = attach_module._stage(target.pid, 0.0, ("__main__",), None)
    try:
        await attach_module._inject(staged, [None], time.monotonic() + 10, lambda *a, **k: None, spread=False)
        intruder = connect_when_listening(staged.socket_host_path)
        intruder.sendall(msgpack.packb({"t": "auth", "token": "0" * 64}))
        assert intruder.recv(100) == b""  # closed without a word
        intruder.close()
        sock, decoder, hello = handshake_module._connect(staged, time.monotonic() + 10)
        assert hello.pid == target.pid
        sock.sendall(msgpack.packb({"t": "req", "id": 1, "op": "detach"}))
        while sock.recv(65536):
            pass
        sock.close()
    finally:
        staged.script_dir.cleanup()
    # The agent's whole life (intruder, handshake, detach) can fall between two of the target's samples.
    _settles_at(target, BASELINE)


async def test_the_agent_removes_itself_when_nobody_connects(spawn, monkeypatch):
    target = spawn(TARGET)
    target.wait_for_line(_state_line(BASELINE))
    _wait_for_state(target, lambda s: s == BASELINE)
    monkeypatch.setattr(attach_module, "CONNECT_TIMEOUT", 1.0)
    staged = attach_module._stage(target.pid, 0.0, ("__main__",), None)
    try:
        await attach_module._inject(staged, [None], time.monotonic() + 10, lambda *a, **k: None, spread=False)
        _wait_for_state(target, lambda s: s["agent"])
        _wait_for_state(target, lambda s: s == BASELINE, timeout=10)
        assert not staged.script_dir.host_path.exists(), os.listdir(staged.script_dir.host_path)
    finally:
        staged.script_dir.cleanup()
