"""gevent and eventlet targets, monkey-patched: the agent uses the interpreter's own OS threads
and sockets (not greenlets on the target's hub), so the target's event loop keeps its rate
while periscope watches it at 5 Hz, and the stacks show the real OS threads."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from explorer.attach import attach
from tests.target_venv import NoWheel, target_venv

TICKER = '''
{patch}
import sys, time
ticks = 0

def ticker():
    global ticks
    while True:
        {sleep}(0.004)
        ticks += 1

def reporter():
    last, since = ticks, time.monotonic()
    while True:
        {sleep}(0.25)
        now = time.monotonic()
        sys.stdout.write("rate %.2f %.1f\\n" % (now, (ticks - last) / (now - since)))
        last, since = ticks, now

{spawn}(ticker)
{spawn}(reporter)
sys.stdout.write("ready\\n")
while True:
    {sleep}(1)
'''

LIBRARIES = {
    "gevent": {"patch": "from gevent import monkey; monkey.patch_all()\nimport gevent", "sleep": "gevent.sleep", "spawn": "gevent.spawn"},
    "eventlet": {"patch": "import eventlet; eventlet.monkey_patch()", "sleep": "eventlet.sleep", "spawn": "eventlet.spawn"},
}


@pytest.fixture(scope="module")
def greenlet_python(target_python: str) -> str:
    """The target interpreter in a venv with gevent and eventlet (cached; skipped without wheels)."""
    try:
        return target_venv(target_python, ["gevent", "eventlet"])
    except NoWheel as missing:
        pytest.skip(str(missing))


def _rates(target, since: float, until: float) -> list[float]:
    """Tick rates the target reported for periods that ended between ``since`` and ``until``."""
    rates = []
    for line in target.lines:
        if line.startswith("rate "):
            _, at, rate = line.split()
            if since < float(at) <= until:
                rates.append(float(rate))
    return rates


def _wait_until(target, moment: float) -> None:
    """Read the target's output until it reported a period that ended after ``moment``."""
    while not _rates(target, moment, float("inf")):
        try:
            target.wait_for_line("rate %d" % 10**12, timeout=0.3)
        except TimeoutError:
            pass


async def _one_round(target) -> tuple[float, list[float], list]:
    """Tick rate for 2 s without periscope, then the rates while watched at 5 Hz for 3 s."""
    started = time.monotonic()
    _wait_until(target, started + 2.0)
    baseline = statistics.median(_rates(target, started + 0.25, started + 2.0))
    session = await attach(target.pid, rate=5)
    try:
        watch_from = time.monotonic()
        frames = []
        while time.monotonic() < watch_from + 3.0:
            frames.append(await session.next_frame(timeout=30))
        watch_end = time.monotonic()
        main = frames[-1].main_thread
        assert main is not None and main.frames, [(t.name, t.frames) for t in frames[-1].threads]
        result = await session.eval("1 + 1")
        assert result.ok and result.value.repr == "2"
    finally:
        await asyncio.wait_for(session.detach(), 30)
    _wait_until(target, watch_end)
    assert len(frames) >= 10
    return baseline, _rates(target, watch_from + 0.3, watch_end), frames


@pytest.mark.parametrize("library", sorted(LIBRARIES))
async def test_the_event_loop_keeps_its_rate_while_watched(spawn, greenlet_python, library):
    target = spawn(TICKER.format(**LIBRARIES[library]), python=greenlet_python, python_args=["-W", "ignore"])
    target.wait_for_line("ready")
    # The machine is shared: a round whose baseline and watch saw different loads can miss by
    # chance. A frozen loop (seconds without a tick, as before) misses every round.
    rounds = []
    for _ in range(3):
        baseline, watched, _frames = await _one_round(target)
        rounds.append((baseline, watched))
        if watched and statistics.median(watched) >= 0.9 * baseline:
            break
    else:
        raise AssertionError(f"the loop slowed down while watched: {rounds}")
