"""The Profile view and ``periscope top`` over ``--host``, through a real OpenSSH server on loopback
(tests/sshd.py): the far side's serve samples the target and streams its counts, the view here
shows the target's hot function, and leaving the view, or killing the link, stops the far side's
sampler (its files of the target closed, the serve process gone with the link)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorer.app import PeriscopeApp
from explorer.commands.app import HostConnector
from explorer.hosts import Host, HostScanner
from explorer.remote_profile import RemoteSampler
from explorer.screens.profile import ProfileScreen
from explorer.transport import ssh_endpoint
from tests.profile_targets import HOT_TARGET
from tests.screenshots import SIZE, on_top, wait_until
from tests.sshd import SSH, SSHD, SshServer, start_sshd
from tests.test_remote_ssh import _serve_processes, _still_serving

pytestmark = pytest.mark.skipif(
    SSHD is None or SSH is None, reason="OpenSSH is not installed (make system-deps installs openssh-server)"
)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


def holds_files_of(pid: int, target: int) -> bool:
    """Whether process ``pid`` has a file of process ``target`` open (a sampler's mem, schedstat, stat)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"/proc/{target}/"):
                return True
        except OSError:
            continue
    return False


def host_app(host: Host, pid: int) -> PeriscopeApp:
    """The TUI opened on ``pid``'s Profile view through ``host``, as ``periscope --host H top PID`` makes it."""
    return PeriscopeApp(
        pid=pid,
        profile=("cpu", 100.0),
        connector=HostConnector(host),
        scanner_factory=lambda: HostScanner(host),
        history_path=Path(tempfile.mkdtemp()) / "history",
    )


def hottest_first(screen: ProfileScreen) -> bool:
    return bool(screen.rows) and sum(row.self_samples for row in screen.rows) >= 50 and screen.rows[0].function == "hot_loop"


async def test_the_profile_view_over_ssh_shows_the_hot_function_and_stops_the_far_sampler(sshd, spawn, monkeypatch):
    target = spawn(HOT_TARGET)
    target.wait_for_line("ready")
    for key, value in sshd.env().items():
        if key.startswith("PERISCOPE_"):
            monkeypatch.setenv(key, value)
    before = _serve_processes(sshd)
    host = Host(ssh_endpoint(sshd.destination))
    try:
        app = host_app(host, target.pid)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: on_top(app, ProfileScreen), "the Profile view")
            screen = app.screen
            assert isinstance(screen, ProfileScreen)
            await wait_until(pilot, lambda: hottest_first(screen), "hot_loop at the top with 50 samples", timeout=30)
            assert isinstance(screen.sampler, RemoteSampler)
            assert screen.process is not None and screen.process.pid == target.pid  # the far side's row (the title)
            assert "hot_loop" in screen.query_one("#profile-table").get_row_at(0)[3].plain
            (serve,) = _serve_processes(sshd) - before  # one link for the list and the view
            assert holds_files_of(serve, target.pid)  # the sampler runs over there
            assert not holds_files_of(os.getpid(), target.pid)  # and not here

            # Wall mode counts the idle thread too; the far side's figures reach the status line.
            await pilot.press("m")
            updates = screen.updates
            await wait_until(pilot, lambda: screen.updates > updates + 1, "an update in wall mode")
            assert any(row.function == "housekeeping" for row in screen.rows)
            assert screen.sampler.stats().ticks > 0
            sampled = screen.sampler.profile.samples
            await pilot.press("r")
            assert screen.sampler.profile.samples < sampled

            # Leaving the view stops the far side's sampler; the link stays up.
            await pilot.press("escape")
            await wait_until(pilot, lambda: not holds_files_of(serve, target.pid), "the far sampler closing its files", timeout=15)
            assert host.connected and _still_serving({serve}) == {serve}

            # Again, then the link killed: the far side's serve exits, the view says sampling stopped.
            app.show_profile(target.pid)
            await wait_until(pilot, lambda: isinstance(app.screen, ProfileScreen) and app.screen is not screen, "the view again")
            again = app.screen
            assert isinstance(again, ProfileScreen)
            await wait_until(pilot, lambda: hottest_first(again), "hot_loop at the top again", timeout=30)
            assert holds_files_of(serve, target.pid)
            os.kill(host.link.pid, signal.SIGKILL)
            await wait_until(pilot, lambda: not _still_serving({serve}), "the far side's serve to exit", timeout=15)
            await wait_until(pilot, lambda: "sampling stopped" in str(again.query_one("#profile-status").render()), "the status")
            assert again.sampler is not None and again.sampler.done.is_set()
        assert target.proc.poll() is None  # the target runs on
    finally:
        host.close()


def test_top_over_ssh_refuses_a_pid_in_one_line(sshd):
    """``periscope --host H top PID`` refuses a pid the far side cannot profile before the TUI starts."""
    missing = subprocess.run(
        [sys.executable, "-m", "explorer", "--host", sshd.destination, "top", "999999999"],
        capture_output=True, text=True, timeout=60, env=sshd.env(), stdin=subprocess.DEVNULL,
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("periscope: ") and "999999999" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_the_serve_profile_op_ends_when_the_target_exits(sshd, spawn, monkeypatch):
    """The far side's sampler ends with the target: the near side's sampler says why."""
    from explorer.errors import ProcessGone

    target = spawn(HOT_TARGET)
    target.wait_for_line("ready")
    for key, value in sshd.env().items():
        if key.startswith("PERISCOPE_"):
            monkeypatch.setenv(key, value)
    host = Host(ssh_endpoint(sshd.destination))
    try:
        sampler = RemoteSampler(host.link, target.pid, rate=100, where=host.name)
        deadline = time.monotonic() + 30
        while sampler.profile.samples < 20:
            assert time.monotonic() < deadline, "no samples came"
            time.sleep(0.05)
        target.proc.kill()
        assert sampler.done.wait(15), "the far side did not end the profile"
        assert isinstance(sampler.error, ProcessGone), sampler.error
        assert host.link.request("hello")["serve"] == 1  # the link goes on
    finally:
        host.close()


WAITING = """
import threading, time

def busy():
    while True:
        sum(range(1000))
        time.sleep(0.01)

def serve():
    greeting = "hello"
    count = 0
    print("ready", flush=True)
    while True:
        line = input()
        count += 1

threading.Thread(target=busy, name="busy", daemon=True).start()
serve()
"""


async def test_the_attach_screen_over_ssh_shows_the_stacks_and_locals_the_far_side_read(sshd, spawn, monkeypatch):
    """While an attach through a host waits for the target's main thread (blocked in input()), the
    waiting screen shows every thread's stack and the selected thread's locals, read from outside
    by the far side; nothing of the target is read here. Once a line arrives the agent starts."""
    import subprocess as sp

    from explorer.screens.attach import AttachScreen
    from explorer.screens.process import ProcessScreen
    from widgets.stack_view import StackView
    from widgets.thread_list import ThreadList
    from widgets.variables import VariablesTree

    target = spawn(WAITING, stdin=sp.PIPE)
    target.wait_for_line("ready")
    for key, value in sshd.env().items():
        if key.startswith("PERISCOPE_"):
            monkeypatch.setenv(key, value)
    before = _serve_processes(sshd)
    host = Host(ssh_endpoint(sshd.destination))
    try:
        app = PeriscopeApp(connector=HostConnector(host), scanner_factory=lambda: HostScanner(host), history_path=Path(tempfile.mkdtemp()) / "h")
        async with app.run_test(size=SIZE) as pilot:
            app.attach(target.pid, thread=target.pid)  # through the main thread, blocked in input()
            await wait_until(pilot, lambda: isinstance(app.screen, AttachScreen) and app.screen.step == "waiting", "waiting")
            attach = app.screen
            assert isinstance(attach, AttachScreen)
            threads = attach.query_one(ThreadList)
            await wait_until(pilot, lambda: len(threads.threads) == 2, "both threads, read by the far side")
            main = next(t for t in threads.threads.values() if t.is_main)
            busy = next(t for t in threads.threads.values() if not t.is_main)
            assert main.where == "serve" and busy.name == "busy" and main.native_id == target.pid
            tree = attach.query_one("#attach-locals", VariablesTree)
            await wait_until(pilot, lambda: ("locals", "greeting") in tree.value_paths(), "the locals read from outside")
            paths = tree.value_paths()
            assert paths[("locals", "greeting")].preview == "'hello'" and paths[("locals", "count")].preview == "0"
            stack = attach.query_one(StackView)
            assert [frame.function for frame in stack.frames] == ["serve", "<module>"]
            assert stack.frames[0].source is None  # no file of this machine stands for the far side's
            (serve,) = _serve_processes(sshd) - before
            reads = attach.stack_reads
            await wait_until(pilot, lambda: attach.stack_reads > reads + 1, "more reads")
            assert not holds_files_of(os.getpid(), target.pid)  # read over there, not here

            # Another thread selected: its stack, and its locals read anew by the far side.
            threads.focus()
            threads.select_thread(busy.native_id)
            await wait_until(pilot, lambda: [f.function for f in attach.query_one(StackView).frames][:1] == ["busy"], "busy's stack")
            assert serve in _still_serving({serve})

            assert target.proc.stdin is not None
            target.proc.stdin.write(b"one\n")
            target.proc.stdin.flush()
            await wait_until(pilot, lambda: isinstance(app.screen, ProcessScreen) and app.screen.frames_applied >= 1, "attached")
            frames = app.screen.query_one(StackView).frames
            assert frames and all(frame.source is None for frame in frames)  # nor there: the files are the far side's
    finally:
        host.close()
