"""Bad input to every command that takes a PID: no such process, pid 0 and pid 1, a process that
is not Python, CPython 3.11, remote debugging disabled, another user's process without
permission, an over-long path. Each ends in one line that names the cause and the fix, with a
non-zero exit status, and never a traceback; pid 1 is refused before anything is written."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorer import cli
from explorer.errors import NotAPythonProcess, PermissionDenied, UnsupportedPython
from explorer.remote import RemoteProcess
from tests.targets import host_python311
from tests.test_cli_ps import NOBODY_PREFIX, _nobody_command

SLEEPING = "import time\nprint('ready', flush=True)\ntime.sleep(120)\n"
COMMANDS = {
    "stack": lambda pid: ["stack", pid],
    "tasks": lambda pid: ["tasks", pid],
    "snapshot": lambda pid: ["snapshot", pid, "--timeout", "5"],
    "watch": lambda pid: ["watch", pid, "--count", "1", "--timeout", "5"],
    "eval": lambda pid: ["eval", pid, "1 + 1", "--timeout", "5"],
    "exec": lambda pid: ["exec", pid, "/dev/null", "--wait", "2"],
    "record": lambda pid: ["record", pid, "--duration", "0.3", "-o", RECORDED],
}
RECORDED = os.path.join(tempfile.gettempdir(), f"periscope-safety-{os.getpid()}.json")
"""Where ``record`` writes (removed after each test)."""


@pytest.fixture(autouse=True)
def _no_recording_left_behind() -> Iterator[None]:
    yield
    try:
        os.unlink(RECORDED)
    except FileNotFoundError:
        pass
READ_ONLY = ("stack", "record")
"""Commands that read from outside: remote debugging being disabled does not stop them."""


def _pid_max() -> int:
    with open("/proc/sys/kernel/pid_max") as handle:
        return int(handle.read())


def _target(spawn, kind: str) -> str:
    """The pid (as text) of a process of the given kind, started for the test where needed."""
    if kind == "no such process":
        return str(_pid_max() + 1)
    if kind == "pid 0":
        return "0"
    if kind == "pid 1":
        return "1"
    if kind == "not Python":
        return str(spawn(argv=["sleep", "120"]).pid)
    if kind == "CPython 3.11":
        python = host_python311()
        if python is None:
            pytest.skip("no CPython 3.11 on this machine")
        target = spawn(SLEEPING, python=python)
    else:
        target = spawn(SLEEPING, env={"PYTHON_DISABLE_REMOTE_DEBUG": "1"})
    target.wait_for_line("ready")
    return str(target.pid)


CAUSES = {
    "no such process": r"no process with pid|does not exist",
    "pid 0": r"no process with pid 0",
    "pid 1": r"run periscope as|CAP_SYS_PTRACE",
    "not Python": r"is not a Python program: no CPython interpreter is loaded in it",
    "CPython 3.11": r"3\.11.*restart it under CPython 3\.14 or 3\.15",
    "remote debugging disabled": r"PYTHON_DISABLE_REMOTE_DEBUG; restart the target without",
}


def _one_line_error(status: int, out: str, err: str) -> str:
    assert status not in (0, None), (out, err)
    assert "Traceback" not in out + err, err
    assert err.startswith("periscope: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def pid_1_is_read_refused() -> None:
    """Only run commands against pid 1 when the first, read-only step already refuses it."""
    try:
        RemoteProcess.open(1).close()
    except (PermissionDenied, NotAPythonProcess, UnsupportedPython):
        return
    pytest.skip("pid 1 is a CPython 3.14 process this user may attach to: not touching it")


@pytest.mark.parametrize("kind", CAUSES)
def test_every_command_refuses_bad_targets_in_one_line(spawn, capsys, kind, request):
    if kind == "pid 1":
        request.getfixturevalue("pid_1_is_read_refused")
    pid = _target(spawn, kind)
    for name, arguments in COMMANDS.items():
        status = cli.main(arguments(pid))
        out, err = capsys.readouterr()
        if kind == "remote debugging disabled" and name in READ_ONLY:
            assert status == 0, err  # reading from outside needs no remote debugging
            assert "<module>" in out or "wrote" in err, (name, out, err)
            continue
        if kind == "remote debugging disabled" and name == "tasks":
            assert status == 0 and "has not imported asyncio: it has no tasks" in err, err  # read from outside too
            continue
        message = _one_line_error(status, out, err)
        assert re.search(CAUSES[kind], message), (name, message)


def test_every_command_run_by_a_user_without_permission(spawn):
    """periscope as uid 65534 against a root-owned target the test started."""
    command = _nobody_command()
    target = spawn(SLEEPING)
    target.wait_for_line("ready")
    runs = {
        name: subprocess.Popen(
            [*NOBODY_PREFIX, *command, *arguments(str(target.pid))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        )
        for name, arguments in COMMANDS.items()
    }
    for name, run in runs.items():
        out, err = run.communicate(timeout=60)
        message = _one_line_error(run.returncode, out, err)
        assert "run periscope as that user, or as root" in message or "CAP_SYS_PTRACE" in message, (name, message)
    assert target.proc.poll() is None


def test_an_over_long_script_path_for_exec(spawn, capsys):
    target = spawn(SLEEPING)
    target.wait_for_line("ready")
    status = cli.main(["exec", str(target.pid), "/tmp/" + "x" * 5000 + ".py"])
    message = _one_line_error(status, *capsys.readouterr())
    assert "cannot read" in message and "File name too long" in message


def test_a_target_whose_temporary_directory_is_too_deep(spawn, tmp_path, capsys):
    """The agent's socket and script paths would not fit the kernel's and the protocol's limits
    under this TMPDIR: periscope uses /tmp instead, and the commands just work."""
    deep = tmp_path
    while len(os.fsencode(str(deep))) < 480:
        deep = deep / ("d" * 60)
    deep.mkdir(parents=True)
    target = spawn("import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.01)\n", env={"TMPDIR": str(deep)})
    target.wait_for_line("ready")
    for arguments in (["eval", str(target.pid), "6 * 7"], ["exec", str(target.pid), "/dev/null"]):
        status = cli.main(arguments)
        out, err = capsys.readouterr()
        assert status == 0, err
    assert out.startswith("injected into thread")
    assert not any(Path(deep).iterdir())
