"""The TUI over ``--host``, as a person would use it: the real ``periscope --host`` command in tmux
against a target on the "remote" side of a real OpenSSH server (tests/sshd.py): the process
list comes from there, attaching relays the agent's session back, the header names the host,
the REPL evaluates there, and detaching removes the agent."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import targets
from tests.sshd import SSH, SSHD, start_sshd
from tests.test_e2e_tmux import DEMO, TMUX, Terminal, agent_present

pytestmark = pytest.mark.skipif(
    TMUX is None or SSHD is None or SSH is None, reason="needs tmux and OpenSSH (make system-deps installs them)"
)


def test_tui_over_ssh_lists_attaches_evaluates_and_detaches(spawn, target_python, tmp_path):
    server = start_sshd(tmp_path / "sshd")
    term = Terminal(f"periscope-test-{secrets.token_hex(4)}")
    env = {
        **{k: v for k, v in server.env().items() if not k.startswith("TMUX")},
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "PS1": "$ ",
    }
    try:
        demo = spawn(DEMO.read_text(encoding="utf-8"), script_name="demo_target.py", args=["--verbose"])
        demo.wait_for_line("round")
        assert demo.script is not None
        subprocess.run(
            [TMUX, "-L", term.socket, "-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", "130", "-y", "40",
             "bash --norc --noprofile"],
            check=True, env=env, timeout=10,
        )
        periscope = Path(sys.executable).with_name("periscope")
        term.type(f"{periscope} --host {server.destination}; echo periscope-exited-$?")
        term.press("Enter")

        term.wait_for(r"Python process")
        term.type(demo.script.parent.name)
        term.wait_for(rf"{demo.pid}\s+\d+\s+\S+\s+{re.escape(targets.version_prefix()[:-1])}")  # PID, PPID, USER, PYTHON
        term.press("Down")  # nothing is picked until the user moves the cursor
        term.wait_for(r"can attach")
        term.press("Enter")

        # The process screen, its header naming the host; values come through the relay.
        term.wait_for(rf"periscope · {re.escape(server.destination)} · {demo.pid}")
        term.wait_for(r"Stack of MainThread")
        term.wait_for(r"APP_NAME\s*=\s*'number-add")

        term.press("e")
        term.wait_for(r"runs in module __main__")
        term.type("APP_NAME.upper() + '@' + str(__import__('os').getpid())")
        term.press("Enter")
        term.wait_for(rf"'NUMBER-ADDER@{demo.pid}'")

        term.press("Escape")
        term.wait_for(r"Pause/resume")
        term.press("d")
        term.wait_for(r"Python process")
        deadline = time.monotonic() + 15
        while agent_present(demo.pid):
            assert time.monotonic() < deadline, "the agent is still in the target after detaching"
            time.sleep(0.1)
        term.press("C-q")
        term.wait_for(r"periscope-exited-0")
        assert demo.proc.poll() is None
    finally:
        subprocess.run([TMUX, "-L", term.socket, "kill-server"], capture_output=True, timeout=10)
        server.stop()


def test_fleet_view_lists_every_host_with_a_host_column_and_attaches_per_row(spawn, target_python, tmp_path):
    """Two far sides of the same machine (ssh, and --exec env): each process shows once per host,
    the HOST column says which; attaching to one row goes through that row's host."""
    server = start_sshd(tmp_path / "sshd")
    term = Terminal(f"periscope-test-{secrets.token_hex(4)}")
    env = {
        **{k: v for k, v in server.env().items() if not k.startswith("TMUX")},
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "PS1": "$ ",
    }
    try:
        demo = spawn(DEMO.read_text(encoding="utf-8"), script_name="demo_target.py", args=["--verbose"])
        demo.wait_for_line("round")
        assert demo.script is not None
        subprocess.run(
            [TMUX, "-L", term.socket, "-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", "150", "-y", "40",
             "bash --norc --noprofile"],
            check=True, env=env, timeout=10,
        )
        periscope = Path(sys.executable).with_name("periscope")
        term.type(f"{periscope} --host {server.destination} --exec env; echo periscope-exited-$?")
        term.press("Enter")

        term.wait_for(r"HOST\s+PID")
        term.type(demo.script.parent.name)
        term.wait_for(rf"{re.escape(server.destination)}\s+{demo.pid}\s")
        term.wait_for(rf"env\s+{demo.pid}\s")
        term.type(" env")  # the filter matches the HOST column too: only the exec host's row
        deadline = time.monotonic() + 15
        while re.search(rf"{re.escape(server.destination)}\s+{demo.pid}\s", term.screen()):
            assert time.monotonic() < deadline, term.screen()
            time.sleep(0.1)
        term.press("Down")
        term.wait_for(r"can attach")
        term.press("Enter")

        term.wait_for(rf"periscope · env · {demo.pid}")
        term.wait_for(r"APP_NAME\s*=\s*'number-add")

        # The same pid on the other host: refused while this one is attached, never shown as it.
        term.press("C-o")
        term.wait_for(r"HOST\s+PID")
        term.press("Escape")  # clears the filter (wait for it: Esc then a key at once reads as Alt+key)
        term.wait_for(r"type to filter")
        term.type(f"{demo.script.parent.name} root@")
        term.wait_for(rf"{re.escape(server.destination)}\s+{demo.pid}\s")
        term.press("Down")  # the row left is filtered out: the cursor is on nothing until moved
        term.wait_for(r"can attach")  # the verdict is this row's: the attached process is the other host's
        term.press("Enter")
        term.wait_for(rf"Cannot attach to {demo.pid} on {re.escape(server.destination)}")
        term.press("Enter")  # OK
        deadline = time.monotonic() + 15
        while "Cannot attach" in term.screen():
            assert time.monotonic() < deadline, term.screen()
            time.sleep(0.1)
        term.press("C-o")
        term.wait_for(rf"periscope · env · {demo.pid}")
        term.press("d")
        term.wait_for(r"HOST\s+PID")
        deadline = time.monotonic() + 15
        while agent_present(demo.pid):
            assert time.monotonic() < deadline, "the agent is still in the target after detaching"
            time.sleep(0.1)
        term.press("C-q")
        term.wait_for(r"periscope-exited-0")
    finally:
        subprocess.run([TMUX, "-L", term.socket, "kill-server"], capture_output=True, timeout=10)
        server.stop()


def test_top_and_the_fleet_views_profile_over_ssh(spawn, target_python, tmp_path):
    """``periscope --host H top PID`` shows the target's hot function, sampled on the far side;
    so does Ctrl+F on the fleet view's row of that host; quitting leaves no serve behind."""
    from tests.profile_targets import HOT_TARGET
    from tests.test_remote_profile import holds_files_of
    from tests.test_remote_ssh import _serve_processes

    server = start_sshd(tmp_path / "sshd")
    term = Terminal(f"periscope-test-{secrets.token_hex(4)}")
    env = {
        **{k: v for k, v in server.env().items() if not k.startswith("TMUX")},
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "PS1": "$ ",
    }
    try:
        hot = spawn(HOT_TARGET)
        hot.wait_for_line("ready")
        assert hot.script is not None
        subprocess.run(
            [TMUX, "-L", term.socket, "-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", "150", "-y", "40",
             "bash --norc --noprofile"],
            check=True, env=env, timeout=10,
        )
        periscope = Path(sys.executable).with_name("periscope")
        term.type(f"{periscope} --host {server.destination} top {hot.pid}; echo periscope-top-exited-$?")
        term.press("Enter")
        term.wait_for(rf"periscope · profile · {hot.pid}")
        term.wait_for(r"hot_loop\s")
        (serve,) = _serve_processes(server)
        assert holds_files_of(serve, hot.pid)  # sampled over there
        term.press("C-q")
        term.wait_for(r"periscope-top-exited-0")
        deadline = time.monotonic() + 15
        while _serve_processes(server):
            assert time.monotonic() < deadline, "the far side's serve outlived periscope top"
            time.sleep(0.1)

        term.type(f"clear; {periscope} --host {server.destination} --exec env; echo periscope-exited-$?")
        term.press("Enter")
        term.wait_for(r"HOST\s+PID")
        term.type(f"{hot.script.parent.name} root@")
        term.wait_for(rf"{re.escape(server.destination)}\s+{hot.pid}\s")
        term.press("Down")
        term.wait_for(r"can attach")
        term.press("C-f")
        term.wait_for(rf"periscope · profile · {hot.pid}")
        term.wait_for(r"hot_loop\s")
        (serve,) = _serve_processes(server)
        assert holds_files_of(serve, hot.pid)  # by the row's host, the ssh one
        term.press("Escape")
        term.wait_for(r"HOST\s+PID")
        term.press("C-q")
        term.wait_for(r"periscope-exited-0")
        assert hot.proc.poll() is None
    finally:
        subprocess.run([TMUX, "-L", term.socket, "kill-server"], capture_output=True, timeout=10)
        server.stop()
