"""``periscope stack PID [--json]`` as a user runs it, against real targets the tests start."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.targets import Target, host_python311
from tests.test_stacks import REPORTER

Spawn = Callable[..., Target]

BODY = '''
import threading

class Ünïcödé:
    def méthode(self):
        park()

def worker(depth):
    if depth:
        worker(depth - 1)
    else:
        Ünïcödé().méthode()

def key_function(item):
    park()

threading.Thread(target=worker, args=(3,), name="worker").start()
threading.Thread(target=lambda: sorted([1], key=key_function), name="a-much-longer-name").start()
worker(1)
'''


def periscope(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real command (``python -m explorer``) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "explorer", *args], capture_output=True, text=True, timeout=timeout
    )


def _start(spawn: Spawn, tmp_path: Path) -> tuple[Target, dict[int, dict]]:
    report = tmp_path / "stacks.json"
    target = spawn(REPORTER + f"\nstart_reporter({str(report)!r}, 3)\n" + BODY, script_name="cli_tëst.py")
    target.wait_for_line("ready main", timeout=60)
    data = json.loads(report.read_text(encoding="utf-8"))
    return target, {int(ident): info for ident, info in data["threads"].items()}


def _target_version(target_python: str) -> str:
    return subprocess.run(
        [target_python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()


def _json_settled(pid: int, want: set[int]) -> dict:
    """``--json`` until the reporter thread has gone (it exits right after writing its report)."""
    for _ in range(100):
        result = periscope("stack", "--json", str(pid))
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        if {thread["thread_id"] for thread in document["threads"]} == want:
            return document
    raise AssertionError(f"threads never settled: {result.stdout[:2000]}")


def test_json_matches_what_the_target_reports(spawn: Spawn, tmp_path: Path, target_python: str) -> None:
    target, expected = _start(spawn, tmp_path)
    document = _json_settled(target.pid, set(expected))
    assert document["pid"] == target.pid
    assert document["python"] == _target_version(target_python)
    assert list(document) == ["pid", "python", "threads"]
    for thread in document["threads"]:
        assert {"native_id", "thread_id", "name", "holds_gil", "frames"} <= set(thread)
        assert type(thread["native_id"]) is int and type(thread["thread_id"]) is int
        assert thread["name"] is None or isinstance(thread["name"], str)
        assert isinstance(thread["holds_gil"], bool)
        want = expected[thread["thread_id"]]
        assert thread["native_id"] == want["native_id"]
        assert thread["frames"] == [
            {"filename": filename, "function": qualname, "lineno": lineno}
            for filename, qualname, _, lineno in want["frames"]
        ]
    main = document["threads"][0]
    assert main["native_id"] == target.pid and main["name"] == "MainThread"
    assert {thread["name"] for thread in document["threads"][1:]} == {"worker", "a-much-longer-name"}


def test_human_output_lists_every_thread_innermost_first(spawn: Spawn, tmp_path: Path, target_python: str) -> None:
    target, expected = _start(spawn, tmp_path)
    document = _json_settled(target.pid, set(expected))  # also waits for the reporter to go
    result = periscope("stack", str(target.pid))
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"Process {target.pid}: {target_python} {target.script}"
    assert lines[1] == f"Python v{_target_version(target_python)} ({target_python})"
    blocks = [block.splitlines() for block in result.stdout.split("\n\n")[1:] if block.strip()]
    assert len(blocks) == len(document["threads"]) == 3
    for block, thread in zip(blocks, document["threads"]):
        title = f"Thread {thread['native_id']} ({'main thread' if thread['is_main'] else thread['name']})"
        assert block[0].startswith(title)
        want = expected[thread["thread_id"]]["frames"]
        assert block[1:] == [f"    {qualname} ({filename}:{lineno})" for filename, qualname, _, lineno in want]
    assert "    Ünïcödé.méthode (" in result.stdout and "cli_tëst.py" in result.stdout
    assert blocks[0][0] == f"Thread {target.pid} (main thread)"


def test_errors_are_one_line_with_exit_status_1(spawn: Spawn) -> None:
    gone = periscope("stack", "999999999")
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.startswith("periscope: ") and gone.stderr.count("\n") == 1

    not_python = spawn(argv=["sleep", "60"])
    result = periscope("stack", str(not_python.pid))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("periscope: ") and result.stderr.count("\n") == 1
    assert "is not a Python program" in result.stderr

    old = host_python311()
    if old:
        target = spawn("import time\nprint('ready', flush=True)\ntime.sleep(60)\n", python=old)
        target.wait_for_line("ready")
        result = periscope("stack", str(target.pid))
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and "CPython 3.14 and 3.15" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_usage_error_without_pid() -> None:
    result = periscope("stack")
    assert result.returncode == 2 and "usage:" in result.stderr and "Traceback" not in result.stderr
