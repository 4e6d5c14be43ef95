"""A target none of whose threads runs Python: the InjectionTimeout says what happened in neutral
words, and each front end tells its own fix (the CLI its --via option, the TUI its keys: see
tests/test_app.py), without rewriting the other's message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from explorer.errors import InjectionTimeout
from explorer.attach import BLOCKED_FIX, attach

BLOCKED = "print('ready', flush=True)\nline = input()\n"


def test_the_error_keeps_its_reason_and_its_fix_apart() -> None:
    error = InjectionTimeout("no thread of process 42 ran Python within the timeout", "press t", no_thread_ran=True)
    assert str(error) == "no thread of process 42 ran Python within the timeout; press t"
    other = error.with_fix("use --via any")
    assert (other.reason, other.fix, other.no_thread_ran) == (error.reason, "use --via any", True)
    assert str(other) == "no thread of process 42 ran Python within the timeout; use --via any"
    assert str(InjectionTimeout("the agent did not say hello in time")) == "the agent did not say hello in time"


async def test_attach_names_no_command_line_option_unless_asked(spawn):
    target = spawn(BLOCKED, stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    with pytest.raises(InjectionTimeout) as raised:
        await attach(target.pid, thread="main", timeout=1.0)
    error = raised.value
    assert error.no_thread_ran
    assert error.reason.startswith(f"no thread of process {target.pid} ran Python within the timeout (tried main)")
    assert "blocked" in error.reason and "--via" not in str(error)
    assert error.fix == BLOCKED_FIX
    with pytest.raises(InjectionTimeout) as raised:
        await attach(target.pid, thread="main", timeout=1.0, blocked_fix="select another thread and press t")
    assert raised.value.reason.startswith(f"no thread of process {target.pid} ran Python")
    assert raised.value.fix == "select another thread and press t"


def test_the_cli_tells_its_own_options(spawn):
    # eval needs the agent (snapshot reads the values from outside instead: tests/test_values.py)
    target = spawn(BLOCKED, stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    done = subprocess.run(
        [sys.executable, "-m", "explorer", "eval", str(target.pid), "1", "--via", "main", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"periscope: no thread of process {target.pid} ran Python within the timeout (tried main)")
    # No advice to try other threads (they are blocked as well): where it waits, and what shows it.
    assert "--via any" not in done.stderr
    assert lines[0].endswith("; the program is blocked in C there: 'periscope stack PID' shows where (read from outside, no agent needed); attach again once it runs Python")
    assert any(line.startswith(f"  thread {target.pid} (main): in <module> at ") for line in lines[1:]), done.stderr
    assert lines[-1] == f"  the whole stacks: periscope stack {target.pid}"
