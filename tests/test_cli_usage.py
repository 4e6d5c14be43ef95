"""The ``periscope`` command line around the TUI: its help shows ``periscope [PID]`` and ``--demo``
beside the commands, a mistyped command gets a suggestion, ``periscope PID --help`` is help, and the
TUI without a terminal prints one line and exits instead of hanging a script. Each case runs the real
``periscope`` in a subprocess (a real target where a pid is needed)."""

from __future__ import annotations

import subprocess
import sys

PERISCOPE = [sys.executable, "-m", "explorer"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PERISCOPE, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def test_help_shows_the_tui_forms_beside_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: periscope [PID] [--demo]")
    assert "--demo" in result.stdout and "PID" in result.stdout
    for command in ("ps", "stack", "snapshot", "watch", "eval"):
        assert f"\n    {command} " in result.stdout


def test_pid_then_help_is_help() -> None:
    result = run("123", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: periscope [PID] [--demo]")


def test_a_mistyped_command_suggests_the_right_one() -> None:
    result = run("stak", "123")
    assert result.returncode == 2
    assert "did you mean 'periscope stack'?" in result.stderr
    assert "invalid int" not in result.stderr
    assert "unknown command 'snapsht'" in run("snapsht", "1").stderr and "periscope snapshot" in run("snapsht", "1").stderr
    assert "periscope --help" in run("xyzzy").stderr


def test_the_tui_without_a_terminal_prints_one_line_and_exits(spawn) -> None:
    target = spawn("import time\nprint('ready', flush=True)\ntime.sleep(600)\n")
    target.wait_for_line("ready")
    result = run(str(target.pid), timeout=30)  # stdout is a pipe: no TUI
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"periscope snapshot {target.pid}" in lines[0] and f"periscope watch {target.pid}" in lines[0]
    assert "\x1b" not in result.stdout + result.stderr  # no screen was drawn


MAIN_BLOCKED = """
import threading, time
def ticker():
    while True:
        time.sleep(0.02)
threading.Thread(target=ticker, name="ticker", daemon=True).start()
print("ready", flush=True)
input()
"""


def test_the_cli_attaches_through_any_thread_by_default_as_the_tui_does(spawn) -> None:
    """The main thread waits in input(); a ticker thread runs Python now and then: the default
    thread choice (any, the TUI's) attaches through it, with no --via given."""
    target = spawn(MAIN_BLOCKED, stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    result = run("watch", str(target.pid), "--count", "1", "--timeout", "20", timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"threads"' in result.stdout
