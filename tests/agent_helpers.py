"""Helpers for tests that watch what the agent does to a real target: a target that reports its
own state (threads, descriptors, agent module, streams, session files, a counter) to a file, and
readings of a process's threads, descriptors and memory from outside."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.targets import Target

COUNTER = '''
import threading, time
counter = 0

def count():
    """The target's own work: it must go on whatever periscope does."""
    global counter
    while True:
        counter += 1
        time.sleep(0.001)

threading.Thread(target=count, name="counter", daemon=True).start()
'''
"""Target source that starts a thread counting ``counter`` up every millisecond."""

WATCHED = COUNTER + '''
import gc, json, os, sys

STATE, TMP = sys.argv[1], os.environ["TMPDIR"]
STREAMS = (sys.stdout, sys.stderr)

def descriptors():
    sockets = total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets += os.readlink("/proc/self/fd/" + fd).startswith("socket:")
            total += 1
        except OSError:
            pass  # the descriptor of the listing itself
    return total, sockets

def observe():
    fds, sockets = descriptors()
    return {
        "agent": "_periscope_agent" in sys.modules,
        "threads": len(sys._current_frames()),
        "tasks": len(os.listdir("/proc/self/task")),
        "fds": fds,
        "sockets": sockets,
        "streams": (sys.stdout, sys.stderr) == STREAMS,
        "switch": sys.getswitchinterval(),
        "files": sorted(os.listdir(TMP)),
    }

last, since, blocks, blocks_at = None, time.monotonic(), 0, 0.0
for turn in range(sys.maxsize):
    now = observe()
    if now != last:
        last, since = now, time.monotonic()
    if turn % 20 == 0:
        gc.collect()
        blocks, blocks_at = sys.getallocatedblocks(), time.monotonic()
    with open(STATE + ".new", "w") as handle:
        json.dump({**now, "counter": counter, "since": since, "blocks": blocks, "blocks_at": blocks_at}, handle)
    os.replace(STATE + ".new", STATE)
    time.sleep(0.01)
'''
"""A target whose main thread writes its state to the file ``argv[1]`` every 10 ms.

``since`` is the CLOCK_MONOTONIC time (shared by all processes) at which the state other than
the counter last changed, so a test can tell when something happened in the target without
depending on how fast the test itself reads. Every 200 ms the target collects its garbage and
reports the Python objects it holds (``blocks``, ``sys.getallocatedblocks()``) with the time
``blocks_at``.
"""


@dataclass
class WatchedTarget:
    """A running WATCHED target, its state file and its private temporary directory."""

    target: Target
    state_file: Path
    tmpdir: Path

    @property
    def pid(self) -> int:
        return self.target.pid

    def state(self) -> dict[str, Any]:
        """The latest state the target wrote."""
        while True:
            try:
                return json.loads(self.state_file.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.005)  # before the first write

    def wait_for(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        """Poll the state until ``wanted(state)`` holds; AssertionError with the last state after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if wanted(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"the target never reached the state; last: {state}")
            if self.target.proc.poll() is not None:
                raise AssertionError(f"the target exited with {self.target.proc.returncode}")
            time.sleep(0.01)

    def wait_for_counter_beyond(self, value: int, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the target's own counter has passed ``value``."""
        return self.wait_for(lambda state: state["counter"] > value, timeout)

    def quiet(self) -> dict[str, Any]:
        """The state without the agent: the fields to compare before and after a session."""
        return _settled(self.wait_for(lambda s: not s["agent"]))

    def wait_until_back_to(self, quiet: dict[str, Any], timeout: float = 10.0, *, extra_fds: int = 0) -> dict[str, Any]:
        """Wait until the target is back to ``quiet`` (no thread, descriptor, socket, stream,
        switch interval, file or module of the agent left; ``extra_fds`` more descriptors); the
        full state then."""
        expected = {**quiet, "fds": quiet["fds"] + extra_fds}
        return self.wait_for(lambda state: _settled(state) == expected, timeout)

    def descriptors(self) -> set[str]:
        """What the target's descriptors point at (without the state file it rewrites)."""
        found = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                found.add(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
            except FileNotFoundError:
                pass
        return {path for path in found if not path.startswith(str(self.state_file))}


SETTLED = ("agent", "threads", "tasks", "fds", "sockets", "streams", "switch", "files")


def _settled(state: dict[str, Any]) -> dict[str, Any]:
    return {key: state[key] for key in SETTLED}


def start_watched(spawn: Callable[..., Target], directory: Path) -> WatchedTarget:
    """Start a WATCHED target with its TMPDIR (where periscope stages the agent) in ``directory``."""
    tmpdir = directory / "target-tmp"
    tmpdir.mkdir(mode=0o700)
    state_file = directory / "state.json"
    target = spawn(WATCHED, args=[str(state_file)], env={"TMPDIR": str(tmpdir)})
    watched = WatchedTarget(target, state_file, tmpdir)
    watched.wait_for(lambda state: state["threads"] == 2)
    return watched


@dataclass(frozen=True)
class Usage:
    """What a process holds, read from /proc: OS threads, open descriptors, resident memory."""

    threads: int
    fds: int
    rss: int
    """Resident set size in bytes."""

    def growth(self, earlier: Usage) -> Usage:
        """This reading minus an earlier one."""
        return Usage(self.threads - earlier.threads, self.fds - earlier.fds, self.rss - earlier.rss)


def usage(pid: int | str = "self") -> Usage:
    """Threads, descriptors and resident memory of a process (``"self"``: this one)."""
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            fields[name] = value.split()
    return Usage(
        threads=int(fields["Threads"][0]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        rss=int(fields["VmRSS"][0]) * 1024,
    )


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL a process this test started, reap it and close its pipes."""
    try:
        process.kill()
        process.wait(timeout=10)
    finally:
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def periscope_process(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``periscope ARGS`` (this interpreter, this checkout) with stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "explorer", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def connect_when_listening(path: Path | str, timeout: float = 10.0) -> socket.socket:
    """Connect to the agent's socket as soon as it listens (it is bound a moment before it listens)."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            sock.connect(str(path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.002)
    sock.settimeout(timeout)
    return sock
