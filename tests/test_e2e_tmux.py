"""End to end, as a person would: the real ``periscope`` command in a terminal (tmux), driven with
the keyboard against a running demo target: attach, read the screen, evaluate, detach, quit."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import targets

DEMO = Path(__file__).resolve().parent.parent / "explorer" / "demo_target.py"
TMUX = shutil.which("tmux")

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (make system-deps installs it)")


class Terminal:
    """A tmux session on a private server: send keys, read the screen."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        result = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def type(self, text: str) -> None:
        """Type ``text`` literally."""
        self.tmux("send-keys", "-t", "main", "-l", text)

    def press(self, *keys: str) -> None:
        """Press keys by tmux name (Enter, Escape, C-q, ...)."""
        self.tmux("send-keys", "-t", "main", *keys)

    def screen(self) -> str:
        """What the terminal shows now."""
        return self.tmux("capture-pane", "-p", "-t", "main")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the screen matches ``pattern`` (a regex); fail with the screen after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            match = re.search(pattern, screen)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} did not appear within {timeout:.0f}s; the screen:\n{screen}")
            time.sleep(0.1)


@pytest.fixture(params=["130x40", "80x24"])
def terminal(request, tmp_path) -> Iterator[Terminal]:
    """A shell in tmux on a private socket, 130x40 and 80x24 (the common default); the server is killed at the end."""
    columns, rows = request.param.split("x")
    term = Terminal(f"periscope-test-{secrets.token_hex(4)}")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TMUX")},
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "PS1": "$ ",
    }
    subprocess.run(
        [TMUX, "-L", term.socket, "-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", columns, "-y", rows,
         "bash --norc --noprofile"],
        check=True, env=env, timeout=10,
    )
    try:
        yield term
    finally:
        subprocess.run([TMUX, "-L", term.socket, "kill-server"], capture_output=True, timeout=10)


def agent_present(pid: int) -> bool:
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as handle:
                if "periscope" in handle.read():
                    return True
        except OSError:
            continue
    return False


def test_attach_to_the_demo_read_evaluate_detach_and_quit(terminal, spawn, target_python, tmp_path):
    # A private copy of the demo, in a directory of its own: the filter below finds this one
    # only, not a demo that a test running in parallel (another minor's) started.
    demo = spawn(DEMO.read_text(encoding="utf-8"), script_name="demo_target.py", args=["--verbose"])
    demo.wait_for_line("round")
    assert demo.script is not None
    periscope = Path(sys.executable).with_name("periscope")
    terminal.type(f"{periscope}; echo periscope-exited-$?")
    terminal.press("Enter")

    # The process list: type to filter, the demo's row shows up with its verdict.
    terminal.wait_for(r"Python process")
    terminal.type(demo.script.parent.name)
    terminal.wait_for(rf"{demo.pid}\s+\d+\s+\S+\s+{re.escape(targets.version_prefix()[:-1])}")  # PID, PPID, USER, PYTHON
    terminal.wait_for(r"No process selected")  # nothing is picked until the user moves the cursor
    terminal.press("Down")
    terminal.wait_for(r"can attach")
    terminal.press("Enter")

    # The process screen: the demo's functions and a module variable's value.
    terminal.wait_for(r"Stack of MainThread")
    terminal.wait_for(r"next_batch|add_numbers")
    terminal.wait_for(r"(demo_target|…\w*)\.py:\d+")  # narrow: the file name gives way, never the line number
    terminal.wait_for(r"APP_NAME\s*=\s*'number-add")  # narrow: the value is cut with an ellipsis, its type kept

    # The REPL: it starts in the module; evaluate there and see the result.
    terminal.press("e")
    terminal.wait_for(r"\^c Interrupt")  # the footer shows the REPL's keys: it has the focus
    terminal.wait_for(r"runs in module __main__")
    terminal.type("APP_NAME.upper() + '!' * settings['batch_size']")
    terminal.wait_for(r"settings\['batch_size'\]\s*$|batch_size'\]", timeout=10)
    terminal.press("Enter")
    terminal.wait_for(r"'NUMBER-ADDER!!!!!'")

    # Detach (back to the list; the agent leaves the target), then quit.
    terminal.press("Escape")
    terminal.wait_for(r"Pause/resume")  # the REPL let go of the keys (Esc then d at once reads as Alt+d)
    terminal.press("d")
    terminal.wait_for(r"Python process")
    deadline = time.monotonic() + 15
    while agent_present(demo.pid):
        assert time.monotonic() < deadline, "the agent is still in the target after detaching"
        time.sleep(0.1)
    terminal.press("C-q")
    terminal.wait_for(r"periscope-exited-0")
    assert demo.proc.poll() is None


def demo_processes() -> set[int]:
    """Pids of demo targets started by ``periscope --demo`` from this checkout."""
    import psutil

    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if len(cmdline) == 2 and cmdline[1] == str(DEMO):
            found.add(process.info["pid"])
    return found


def test_periscope_demo_starts_attaches_and_stops_the_demo(terminal):
    import psutil

    before = demo_processes()
    periscope = Path(sys.executable).with_name("periscope")
    terminal.type(f"{periscope} --demo; echo periscope-exited-$?")
    terminal.press("Enter")
    try:
        terminal.wait_for(r"Stack of MainThread")
        terminal.wait_for(r"stats\s*=\s*Stats\(a")  # "Stats(added=..." or, at 80x24, "Stats(ad…"
        started = demo_processes() - before
        assert len(started) == 1
        terminal.press("C-q")
        terminal.wait_for(r"periscope-exited-0")
        (pid,) = started
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "periscope --demo left its demo running"
            time.sleep(0.1)
    finally:
        for pid in demo_processes() - before:  # never leave one behind, even when the test fails
            psutil.Process(pid).kill()
