"""The target's GIL switch interval, shortened from outside while periscope waits for a busy
target's threads (explorer/switch.py): always given back, by the agent once it runs and by
periscope when the attach fails, and never over a value the target set itself."""

from __future__ import annotations

import asyncio
import time

import pytest

from explorer import oneshot, switch
from explorer.errors import InjectionTimeout
from explorer.remote import RemoteProcess
from explorer.attach import attach

BUSY = '''
import sys, threading, time
sys.setswitchinterval(0.004)  # not the default, so that a value left behind cannot pass for it
def spin():
    n = 0
    while True:
        n += 1
for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.01)
'''

HELD_IN_C = '''
import sys, threading, time
sys.setswitchinterval(0.004)
def hold():
    print("ready", flush=True)
    sum(range(10 ** 12))  # one C call that never lets the GIL go, nor runs Python
threading.Thread(target=hold, daemon=True).start()
while True:
    time.sleep(0.01)
'''


def _interval(pid: int) -> int | None:
    process = RemoteProcess.open(pid)
    try:
        return switch.target_interval(process)
    finally:
        process.close()


def _back_to_its_own(pid: int, timeout: float = 10.0) -> None:
    """Wait until the target's interval is its own 4 ms again (the agent gives it back at its loop's next turn)."""
    deadline = time.monotonic() + timeout
    while _interval(pid) != 4000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _interval(pid) == 4000


def test_the_interval_is_read_where_sys_setswitchinterval_keeps_it(spawn):
    target = spawn(BUSY)
    target.wait_for_line("ready")
    assert _interval(target.pid) == 4000


async def test_the_agent_gives_the_target_its_own_interval_back(spawn):
    """The agent started under periscope's short interval: once its first frame is out, the
    target runs with its own 4 ms again (the agent was told it, as it read 0.5 ms itself)."""
    target = spawn(BUSY)
    target.wait_for_line("ready")
    for _ in range(3):
        session = await attach(target.pid, rate=2, timeout=30)
        try:
            await session.next_frame(timeout=30)
            await asyncio.to_thread(_back_to_its_own, target.pid)
        finally:
            await session.detach()
        assert _interval(target.pid) == 4000


def test_the_one_shot_client_gives_it_back_too(spawn):
    target = spawn(BUSY)
    target.wait_for_line("ready")
    session = oneshot.attach(target.pid, rate=0, timeout=30)
    try:
        session.sample()
    finally:
        session.detach()
    _back_to_its_own(target.pid)


async def test_an_attach_that_fails_gives_the_interval_back(spawn):
    """A thread holds the GIL in one long C call: the interval is shortened (someone holds the
    GIL), no thread ever runs Python, the attach times out, and periscope writes 4 ms back."""
    target = spawn(HELD_IN_C)
    target.wait_for_line("ready")
    seen: set[int | None] = set()
    watching = True

    def watch() -> None:
        while watching:
            seen.add(_interval(target.pid))
            time.sleep(0.01)

    watcher = asyncio.create_task(asyncio.to_thread(watch))
    try:
        with pytest.raises(InjectionTimeout):
            await attach(target.pid, rate=2, timeout=1.5)
    finally:
        watching = False
        await watcher
    assert seen == {4000, switch.ATTACH_US}  # the attach's own short interval while it waited, then 4 ms again
    assert _interval(target.pid) == 4000
    with pytest.raises(InjectionTimeout):
        oneshot.attach(target.pid, rate=0, timeout=1.5)
    assert _interval(target.pid) == 4000


def test_a_value_the_target_set_meanwhile_is_kept(spawn):
    """Neither shortening nor giving back writes over a value that is not the one expected."""
    target = spawn(BUSY)
    target.wait_for_line("ready")
    process = RemoteProcess.open(target.pid)
    try:
        assert not switch.shorten(process, 5000)  # the target's is 4000: not written
        assert _interval(target.pid) == 4000
        switch.give_back(process, 5000)  # not ours (500) there: not written
        assert _interval(target.pid) == 4000
        # Only while some thread holds the GIL (on a loaded machine, now and then none does for a moment).
        deadline = time.monotonic() + 10
        while not switch.shorten(process, 4000):
            assert time.monotonic() < deadline, "never found the GIL held"
            time.sleep(0.001)
        assert _interval(target.pid) == switch.SHORT_US
        switch.give_back(process, 4000)
        assert _interval(target.pid) == 4000
    finally:
        process.close()


async def test_requests_to_a_busy_target_go_with_the_interval_shortened_and_it_comes_back(spawn):
    """Each request to a target whose threads compute is sent with the interval shortened from
    outside; the agent serves it and gives the target's own 4 ms back."""
    target = spawn(BUSY)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0, timeout=30)
    try:
        assert session.switch is not None
        for _ in range(10):
            frame = await session.sample()
            assert frame.threads
            result = await session.eval("1 + 1")
            assert result.value.repr == "2"
        assert session.switch.shortened > 0
        await asyncio.to_thread(_back_to_its_own, target.pid)
    finally:
        await session.detach()
    assert _interval(target.pid) == 4000


def test_the_one_shot_client_shortens_it_for_its_requests_too(spawn):
    target = spawn(BUSY)
    target.wait_for_line("ready")
    session = oneshot.attach(target.pid, rate=0, timeout=30)
    try:
        for _ in range(10):
            session.sample()
        assert session.switch is not None and session.switch.shortened > 0
        _back_to_its_own(target.pid)
    finally:
        session.detach()
    assert _interval(target.pid) == 4000
