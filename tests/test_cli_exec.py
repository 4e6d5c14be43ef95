"""``periscope exec PID FILE`` run as a command against real processes: the success line, the
not-picked-up exit status 2 with its fix, and a one-line message (never a traceback) for every
refusal, including targets that disappear while periscope works on them."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from explorer import cli
from tests.targets import Target
from tests.test_inject import BUSY_MAIN, MAIN_IN_INPUT

Spawn = Callable[..., Target]
PERISCOPE = [sys.executable, "-m", "explorer"]
SUCCESS = re.compile(
    r"injected into thread (\d+) of (\d+); picked up after \d+\.\d\d ms "
    r"\(pickup is not completion: output goes to the target\)"
)

REPORT = "import threading\nprint('ran', threading.current_thread().name, threading.get_native_id(), flush=True)\n"

# Exits DELAY seconds after the test says "go" (right before it runs periscope).
EXITING = """
import os, sys, threading
print("ready", flush=True)
sys.stdin.readline()
threading.Timer(DELAY, os._exit, (0,)).start()
while True:
    sum(range(200))
"""

SLEEPING = """
import time
print("ready", flush=True)
time.sleep(120)
"""


def periscope(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command."""
    return subprocess.run([*PERISCOPE, "exec", *args], capture_output=True, text=True, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int = 1) -> str:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("periscope: "), result.stderr
    return lines[0]


def started(spawn: Spawn, source: str, **kwargs) -> Target:
    target = spawn(source, **kwargs)
    target.wait_for_line("ready")
    return target


@pytest.fixture
def report_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.py"
    path.write_text(REPORT)
    return path


def read_stderr_until(target: Target, text: str, timeout: float = 20) -> str:
    """Collect the target's stderr until it contains ``text``."""
    assert target.proc.stderr is not None
    fd = target.proc.stderr.fileno()
    collected = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in collected:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"target stderr so far: {collected!r}"
        if select.select([fd], [], [], min(remaining, 0.5))[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"target stderr closed: {collected!r}"
            collected += chunk
    return collected.decode(errors="replace")


# -- it works -----------------------------------------------------------------------------------


def test_exec_into_main_thread(spawn: Spawn, report_file: Path) -> None:
    target = started(spawn, BUSY_MAIN)
    result = periscope(str(target.pid), str(report_file))
    assert result.returncode == 0, result.stderr
    match = SUCCESS.fullmatch(result.stdout.strip())
    assert match, result.stdout
    assert match.groups() == (str(target.pid), str(target.pid))
    assert target.wait_for_line("ran ") == f"ran MainThread {target.pid}"


def test_main_in_input_then_worker_by_thread_option(spawn: Spawn, report_file: Path) -> None:
    target = started(spawn, MAIN_IN_INPUT, stdin=subprocess.PIPE)
    worker = int(target.wait_for_line("worker ").split()[1])

    blocked = periscope(str(target.pid), str(report_file), "--wait", "0.5")
    message = assert_one_line_error(blocked, status=2)
    assert f"thread {target.pid} of process {target.pid} did not pick up the script within 0.5 s" in message
    assert "--thread" in message and str(worker) in message and "withdrawn" in message

    result = periscope(str(target.pid), str(report_file), "--thread", str(worker))
    assert result.returncode == 0, result.stderr
    match = SUCCESS.fullmatch(result.stdout.strip())
    assert match and match.groups() == (str(worker), str(target.pid))
    assert target.wait_for_line("ran ") == f"ran worker-1 {worker}"


def test_errors_in_the_script_show_in_the_target(spawn: Spawn, tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("x = 1\nraise ValueError('broken on line 2')\n")
    target = started(spawn, BUSY_MAIN)
    result = periscope(str(target.pid), str(script))
    assert result.returncode == 0 and SUCCESS.fullmatch(result.stdout.strip()), result.stderr
    stderr = read_stderr_until(target, "ValueError: broken on line 2")
    assert f'File "<periscope exec {script}>", line 2' in stderr


def test_audit_hook_that_refuses_the_script(spawn: Spawn, report_file: Path) -> None:
    """Pickup happens, but the target's audit hook stops the script before it opens the file."""
    target = started(
        spawn,
        """
        import sys
        def refuse_remote_scripts(event, args):
            if event == "cpython.remote_debugger_script":
                raise RuntimeError("remote scripts are not allowed here")
        sys.addaudithook(refuse_remote_scripts)
        print("ready", flush=True)
        while True:
            sum(range(200))
        """,
    )
    message = assert_one_line_error(periscope(str(target.pid), str(report_file)))
    assert "picked up the script" in message and "did not start it" in message and "audit hook" in message
    read_stderr_until(target, "remote scripts are not allowed here")


# -- refusals: one line, status 1 ---------------------------------------------------------------


@pytest.mark.parametrize("python", ["/usr/bin/python3.11", "/root/.pyenv/versions/3.11.7/bin/python3.11"])
def test_python_311(spawn: Spawn, report_file: Path, python: str) -> None:
    if not os.access(python, os.X_OK):
        pytest.skip(f"{python} is not installed")
    target = started(spawn, SLEEPING, python=python)
    message = assert_one_line_error(periscope(str(target.pid), str(report_file)))
    assert "3.11" in message and "CPython 3.14 and 3.15" in message


@pytest.mark.parametrize(
    ("kwargs", "cause"),
    [
        ({"env": {"PYTHON_DISABLE_REMOTE_DEBUG": "1"}}, "PYTHON_DISABLE_REMOTE_DEBUG"),
        ({"python_args": ["-X", "disable-remote-debug"]}, "-X disable-remote-debug"),
    ],
)
def test_remote_debugging_disabled(spawn: Spawn, report_file: Path, kwargs: dict, cause: str) -> None:
    target = started(spawn, SLEEPING, **kwargs)
    message = assert_one_line_error(periscope(str(target.pid), str(report_file)))
    assert cause in message and "restart" in message


def test_not_python(spawn: Spawn, report_file: Path) -> None:
    target = spawn(argv=["sleep", "60"])
    message = assert_one_line_error(periscope(str(target.pid), str(report_file)))
    assert "is not a Python program" in message


def test_missing_pid(report_file: Path) -> None:
    with open("/proc/sys/kernel/pid_max") as handle:
        pid_max = int(handle.read())
    assert_one_line_error(periscope(str(pid_max + 1), str(report_file)))


def test_unreadable_file(spawn: Spawn, tmp_path: Path) -> None:
    target = started(spawn, SLEEPING)
    message = assert_one_line_error(periscope(str(target.pid), str(tmp_path / "missing.py")))
    assert "cannot read" in message and "missing.py" in message


def test_unknown_thread(spawn: Spawn, report_file: Path) -> None:
    target = started(spawn, SLEEPING)
    message = assert_one_line_error(periscope(str(target.pid), str(report_file), "--thread", "1"))
    assert "no Python thread with native id 1" in message and str(target.pid) in message


@pytest.mark.parametrize("wait", ["0", "-1", "nan", "soon"])
def test_bad_wait_is_a_usage_error(report_file: Path, wait: str) -> None:
    result = periscope("1", str(report_file), "--wait", wait)
    assert result.returncode == 2 and "--wait" in result.stderr and "Traceback" not in result.stderr


# -- targets that disappear ---------------------------------------------------------------------


def test_target_exits_while_waiting_for_pickup(spawn: Spawn, report_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = started(spawn, SLEEPING)  # a sleeping main thread leaves the request pending
    killer = threading.Timer(0.3, target.proc.kill)
    killer.start()
    try:
        status = cli.main(["exec", str(target.pid), str(report_file), "--wait", "20"])
    finally:
        killer.cancel()
        killer.join()
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert captured.err == f"periscope: process {target.pid} exited\n"


def test_targets_exiting_at_any_moment(spawn: Spawn, report_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Targets that exit a few milliseconds into periscope's work (while it reads the runtime,
    walks threads, stages or writes): each run ends in success or one 'periscope:' line."""
    outcomes = []
    for delay_ms in (0, 2, 5, 10, 20, 40, 80):
        target = started(
            spawn,
            EXITING.replace("DELAY", str(delay_ms / 1000)),
            stdin=subprocess.PIPE,
        )
        assert target.proc.stdin is not None
        target.proc.stdin.write(b"go\n")
        target.proc.stdin.flush()
        status = cli.main(["exec", str(target.pid), str(report_file), "--wait", "5"])
        captured = capsys.readouterr()
        if status == 0:
            assert SUCCESS.fullmatch(captured.out.strip()), captured.out
        else:
            assert status == 1 and captured.out == "", (status, captured)
            assert captured.err.startswith("periscope: ") and captured.err.count("\n") == 1, captured.err
        outcomes.append(status)
        target.stop()
    assert outcomes  # every run ended in an orderly way (the assertions above)
