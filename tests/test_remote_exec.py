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


THREADED = """
import threading, time

def worker():
    marker = "in-worker"
    while True:
        time.sleep(0.01)

threading.Thread(target=worker, name="worker", daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


def _worker_thread(run, pid: str) -> int:
    """The native id of the target's worker thread, as the far side's ``stack --json`` gives it."""
    stack = run("stack", pid, "--json")
    assert stack.returncode == 0, stack.stderr
    (thread,) = [thread for thread in json.loads(stack.stdout)["threads"] if thread["name"] == "worker"]
    return thread["native_id"]


def _contained(spawn, target_python, tmp_path, source: str) -> int:
    """A target in its own pid and mount namespace; its pid in this namespace."""
    script = tmp_path / "contained.py"
    script.write_text(source)
    contained = spawn(argv=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", target_python, str(script)])
    contained.wait_for_line("ready")
    return _namespace_child(contained.pid)


def test_eval_thread_takes_the_far_sides_thread_ids_inside_the_namespace(spawn, target_python, tmp_path):
    """Through nsenter the far side sees the target's own namespace: its thread ids are the ones to give."""
    host_pid = _contained(spawn, target_python, tmp_path, THREADED)
    env = {**os.environ, "PERISCOPE_REMOTE_COMMAND": SERVE_HERE}

    def periscope(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "explorer", "--exec", f"nsenter -t {host_pid} -a", *args],
            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
        )

    worker = _worker_thread(periscope, "1")
    here = [int(task) for task in os.listdir(f"/proc/{host_pid}/task")]
    assert worker not in here  # the namespace's id, not this machine's
    evaluated = periscope("eval", "1", "marker", "--thread", str(worker))
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip() == "'in-worker'"


def test_eval_thread_over_ssh_into_a_target_in_another_pid_namespace(spawn, target_python, tmp_path):
    """The far side (ssh, this namespace) names the threads of a contained target by its own ids;
    the agent in the target knows them by the namespace's: the far side translates."""
    from tests.sshd import SSH, SSHD, start_sshd

    if SSHD is None or SSH is None:
        pytest.skip("OpenSSH is not installed")
    host_pid = _contained(spawn, target_python, tmp_path, THREADED)
    server = start_sshd(tmp_path / "sshd")
    try:
        def periscope(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "explorer", "--host", server.destination, *args],
                capture_output=True, text=True, timeout=60, env=server.env(), stdin=subprocess.DEVNULL,
            )

        worker = _worker_thread(periscope, str(host_pid))
        assert worker in [int(task) for task in os.listdir(f"/proc/{host_pid}/task")]  # this namespace's id
        evaluated = periscope("eval", str(host_pid), "marker", "--thread", str(worker))
        assert evaluated.returncode == 0, evaluated.stderr
        assert evaluated.stdout.strip() == "'in-worker'"
    finally:
        server.stop()


async def test_the_profile_view_through_nsenter_samples_in_the_namespace(spawn, target_python, tmp_path, monkeypatch):
    """``--exec 'nsenter -t PID -a'``: the far side samples pid 1 of the namespace, the view here
    shows its hot function and its threads by the namespace's ids; leaving the view stops that
    sampler, and the link's pipe closing (as when periscope is killed) ends the far side."""
    from explorer.hosts import Host
    from explorer.remote_profile import RemoteSampler
    from explorer.screens.profile import ProfileScreen
    from explorer.transport import exec_endpoint
    from tests.profile_targets import HOT_TARGET
    from tests.screenshots import SIZE, on_top, wait_until
    from tests.test_remote_profile import holds_files_of, host_app, hottest_first
    from tests.test_remote_ssh import _descendants, _still_serving

    host_pid = _contained(spawn, target_python, tmp_path, HOT_TARGET)
    monkeypatch.setenv("PERISCOPE_REMOTE_COMMAND", SERVE_HERE)
    host = Host(exec_endpoint(f"nsenter -t {host_pid} -a"))
    try:
        app = host_app(host, 1)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: on_top(app, ProfileScreen), "the Profile view")
            screen = app.screen
            assert isinstance(screen, ProfileScreen)
            await wait_until(pilot, lambda: hottest_first(screen), "hot_loop at the top with 50 samples", timeout=30)
            assert isinstance(screen.sampler, RemoteSampler)
            main = [meta for meta in screen.sampler.profile.thread_list() if meta.is_main]
            assert [meta.native_id for meta in main] == [1]  # the namespace's id of the main thread
            serves = _still_serving(_descendants(host.link.pid))
            assert len(serves) == 1
            (serve,) = serves
            assert holds_files_of(serve, 1)  # /proc/1 of the namespace: the target
            await pilot.press("escape")
            await wait_until(pilot, lambda: not holds_files_of(serve, 1), "the far sampler closing its files", timeout=15)
            app.show_profile(1)
            await wait_until(pilot, lambda: isinstance(app.screen, ProfileScreen) and app.screen is not screen, "the view again")
            await wait_until(pilot, lambda: holds_files_of(serve, 1), "the far side sampling again", timeout=30)
            # nsenter only hands its stdio on: the link is this side's pipe, closed as a killed periscope's would be.
            assert host.link._process.stdin is not None
            host.link._process.stdin.close()
            await wait_until(pilot, lambda: not _still_serving(serves), "the far side's serve to exit", timeout=15)
    finally:
        host.close()
