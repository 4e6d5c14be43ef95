"""Cancelling ``attach()`` while it waits for a blocked thread (Esc, another thread chosen, the app
exiting): the request is withdrawn at once, the session directory removed, and nothing reads
through the closed process afterwards; the target, once unblocked, runs nothing of periscope's."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from explorer.attach import AttachState, attach
from tests.test_inject import request_state

BLOCKED = """
import sys
print("ready", flush=True)
line = input()
print("got " + line, flush=True)
"""


def session_dirs(tmp: str) -> list[str]:
    return [name for name in os.listdir(tmp) if name.startswith("periscope-")]


async def poll(condition: Any, what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A private TMPDIR for the target, short enough for the agent's socket path (pytest's are not)."""
    path = tempfile.mkdtemp(prefix="psc-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_cancelling_attach_withdraws_the_request_at_once_and_cleans_up(spawn, short_tmp):
    tmp = short_tmp
    target = spawn(BLOCKED, stdin=subprocess.PIPE, env={"TMPDIR": tmp})
    target.wait_for_line("ready")
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    try:
        waiting = asyncio.Event()
        steps: list[AttachState] = []

        def progress(step: Any) -> None:
            steps.append(step.state)
            if step.state is AttachState.WAITING:
                waiting.set()

        attaching = asyncio.ensure_future(attach(target.pid, thread="main", timeout=30, progress=progress))
        await asyncio.wait_for(waiting.wait(), 10)
        assert request_state(target.pid)[0] == 1  # the main thread, in input(), has not picked it up
        assert session_dirs(tmp)
        cancelled_at = time.monotonic()
        attaching.cancel()
        try:
            await attaching
        except asyncio.CancelledError:
            pass
        # The worker thread stops waiting and withdraws the request now, not when the 30 s run out.
        await poll(lambda: request_state(target.pid)[0] == 0, "the request withdrawn")
        await poll(lambda: not session_dirs(tmp), "the session directory removed")
        assert time.monotonic() - cancelled_at < 2.0
        await asyncio.sleep(0.1)  # let late callbacks of the worker run
        assert loop_errors == []  # no "exception never retrieved" (a read through a closed process)
    finally:
        loop.set_exception_handler(previous)

    # Unblocked, the target goes on and runs nothing of periscope's (no error on its stderr).
    assert target.proc.stdin is not None
    target.proc.stdin.write(b"hello\n")
    target.proc.stdin.flush()
    assert target.wait_for_line("got ") == "got hello"
    assert target.proc.wait(10) == 0
    assert target.proc.stderr is not None
    assert target.proc.stderr.read() == b""
