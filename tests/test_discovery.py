"""Process discovery against real processes the tests start: which ones are Python, their
versions, and the attach verdict with its reason and fix."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from explorer.discovery import (
    Attacher,
    ProcessInfo,
    ProcessScanner,
    interpreter_options,
    permission_verdict,
    version_verdict,
)
from tests import targets
from tests.targets import Target

Spawn = Callable[..., Target]

WAITING = """
import sys, time
print("ready", flush=True)
time.sleep(120)
"""


def version_pattern() -> re.Pattern[str]:
    """A full version of the minor the targets run under (3.14.10, 3.15.2)."""
    return re.compile(re.escape(targets.version_prefix()) + r"\d+")


def start_ready(spawn: Spawn, **kwargs) -> Target:
    """Start the waiting script and return once its interpreter is fully initialised."""
    target = spawn(WAITING, **kwargs)
    target.wait_for_line("ready")
    return target


def find(pid: int, scanner: ProcessScanner | None = None) -> ProcessInfo | None:
    """The scan's entry for ``pid`` (None when the scan does not list it)."""
    for info in (scanner or ProcessScanner()).scan():
        if info.pid == pid:
            return info
    return None


def listed(pid: int, scanner: ProcessScanner | None = None) -> ProcessInfo:
    info = find(pid, scanner)
    assert info is not None, f"process {pid} is missing from the scan"
    return info


# --- real processes ---------------------------------------------------------------------------


def test_314_target_is_listed_and_attachable(spawn: Spawn, target_python: str) -> None:
    target = start_ready(spawn)
    info = listed(target.pid)
    assert version_pattern().fullmatch(info.python or ""), info.python
    assert info.attachable is True
    assert info.reason is None and info.fix is None
    assert info.remote_debug_enabled is True  # read from the runtime itself
    assert info.free_threaded is False
    assert info.ppid == os.getpid()
    assert info.uid == os.getuid()
    assert info.user == psutil.Process().username()
    assert info.cmdline == (target_python, str(target.script))
    assert os.path.realpath(info.exe or "") == os.path.realpath(target_python)
    assert info.runtime_path is not None and "python" in os.path.basename(info.runtime_path)
    assert info.rss > 0 and info.num_threads >= 1
    assert info.create_time == pytest.approx(psutil.Process(target.pid).create_time())
    data = info.to_json()
    assert data["pid"] == target.pid and data["cmdline"] == list(info.cmdline)


def test_python_311_is_listed_but_not_attachable(spawn: Spawn) -> None:
    python311 = targets.host_python311()
    if python311 is None:
        pytest.skip("no CPython 3.11 on this machine")
    target = start_ready(spawn, python=python311)
    info = listed(target.pid)
    assert info.python is not None and info.python.startswith("3.11.")
    assert info.attachable is False
    assert info.reason is not None and "3.11" in info.reason and "CPython 3.14 and 3.15" in info.reason
    assert info.fix is not None and "CPython 3.14 or 3.15" in info.fix
    assert info.remote_debug_enabled is None  # never read an unsupported process's memory


@pytest.mark.parametrize("value", ["1", "0", ""])
def test_disabled_by_environment_variable(spawn: Spawn, value: str) -> None:
    """Any value of the variable, even "0" or empty, switches remote debugging off."""
    target = start_ready(spawn, env={"PYTHON_DISABLE_REMOTE_DEBUG": value})
    info = listed(target.pid)
    assert version_pattern().fullmatch(info.python or "")
    assert info.attachable is False
    assert info.remote_debug_enabled is False
    assert info.reason is not None and "PYTHON_DISABLE_REMOTE_DEBUG" in info.reason
    assert info.fix is not None and "PYTHON_DISABLE_REMOTE_DEBUG" in info.fix and "without" in info.fix


@pytest.mark.parametrize("option", [["-X", "disable-remote-debug"], ["-Xdisable-remote-debug=0"]])
def test_disabled_by_x_option(spawn: Spawn, option: list[str]) -> None:
    target = start_ready(spawn, python_args=option)
    info = listed(target.pid)
    assert info.attachable is False
    assert info.remote_debug_enabled is False  # the runtime's own flag says so
    assert info.reason is not None and "-X disable-remote-debug" in info.reason
    assert "PYTHON_DISABLE_REMOTE_DEBUG" not in info.reason
    assert info.fix is not None and "disable-remote-debug" in info.fix


@pytest.mark.parametrize("flag", ["-E", "-I"])
def test_variable_ignored_under_e_and_i(spawn: Spawn, flag: str) -> None:
    """-E and -I make CPython ignore the variable; the runtime flag, not the environment, decides."""
    target = start_ready(spawn, python_args=[flag], env={"PYTHON_DISABLE_REMOTE_DEBUG": "1"})
    assert "PYTHON_DISABLE_REMOTE_DEBUG" in psutil.Process(target.pid).environ()
    info = listed(target.pid)
    assert info.remote_debug_enabled is True
    assert info.attachable is True, info.reason


def test_underscore_x_option_does_not_disable(spawn: Spawn) -> None:
    """CPython only knows the hyphenated spelling; -X disable_remote_debug leaves it on."""
    target = start_ready(spawn, python_args=["-X", "disable_remote_debug"])
    info = listed(target.pid)
    assert info.remote_debug_enabled is True
    assert info.attachable is True


def test_non_python_process_is_absent(spawn: Spawn) -> None:
    sleeper = spawn(argv=[shutil.which("sleep") or "/bin/sleep", "120"])
    scanner = ProcessScanner()
    assert find(sleeper.pid, scanner) is None
    assert scanner.inspect(sleeper.pid) is None


def test_python_in_the_name_is_not_enough(spawn: Spawn, tmp_path) -> None:
    """A mapped executable named like Python but without a .PyRuntime section is not listed."""
    impostor = tmp_path / "python3.14"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", impostor)
    process = spawn(argv=[str(impostor), "120"])
    deadline = time.monotonic() + 10
    while psutil.Process(process.pid).exe() != str(impostor) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert find(process.pid) is None


def test_own_process_is_excluded() -> None:
    assert find(os.getpid()) is None
    me = ProcessScanner(include_self=True).inspect(os.getpid())
    assert me is not None
    assert me.python == ".".join(map(str, sys.version_info[:3]))


def test_exited_process_gives_none(spawn: Spawn) -> None:
    target = start_ready(spawn)
    scanner = ProcessScanner()
    assert scanner.inspect(target.pid) is not None
    target.stop()
    assert scanner.inspect(target.pid) is None
    assert find(target.pid, scanner) is None


def test_zombie_is_skipped(spawn: Spawn) -> None:
    """A Python process that exited but is not reaped yet is skipped without an error."""
    target = spawn("print('bye')")
    deadline = time.monotonic() + 30
    while psutil.Process(target.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the target did not exit"
        time.sleep(0.02)
    assert find(target.pid) is None


CHURN = """
import subprocess, sys
print("ready", flush=True)
while True:
    subprocess.run([sys.executable, "-c", "pass"])
"""


def test_processes_exiting_during_scans(spawn: Spawn) -> None:
    """Scans keep working while Python processes start and exit all the time."""
    parent = spawn(CHURN)
    parent.wait_for_line("ready")
    scanner = ProcessScanner()
    children_seen = set()
    deadline = time.monotonic() + 20
    scans = 0
    while scans < 15 or (not children_seen and time.monotonic() < deadline):
        for info in scanner.scan():
            if info.ppid == parent.pid:
                children_seen.add(info.pid)
                assert version_pattern().fullmatch(info.python or "")
        scans += 1
    assert children_seen, "no short-lived child was ever caught by a scan"
    assert listed(parent.pid, scanner).attachable


LINGERS_IN_FINALIZATION = """
import os, time
class Lingers:
    def __del__(self, write=os.write, sleep=time.sleep):
        write(1, b"finalizing\\n")
        sleep(120)
lingers = Lingers()
print("ready", flush=True)
"""


def test_finalizing_interpreter_is_not_attachable(spawn: Spawn) -> None:
    """A runtime that is shutting down (here stuck in a __del__ during finalization) is not offered."""
    target = spawn(LINGERS_IN_FINALIZATION)
    target.wait_for_line("finalizing")
    scanner = ProcessScanner()
    info = listed(target.pid, scanner)
    assert info.attachable is False
    assert info.reason == "the interpreter is shutting down"
    assert info.remote_debug_enabled is None
    assert (target.pid, info.create_time) not in scanner._flags  # asked again on the next scan


def test_cpu_percent_covers_the_time_between_scans(spawn: Spawn) -> None:
    busy = spawn("print('ready', flush=True)\nwhile True: pass\n")
    busy.wait_for_line("ready")
    idle = start_ready(spawn)
    scanner = ProcessScanner()
    scanner.scan()
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline, "the busy target never showed CPU use"
        time.sleep(0.2)
        by_pid = {info.pid: info for info in scanner.scan()}
        if by_pid[busy.pid].cpu_percent > 10:
            break
    assert by_pid[idle.pid].cpu_percent < by_pid[busy.pid].cpu_percent


def test_repeated_scans_keep_the_runtime_flag(spawn: Spawn) -> None:
    """The flag is read once per process: later scans reuse it (and drop it when the process exits)."""
    target = start_ready(spawn)
    scanner = ProcessScanner()
    first = listed(target.pid, scanner)
    key = (target.pid, first.create_time)
    assert scanner._flags[key] is True
    assert listed(target.pid, scanner).remote_debug_enabled is True
    target.stop()
    scanner.scan()
    assert key not in scanner._flags


# --- verdict rules, with real pids where the kernel is asked --------------------------------------


def _attacher(**changes) -> Attacher:
    values = dict(
        pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), euid=os.getuid(), has_ptrace_capability=False, yama_scope=None
    )
    values.update(changes)
    return Attacher(**values)


def test_permission_other_user(spawn: Spawn) -> None:
    target = start_ready(spawn)
    other = os.getuid() + 1
    verdict = permission_verdict(_attacher(), target.pid, "alice", (other,) * 3, (os.getgid(),) * 3)
    assert not verdict.attachable
    assert verdict.reason == "owned by another user (alice)"
    assert verdict.fix is not None and "alice" in verdict.fix and "CAP_SYS_PTRACE" in verdict.fix
    capable = permission_verdict(_attacher(has_ptrace_capability=True), target.pid, "alice", (other,) * 3, (other,) * 3)
    assert capable.attachable


def test_permission_yama_scopes(spawn: Spawn) -> None:
    target = start_ready(spawn)  # a child of this process: Yama scope 1 allows it
    ids, gids = (os.getuid(),) * 3, (os.getgid(),) * 3
    assert permission_verdict(_attacher(yama_scope=1), target.pid, "me", ids, gids).attachable
    other = permission_verdict(_attacher(yama_scope=1, pid=target.pid), os.getpid(), "me", ids, gids)
    assert not other.attachable and "ptrace_scope is 1" in (other.reason or "")
    two = permission_verdict(_attacher(yama_scope=2), target.pid, "me", ids, gids)
    assert not two.attachable and "CAP_SYS_PTRACE" in (two.fix or "")
    assert permission_verdict(_attacher(yama_scope=2, has_ptrace_capability=True), target.pid, "me", ids, gids).attachable
    three = permission_verdict(_attacher(yama_scope=3, has_ptrace_capability=True), target.pid, "me", ids, gids)
    assert not three.attachable and "reboot" in (three.fix or "")


@pytest.mark.parametrize(
    ("version_hex", "free_threaded", "expected"),
    [
        (0x030E0AF0, False, None),
        (0x030F02F0, False, None),
        (0x030B02F0, None, "CPython 3.11.2: periscope supports CPython 3.14 and 3.15"),
        (0x030D00F0, False, "CPython 3.13.0: periscope supports CPython 3.14 and 3.15"),
        (0x030BFFF0, None, "CPython 3.11: periscope supports CPython 3.14 and 3.15"),  # from a file name
        (None, None, "CPython of unknown version: periscope supports CPython 3.14 and 3.15"),
        (
            0x030E00C1,
            False,
            "CPython 3.14.0rc1 is a pre-release, whose layout may differ: periscope supports final releases of CPython 3.14 and 3.15",
        ),
        (
            0x030E0AF0,
            True,
            "CPython 3.14.10 is a free-threaded build (3.14t): periscope supports the default (GIL) build of CPython 3.14 and 3.15",
        ),
        (
            0x030F02F0,
            True,
            "CPython 3.15.2 is a free-threaded build (3.15t): periscope supports the default (GIL) build of CPython 3.14 and 3.15",
        ),
        (0x031000F0, False, "CPython 3.16.0: periscope supports CPython 3.14 and 3.15"),
    ],
)
def test_version_verdicts(version_hex: int | None, free_threaded: bool | None, expected: str | None) -> None:
    verdict = version_verdict(version_hex, free_threaded)
    assert verdict.reason == expected
    assert verdict.attachable is (expected is None)
    assert (verdict.fix is None) is (expected is None)


# --- command-line parsing (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "flags", "xoptions"),
    [
        (["python3.14", "app.py", "-E", "-X", "x"], set(), ()),
        (["python3.14", "-E", "-X", "disable-remote-debug", "app.py"], {"E"}, ("disable-remote-debug",)),
        (["python3.14", "-Xdisable-remote-debug", "-u", "-m", "http.server", "-I"], {"u"}, ("disable-remote-debug",)),
        (["python3.14", "-EsX", "dev", "-c", "pass", "-I"], {"E", "s"}, ("dev",)),
        (["python3.14", "-W", "error", "-I", "--", "-E"], {"I"}, ()),
        (["python3.14", "--check-hash-based-pycs", "always", "-E", "-"], {"E"}, ()),
        (["python3.14"], set(), ()),
    ],
)
def test_interpreter_options(cmdline: list[str], flags: set[str], xoptions: tuple[str, ...]) -> None:
    assert interpreter_options(cmdline) == (frozenset(flags), xoptions)


OPTION_GROUPS = [("-E",), ("-I",), ("-u",), ("-X", "dev"), ("-Xfrozen_modules=off",), ("-sE",), ("-W", "error")]


@given(
    options=st.lists(st.sampled_from(OPTION_GROUPS), max_size=6),
    rest=st.lists(st.text(min_size=1, max_size=8), max_size=6),
)
def test_arguments_after_the_script_never_count(options: list[tuple[str, ...]], rest: list[str]) -> None:
    """Whatever follows the script name belongs to the script, not to the interpreter."""
    base = ["python3.14", *(arg for group in options for arg in group), "script.py"]
    assert interpreter_options([*base, *rest]) == interpreter_options(base)
