"""``periscope ps`` run as a command, as a person or a script would, against real processes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from explorer.commands.ps import NO_PROCESSES, format_size, write_table
from explorer.discovery import ProcessInfo
from tests.targets import Target
from tests import targets

Spawn = Callable[..., Target]
PERISCOPE = [sys.executable, "-m", "explorer"]
REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534

WAITING = """
import time
print("ready", flush=True)
time.sleep(120)
"""


def periscope(*args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
              command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    run_env.update(env or {})
    return subprocess.run(
        [*(prefix or []), *(command or PERISCOPE), "ps", *args],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=60,
    )


def start_ready(spawn: Spawn, **kwargs) -> Target:
    """A WAITING target that has printed "ready" and is asleep in its sleep (not still between the
    print and the sleep, where a loaded machine can keep it running Python while ps looks)."""
    target = spawn(WAITING, **kwargs)
    target.wait_for_line("ready")
    deadline = time.monotonic() + 30
    asleep = 0
    while asleep < 5:
        with open(f"/proc/{target.pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        asleep = asleep + 1 if state == "S" else 0
        assert time.monotonic() < deadline, "the target did not go to sleep"
        time.sleep(0.02)
    return target


def test_json_lists_targets_with_verdicts(spawn: Spawn, target_python: str) -> None:
    good = start_ready(spawn)
    disabled = start_ready(spawn, env={"PYTHON_DISABLE_REMOTE_DEBUG": "1"})
    # CPU % over an interval: with none it is the average since start, and a slow machine's
    # start-up alone can take the just-started target past IDLE_CPU.
    result = periscope("--json", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert isinstance(entries, list)
    by_pid = {entry["pid"]: entry for entry in entries}
    assert os.getpid() in by_pid  # this test process is Python too (the command excludes only itself)

    entry = by_pid[good.pid]
    assert list(entry) == [field.name for field in fields(ProcessInfo)] + ["blocked_in_c"]  # every field, stable order
    assert entry["blocked_in_c"] is True  # its only thread sleeps in C
    assert entry["python"].startswith(targets.version_prefix())
    assert entry["cmdline"] == [target_python, str(good.script)]
    assert entry["attachable"] is True and entry["reason"] is None and entry["fix"] is None
    assert isinstance(entry["user"], str) and entry["user"]

    entry = by_pid[disabled.pid]
    assert entry["attachable"] is False
    assert "PYTHON_DISABLE_REMOTE_DEBUG" in entry["reason"]
    assert entry["fix"].startswith("restart it without")


def test_table_shows_rows_and_fixes(spawn: Spawn) -> None:
    good = start_ready(spawn)
    disabled = start_ready(spawn, python_args=["-X", "disable-remote-debug"])
    result = periscope()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PID", "PPID", "USER", "PYTHON", "CPU%", "RSS", "ATTACH", "COMMAND"]
    rows = {line.split()[0]: line for line in lines[1:] if line and line.split()[0].isdigit() and "  " in line}
    assert " yes, blocked in C " in rows[str(good.pid)]  # its only thread sleeps in C
    assert rows[str(good.pid)].split()[1] == str(os.getpid())  # PPID: this test started it
    assert str(good.script) in rows[str(good.pid)]  # a pipe gets the whole command
    assert "no: remote debugging disabled by -X disable-remote-debug" in rows[str(disabled.pid)]
    assert (
        f"{disabled.pid}: remote debugging disabled by -X disable-remote-debug; "
        "fix: restart it without -X disable-remote-debug"
    ) in lines


def test_table_fits_the_terminal_width(spawn: Spawn) -> None:
    target = spawn("import time\nprint('ready', flush=True)\ntime.sleep(120)\n", args=["x" * 200])
    target.wait_for_line("ready")
    start_ready(spawn, env={"PYTHON_DISABLE_REMOTE_DEBUG": "1"})
    result = periscope("--interval", "0", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("\n\n")[0].splitlines()
    assert any(line.split()[0] == str(target.pid) for line in table[1:])
    assert all(len(line) <= 80 for line in table), table


def test_command_with_newlines_stays_on_one_row(spawn: Spawn, target_python: str) -> None:
    target = spawn(argv=[target_python, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(120)"])
    target.wait_for_line("ready")
    result = periscope("--interval", "0")
    row = next(line for line in result.stdout.splitlines() if line.lstrip().startswith(f"{target.pid} "))
    assert "import time\\nprint('ready', flush=True)\\ntime.sleep(120)" in row


def test_nothing_found_in_an_empty_pid_namespace() -> None:
    """In a fresh PID namespace periscope is alone: a friendly message, exit status 0."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare for a private PID namespace")
    prefix = [unshare, "--pid", "--fork", "--mount-proc"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a PID namespace here: {probe.stderr.decode(errors='replace')}")
    table = periscope(prefix=prefix)
    assert (table.returncode, table.stdout, table.stderr) == (0, NO_PROCESSES + "\n", "")
    as_json = periscope("--json", prefix=prefix)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []


def test_bad_interval_is_a_usage_error() -> None:
    result = periscope("--interval", "-1")
    assert result.returncode == 2
    assert "--interval" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_ps() -> None:
    result = subprocess.run([*PERISCOPE, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and " ps " in result.stdout


# --- as another user (the kernel hides maps, memory and the environment) ----------------------------

NOBODY_PREFIX = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
DEBIAN_311 = "/usr/bin/python3.11"


def _nobody_command() -> list[str]:
    """periscope run by uid 65534 with the system's Python 3.11 and this checkout's packages."""
    site = next((REPO / ".venv" / "lib").glob("python3.11/site-packages"), None)
    if os.geteuid() != 0 or shutil.which("setpriv") is None or site is None or not os.access(DEBIAN_311, os.X_OK):
        pytest.skip("needs root, setpriv, /usr/bin/python3.11 and the 3.11 virtual environment")
    probe = subprocess.run(
        [*NOBODY_PREFIX, "env", f"PYTHONPATH={REPO}:{site}", DEBIAN_311, "-c", "import psutil, elftools, explorer"],
        capture_output=True, text=True, cwd="/",
    )
    if probe.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot import periscope from this checkout: {probe.stderr[-300:]}")
    return ["env", f"PYTHONPATH={REPO}:{site}", DEBIAN_311, "-m", "explorer"]


NOBODY_TARGET = "import ctypes, time\n{prepare}\nprint('ready', flush=True)\ntime.sleep(120)"


def test_as_another_user(spawn: Spawn) -> None:
    command = _nobody_command()
    root_target = start_ready(spawn)
    own = spawn(argv=[*NOBODY_PREFIX, DEBIAN_311, "-c", NOBODY_TARGET.format(prepare="")])
    own.wait_for_line("ready")
    # PR_SET_DUMPABLE (4) = 0: the kernel now refuses ptrace access even to the same user.
    hidden = spawn(
        argv=[*NOBODY_PREFIX, DEBIAN_311, "-c", NOBODY_TARGET.format(prepare="ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)")]
    )
    hidden.wait_for_line("ready")

    result = periscope("--json", "--interval", "0", prefix=NOBODY_PREFIX, command=command)
    assert result.returncode == 0, result.stderr
    by_pid = {entry["pid"]: entry for entry in json.loads(result.stdout)}

    entry = by_pid[root_target.pid]  # maps unreadable: found by its executable's name
    assert entry["attachable"] is False
    assert entry["reason"] == "owned by another user (root)"
    assert "root" in entry["fix"] and "CAP_SYS_PTRACE" in entry["fix"]
    assert entry["python"] in (None, targets.version_prefix()[:-1])
    assert entry["remote_debug_enabled"] is None

    entry = by_pid[own.pid]  # same user: read fully
    assert entry["user"] == "nobody" and entry["python"].startswith("3.11.")
    assert "3.11" in entry["reason"]

    entry = by_pid[hidden.pid]
    assert entry["attachable"] is False
    assert "not dumpable" in entry["reason"] and "CAP_SYS_PTRACE" in entry["fix"]


# --- formatting (pure) ------------------------------------------------------------------------------


def test_empty_table_is_a_friendly_line() -> None:
    out = io.StringIO()
    write_table([], out, width=80)
    assert out.getvalue() == NO_PROCESSES + "\n"


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0B"), (1023, "1023B"), (2048, "2K"), (5 * 1024**2 + 1024**2 // 2, "5.5M"), (3 * 1024**3, "3.0G")]
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


PARENT = """
import subprocess, sys, time
# The child runs Python until its parent is gone (it never outlives the test, whatever happens).
child = subprocess.Popen([sys.executable, "-c", "import os\\nparent = os.getppid()\\nprint('child', flush=True)\\nwhile os.getppid() == parent: sum(range(1000))"], stdout=sys.stdout)
time.sleep(0.5)
print("ready", child.pid, flush=True)
time.sleep(120)
"""


def test_tree_puts_a_child_under_its_parent_and_marks_only_the_blocked_one(spawn: Spawn) -> None:
    """A parent sleeping in C and its child running Python in a loop: the child's row comes right
    after the parent's, indented under it with --tree; only the parent is "blocked in C"."""
    parent = spawn(PARENT)
    try:
        line = parent.wait_for_line("ready")
        child_pid = int(line.split()[1])
        result = periscope("--tree")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        index = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == str(parent.pid))
        parent_row, child_row = lines[index], lines[index + 1]
        assert child_row.split()[:2] == [str(child_pid), str(parent.pid)]  # PID, PPID
        assert "└─ " in child_row and "└─ " not in parent_row.split("yes")[1][:6]
        assert "yes, blocked in C" in parent_row
        assert "blocked" not in child_row and " yes " in child_row
        assert "the only thread did not run Python while ps looked" in result.stdout
        # Without --tree: the same order, no drawing.
        plain = periscope().stdout.splitlines()
        index = next(i for i, line in enumerate(plain) if line.split() and line.split()[0] == str(parent.pid))
        assert plain[index + 1].split()[0] == str(child_pid) and "└─" not in plain[index + 1]
    finally:
        # The child is the parent's, not the spawn fixture's: stop it here, also when the test
        # failed before the parent said its pid.
        for child in _children_of(parent.pid):
            try:
                os.kill(child, 9)
            except ProcessLookupError:
                pass


def _children_of(pid: int) -> list[int]:
    """The processes ``pid`` started (from /proc: every task's children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
        except OSError:
            continue
    return found
