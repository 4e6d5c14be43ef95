"""The agent's loop in a real target (PROTOCOL.md, *The agent's loop*): it sleeps until there is
something to do (no periodic wake-up while an eval runs: the eval's result wakes it), and while an
eval runs (or a request is served) the target's GIL switch interval is short, then the target's own again."""

from __future__ import annotations

import asyncio

from explorer.attach import attach
from tests.agent_helpers import start_watched

SWITCH = """
import sys, time
last = None
print("ready", flush=True)
while True:
    now = sys.getswitchinterval()
    if now != last:
        last = now
        print("switch %r" % now, flush=True)
    time.sleep(0.005)
"""


def _voluntary_switches(pid: int, native_id: int) -> int:
    """How often a thread of the target has gone to sleep, as the kernel counts it."""
    with open(f"/proc/{pid}/task/{native_id}/status") as handle:
        for line in handle:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise LookupError("no voluntary_ctxt_switches")


async def test_the_loop_sleeps_through_a_running_eval_until_its_result_wakes_it(spawn):
    target = spawn(SWITCH)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        agent_thread = session.hello.agent_native_id
        assert (await session.eval("1")).value.repr == "1"
        handle = session.start_eval("import time; time.sleep(1.5); 'woke'")
        await asyncio.sleep(0.3)  # the eval is running: the loop waits on its socket and eventfd
        before = _voluntary_switches(target.pid, agent_thread)
        await asyncio.sleep(1.0)
        during = _voluntary_switches(target.pid, agent_thread) - before
        result = await handle
        assert result.value.repr == "'woke'"
        # Polling every 20 ms would be 50 wake-ups in that second; the loop slept through it.
        assert during <= 5, during
    finally:
        await session.detach()


async def test_an_eval_runs_with_a_short_switch_interval_and_the_target_gets_its_own_back(spawn, tmp_path):
    target = start_watched(spawn, tmp_path)
    target.wait_for(lambda state: state["switch"] == 0.005)
    session = await attach(target.pid, rate=0)
    try:
        result = await session.eval("import sys; sys.getswitchinterval()")
        assert result.value.repr == "0.0005"
        target.wait_for(lambda state: state["switch"] == 0.005)  # given back once the result was out
        # A target that sets its own interval meanwhile keeps it.
        result = await session.eval("import sys, time; sys.setswitchinterval(0.002); time.sleep(0.05); 'set'")
        assert result.value.repr == "'set'"
        target.wait_for_counter_beyond(target.state()["counter"] + 50)
        assert target.state()["switch"] == 0.002
    finally:
        await session.detach()



PROBED = """
import os, sys, time
seen = []

class Probe:
    def __repr__(self):  # a module variable: the agent's previews call it, in their worker thread
        seen.append(sys.getswitchinterval())
        return "probe"

probe = Probe()
last = None
print("ready", flush=True)
while True:
    now = sys.getswitchinterval()
    if now != last:
        last = now
        with open(sys.argv[1] + ".tmp", "w") as handle:
            handle.write(repr(now))
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.005)
"""


async def test_a_request_is_served_with_the_short_switch_interval_and_the_target_gets_its_own_back(spawn, tmp_path):
    """A ``sample`` on a busy target hands the GIL over many times (to the preview worker and
    back): it is served with the 0.5 ms interval, as an eval runs, and the target's own comes back."""
    switch = tmp_path / "switch"
    target = spawn(PROBED, args=[str(switch)])
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)  # (rate 0: the start-up's short interval is over at the hello)
    try:
        await session.sample()
        seen = await session.eval("seen[-1]")
        assert seen.value.repr == "0.0005"
    finally:
        await session.detach()
    await asyncio.sleep(0.2)  # the target's loop looks every 5 ms
    assert switch.read_text() == "0.005"
