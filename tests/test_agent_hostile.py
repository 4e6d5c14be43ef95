"""Objects that fight back: the stream must go on and the target must not notice."""

from __future__ import annotations

import asyncio
import os
import time

from explorer.attach import attach

TARGET = '''
import sys, threading, time

class RaisingRepr:
    def __repr__(self):
        raise ValueError("no repr for you")

class SleepyRepr:
    def __repr__(self):
        sys.stdout.write("sleepy repr started\\n")
        time.sleep(10)
        sys.stdout.write("sleepy repr returned\\n")
        return "SleepyRepr()"

class SpinningRepr:
    def __repr__(self):
        while True:
            pass

class HugeRepr:
    def __repr__(self):
        return "x" * 10_000_000

class AngryGetattr:
    def __init__(self):
        self.visible = 1
    def __getattr__(self, name):
        raise RuntimeError(f"no attribute {name} for you")

class WeirdGetattribute:
    def __getattribute__(self, name):
        raise RuntimeError("touch me not")

RAISING = RaisingRepr()
SLEEPY = SleepyRepr()
SPINNING = SpinningRepr()
HUGE = HugeRepr()
ANGRY = AngryGetattr()
WEIRD = WeirdGetattribute()
SELF_LIST = [1]
SELF_LIST.append(SELF_LIST)
SELF_DICT = {"name": "d"}
SELF_DICT["self"] = SELF_DICT
SHARED = {}

def mutate():
    n = 0
    while True:
        n += 1
        SHARED[n] = n
        if len(SHARED) > 50:
            SHARED.pop(next(iter(SHARED)))

threading.Thread(target=mutate, daemon=True).start()
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.02)
'''


async def test_hostile_objects_do_not_stop_the_stream(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=10)
    try:
        frames = []
        while len(frames) < 4:
            frames.append(await session.next_frame(timeout=30))
        # The frames came while SleepyRepr.__repr__ was still asleep in the agent's old worker.
        target.wait_for_line("sleepy repr started")
        assert not any(line.startswith("sleepy repr returned") for line in target.lines)

        module = frames[-1].module("__main__")
        raising = module.get("RAISING")
        assert raising.failed and raising.repr == "<repr failed: ValueError: no repr for you>"
        for name in ("SLEEPY", "SPINNING"):
            value = module.get(name)
            assert value.failed and value.repr == "<repr timed out>", name
        huge = module.get("HUGE")
        assert huge.truncated and huge.repr.startswith("xxxx") and len(huge.repr) <= session.hello.limits["repr_chars"] + 1
        assert module.get("SELF_LIST").repr == "[1, [...]]"
        assert module.get("SELF_DICT").repr == "{'name': 'd', 'self': {...}}"
        assert module.get("ANGRY").type_name == "__main__.AngryGetattr"
        assert module.get("WEIRD").type_name == "__main__.WeirdGetattribute"
        assert sum(frame.errors for frame in frames) >= 2  # the two hung reprs were counted
        assert any("SleepyRepr" in line or "SpinningRepr" in line for f in frames for line in f.error_log)

        angry = await session.expand(module.get("ANGRY").ref)
        assert [(c.name, c.value.repr) for c in angry.children] == [("visible", "1")]
        weird = await session.expand(module.get("WEIRD").ref)
        assert weird.total == 0
        for _ in range(20):
            shared = await session.expand(module.get("SHARED").ref)
            assert all(c.name.isdigit() for c in shared.children)
        loop = await session.expand(module.get("SELF_LIST").ref)
        assert loop.children[1].value.ref == module.get("SELF_LIST").ref

        # The target kept running all along, and evals still work next to the stuck worker.
        result = await session.eval("len(SHARED) > 0")
        assert result.value.repr == "True"
        result = await session.eval("SLEEPY", repr_chars=100)
        assert result.ok and result.value.repr == "<repr timed out>"
        later = await session.next_frame(timeout=30)
        assert later.seq > frames[-1].seq
    finally:
        await session.detach()
    assert target.proc.poll() is None
    # Both stuck workers end: the spinning one by the agent's async exception, the sleepy one
    # when its sleep returns. Then only the target's own two threads are left.
    deadline = time.monotonic() + 20
    while len(os.listdir(f"/proc/{target.pid}/task")) != 2:
        assert time.monotonic() < deadline, os.listdir(f"/proc/{target.pid}/task")
        await asyncio.sleep(0.1)


async def test_a_dict_mutated_by_another_thread_while_sampled(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        for _ in range(30):
            frame = await session.sample()
            shared = frame.module("__main__").get("SHARED")
            assert shared.type_name == "dict" and not shared.failed
    finally:
        await asyncio.wait_for(session.detach(), 30)
