"""A target whose names and reprs carry terminal escape sequences: periscope shows them, never obeys them.

The thread name, the file name, the function name, a global's name and a repr of a real target
carry ``ESC ]0;title BEL`` (retitle the terminal), ``ESC [2J`` (clear the screen) and an OSC 52
clipboard write. ``stack``, ``snapshot`` and ``eval`` print no raw ESC byte (the JSON output
keeps the exact strings), and the TUI in tmux keeps its pane title.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.test_e2e_tmux import TMUX, terminal  # noqa: F401  (the fixture)

EVIL = "\x1b]0;pwned-title\x07\x1b[2J\x1b]52;c;cHduZWQ=\x07"
SHOWN = "\\x1b]0;pwned-title\\x07\\x1b[2J\\x1b]52;c;cHduZWQ=\\x07"
"""How periscope shows EVIL."""

TARGET = """
import sys, threading, time
EVIL = %r

class Evil:
    def __repr__(self):
        return "fake" + EVIL

globals()["global" + EVIL] = Evil()
source = "def work():\\n    value = Evil()\\n    while True:\\n        time.sleep(0.01)\\n"
namespace = {"Evil": Evil, "time": time}
exec(compile(source, "/nowhere/file" + EVIL + ".py", "exec"), namespace)
work = namespace["work"]
work.__code__ = work.__code__.replace(co_name="function" + EVIL, co_qualname="function" + EVIL)
threading.Thread(target=work, name="thread" + EVIL, daemon=True).start()
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
""" % EVIL


def _periscope(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, timeout=timeout)


@pytest.fixture
def evil(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    return target


def test_stack_shows_the_escapes_and_json_keeps_them_exact(evil):
    done = _periscope("stack", str(evil.pid))
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert b"\x1b" not in done.stdout + done.stderr
    # Read from outside, a thread's name is its threading name, whole.
    assert f"(thread{SHOWN})" in out and f"function{SHOWN}" in out and f"file{SHOWN}.py" in out
    done = _periscope("stack", str(evil.pid), "--json")
    threads = {thread["name"]: thread for thread in json.loads(done.stdout)["threads"]}
    frames = threads["thread" + EVIL]["frames"]
    assert any(f["function"] == "function" + EVIL and f["filename"] == f"/nowhere/file{EVIL}.py" for f in frames)


def test_snapshot_shows_the_escapes_and_json_keeps_them_exact(evil):
    done = _periscope("snapshot", str(evil.pid))
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert b"\x1b" not in done.stdout + done.stderr
    assert f"global{SHOWN} = fake{SHOWN}" in out
    assert f"value = fake{SHOWN}" in out and f"thread{SHOWN}" in out and f"function{SHOWN}" in out
    frame = json.loads(_periscope("snapshot", str(evil.pid), "--json").stdout)
    assert "thread" + EVIL in [thread["name"] for thread in frame["threads"]]
    assert frame["modules"]["__main__"]["global" + EVIL]["repr"] == "fake" + EVIL


@pytest.mark.parametrize(
    "code",
    [
        f"globals()['global{EVIL}']",  # a repr
        f"print({EVIL!r})",  # printed output
        f"raise ValueError({EVIL!r})",  # a traceback
    ],
)
def test_eval_shows_the_escapes(evil, code):
    done = _periscope("eval", str(evil.pid), code)
    assert b"\x1b" not in done.stdout + done.stderr, (done.stdout, done.stderr)
    assert SHOWN in (done.stdout + done.stderr).decode()


def test_the_tui_keeps_the_pane_title(evil, terminal):  # noqa: F811
    terminal.tmux("select-pane", "-t", "main", "-T", "before")
    terminal.type("printf '\\033]0;obeyed\\007'")
    terminal.press("Enter")
    deadline = time.monotonic() + 10
    while terminal.tmux("display-message", "-p", "-t", "main", "#{pane_title}").strip() != "obeyed":
        assert time.monotonic() < deadline, "this tmux does not take titles from programs: the test would prove nothing"
        time.sleep(0.1)
    terminal.tmux("select-pane", "-t", "main", "-T", "kept")
    env = f"XDG_CACHE_HOME={os.environ.get('XDG_CACHE_HOME', '')}" if os.environ.get("XDG_CACHE_HOME") else ""
    terminal.type(f"{env} {sys.executable} -m explorer {evil.pid}; echo tui-exited-$?")
    terminal.press("Enter")
    terminal.wait_for(r"Threads", timeout=60)
    terminal.wait_for(r"thread\\x1b", timeout=60)  # the thread's name, shown escaped
    terminal.press("Down")  # its stack (at 80x24 the thread list has no room for its innermost frame)
    terminal.wait_for(r"function\\x1", timeout=60)  # the function's name, shown escaped (cut to its column)
    assert terminal.tmux("display-message", "-p", "-t", "main", "#{pane_title}").strip() == "kept"
    terminal.press("C-q")
    terminal.wait_for(r"tui-exited-0", timeout=30)  # back at the shell (the command line may wrap at 80 columns)
    assert terminal.tmux("display-message", "-p", "-t", "main", "#{pane_title}").strip() == "kept"


def test_ps_shows_the_escapes_in_a_command_line(spawn):
    target = spawn(TARGET, args=("argument" + EVIL,))
    target.wait_for_line("ready")
    done = _periscope("ps")
    assert done.returncode == 0, done.stderr
    assert b"\x1b" not in done.stdout + done.stderr
    assert str(target.pid).encode() in done.stdout
    rows = json.loads(_periscope("ps", "--json").stdout)
    assert "argument" + EVIL in next(row for row in rows if row["pid"] == target.pid)["cmdline"]
