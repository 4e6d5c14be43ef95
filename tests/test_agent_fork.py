"""A target that forks while periscope watches it: the child drops the inherited agent at once
(no agent socket, no agent thread, no agent module, its own switch interval), and the parent's
session goes on and detaches without waiting for the child."""

from __future__ import annotations

import json
import time

from explorer.attach import attach

FORKING = '''
import json, os, sys, time

def sockets():
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink("/proc/self/fd/" + fd).startswith("socket:")
        except OSError:
            pass
    return found

TRIGGER = sys.argv[1]
sys.stdout.write("ready %s\\n" % json.dumps({"switch": sys.getswitchinterval(), "sockets": sockets()}))
while not os.path.exists(TRIGGER):
    time.sleep(0.005)
pid = os.fork()
if pid == 0:
    report = {
        "agent": "_periscope_agent" in sys.modules,
        "tasks": len(os.listdir("/proc/self/task")),
        "sockets": sockets(),
        "switch": sys.getswitchinterval(),
    }
    sys.stdout.write("child %s\\n" % json.dumps(report))
    sys.stdout.flush()
    time.sleep(60)  # keeps whatever it inherited open for as long as the test runs
    os._exit(0)
sys.stdout.write("forked %d\\n" % pid)
while True:
    time.sleep(0.005)
'''


async def test_fork_during_a_watch(spawn, tmp_path):
    trigger = tmp_path / "fork-now"
    target = spawn(FORKING, args=[str(trigger)])
    before = json.loads(target.wait_for_line("ready ").split(" ", 1)[1])
    session = await attach(target.pid, rate=5)
    child = None
    try:
        await session.next_frame(timeout=30)
        trigger.touch()
        child = int(target.wait_for_line("forked ").split()[1])
        report = json.loads(target.wait_for_line("child ").split(" ", 1)[1])
        assert report == {"agent": False, "tasks": 1, "sockets": before["sockets"], "switch": before["switch"]}, report
        # The parent's stream goes on.
        seq = (await session.next_frame(timeout=30)).seq
        assert (await session.next_frame(timeout=30)).seq > seq
    finally:
        started = time.monotonic()
        await session.detach(timeout=30)
        took = time.monotonic() - started
        if child is not None:
            import os
            import signal

            os.kill(child, signal.SIGKILL)
    # The child still holds nothing of the session: the agent's bye and EOF arrive at once, not
    # after the 30 s detach timeout.
    assert session.closed and took < 15, took
