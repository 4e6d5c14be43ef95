"""``periscope --exec CMD``: the far side reached through any command that gives stdio. Here
``nsenter -t PID -a`` into a target that runs in its own pid and mount namespace (``unshare
--pid --fork --mount-proc``), as a container's would: the far side sees the target as pid 1 and
nothing of this machine's processes, and ps, stack, eval and snapshot work through it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_remote_ssh import TARGET

pytestmark = pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="needs root, unshare and nsenter (util-linux) for a pid and mount namespace",
)

SERVE_HERE = f"{shlex.quote(sys.executable)} -m explorer serve --stdio"


def _namespace_child(unshare_pid: int, timeout: float = 15.0) -> int:
    """The pid (in this namespace) of the process unshare forked into the new pid namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError("unshare did not start its child")


def test_exec_through_nsenter_into_a_pid_and_mount_namespace(spawn, target_python, tmp_path):
    script = tmp_path / "contained.py"
    script.write_text(TARGET)
    contained = spawn(argv=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", target_python, str(script)])
    contained.wait_for_line("ready")
    host_pid = _namespace_child(contained.pid)
    (nspid,) = [line.split()[1:] for line in Path(f"/proc/{host_pid}/status").read_text().splitlines() if line.startswith("NSpid:")]
    assert nspid[-1] == "1"  # pid 1 in its own namespace
    env = {**os.environ, "PERISCOPE_REMOTE_COMMAND": SERVE_HERE}
    exec_command = f"nsenter -t {host_pid} -a"

    def periscope(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "explorer", "--exec", exec_command, *args],
            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
        )

    listed = periscope("ps", "--json", "--interval", "0")
    assert listed.returncode == 0, listed.stderr
    rows = {row["pid"]: row for row in json.loads(listed.stdout)}
    assert rows[1]["cmdline"] == [target_python, str(script)] and rows[1]["attachable"] is True
    # Only the namespace's processes: the target and the far side's own serve, none of this machine's.
    assert all(pid == 1 or "serve" in row["cmdline"] for pid, row in rows.items()), rows
    assert all(row["host"] == exec_command for row in rows.values())

    stack = periscope("stack", "1")
    assert stack.returncode == 0, stack.stderr
    assert stack.stdout.startswith("Process 1:") and "remote_worker" in stack.stdout

    evaluated = periscope("eval", "1", "(answer + 1, __import__('os').getpid())")
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip() == "(42, 1)"

    snapshot = periscope("snapshot", "1", "--json")
    assert snapshot.returncode == 0, snapshot.stderr
    assert json.loads(snapshot.stdout)["modules"]["__main__"]["answer"]["repr"] == "41"
