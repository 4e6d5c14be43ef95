"""``periscope --host`` over a real OpenSSH server on loopback (tests/sshd.py): the far side is this
checkout's ``periscope serve --stdio``, started by sshd; the targets run on the "remote" side
(this machine). Listing, stacks, snapshots, eval and watch go through the one ssh connection; a
killed connection leaves the target as it was before the session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorer.versions import minor_name
from tests.agent_helpers import SETTLED, kill, periscope_process, start_watched
from tests.sshd import SSH, SSHD, SshServer, start_sshd

pytestmark = pytest.mark.skipif(
    SSHD is None or SSH is None, reason="OpenSSH is not installed (make system-deps installs openssh-server)"
)

TARGET = """
import sys, threading, time
answer = 41

def remote_worker():
    while True:
        time.sleep(0.01)

threading.Thread(target=remote_worker, name="remote-worker", daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


def periscope(sshd: SshServer, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "explorer", "--host", sshd.destination, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=sshd.env(**env),
        stdin=subprocess.DEVNULL,
    )


def test_ps_stack_snapshot_and_eval_over_ssh(sshd, spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")

    listed = periscope(sshd, "ps", "--json", "--interval", "0")
    assert listed.returncode == 0, listed.stderr
    rows = {row["pid"]: row for row in json.loads(listed.stdout)}
    assert rows[target.pid]["host"] == sshd.destination
    assert rows[target.pid]["attachable"] is True

    table = periscope(sshd, "ps", "--interval", "0")
    assert table.returncode == 0, table.stderr
    line = next(line for line in table.stdout.splitlines() if f" {target.pid} " in line)
    assert line.startswith(sshd.destination) and table.stdout.startswith("HOST")

    stack = periscope(sshd, "stack", str(target.pid), "--locals")
    assert stack.returncode == 0, stack.stderr
    assert "remote_worker" in stack.stdout and "answer = 41" in stack.stdout

    snapshot = periscope(sshd, "snapshot", str(target.pid), "--json")
    assert snapshot.returncode == 0, snapshot.stderr
    assert json.loads(snapshot.stdout)["modules"]["__main__"]["answer"]["repr"] == "41"

    tasks = periscope(sshd, "tasks", str(target.pid), "--json")
    assert tasks.returncode == 0, tasks.stderr
    assert json.loads(tasks.stdout)["pid"] == target.pid

    evaluated = periscope(sshd, "eval", str(target.pid), "answer + 1")
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip() == "42"

    raised = periscope(sshd, "eval", str(target.pid), "1/0")
    assert raised.returncode == 1 and "ZeroDivisionError" in raised.stderr

    watched = periscope(sshd, "watch", str(target.pid), "--count", "2", "--interval", "0.1")
    assert watched.returncode == 0, watched.stderr
    frames = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(frames) == 2 and frames[1]["seq"] > frames[0]["seq"]
    assert any(thread["name"] == "remote-worker" for thread in frames[0]["threads"])


def test_target_python_over_ssh(sshd, target_minor, target_python):
    found = periscope(sshd, "target-python", "--no-provision", "--version", minor_name(target_minor))
    assert found.returncode == 0, found.stderr
    # The far side's own interpreter (its cache may be another directory than this side's: ssh
    # does not carry XDG_CACHE_HOME), of the minor asked for.
    far = found.stdout.strip()
    version = subprocess.run([far, "-c", "import sys; print(*sys.version_info[:2], sep='.')"], capture_output=True, text=True)
    assert version.stdout.strip() == minor_name(target_minor), (far, version.stderr)


def test_missing_periscope_on_the_far_side_names_the_fix(sshd):
    result = periscope(sshd, "ps", PERISCOPE_REMOTE_COMMAND="periscope-not-installed-here serve --stdio")
    assert result.returncode == 1
    assert "periscope is not installed on" in result.stderr and "pipx install pyperiscope" in result.stderr


def test_unreachable_host_is_reported_and_the_others_listed(sshd, spawn, tmp_path):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(f"# the fleet\n{sshd.destination}\nroot@127.0.0.2\n")
    result = subprocess.run(
        [sys.executable, "-m", "explorer", "ps", "--json", "--interval", "0", "--hosts-file", str(hosts_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=sshd.env(),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert any(row["pid"] == target.pid and row["host"] == sshd.destination for row in json.loads(result.stdout))
    assert "root@127.0.0.2" in result.stderr


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            found += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``."""
    found, todo = set(), [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _serve_processes(sshd) -> set[int]:
    """The ``serve --stdio`` processes this test's sshd started (not another test worker's)."""
    found = set()
    for entry in _descendants(sshd.process.pid):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[:1] == [sys.executable.encode()] and b"serve" in cmdline and b"--stdio" in cmdline:
            found.add(entry)
    return found


def _still_serving(pids: set[int]) -> set[int]:
    """Those of ``pids`` that are still a serve process (whoever their parent is by now)."""
    alive = set()
    for pid in pids:
        try:
            if b"--stdio" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                alive.add(pid)
        except OSError:
            pass  # gone
    return alive


def test_killing_the_ssh_connection_mid_stream_leaves_the_target_clean(sshd, spawn, tmp_path):
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    before = _serve_processes(sshd)
    client = subprocess.Popen(
        [sys.executable, "-m", "explorer", "--host", sshd.destination, "watch", str(watched.pid), "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=sshd.env(),
        stdin=subprocess.DEVNULL,
    )
    try:
        assert client.stdout is not None
        for _ in range(3):  # frames stream over the link
            assert json.loads(client.stdout.readline())["pid"] == watched.pid
        watched.wait_for(lambda state: state["agent"])
        (ssh,) = [child for child in _children(client.pid) if Path(f"/proc/{child}/comm").read_text().strip() == "ssh"]
        serve = _serve_processes(sshd) - before
        assert len(serve) == 1
        os.kill(ssh, signal.SIGKILL)
        # The far side's serve sees its stdin close, drops the agent's connection and removes the
        # session directory; the agent removes itself; the target goes on as before.
        watched.wait_until_back_to(quiet)
        deadline = time.monotonic() + 15
        while _still_serving(serve) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _still_serving(serve), "the far side's serve did not exit"
        assert client.wait(timeout=30) == 1
        stderr = client.stderr.read()
        assert f"process {watched.pid} on {sshd.destination}" in stderr, stderr
        assert watched.state()["counter"] > 0
        assert not list(watched.tmpdir.iterdir())
    finally:
        kill(client)


def test_exec_sends_the_script_and_runs_it_there(sshd, spawn, tmp_path):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    marker = tmp_path / "ran.txt"
    script = tmp_path / "here.py"
    script.write_text(f"import os, __main__\nopen({str(marker)!r}, 'w').write(f'{{__main__.answer}} {{os.getpid()}}')\n")
    result = periscope(sshd, "exec", str(target.pid), str(script))
    assert result.returncode == 0, result.stderr
    assert "picked up" in result.stdout
    deadline = time.monotonic() + 15
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, "the script did not run in the target"
        time.sleep(0.02)
    assert marker.read_text() == f"41 {target.pid}"


def test_a_host_that_drops_off_is_marked_and_comes_back(spawn, tmp_path, monkeypatch):
    from explorer.hosts import Host, HostScanner
    from explorer.transport import ssh_endpoint

    server = start_sshd(tmp_path / "sshd")
    host = None
    try:
        target = spawn(TARGET)
        target.wait_for_line("ready")
        for key, value in server.env().items():
            if key.startswith("PERISCOPE_"):
                monkeypatch.setenv(key, value)
        host = Host(ssh_endpoint(server.destination))
        scanner = HostScanner(host)
        (row,) = [process for process in scanner.scan() if process.pid == target.pid]
        assert row.attachable and scanner.problem is None

        server.stop()  # the host goes away: its connection and its server
        os.kill(host.link.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while host.connected:
            assert time.monotonic() < deadline, "the link did not notice its ssh went away"
            time.sleep(0.01)
        (marked,) = [process for process in scanner.scan() if process.pid == target.pid]
        assert not marked.attachable and marked.reason.startswith(f"{server.destination} is unreachable")
        assert "ssh could not reach" in scanner.problem

        server.start_again()  # back: the next scan connects again
        (back,) = [process for process in scanner.scan() if process.pid == target.pid]
        assert back.attachable and scanner.problem is None
    finally:
        if host is not None:
            host.close()
        server.stop()


def test_ctrl_c_during_an_eval_over_ssh_interrupts_it_in_the_target(sshd, spawn, tmp_path):
    """SIGINT to ``periscope --host H eval PID CODE``: Python code is interrupted in the target
    (its KeyboardInterrupt shown, status 130 as locally); code blocked in a C call (a sleep) is
    sent the KeyboardInterrupt, periscope says so and detaches without waiting for the call to
    return (130); either way the agent leaves and the target runs on."""
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    descriptors = watched.descriptors()
    for code, blocked in (("while True: pass", False), ("import time; time.sleep(25)", True)):
        periscope = periscope_process("--host", sshd.destination, "eval", str(watched.pid), code, env=sshd.env())
        try:
            # The agent's thread, its worker and the eval's thread: the code is running.
            attached = watched.wait_for(lambda state: state["agent"] and state["threads"] == quiet["threads"] + 3)
            periscope.send_signal(signal.SIGINT)
            _out, err = periscope.communicate(timeout=30)
        finally:
            kill(periscope)
        assert periscope.returncode == 130, err
        if blocked:
            assert "KeyboardInterrupt sent to the eval" in err and "blocked in a C call" in err, err
            # periscope did not wait for the sleep: the eval's thread is still in it.
            assert watched.state()["threads"] > quiet["threads"]
        else:
            assert "Traceback" in err and "KeyboardInterrupt" in err, err  # raised in the target, shown here
        fds = {quiet["fds"]} | ({quiet["fds"] + 1} if not any("libffi" in path for path in descriptors) else set())
        back = watched.wait_for(lambda state, fds=fds: {key: state[key] for key in SETTLED} in [{**quiet, "fds": n} for n in fds], timeout=60)
        assert all("libffi" in path for path in watched.descriptors() - descriptors)
        assert list(watched.tmpdir.iterdir()) == []  # the far side removed the session directory
        watched.wait_for_counter_beyond(max(back["counter"], attached["counter"]))  # the target counts on
