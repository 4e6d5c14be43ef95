"""The agent's threads carry their own OS thread names (``periscope-agent``, and
``periscope-eval-N`` cut to Linux's 15 bytes), not the name of the target thread that ran the
injected script, so ``top -H``, py-spy and periscope's own thread list tell them apart."""

from __future__ import annotations

import asyncio
import os

from explorer.attach import attach

SPINNING = '''
import sys, threading, time

def spin():
    while True:
        sum(i for i in range(1000))

threading.Thread(target=spin, name="spin-2", daemon=True).start()
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.5)
'''


def _names(pid: int) -> dict[int, str]:
    names = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as handle:
                names[int(task)] = handle.read().strip()
        except OSError:
            continue
    return names


async def test_agent_threads_have_their_own_os_names(spawn):
    target = spawn(SPINNING)
    target.wait_for_line("ready")
    own = _names(target.pid)
    assert sorted(own.values()).count("spin-2") == 1
    session = await attach(target.pid, rate=5)
    try:
        handle = session.start_eval("import time; time.sleep(3)")
        frame = None
        for _ in range(50):
            frame = await session.next_frame(timeout=30)
            if any(t.is_agent for t in frame.threads):
                break
        names = _names(target.pid)
        agent = {tid: name for tid, name in names.items() if tid not in own}
        assert names[session.hello.agent_native_id] == "periscope-agent"
        assert sorted(agent.values()).count("periscope-agent") == 2, agent  # the agent and its worker
        assert any(name.startswith("periscope-eval") for name in agent.values()), agent
        assert all(name.startswith("periscope-") for name in agent.values()), agent
        assert sorted(names.values()).count("spin-2") == 1, names
        evals = [t for t in frame.threads if t.is_agent]
        assert evals and evals[0].name.startswith("periscope-eval-"), [t.name for t in frame.threads]
        await asyncio.wait_for(handle.result(), 30)
    finally:
        await session.detach()
