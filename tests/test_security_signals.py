"""SIGTERM, SIGHUP and a closed terminal withdraw a pending request exactly as Ctrl+C does.

The target's only thread is blocked in C (reading stdin), so periscope's request waits. periscope
gets the signal while the request is pending (seen in the target's memory); afterwards the
request is gone, and when the target wakes and runs Python, no agent starts, nothing picks a
script up (the target's audit hook would say), and the switch interval is the target's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explorer.remote_exec import select_thread
from explorer.remote import RemoteProcess
from tests.test_e2e_tmux import TMUX, terminal  # noqa: F401  (the fixture)

BLOCKED = """
import sys, time
sys.addaudithook(lambda event, args: event == "cpython.remote_debugger_script" and sys.stdout.write("picked\\n"))
sys.setswitchinterval(0.0123)
sys.stdout.write("ready\\n")
sys.stdin.readline()  # blocked in C until the test writes a line
for _ in range(300):  # Python runs: a request still pending would be picked up here
    time.sleep(0.01)
sys.stdout.write("later threads=%d agent=%s switch=%r\\n" % (
    len(sys._current_frames()), "_periscope_agent" in sys.modules, sys.getswitchinterval()))
while True:
    time.sleep(0.1)
"""


def _pending(pid: int) -> int:
    with RemoteProcess.open(pid) as process:
        _, thread = select_thread(process, None)
        debugger = process.offsets.debugger_support
        return process.memory.read_i32(thread.address + debugger.remote_debugger_support + debugger.debugger_pending_call)


def _wait_until_pending(pid: int, periscope: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _pending(pid) != 1:
        if periscope is not None and periscope.poll() is not None:
            pytest.fail(f"periscope ended before its request was written: {periscope.stderr.read().decode(errors='replace')}")
        assert time.monotonic() < deadline, "periscope's request never appeared in the target"
        time.sleep(0.02)


def _check_target_untouched(target) -> None:
    assert _pending(target.pid) == 0  # withdrawn
    target.proc.stdin.write(b"wake up\n")
    target.proc.stdin.flush()
    line = target.wait_for_line("later ", timeout=60)
    assert line == "later threads=1 agent=False switch=0.0123", line
    assert "picked" not in target.lines


@pytest.fixture
def blocked(spawn):
    target = spawn(BLOCKED, stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    return target


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "script.py"
    path.write_text("print('the script ran')\n")
    return path


COMMANDS = {
    "snapshot": lambda pid, script: ["snapshot", str(pid), "--timeout", "120"],
    "eval": lambda pid, script: ["eval", str(pid), "1 + 1", "--timeout", "120"],
    "watch": lambda pid, script: ["watch", str(pid), "--count", "1", "--timeout", "120"],
    "exec": lambda pid, script: ["exec", str(pid), str(script), "--wait", "120"],
}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_killed_while_waiting_withdraws_its_request(blocked, script, command, signum):
    periscope = subprocess.Popen(
        [sys.executable, "-m", "explorer", *COMMANDS[command](blocked.pid, script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_pending(blocked.pid, periscope)
        periscope.send_signal(signum)
        periscope.wait(timeout=30)
    finally:
        if periscope.poll() is None:
            periscope.kill()
            periscope.wait()
        stderr = periscope.stderr.read().decode(errors="replace")
        periscope.stdout.close()
        periscope.stderr.close()
    assert periscope.returncode == 128 + signum, (periscope.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    _check_target_untouched(blocked)


def _shell_pid(pid_file: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "periscope did not start in the terminal"
        time.sleep(0.05)
    return int(pid_file.read_text())


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read():
        assert time.monotonic() < deadline, f"periscope ({pid}) did not end"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["SIGTERM", "closed terminal"])
def test_the_tui_killed_while_waiting_withdraws_its_request(blocked, terminal, tmp_path, how):  # noqa: F811
    pid_file = tmp_path / "periscope.pid"
    cache = f"XDG_CACHE_HOME={os.environ['XDG_CACHE_HOME']} " if os.environ.get("XDG_CACHE_HOME") else ""
    terminal.type(f"sh -c 'echo $$ > {pid_file}; exec env {cache}{sys.executable} -m explorer {blocked.pid}'")
    terminal.press("Enter")
    periscope = _shell_pid(pid_file)
    terminal.wait_for(r"Waiting for the target to run Python", timeout=60)
    _wait_until_pending(blocked.pid)
    if how == "SIGTERM":
        os.kill(periscope, signal.SIGTERM)
    else:
        terminal.tmux("kill-server")  # the terminal goes: SIGHUP to everything in it
    _wait_gone(periscope)
    _check_target_untouched(blocked)


IDLE = """
import sys, time
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
"""


@pytest.mark.parametrize("late", [False, True], ids=["in time", "too late"])
def test_a_script_exec_staged_runs_only_when_picked_up_in_time(spawn, late):
    # A periscope exec killed with SIGKILL cannot withdraw its request; a thread that picks it up
    # after periscope's wait must not run the script then.
    from explorer.staging import prepare_script_dir, stage_script
    from explorer.remote_exec import remote_exec

    target = spawn(IDLE)
    target.wait_for_line("ready")
    script_dir = prepare_script_dir(target.pid)
    try:
        staged = stage_script(
            script_dir, "print('the script ran', flush=True)\n", "<test>", not_after=time.time() + (-1 if late else 60)
        )
        assert remote_exec(target.pid, staged.launcher_path, wait=30).picked_up
        assert staged.wait_until_started(30)
        if late:
            time.sleep(0.5)
            with pytest.raises(TimeoutError):
                target.wait_for_line("the script ran", timeout=0.5)
        else:
            target.wait_for_line("the script ran", timeout=30)
        assert not script_dir.contains("launch.py")
    finally:
        script_dir.cleanup()
