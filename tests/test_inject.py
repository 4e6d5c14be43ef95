"""Staging and remote exec (explorer.staging, explorer.remote_exec) against real CPython 3.14 and 3.15 processes the tests start.

Each script that runs in a target prints a line to the target's stdout; the tests wait for it.
Refusals are checked for their typed error and for having written nothing into the target.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from explorer.errors import (
    InjectionTimeout,
    NotAPythonProcess,
    ProcessGone,
    RemoteDebuggingDisabled,
    ScriptPathTooLong,
    TargetNotReady,
    UnsupportedPython,
)
from explorer.staging import (
    ScriptDir,
    prepare_script_dir,
    stage_script,
    write_script,
)
from explorer.remote_exec import (
    MainThreadFinished,
    NoSuchThread,
    remote_exec,
    select_thread,
    wait_for_pickup,
)
from explorer.remote import RemoteProcess, ThreadRef
from tests.targets import Target

Spawn = Callable[..., Target]

REPORT = "import threading\nprint('ran', threading.current_thread().name, threading.get_native_id(), flush=True)\n"

BUSY_MAIN = """
import threading
print("ready", threading.get_native_id(), flush=True)
while True:
    sum(range(200))
"""

SLEEPING_MAIN_WITH_WORKER = """
import threading, time
announced = threading.Event()
def work():
    print("worker", threading.get_native_id(), flush=True)
    announced.set()
    while True:
        time.sleep(0.02)
threading.Thread(target=work, name="worker-1", daemon=True).start()
announced.wait()
print("ready", flush=True)
time.sleep(120)
"""

MAIN_IN_INPUT = """
import threading, time
announced = threading.Event()
def work():
    print("worker", threading.get_native_id(), flush=True)
    announced.set()
    while True:
        sum(range(500))
        time.sleep(0.005)
threading.Thread(target=work, name="worker-1", daemon=True).start()
announced.wait()
print("ready", flush=True)
line = input()
print("got", line, flush=True)
for _ in range(2000):
    sum(range(100))
print("done", flush=True)
time.sleep(120)
"""

SLEEPING = """
import time
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def script_dirs() -> Iterator[list[ScriptDir]]:
    """ScriptDirs a test made; all removed afterwards."""
    made: list[ScriptDir] = []
    yield made
    for script_dir in made:
        script_dir.cleanup()


@pytest.fixture
def stage(script_dirs: list[ScriptDir]) -> Callable[[int, str], str]:
    """Write a script where process ``pid`` can read it; returns the target's path."""

    def write(pid: int, source: str) -> str:
        script_dir = prepare_script_dir(pid)
        script_dirs.append(script_dir)
        return write_script(script_dir, "script.py", source)[1]

    return write


def started(spawn: Spawn, source: str, **kwargs) -> Target:
    target = spawn(source, **kwargs)
    target.wait_for_line("ready")
    return target


def worker_id(target: Target) -> int:
    """The native id the target's worker printed (before "ready", so it is already read)."""
    return int(target.wait_for_line("worker ").split()[1])


def request_state(pid: int, thread: ThreadRef | None = None) -> tuple[int, bytes]:
    """(pending flag, first 64 bytes of the path buffer) of a thread state (default: the main one)."""
    with RemoteProcess.open(pid) as process:
        if thread is None:
            thread = next(t for t in process.threads() if t.is_main)
        debugger = process.offsets.debugger_support
        support = thread.address + debugger.remote_debugger_support
        return (
            process.memory.read_i32(support + debugger.debugger_pending_call),
            process.memory.read(support + debugger.debugger_script_path, 64),
        )


def path_of_length(base: Path, length: int) -> Path:
    """Create the directories for a file path of exactly ``length`` bytes under ``base``; return the path."""
    path = str(base)
    while length - len(path) > 201:
        path += "/" + "d" * 100
    remaining = length - len(path)
    assert 6 <= remaining <= 201
    os.makedirs(path, exist_ok=True)
    path += "/" + "f" * (remaining - 4) + ".py"
    assert len(os.fsencode(path)) == length
    return Path(path)


# -- exec that works ----------------------------------------------------------------------------


def test_exec_into_main_thread(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    target = started(spawn, BUSY_MAIN)
    result = remote_exec(target.pid, stage(target.pid, REPORT))
    assert result.picked_up
    assert result.native_id == target.pid  # the main thread's native id is the pid
    assert result.elapsed >= 0 and not result.withdrawn
    assert target.wait_for_line("ran ") == f"ran MainThread {target.pid}"
    assert request_state(target.pid)[0] == 0


SLEEPS_THEN_RUNS = """
import time
print("ready", flush=True)
while True:
    time.sleep(0.3)  # in C: a request written now waits for the loop below
    for _ in range(20000):
        pass
"""


def test_a_request_whose_eval_breaker_bit_was_lost_is_still_picked_up(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    """The target updates its eval-breaker word itself, and an outside write is not atomic with
    those updates: the bit can be lost. Lose it on purpose while the thread sleeps in C: the
    wait sets it again, and the thread picks the request up once it runs Python."""
    from explorer.remote_exec import PLEASE_STOP_BIT

    target = started(spawn, SLEEPS_THEN_RUNS)
    path = stage(target.pid, REPORT)
    with RemoteProcess.open(target.pid) as process:
        for _attempt in range(20):
            result = remote_exec(process, path, wait=None)
            breaker = result.thread_address + process.offsets.debugger_support.eval_breaker
            low = process.memory.read(breaker, 1)[0]
            process.memory.write(breaker, bytes([low & ~PLEASE_STOP_BIT & 0xFF]))
            if request_state(target.pid)[0] == 1:
                break  # still pending, the bit gone: the case to test
            target.wait_for_line("ran ")  # the thread was quicker: try again
        else:
            pytest.fail("the thread always picked the request up before its bit could be cleared")
        assert wait_for_pickup(process, result.thread_address, 10.0) is not None
    assert target.wait_for_line("ran ") == f"ran MainThread {target.pid}"


def test_exec_into_named_worker_thread(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    target = started(spawn, SLEEPING_MAIN_WITH_WORKER)
    worker = worker_id(target)
    with RemoteProcess.open(target.pid) as process:
        result = remote_exec(process, stage(target.pid, REPORT), native_id=worker)
    assert result.picked_up and result.native_id == worker
    assert target.wait_for_line("ran ") == f"ran worker-1 {worker}"


def test_main_blocked_in_input_reached_through_a_worker(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    target = started(spawn, MAIN_IN_INPUT, stdin=subprocess.PIPE)
    worker = worker_id(target)
    path = stage(target.pid, REPORT)

    # The main thread sits in input(): it does not pick the request up, which is then withdrawn.
    blocked = remote_exec(target.pid, path, wait=0.5)
    assert not blocked.picked_up and blocked.withdrawn
    assert blocked.native_id == target.pid and blocked.elapsed >= 0.5
    assert request_state(target.pid)[0] == 0
    with pytest.raises(InjectionTimeout, match=f"withdrawn; choose a thread that runs Python with --thread NATIVE_ID \\(threads: {worker}\\)") as raised:
        blocked.raise_if_not_picked_up(str(worker))
    assert raised.value.reason.endswith("the request was withdrawn") and raised.value.fix is not None
    assert raised.value.fix.startswith("choose a thread that runs Python")

    # A worker that runs Python picks it up.
    through_worker = remote_exec(target.pid, path, native_id=worker)
    assert through_worker.picked_up
    assert target.wait_for_line("ran ") == f"ran worker-1 {worker}"

    # When input() returns, the withdrawn request does not run late in the main thread.
    assert target.proc.stdin is not None
    target.proc.stdin.write(b"hello\n")
    target.proc.stdin.flush()
    target.wait_for_line("done")
    assert [line for line in target.lines if line.startswith("ran ")] == [f"ran worker-1 {worker}"]


def test_main_thread_finished_needs_a_thread_id(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    """After the main module ends, threads_main is NULL while a non-daemon thread still runs."""
    target = spawn(
        """
        import threading, time
        def work():
            print("worker", threading.get_native_id(), flush=True)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                sum(range(200))
        threading.Thread(target=work, name="worker-1").start()
        """
    )
    worker = worker_id(target)
    deadline = time.monotonic() + 10
    with RemoteProcess.open(target.pid) as process:
        while any(t.is_main for t in process.threads()):
            assert time.monotonic() < deadline, "the main module did not finish"
            time.sleep(0.01)
        path = stage(target.pid, REPORT)
        with pytest.raises(MainThreadFinished, match="--thread") as caught:
            remote_exec(process, path)
        assert str(worker) in str(caught.value)
        assert remote_exec(process, path, native_id=worker).picked_up
    assert target.wait_for_line("ran ") == f"ran worker-1 {worker}"


def test_subinterpreter(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    """With a subinterpreter running, the runtime's interpreter list starts with it: the default
    still goes to the main interpreter's main thread, and the subinterpreter's OS thread, chosen
    by native id, runs the script in the subinterpreter (where that thread executes now)."""
    target = started(
        spawn,
        """
        import threading, time
        from concurrent import interpreters
        sub = interpreters.create()
        announced = threading.Event()
        def run():
            print("worker", threading.get_native_id(), flush=True)
            announced.set()
            sub.exec("import time\\nwhile True:\\n    sum(range(100))\\n    time.sleep(0.001)")
        threading.Thread(target=run, daemon=True).start()
        announced.wait()
        print("ready", flush=True)
        while True:
            sum(range(200))
        """,
    )
    worker = worker_id(target)
    report = (
        "import threading\nfrom concurrent import interpreters\n"
        "print('ran in', interpreters.get_current().id, threading.get_native_id(), flush=True)\n"
    )
    path = stage(target.pid, report)
    deadline = time.monotonic() + 10
    with RemoteProcess.open(target.pid) as process:
        # The subinterpreter's thread state is listed a moment before the thread binds to it; until
        # then the thread's state in the main interpreter (blocked in sub.exec) is the one it uses.
        while len(process.interpreters()) < 2 or select_thread(process, worker)[0].is_main:
            assert time.monotonic() < deadline, "the subinterpreter did not start"
            time.sleep(0.01)
        assert remote_exec(process, path).picked_up
        assert target.wait_for_line("ran in ") == f"ran in 0 {target.pid}"
        assert remote_exec(process, path, native_id=worker).picked_up
        assert target.wait_for_line("ran in 1 ") == f"ran in 1 {worker}"


@pytest.mark.parametrize("length", [511, 512])
def test_path_length_limit(spawn: Spawn, tmp_path: Path, length: int) -> None:
    target = started(spawn, BUSY_MAIN)
    path = path_of_length(tmp_path, length)
    path.write_text(REPORT)
    before = request_state(target.pid)
    if length == 511:
        assert remote_exec(target.pid, str(path)).picked_up
        assert target.wait_for_line("ran ").startswith("ran MainThread")
    else:
        with pytest.raises(ScriptPathTooLong, match="512 bytes"):
            remote_exec(target.pid, str(path))
        assert request_state(target.pid) == before


def test_script_errors_stay_in_the_target(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    target = started(spawn, BUSY_MAIN)
    assert remote_exec(target.pid, stage(target.pid, "raise ValueError('boom')\n")).picked_up
    # The target keeps running and can take the next request.
    assert remote_exec(target.pid, stage(target.pid, REPORT)).picked_up
    target.wait_for_line("ran MainThread")


def test_a_pending_request_is_not_overwritten(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    target = started(spawn, SLEEPING)
    first = stage(target.pid, REPORT)
    left = remote_exec(target.pid, first, wait=None)  # not waited for, not withdrawn
    assert not left.picked_up and not left.withdrawn
    assert request_state(target.pid) == (1, os.fsencode(first) + bytes(64 - len(first)))
    with pytest.raises(TargetNotReady, match="already has a remote-exec request pending"):
        remote_exec(target.pid, stage(target.pid, "print('second', flush=True)\n"))
    assert request_state(target.pid)[1].startswith(os.fsencode(first) + b"\0")


def test_unknown_thread(spawn: Spawn) -> None:
    target = started(spawn, SLEEPING)
    with RemoteProcess.open(target.pid) as process:
        with pytest.raises(NoSuchThread, match=f"{target.pid} \\(main\\)"):
            select_thread(process, 1)


# -- staging: where and for whom the script is written ------------------------------------------


def test_script_dir_is_private_to_the_target(spawn: Spawn, script_dirs: list[ScriptDir]) -> None:
    target = started(spawn, SLEEPING)
    script_dir = prepare_script_dir(target.pid)
    script_dirs.append(script_dir)
    assert script_dir.target_path.startswith("/tmp/periscope-")
    assert str(script_dir.host_path) == script_dir.target_path  # same mount namespace
    info = os.lstat(script_dir.host_path)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    host, target_path = write_script(script_dir, "a.py", "x = 1\n")
    assert target_path == f"{script_dir.target_path}/a.py" and host == script_dir.host_path / "a.py"
    assert stat.S_IMODE(os.lstat(host).st_mode) == 0o600 and host.read_text() == "x = 1\n"
    with pytest.raises(FileExistsError):
        write_script(script_dir, "a.py", "again")
    with pytest.raises(ValueError):
        write_script(script_dir, "../escape.py", "")
    script_dir.cleanup()
    assert not os.path.exists(script_dir.host_path)
    script_dir.cleanup()  # idempotent


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a target as another user")
def test_script_for_another_users_target(spawn: Spawn, script_dirs: list[ScriptDir]) -> None:
    """Root stages the script for a uid-65534 target: owned by that uid, unreadable by uid 1000."""
    # The target drops to uid 65534 itself after its imports, as a daemon does (that user cannot
    # reach the interpreter under /root); that also makes it non-dumpable.
    target = started(
        spawn,
        """
        import os, threading
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        print("ready", flush=True)
        while True:
            sum(range(200))
        """,
    )
    script_dir = prepare_script_dir(target.pid)
    script_dirs.append(script_dir)
    assert (script_dir.uid, script_dir.gid) == (65534, 65534)
    host, path = write_script(script_dir, "report.py", REPORT)
    for item in (script_dir.host_path, host):
        assert (os.lstat(item).st_uid, os.lstat(item).st_gid) == (65534, 65534)
    outsider = spawn(argv=["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "--", "cat", str(host)])
    assert outsider.proc.wait(timeout=30) != 0
    assert remote_exec(target.pid, path).picked_up
    target.wait_for_line("ran MainThread")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace")
def test_target_in_its_own_mount_namespace(spawn: Spawn, script_dirs: list[ScriptDir], target_python: str) -> None:
    """A container-like target with a private temporary directory (a tmpfs only its mount namespace
    sees; /mnt, so that the interpreter itself, wherever it lives, stays visible), whose TMPDIR is
    an absolute symlink in it: the script is written through /proc/PID/root, and the symlink is
    resolved in the target's view."""
    setup = "mount -t tmpfs tmpfs /mnt && mkdir /mnt/real && ln -s /mnt/real /mnt/link && exec \"$0\" -c \"$1\""
    target = spawn(
        argv=["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, target_python, BUSY_MAIN],
        env={"TMPDIR": "/mnt/link"},
    )
    target.wait_for_line("ready")
    script_dir = prepare_script_dir(target.pid)
    script_dirs.append(script_dir)
    assert script_dir.target_path.startswith("/mnt/real/periscope-")
    assert str(script_dir.host_path) == f"/proc/{target.pid}/root{script_dir.target_path}"
    assert not os.path.exists(script_dir.target_path)  # not in periscope's own /mnt
    path = write_script(script_dir, "report.py", REPORT)[1]
    assert remote_exec(target.pid, path).picked_up
    target.wait_for_line("ran MainThread")
    script_dir.cleanup()
    assert not os.path.exists(script_dir.host_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private pid namespace")
def test_target_in_its_own_pid_namespace(spawn: Spawn, stage: Callable[[int, str], str], target_python: str) -> None:
    """Thread ids in the target's thread states belong to its pid namespace: --thread takes the
    host's id, and results report the host's id."""
    source = (
        "import threading, time\n"
        "announced = threading.Event()\n"
        "def work():\n"
        "    print('worker', threading.get_native_id(), flush=True)\n"
        "    announced.set()\n"
        "    while True:\n"
        "        sum(range(100))\n"
        "        time.sleep(0.002)\n"
        "threading.Thread(target=work, name='worker-1', daemon=True).start()\n"
        "announced.wait()\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    sum(range(200))\n"
    )
    wrapper = spawn(argv=["unshare", "--pid", "--fork", "--kill-child=SIGKILL", target_python, "-c", source])
    child = 0
    try:
        wrapper.wait_for_line("ready")
        worker_in_namespace = worker_id(wrapper)
        child = int(Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text().split()[0])

        def namespace_ids(tid: str) -> list[int]:
            status = Path(f"/proc/{child}/task/{tid}/status").read_text()
            return [int(part) for part in status.split("NSpid:")[1].splitlines()[0].split()]

        assert namespace_ids(str(child)) == [child, 1]
        host_worker = next(int(t) for t in os.listdir(f"/proc/{child}/task") if namespace_ids(t)[-1] == worker_in_namespace)
        assert host_worker != worker_in_namespace
        path = stage(child, REPORT)
        result = remote_exec(child, path, native_id=host_worker)
        assert result.picked_up and result.native_id == host_worker
        assert wrapper.wait_for_line("ran ") == f"ran worker-1 {worker_in_namespace}"
        result = remote_exec(child, path)
        assert result.picked_up and result.native_id == child
        assert wrapper.wait_for_line("ran MainThread") == "ran MainThread 1"
    finally:
        if child and os.path.exists(f"/proc/{child}"):
            os.kill(child, signal.SIGKILL)  # pid 1 of its namespace: only SIGKILL stops it


def test_tmpdir_is_used_when_safe(spawn: Spawn, script_dirs: list[ScriptDir], tmp_path: Path) -> None:
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o700)
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    unsafe.chmod(0o777)  # anyone could rename our directory: not used
    for tmpdir, expected in ((safe, str(safe)), (unsafe, "/tmp")):
        target = started(spawn, SLEEPING, env={"TMPDIR": str(tmpdir)})
        script_dir = prepare_script_dir(target.pid)
        script_dirs.append(script_dir)
        assert script_dir.target_path.startswith(f"{expected}/periscope-")


def test_staged_script_removes_itself(spawn: Spawn, script_dirs: list[ScriptDir]) -> None:
    """The launcher removes the copy and its directory before the user's script runs, and keeps
    the script's own file name and line numbers, coding cookie and __future__ imports."""
    target = started(spawn, BUSY_MAIN)
    script_dir = prepare_script_dir(target.pid)
    script_dirs.append(script_dir)
    source = (
        "# -*- coding: latin-1 -*-\n"
        "from __future__ import annotations\n"
        "import os, sys\n"
        f"print('staged', os.path.exists({script_dir.target_path!r}), __name__, sys._getframe().f_code.co_filename,"
        " sys._getframe().f_lineno, '\xe9', flush=True)\n"
    ).encode("latin-1")
    staged = stage_script(script_dir, source, "<my script>")
    assert not staged.started()
    assert remote_exec(target.pid, staged.launcher_path).picked_up
    assert staged.wait_until_started(10)
    assert target.wait_for_line("staged ") == "staged False builtins <my script> 4 \xe9"
    assert not os.path.exists(script_dir.host_path)


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("python", ["/usr/bin/python3.11", "/root/.pyenv/versions/3.11.7/bin/python3.11"])
def test_python_311_is_refused(spawn: Spawn, python: str) -> None:
    if not os.access(python, os.X_OK):
        pytest.skip(f"{python} is not installed")
    target = started(spawn, SLEEPING, python=python)
    with pytest.raises(UnsupportedPython, match="3\\.11") as caught:
        remote_exec(target.pid, "/tmp/never-written.py")
    assert "CPython 3.14 and 3.15" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "cause"),
    [
        ({"env": {"PYTHON_DISABLE_REMOTE_DEBUG": "1"}}, "PYTHON_DISABLE_REMOTE_DEBUG"),
        ({"env": {"PYTHON_DISABLE_REMOTE_DEBUG": ""}}, "PYTHON_DISABLE_REMOTE_DEBUG"),
        ({"python_args": ["-X", "disable-remote-debug"]}, "-X disable-remote-debug"),
    ],
)
def test_remote_debugging_disabled_is_refused_without_writing(spawn: Spawn, kwargs: dict, cause: str) -> None:
    target = started(spawn, SLEEPING, **kwargs)
    before = request_state(target.pid)
    assert before == (0, bytes(64))
    with pytest.raises(RemoteDebuggingDisabled, match=cause):
        remote_exec(target.pid, "/tmp/never-written.py")
    with pytest.raises(RemoteDebuggingDisabled):
        remote_exec(target.pid, "/tmp/never-written.py", native_id=target.pid)
    assert request_state(target.pid) == before


def test_underscore_spelling_does_not_disable(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    """``-X disable_remote_debug`` (underscores) is not the option: remote exec still works."""
    target = started(spawn, BUSY_MAIN, python_args=["-X", "disable_remote_debug"])
    assert remote_exec(target.pid, stage(target.pid, REPORT)).picked_up
    target.wait_for_line("ran MainThread")


def test_not_python_is_refused(spawn: Spawn) -> None:
    target = spawn(argv=["sleep", "60"])
    with pytest.raises(NotAPythonProcess):
        remote_exec(target.pid, "/tmp/never-written.py")


def test_missing_pid_is_refused() -> None:
    with open("/proc/sys/kernel/pid_max") as handle:
        pid_max = int(handle.read())
    with pytest.raises(ProcessGone):
        remote_exec(pid_max + 1, "/tmp/never-written.py")


def test_target_gone_after_open(spawn: Spawn) -> None:
    """The target dies after periscope opened it: first a zombie (not reaped), then reaped."""
    target = started(spawn, BUSY_MAIN)
    with RemoteProcess.open(target.pid) as process:
        target.proc.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{target.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(ProcessGone):
            remote_exec(process, "/tmp/never-written.py")
        target.proc.wait(timeout=10)
        with pytest.raises(ProcessGone):
            remote_exec(process, "/tmp/never-written.py")
        with pytest.raises(ProcessGone):
            prepare_script_dir(target.pid)


def test_target_exits_while_waiting_for_pickup(spawn: Spawn, stage: Callable[[int, str], str]) -> None:
    target = started(spawn, SLEEPING)  # the main thread sleeps: the request stays pending
    path = stage(target.pid, REPORT)
    killer = threading.Timer(0.3, target.proc.kill)
    killer.start()
    try:
        with pytest.raises(ProcessGone):
            remote_exec(target.pid, path, wait=20)
    finally:
        killer.cancel()
        killer.join()


def test_empty_or_nul_paths_are_api_errors(spawn: Spawn) -> None:
    with pytest.raises(ValueError):
        remote_exec(os.getpid(), "")
    with pytest.raises(ValueError):
        remote_exec(os.getpid(), "/tmp/a\0b.py")

